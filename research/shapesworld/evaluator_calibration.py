"""Calibrates ShapesEval's shape tolerances (:data:`leapalign.worlds.shapes.moments.TOLERANCE`) on the world's own
renderer, and reports what they accept.

What counts as a circle, a square or a triangle is stated as the deformations ShapesEval allows (:data:`ALLOWED`):
a stretch along a random axis up to 1.15, a taper up to 8% (one side wider than the opposite one), corners
rounded up to a radius of 30% of the inscribed circle's (squares and triangles; every triangle whose angles are
all 25 degrees or more is a template already), a blur up to sigma 0.75 px and pixel noise up to std 0.03 (the
base model's samples: background noise std 0.005, edges as soft as a blur of 0.5-0.7 px). For each valid shape,
objects are drawn by :mod:`leapalign.worlds.shapes.scenes` at a random angle, size 8-18 px, position and colour,
deformed within those bounds (uniformly), then blurred (sigma 0, 0.4 or 0.75 px) and given pixel noise (std 0,
0.015 or 0.03). Each object's invariants are compared with its class's templates: for the nearest template (by
the current tolerances) the script records each invariant's deviation beyond the relative part,
``|f - t| - rel * t``, and proposes as the absolute part its ``--quantile`` over all objects of the class, times
:data:`MARGIN`. The independent check of the result is on scenes that share no code with this renderer
(``research/shapesworld/pil_shapes.py``, ``tests/worlds/shapes/test_evaluator_invariance.py``).

    python -m research.shapesworld.evaluator_calibration          # -> results/shapes_eval_calibration.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from scipy import ndimage

from leapalign.worlds.shapes import moments
from leapalign.worlds.shapes.evaluator import detect_batch
from leapalign.worlds.shapes.scenes import CANVAS, COLORS, SHAPES, SUPERSAMPLE, Obj, _mask

logger = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"
CONDITIONS: tuple[tuple[float, float], ...] = tuple((b, n) for b in (0.0, 0.4, 0.75) for n in (0.0, 0.015, 0.03))


# stretch: the largest axis ratio; rounding: the largest corner radius, as a share of the object's size (30% of the
# inscribed circle's radius: 0.15 for a square, 0.09 for the renderer's triangle)
# taper: the largest difference in width between two opposite sides, as a share of the width (a hand-drawn
# square's; the hybrid "trapezoid" tapers by 0.5)
ALLOWED: dict[str, float] = {"stretch": 1.15, "taper": 0.08, "rounding_square": 0.15, "rounding_triangle": 0.09}


MARGIN = 1.1  # the tolerance written is the quantile times this


def deformed(shape: str, rng: np.random.Generator) -> np.ndarray:
    """One image ``(3, 32, 32)`` of ``shape``, turned, stretched and (squares, triangles) with rounded corners."""
    size = rng.uniform(8, 18)
    stretch = rng.uniform(1.0, ALLOWED["stretch"])
    cx, cy = rng.uniform(size * 0.8, 32 - size * 0.8, size=2)
    angle, axis = rng.uniform(0, 2 * np.pi, size=2)
    color = COLORS[str(rng.choice(list(COLORS)))]
    n = CANVAS * SUPERSAMPLE
    coords = (np.arange(n, dtype=np.float64) + 0.5) / SUPERSAMPLE
    xs, ys = np.meshgrid(coords, coords)
    # undo the stretch (along `axis`, about the centre) before asking the upright, turned shape's mask
    dx, dy = xs - cx, ys - cy
    u, v = np.cos(axis) * dx + np.sin(axis) * dy, -np.sin(axis) * dx + np.cos(axis) * dy
    u /= stretch
    u /= 1 + rng.uniform(-1, 1) * ALLOWED["taper"] / 2 * np.clip(v / (size / 2), -1, 1)  # wider on one side
    xs, ys = cx + np.cos(axis) * u - np.sin(axis) * v, cy + np.sin(axis) * u + np.cos(axis) * v
    mask = _mask(Obj(shape, "red", cx, cy, size, angle), xs, ys)
    if shape != "circle":  # round the corners: an opening by a disc of the drawn radius
        radius = rng.uniform(0, ALLOWED[f"rounding_{shape}"]) * size * SUPERSAMPLE
        if radius >= 1:
            r = int(np.ceil(radius))
            yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
            mask = ndimage.binary_opening(mask, structure=xx**2 + yy**2 <= radius**2)
    image = mask[..., None] * np.array(color, dtype=np.float32)
    return image.reshape(CANVAS, SUPERSAMPLE, CANVAS, SUPERSAMPLE, 3).mean(axis=(1, 3)).transpose(2, 0, 1)


def renders(shape: str, num: int, blur: float, noise: float, rng: np.random.Generator) -> np.ndarray:
    """``num`` images ``(num, 3, 32, 32)`` of one deformed ``shape`` each (:func:`deformed`), blurred, noised."""
    x = np.stack([deformed(shape, rng) for _ in range(num)]).astype(np.float32)
    if blur:
        x = ndimage.gaussian_filter(x, sigma=(0, 0, blur, blur))
    if noise:
        x = np.clip(x + rng.normal(0, noise, x.shape), 0, 1).astype(np.float32)
    return x


def deviations(values: np.ndarray, shape: str) -> np.ndarray:
    """``(M, 6)``: each object's deviation from its nearest template of ``shape`` beyond the relative tolerance."""
    t = moments.templates()[shape]
    tol = moments.TOLERANCE[shape]
    abs_tol = np.array([tol[n][0] for n in moments.NAMES])
    rel_tol = np.array([tol[n][1] for n in moments.NAMES])
    gap = np.abs(values[:, None] - t[None]) / (abs_tol + rel_tol * np.abs(t))[None]
    nearest = t[gap.max(-1).argmin(-1)]
    return np.abs(values - nearest) - rel_tol * np.abs(nearest)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num", type=int, default=400, help="objects per shape and condition (default: %(default)s)")
    p.add_argument("--quantile", type=float, default=0.998, help="of the deviations (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS / "shapes_eval_calibration.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = np.random.default_rng(args.seed)
    report: dict = {"num": args.num, "quantile": args.quantile, "seed": args.seed, "shapes": {}}
    for shape in SHAPES:
        values, named = [], []
        for blur, noise in CONDITIONS:
            found = detect_batch(renders(shape, args.num, blur, noise, rng))
            one = [d[0] for d in found if len(d) == 1]
            values += [[d.invariants[n] for n in moments.NAMES] for d in one]
            named.append({"blur": blur, "noise": noise, "accuracy": sum(d.shape == shape for d in one) / args.num})
        dev = deviations(np.array(values), shape)
        proposed = {n: float(max(0.0, np.quantile(dev[:, i], args.quantile))) for i, n in enumerate(moments.NAMES)}
        report["shapes"][shape] = {"by_condition": named, "proposed_abs": proposed}
        logger.info("%s: proposed abs %s", shape, {k: round(v, 2) for k, v in proposed.items()})
        for row in named:
            logger.info("  blur %.2f noise %.3f: accuracy %.4f", row["blur"], row["noise"], row["accuracy"])
    report["tolerance"] = {
        shape: {
            name: [round(v * MARGIN + 0.05, 1), moments.TOLERANCE[shape][name][1]]
            for name, v in report["shapes"][shape]["proposed_abs"].items()
        }
        for shape in SHAPES
    }
    logger.info("TOLERANCE (abs x %.2f + 0.05, rel kept): %s", MARGIN, json.dumps(report["tolerance"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
