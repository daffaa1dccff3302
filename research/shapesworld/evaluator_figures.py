"""Reproducible figures of ShapesEval (:mod:`leapalign.worlds.shapes.evaluator`): accuracy on ground-truth renders
(clean, blurred, noisy), acceptance of mismatched prompts and of pure-noise images, and, on scenes drawn by PIL
with no code of the world's renderer (:mod:`research.shapesworld.pil_shapes`), the accuracy on circles, squares and
triangles at any rotation and scale and the acceptance of every other kind of shape.

Write them (from the repository root; ``--out`` defaults to ``research/shapesworld/results/shapes_eval_figures.json``)::

    python -m research.shapesworld.evaluator_figures
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from leapalign.worlds.shapes.evaluator import _PROTOS, Detection, check, detect_batch, evaluate
from leapalign.worlds.shapes.negatives import KINDS, mismatch
from leapalign.worlds.shapes.prompts import load_metadata
from leapalign.worlds.shapes.scenes import CANVAS, render, scene_for
from research.shapesworld.pil_shapes import INVALID, VALID, draw_scene, random_scene

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Blurs each channel of ``(N, 3, H, W)`` images with a Gaussian of ``sigma`` pixels."""
    return ndimage.gaussian_filter(images, sigma=(0, 0, sigma, sigma))


