"""Scenes drawn by PIL, sharing no code with :mod:`leapalign.worlds.shapes.scenes`: the independent check of
ShapesEval (``tests/worlds/shapes/test_evaluator_invariance.py``, :mod:`research.shapesworld.evaluator_figures`).

Every object is a polygon or ellipse drawn by ``PIL.ImageDraw`` on an 8x canvas at any rotation, then reduced by
box filtering (anti-aliased edges). :data:`VALID` are the three shapes ShapesEval must name: circles, squares and
triangles of several proportions (equilateral, isosceles with base = height, right-angled). :data:`INVALID` are
shapes it must call ``unknown``: other polygons, elongated shapes, hybrids of two valid shapes, shapes with holes or
concavities, and random blobs. Colours are the six hue names with RGB values of this module's own (near, not equal
to, the renderer's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SUPER = 8  # supersampling factor
CANVAS = 32
RGB: dict[str, tuple[int, int, int]] = {
    "red": (235, 35, 30),
    "yellow": (240, 225, 35),
    "green": (35, 210, 50),
    "cyan": (30, 215, 225),
    "blue": (45, 70, 240),
    "magenta": (225, 35, 225),
}
VALID: dict[str, str] = {  # drawn kind -> the shape ShapesEval must report
    "circle": "circle",
    "square": "square",
    "equilateral": "triangle",
    "isosceles": "triangle",
    "right_triangle": "triangle",
}
INVALID: tuple[str, ...] = (
    "pentagon",
    "hexagon",
    "star",
    "ellipse",
    "rectangle",
    "rhombus",
    "trapezoid",
    "semicircle",
    "teardrop",
    "cross",
    "ring",
    "crescent",
    "blob",
)


@dataclass(frozen=True)
class Drawn:
    """One object to draw: ``kind`` (a key of :data:`VALID` or one of :data:`INVALID`), ``color`` (a key of
    :data:`RGB`), centre ``(cx, cy)`` and ``size`` (diameter of the circumscribed circle's scale) in pixels, and
    ``angle`` in radians."""

    kind: str
    color: str
    cx: float
    cy: float
    size: float
    angle: float


def _turn(points: list[tuple[float, float]], angle: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [((cx + c * x - s * y) * SUPER, (cy + s * x + c * y) * SUPER) for x, y in points]


def _regular(n: int, r: float, inner: float | None = None) -> list[tuple[float, float]]:
    """A regular ``n``-gon of circumradius ``r`` (a star when ``inner`` gives the inner radius's share)."""
    k = 2 * n if inner else n
    return [
        (r * (inner if inner and i % 2 else 1.0) * math.cos(2 * math.pi * i / k - math.pi / 2),
         r * (inner if inner and i % 2 else 1.0) * math.sin(2 * math.pi * i / k - math.pi / 2))
        for i in range(k)
    ]  # fmt: skip


def _outline(kind: str, r: float, rng: np.random.Generator) -> list[tuple[float, float]] | None:
    """The polygon of ``kind`` with half-size ``r`` before rotation (``None`` for the shapes drawn otherwise)."""
    shapes: dict[str, list[tuple[float, float]]] = {
        "square": [(-r, -r), (r, -r), (r, r), (-r, r)],
        "equilateral": _regular(3, r * 1.15),
        "isosceles": [(0, -r), (r, r), (-r, r)],
        "right_triangle": [(-r, -r), (r, r), (-r, r)],
        "pentagon": _regular(5, r * 1.05),
        "hexagon": _regular(6, r * 1.05),
        "star": _regular(5, r * 1.15, inner=0.45),
        "rectangle": [(-r, -r * 0.5), (r, -r * 0.5), (r, r * 0.5), (-r, r * 0.5)],
        "rhombus": [(0, -r), (r * 0.55, 0), (0, r), (-r * 0.55, 0)],
        "trapezoid": [(-r * 0.5, -r), (r * 0.5, -r), (r, r), (-r, r)],
        "cross": [
            (-r * 0.33, -r), (r * 0.33, -r), (r * 0.33, -r * 0.33), (r, -r * 0.33), (r, r * 0.33),
            (r * 0.33, r * 0.33), (r * 0.33, r), (-r * 0.33, r), (-r * 0.33, r * 0.33), (-r, r * 0.33),
            (-r, -r * 0.33), (-r * 0.33, -r * 0.33),
        ],
    }  # fmt: skip
    return shapes.get(kind)


def _mask(obj: Drawn, rng: np.random.Generator) -> Image.Image:
    """The object's coverage on the supersampled canvas (mode ``L``)."""
    size = CANVAS * SUPER
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    r = obj.size / 2
    poly = _outline(obj.kind, r, rng)
    if poly is not None:
        draw.polygon(_turn(poly, obj.angle, obj.cx, obj.cy), fill=255)
        return mask
    # Round shapes: drawn unrotated around the centre, then turned about it.
    x0, y0, x1, y1 = ((obj.cx - r) * SUPER, (obj.cy - r) * SUPER, (obj.cx + r) * SUPER, (obj.cy + r) * SUPER)
    if obj.kind == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
        return mask
    if obj.kind == "ellipse":
        draw.ellipse((x0, obj.cy * SUPER - r * 0.55 * SUPER, x1, obj.cy * SUPER + r * 0.55 * SUPER), fill=255)
    elif obj.kind == "semicircle":
        draw.pieslice((x0, y0, x1, y1), 0, 180, fill=255)
    elif obj.kind == "ring":
        draw.ellipse((x0, y0, x1, y1), fill=255)
        h = r * 0.5 * SUPER
        draw.ellipse((obj.cx * SUPER - h, obj.cy * SUPER - h, obj.cx * SUPER + h, obj.cy * SUPER + h), fill=0)
    elif obj.kind == "crescent":
        draw.ellipse((x0, y0, x1, y1), fill=255)
        draw.ellipse((x0 + r * 0.7 * SUPER, y0, x1 + r * 0.7 * SUPER, y1), fill=0)
    elif obj.kind == "teardrop":  # a disc below and a triangle up to a point: between a circle and a triangle
        rc = r * 0.6
        box = (obj.cx - rc, obj.cy + r - 2 * rc, obj.cx + rc, obj.cy + r)
        draw.ellipse(tuple(v * SUPER for v in box), fill=255)
        draw.polygon(_turn([(0, -r), (rc, r - rc), (-rc, r - rc)], 0.0, obj.cx, obj.cy), fill=255)
    elif obj.kind == "blob":  # an irregular lump: a disc whose radius wobbles with harmonics 2 to 5
        amps, phases = rng.uniform(0.1, 0.25, size=4), rng.uniform(0, 2 * math.pi, size=4)
        points = []
        for i in range(96):
            t = 2 * math.pi * i / 96
            rr = r * (1 + sum(a * math.cos(k * t + p) for k, a, p in zip(range(2, 6), amps, phases, strict=True)))
            points.append((rr * math.cos(t), rr * math.sin(t)))
        draw.polygon(_turn(points, 0.0, obj.cx, obj.cy), fill=255)
    else:
        raise ValueError(f"unknown kind {obj.kind!r}; known: {', '.join([*VALID, *INVALID])}.")
    return mask.rotate(math.degrees(-obj.angle), resample=Image.BILINEAR, center=(obj.cx * SUPER, obj.cy * SUPER))


def draw_scene(objects: list[Drawn], seed: int = 0) -> np.ndarray:
    """Draws ``objects`` on a black canvas.

    Returns:
        Float32 image ``(3, CANVAS, CANVAS)`` in ``[0, 1]``.
    """
    rng = np.random.default_rng(seed)
    size = CANVAS * SUPER
    image = Image.new("RGB", (size, size), (0, 0, 0))
    for obj in objects:
        image.paste(Image.new("RGB", (size, size), RGB[obj.color]), mask=_mask(obj, rng))
    small = image.resize((CANVAS, CANVAS), Image.BOX)
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


def random_scene(kinds: list[str], rng: np.random.Generator, sizes: tuple[float, float] = (8.0, 18.0)) -> list[Drawn]:
    """Places one object of each of ``kinds`` at a random size, rotation, colour and position, 2 px or more
    apart (circumscribed circles), inside the canvas."""
    for _ in range(1000):
        placed: list[Drawn] = []
        for kind in kinds:
            size = float(rng.uniform(*sizes))
            reach = size / 2 * 1.2  # the circumscribed circle of every kind drawn here, with some margin
            cx, cy = rng.uniform(reach, CANVAS - reach, size=2)
            if any(math.hypot(cx - o.cx, cy - o.cy) < reach + o.size / 2 * 1.2 + 2 for o in placed):
                break
            color = str(rng.choice(list(RGB)))
            placed.append(Drawn(kind, color, float(cx), float(cy), size, float(rng.uniform(0, 2 * math.pi))))
        if len(placed) == len(kinds):
            return placed
        sizes = (sizes[0], max(sizes[0], sizes[1] * 0.97))
    raise RuntimeError(f"could not place {kinds} on a {CANVAS} px canvas.")
