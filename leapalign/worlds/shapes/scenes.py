"""ShapesWorld scenes: coloured circles, squares and triangles on a plain black canvas.

A :class:`Scene` is a list of :class:`Obj` (shape, colour name, centre, size in pixels); :func:`render`
rasterises it with 4x supersampling (anti-aliased edges) to a float image in ``[0, 1]``. Scenes that match a
prompt's metadata are drawn by :func:`sample_scene`, deterministically from a ``numpy`` generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[float, float, float]] = {  # six saturated, well-separated hues
    "red": (0.95, 0.10, 0.10),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.85, 0.15),
    "cyan": (0.10, 0.85, 0.90),
    "blue": (0.15, 0.25, 0.95),
    "magenta": (0.90, 0.10, 0.90),
}
# Near misses: shapes a blurry generator draws for a valid one (a rounded square, a polygon for a circle, an oval).
NEAR_MISS_SHAPES: tuple[str, ...] = ("squircle", "pentagon", "hexagon", "oval", "lumpy_circle", "lumpy_square")
LUMPINESS = 0.08  # relative amplitude of the lumpy near misses' outline
# Off-palette colours and invalid shapes, used only to draw *wrong* images (hard negatives for ShapesScore):
# ShapesEval counts none of them as an object.
NUISANCE_COLORS: dict[str, tuple[float, float, float]] = {"white": (0.95, 0.95, 0.95), "grey": (0.5, 0.5, 0.5)}
NUISANCE_SHAPES: tuple[str, ...] = ("ellipse", "trapezoid", "teardrop", *NEAR_MISS_SHAPES)
# Hybrids of two valid shapes (a square tapering to a triangle, a disc drawn out to a point): what a generator
# fine-tuned on a learned reward draws for "a square and a triangle" to please both words at once.
HYBRID_SHAPES: tuple[str, ...] = ("trapezoid", "teardrop")
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CANVAS = 32
SUPERSAMPLE = 4
MIN_GAP = 2.0  # pixels between the bounding boxes of two objects


@dataclass(frozen=True)
class Obj:
    """One object: ``shape`` in :data:`SHAPES`, ``color`` in :data:`COLORS`, centre ``(cx, cy)`` and bounding
    ``size`` in pixels (x to the right, y downwards), turned by ``angle`` radians about its centre (clockwise on
    screen; the training scenes are upright, angle 0, and :meth:`bbox` is the upright box)."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float
    angle: float = 0.0

    def bbox(self) -> tuple[float, float, float, float]:
        h = self.size / 2
        return (self.cx - h, self.cy - h, self.cx + h, self.cy + h)


@dataclass(frozen=True)
class Scene:
    """A canvas of ``canvas x canvas`` pixels with a black background and some objects."""

    objects: tuple[Obj, ...]
    canvas: int = CANVAS


def _mask(obj: Obj, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    r = obj.size / 2
    dx, dy = xs - obj.cx, ys - obj.cy
    if obj.angle:  # the upright shape's coordinates of each point
        c, s = np.cos(obj.angle), np.sin(obj.angle)
        dx, dy = c * dx + s * dy, -s * dx + c * dy
    if obj.shape == "circle":
        return dx**2 + dy**2 <= r**2
    if obj.shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if obj.shape == "triangle":  # apex up, base down: |dx| <= r * (dy + r) / (2r)
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= (dy + r) / 2)
    if obj.shape == "ellipse":  # a flat blob (aspect 2), wider than tall
        return (dx / r) ** 2 + (dy / (r / 2)) ** 2 <= 1
    if obj.shape == "trapezoid":  # top edge half the bottom's: between a square and a triangle
        return (dy <= r) & (dy >= -r) & (np.abs(dx) <= r * (0.5 + 0.5 * (dy + r) / (2 * r)))
    if obj.shape == "teardrop":  # a disc in the lower part drawn up to a point: between a circle and a triangle
        rc = 0.6 * r
        disc = dx**2 + (dy - (r - rc)) ** 2 <= rc**2
        cone = (dy >= -r) & (dy <= r - rc) & (np.abs(dx) <= rc * (dy + r) / (2 * r - rc))
        return disc | cone
    if obj.shape == "squircle":  # a superellipse of exponent 4: between a circle and a square
        return (dx / r) ** 4 + (dy / r) ** 4 <= 1
    if obj.shape == "oval":  # an ellipse of aspect 1.35
        return (dx / r) ** 2 + (dy * 1.35 / r) ** 2 <= 1
    if obj.shape in ("lumpy_circle", "lumpy_square"):  # an outline that wobbles by 8% of the radius, 5 times round
        wobble = 1 + LUMPINESS * np.sin(5 * np.arctan2(dy, dx))
        radius = np.hypot(dx, dy) if obj.shape == "lumpy_circle" else np.maximum(np.abs(dx), np.abs(dy))
        return radius <= r * wobble
    if obj.shape in ("pentagon", "hexagon"):  # regular, vertex up, circumradius r
        n = 5 if obj.shape == "pentagon" else 6
        normals = [np.pi / 2 + (2 * k + 1) * np.pi / n for k in range(n)]
        return np.all([np.cos(a) * dx + np.sin(a) * dy <= r * np.cos(np.pi / n) for a in normals], axis=0)
    raise ValueError(f"unknown shape {obj.shape!r}; known shapes: {', '.join(SHAPES)}.")