def gaussian_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Adds Gaussian pixel noise of ``std`` to ``(N, 3, H, W)`` images, clipped to ``[0, 1]``."""
    noise = np.random.default_rng(seed).normal(0.0, std, size=images.shape)
    return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


NOISE_KINDS: tuple[str, ...] = ("uniform", "gaussian", "blobs")


def noise_images(kind: str, num: int, seed: int = 0) -> np.ndarray:
    """Pure-noise images ``(num, 3, 32, 32)``, like an untrained generator's outputs.

    ``uniform``: pixels in ``U[0, 1]``; ``gaussian``: ``N(0.5, 0.5^2)`` clipped to ``[0, 1]``; ``blobs``: uniform
    noise of amplitude 0.1-0.5 with one to three faint Gaussian blobs (palette colour, peak 0.2-0.7, sigma 1.5-4 px).
    """
    rng = np.random.default_rng(seed)
    size = (num, 3, CANVAS, CANVAS)
    if kind == "uniform":
        return rng.random(size, dtype=np.float32)
    if kind == "gaussian":
        return np.clip(rng.normal(0.5, 0.5, size), 0, 1).astype(np.float32)
    if kind != "blobs":
        raise ValueError(f"unknown noise kind {kind!r}; known: {', '.join(NOISE_KINDS)}.")
    images = rng.random(size) * rng.uniform(0.1, 0.5, (num, 1, 1, 1))
    yy, xx = np.mgrid[:CANVAS, :CANVAS] + 0.5
    for image in images:
        for _ in range(rng.integers(1, 4)):
            (cx, cy), sigma, peak = rng.uniform(4, CANVAS - 4, 2), rng.uniform(1.5, 4), rng.uniform(0.2, 0.7)
            blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
            image += peak * _PROTOS[rng.integers(len(_PROTOS))][:, None, None] * blob
    return np.clip(images, 0, 1).astype(np.float32)


def garbage_acceptance(num_images: int = 200, seed: int = 0) -> dict[str, dict[str, float]]:
    """How often :func:`check` accepts pure noise (:func:`noise_images`) for the held-out prompts, cycled.

    Returns:
        Per kind in :data:`NOISE_KINDS`: ``{"images": share of images accepted, "overall": ..., "<category>": ...}``.
    """
    metadata = load_metadata("eval")
    metas = [metadata[i % len(metadata)] for i in range(num_images)]
    out = {}
    for j, kind in enumerate(NOISE_KINDS):
        result = evaluate(noise_images(kind, num_images, seed=len(NOISE_KINDS) * seed + j), metas)
        out[kind] = {"images": float(np.mean(result.correct)), **result.to_dict()}
    return out


def render_ground_truth(metadata: Sequence[dict], num_seeds: int) -> tuple[np.ndarray, list[dict]]:
    """Renders ``num_seeds`` ground-truth scenes per prompt.

    Returns:
        Images ``(num_seeds * len(metadata), 3, 32, 32)`` and the metadata of each.
    """
    images, metas = [], []
    for seed in range(num_seeds):
        for i, meta in enumerate(metadata):
            images.append(render(scene_for(meta, np.random.default_rng([seed, i]))))
            metas.append(meta)
    return np.stack(images), metas


def mismatch_acceptance(
    detections: Sequence[Sequence[Detection]], metadata: Sequence[dict], seed: int = 0
) -> dict[str, tuple[float, int]]:
    """How often :func:`check` accepts a mismatched prompt for an image made for the true one.

    Args:
        detections: Per-image detections.
        metadata: The true metadata of each image.
        seed: Seed of the mismatch choices (image ``i`` and kind ``j`` use ``seed, i, j``).

    Returns:
        Per kind in :data:`~leapalign.worlds.shapes.negatives.KINDS`: (acceptance rate, number of applicable images).
    """
    out: dict[str, tuple[float, int]] = {}
    for j, kind in enumerate(KINDS):
        accepted = []
        for i, (meta, dets) in enumerate(zip(metadata, detections, strict=True)):
            negative = mismatch(meta, kind, random.Random(f"{seed}-{i}-{j}"))
            if negative is not None:
                accepted.append(check(negative, dets))
        out[kind] = (float(np.mean(accepted)) if accepted else float("nan"), len(accepted))
    return out


def independent_figures(num: int = 500, seed: int = 0, blur_sigma: float = 0.6, noise_std: float = 0.03) -> dict:
    """ShapesEval on PIL-drawn scenes (:mod:`research.shapesworld.pil_shapes`), clean, blurred and noisy.

    Args:
        num: Scenes per kind (one object each; sizes 8-18 px, any rotation), and scenes of 3 valid objects.
        seed: Seed of the scenes.
        blur_sigma: Gaussian blur of the ``blur`` condition, in pixels.
        noise_std: Pixel noise of the ``noise`` condition.

    Returns:
        Per condition: ``{"valid": {kind: accuracy}, "invalid": {kind: share named as a valid shape},
        "scenes_of_three": accuracy, "by_size": {"8-11" | "11-14" | "14-18": accuracy over the valid kinds}}``.
    """
    rng = np.random.default_rng(seed)
    kinds = [*VALID, *INVALID]
    scenes = {kind: [random_scene([kind], rng) for _ in range(num)] for kind in kinds}
    triples = [random_scene([list(VALID)[i] for i in rng.integers(0, len(VALID), 3)], rng, (8, 12)) for _ in range(num)]
    clean = {
        kind: np.stack([draw_scene(s, seed=i) for i, s in enumerate(v)])
        for kind, v in [*scenes.items(), ("3", triples)]
    }
    out = {}
    for name in ("clean", "blur", "noise"):
        row: dict = {"valid": {}, "invalid": {}}
        sizes: dict[str, list[bool]] = {"8-11": [], "11-14": [], "14-18": []}
        for kind, images in clean.items():
            if name == "blur":
                images = gaussian_blur(images, blur_sigma)
            elif name == "noise":
                images = gaussian_noise(images, noise_std, seed=seed + len(kind))
            found = detect_batch(images)
            if kind == "3":
                right = [Counter((d.shape, d.color) for d in ds) == Counter((VALID[o.kind], o.color) for o in sc)
                         for ds, sc in zip(found, triples, strict=True)]  # fmt: skip
                row["scenes_of_three"] = float(np.mean(right))
            elif kind in VALID:
                right = [len(ds) == 1 and ds[0].shape == VALID[kind] for ds in found]
                row["valid"][kind] = float(np.mean(right))
                for ok, sc in zip(right, scenes[kind], strict=True):
                    sizes["8-11" if sc[0].size < 11 else "11-14" if sc[0].size < 14 else "14-18"].append(ok)
            else:
                row["invalid"][kind] = float(np.mean([any(d.shape != "unknown" for d in ds) for ds in found]))
        row["by_size"] = {k: float(np.mean(v)) for k, v in sizes.items()}
        out[name] = row
    return out


def measure(num_seeds: int = 8, blur_sigma: float = 0.6, noise_std: float = 0.03, num_noise: int = 200) -> dict:
    """Measures ShapesEval on ground-truth renders of the held-out prompts and on pure noise.

    Args:
        num_seeds: Scenes per prompt (96 held-out prompts).
        blur_sigma: Gaussian blur of the ``blur`` condition, in pixels.
        noise_std: Pixel noise of the ``noise`` condition (clipped to ``[0, 1]``).
        num_noise: Pure-noise images per kind for ``garbage_acceptance`` (:func:`garbage_acceptance`).

    Returns:
        ``{"num_images": N, "clean" | "blur" | "noise": {"accuracy": {"overall": ..., "<category>": ...},
        "mismatch_acceptance": {"<kind>": rate}, "mismatch_count": {"<kind>": n}}, "garbage_acceptance":
        {"<noise kind>": {"images": ..., "overall": ..., "<category>": ...}}}``.
    """
    metadata = load_metadata("eval")
    images, metas = render_ground_truth(metadata, num_seeds)
    conditions = {
        "clean": images,
        "blur": gaussian_blur(images, blur_sigma),
        "noise": gaussian_noise(images, noise_std, seed=num_seeds),
    }
    out: dict = {"num_images": len(metas)}
    for name, batch in conditions.items():
        result = evaluate(batch, metas)
        negatives = mismatch_acceptance(result.detections, metas)
        out[name] = {
            "accuracy": result.to_dict(),
            "mismatch_acceptance": {k: rate for k, (rate, _) in negatives.items()},
            "mismatch_count": {k: count for k, (_, count) in negatives.items()},
        }
    out["garbage_acceptance"] = garbage_acceptance(num_noise)
    out["independent"] = independent_figures(blur_sigma=blur_sigma, noise_std=noise_std)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure ShapesEval on ground-truth renders and pure noise")
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes_eval_figures.json", help="JSON output")
    parser.add_argument("--num-seeds", type=int, default=8, help="scenes per held-out prompt")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    figures = measure(num_seeds=args.num_seeds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