def render(scene: Scene) -> np.ndarray:
    """Rasterises a scene.

    Returns:
        Float32 image in ``[0, 1]`` of shape ``(3, canvas, canvas)``.
    """
    n, s = scene.canvas, SUPERSAMPLE
    coords = (np.arange(n * s, dtype=np.float32) + 0.5) / s
    xs, ys = np.meshgrid(coords, coords)
    img = np.zeros((n * s, n * s, 3), dtype=np.float32)
    for obj in scene.objects:
        img[_mask(obj, xs, ys)] = COLORS.get(obj.color) or NUISANCE_COLORS[obj.color]
    return img.reshape(n, s, n, s, 3).mean(axis=(1, 3)).transpose(2, 0, 1).copy()


def _size_range(num_objects: int) -> tuple[float, float]:
    return {1: (12.0, 18.0), 2: (10.0, 14.0)}.get(num_objects, (8.0, 11.0))


def _overlaps(box: tuple[float, ...], others: Sequence[tuple[float, ...]]) -> bool:
    return any(
        box[0] < o[2] + MIN_GAP and o[0] < box[2] + MIN_GAP and box[1] < o[3] + MIN_GAP and o[1] < box[3] + MIN_GAP
        for o in others
    )


def place(
    items: Sequence[tuple[str, str]], rng: np.random.Generator, relation: str | None = None, canvas: int = CANVAS
) -> Scene:
    """Places objects ``[(shape, colour), ...]`` at random without overlap.

    With ``relation`` (two items), the first object is put clearly ``relation`` the second: at least 8 px
    apart along the relation's axis and at most 3 px off it.
    """
    lo, hi = _size_range(len(items))
    for _attempt in range(500):
        sizes = rng.uniform(lo, hi, size=len(items))
        if relation is not None:
            centres = _related_centres(sizes, relation, rng, canvas)
        else:
            centres = [tuple(rng.uniform(sz / 2, canvas - sz / 2, size=2)) for sz in sizes]
        objs = [
            Obj(s, c, float(x), float(y), float(sz)) for (s, c), (x, y), sz in zip(items, centres, sizes, strict=True)
        ]
        boxes: list[tuple[float, ...]] = []
        ok = True
        for o in objs:
            b = o.bbox()
            if b[0] < 0 or b[1] < 0 or b[2] > canvas or b[3] > canvas or _overlaps(b, boxes):
                ok = False
                break
            boxes.append(b)
        if ok:
            return Scene(tuple(objs), canvas)
        if _attempt % 100 == 99:  # crowded: shrink the size range
            lo, hi = lo * 0.9, hi * 0.9
    raise RuntimeError(f"could not place {len(items)} objects without overlap on a {canvas}px canvas.")


def _related_centres(
    sizes: np.ndarray, relation: str, rng: np.random.Generator, canvas: int
) -> list[tuple[float, float]]:
    if relation not in RELATIONS:
        raise ValueError(f"unknown relation {relation!r}; known: {', '.join(RELATIONS)}.")
    sa, sb = sizes
    gap = rng.uniform(max(8.0, (sa + sb) / 2 + MIN_GAP), canvas - (sa + sb) / 2)
    along_a = rng.uniform(sa / 2, canvas - sb / 2 - gap) if canvas - sb / 2 - gap > sa / 2 else sa / 2
    along_b = along_a + gap
    across = rng.uniform(max(sa, sb) / 2, canvas - max(sa, sb) / 2)
    across_b = float(np.clip(across + rng.uniform(-3, 3), sb / 2, canvas - sb / 2))
    if relation in ("right of", "below"):  # the first object is the later one along the axis
        along_a, along_b = along_b, along_a
    if relation in ("left of", "right of"):
        return [(along_a, across), (along_b, across_b)]
    return [(across, along_a), (across_b, along_b)]


def scene_for(metadata: dict, rng: np.random.Generator, canvas: int = CANVAS) -> Scene:
    """Draws a scene that satisfies GenEval-style prompt metadata (see :mod:`leapalign.worlds.shapes.prompts`).

    Each ``include`` entry contributes ``count`` objects of its ``class``, in its ``color`` or, without one, in a
    colour drawn at random (shared by the entry's objects). A ``position: [relation, index]`` entry is placed
    ``relation`` the entry at ``index``.
    """
    items: list[tuple[str, str]] = []
    relation = None
    for entry in metadata["include"]:
        color = entry.get("color") or str(rng.choice(list(COLORS)))
        items.extend([(entry["class"], color)] * int(entry["count"]))
        if entry.get("position"):
            relation = entry["position"][0]
    if relation is not None:  # metadata lists the reference object first; place() wants the related one first
        items = [items[1], items[0]]
    order = rng.permutation(len(items)) if relation is None else np.arange(len(items))
    return place([items[i] for i in order], rng, relation, canvas)
