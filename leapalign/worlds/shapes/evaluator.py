"""ShapesEval: the exact GenEval analogue for ShapesWorld images (an evaluation metric, never a training reward).

:func:`detect` finds the coloured objects of an image, :func:`check` scores one image against GenEval-style
prompt metadata, and :func:`evaluate` reports per-image correctness, per-category accuracy and the overall
score (the mean over the categories present, as GenEval does).

Detection, for a ``(3, H, W)`` image in ``[0, 1]`` on a black background:

1. Each pixel gets the nearest of the six :data:`~leapalign.worlds.shapes.scenes.COLORS` by direction in RGB and a
   *coverage*, its projection on that colour (1 inside an object, fractional on anti-aliased edges). Pixels
   with coverage >= 0.5 and some chroma are foreground, so a mask approximates its shape's true outline.
2. Foreground is split into 8-connected components; stray pixels of a minority colour inside a component are
   given the component's main colour, and components per colour (``scipy.ndimage.label``) become objects.
   Components under :data:`MIN_AREA` pixels are dropped.
3. Each object is read on its own territory (the pixels within :data:`GROW` px nearer to it than to any other
   object): its coverage minus the background, smoothed by :data:`SMOOTH` px and less the background's noise
   level, gives six shape invariants (:mod:`~leapalign.worlds.shapes.moments`), unchanged by rotation, scale and
   an isotropic blur. The shape is the class with a template (the exact circle, square, or a triangle with all
   angles >= 25 degrees) within its calibrated tolerance of every invariant, else ``unknown``.
4. A component whose colour is mixed (pure noise makes one image-wide component), that barely stands out, or
   that lies on a background that is not black is ``unknown`` too (it matches no class).

``python -m research.shapesworld.evaluator_figures`` (from a checkout of the repository) measures the accuracy on
ground-truth renders of the held-out prompts and on independently drawn scenes of every kind of shape, clean,
blurred and noisy, and the acceptance of mismatched prompts and of pure noise
(``research/shapesworld/results/shapes_eval_figures.json``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from leapalign.worlds.shapes import moments
from leapalign.worlds.shapes.prompts import CATEGORIES
from leapalign.worlds.shapes.scenes import COLORS

logger = logging.getLogger(__name__)

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
_SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "unknown")  # indices returned by _classify
COVERAGE_THRESHOLD = 0.5  # foreground: at least half a pixel covered
MIN_CHROMA = 0.25  # max - min channel; rejects grey/white pixels
MIN_AREA = 12  # pixels; smaller components are dropped (an 8 px triangle covers ~32 px, ~20 when blurred)
SECOND_COLOR_FRACTION = 0.25  # a second colour in a component is a separate object from this share on
POSITION_MIN_OFFSET = 2.0  # pixels between centroids along a relation's axis
# Moments (leapalign.worlds.shapes.moments) are taken over the object grown by GROW pixels, on its coverage minus
# the background, smoothed by a Gaussian of SMOOTH px (a blur leaves the invariants unchanged, and it averages
# pixel noise), less NOISE_SHRINK times the smoothed background's standard deviation (what remains of the noise
# counts as zero; a clean image is not shrunk, and keeps its invariants exactly).
SMOOTH = 0.8
NOISE_SHRINK = 3.0
GROW = 6
FAR = 5  # pixels off every object from which a pixel is background (its level and noise)
# Plausibility: a component that fails either is detected with shape "unknown", matching no class.
MIN_PURITY = 0.8  # share of its pixels whose own nearest colour is its colour [>= 0.93; noise fields ~0.25]
MIN_CONTRAST = 0.5  # its mean coverage minus that of the ring 2 px outside it [>= 0.63; faint blobs < 0.5]
# Background check: off its objects a scene is black; if it is not, every component is "unknown".
BACKGROUND_LEVEL = 0.4  # a pixel whose brightest channel exceeds this is not black
MAX_BRIGHT_BACKGROUND = 0.25  # share of such pixels 2 px or more off plausible objects [<= 0.01; noise ~0.9]

_PROTOS = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)  # (6, 3)
_SQNORM = (_PROTOS**2).sum(axis=1)  # (6,)
_NORM = np.sqrt(_SQNORM)
_PLANES = np.zeros((3, 3, 3), dtype=bool)
_PLANES[1] = True  # 8-connectivity within an image, none across the batch axis
_CHUNK = 512  # images per vectorised detection pass


@dataclass
class Detection:
    """One detected object.

    Attributes:
        shape: ``circle``, ``square``, ``triangle``, or ``unknown`` for a component that is not an object.
        color: One of :data:`~leapalign.worlds.shapes.scenes.COLORS`.
        cx: Centroid x in pixels, in the renderer's continuous coordinates (pixel ``i`` spans ``[i, i + 1]``).
        cy: Centroid y in pixels (downwards).
        area: Number of foreground pixels.
        bbox: Pixel bounds ``(x0, y0, x1, y1)``, half-open: columns ``x0 .. x1 - 1``, rows ``y0 .. y1 - 1``.
        invariants: The shape invariants it was classified by (:mod:`~leapalign.worlds.shapes.moments`), with
            its ``purity`` and ``contrast``: why a shape was named as it was.
    """

    shape: str
    color: str
    cx: float
    cy: float
    area: int
    bbox: tuple[int, int, int, int]
    invariants: dict[str, float] = field(default_factory=dict, repr=False, compare=False)


@dataclass
class ShapesEvalResult:
    """Scores of a batch of images.

    Attributes:
        correct: Per-image correctness, in input order.
        tags: Per-image category (the metadata's ``tag``).
        by_category: Accuracy per category present, in :data:`~leapalign.worlds.shapes.prompts.CATEGORIES` order.
        overall: Mean of ``by_category`` over the categories present (GenEval's overall score).
        detections: Per-image detections.
    """

    correct: list[bool]
    tags: list[str]
    by_category: dict[str, float]
    overall: float
    detections: list[list[Detection]]

    def to_dict(self) -> dict[str, float]:
        """``{"overall": ..., "<category>": ...}`` for logging."""
        return {"overall": self.overall, **self.by_category}


ImageBatch = torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]


def _to_numpy(image: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.detach().to(device="cpu", dtype=torch.float32).numpy()
    return np.asarray(image, dtype=np.float32)


def _as_batch(images: ImageBatch) -> np.ndarray:
    """Images as a float32 array of shape ``(N, 3, H, W)``; a single ``(3, H, W)`` image becomes ``N = 1``."""
    if isinstance(images, (torch.Tensor, np.ndarray)):
        batch = _to_numpy(images)
    else:
        items = [_to_numpy(im) for im in images]
        batch = np.stack(items) if items else np.zeros((0, 3, 1, 1), dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W) or (3, H, W), got {tuple(batch.shape)}.")
    return batch


def _segment(x: np.ndarray) -> tuple[np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """Splits images ``(N, 3, H, W)`` into objects.

    Returns:
        ``(objects, n, colors, coverage, nearest)``: object ids ``(N, H, W)`` (0 is background, ids ``1..n`` are
        unique across the batch), the number ``n`` of objects, each object's colour index ``(n + 1,)`` (entry 0
        unused), the per-colour coverage ``(N, 6, H, W)`` and each pixel's nearest colour ``(N, H, W)``.
    """
    coverage = np.einsum("nchw,kc->nkhw", x, _PROTOS) / _SQNORM[:, None, None]
    color = np.argmax(coverage * _NORM[:, None, None], axis=1)  # nearest colour by direction (cosine)
    cov = np.take_along_axis(coverage, color[:, None], axis=1)[:, 0]
    fg = (cov >= COVERAGE_THRESHOLD) & (x.max(axis=1) - x.min(axis=1) >= MIN_CHROMA)
    comp, ncomp = ndimage.label(fg, structure=_PLANES)
    if ncomp == 0:
        return np.zeros(fg.shape, dtype=np.int64), 0, np.zeros(1, dtype=np.int64), coverage, color

    # Colour clean-up inside each component: keep a colour if it is the main one or a sizable share.
    comp_fg, color_fg = comp[fg], color[fg]
    votes = np.bincount(comp_fg * 6 + color_fg, minlength=(ncomp + 1) * 6).reshape(ncomp + 1, 6)
    main = votes.argmax(axis=1)
    keep = votes >= np.maximum(MIN_AREA, SECOND_COLOR_FRACTION * votes.sum(axis=1, keepdims=True))
    keep[np.arange(ncomp + 1), main] = True
    cleaned = np.full(fg.shape, -1, dtype=np.int64)
    cleaned[fg] = np.where(keep[comp_fg, color_fg], color_fg, main[comp_fg])

    # Connected components per colour, small ones dropped.
    objects = np.zeros(fg.shape, dtype=np.int64)
    colors = [0]
    for k in range(len(COLOR_NAMES)):
        lab, n = ndimage.label(cleaned == k, structure=_PLANES)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel(), minlength=n + 1)
        big = areas >= MIN_AREA
        big[0] = False
        ids = np.zeros(n + 1, dtype=np.int64)
        ids[big] = np.arange(len(colors), len(colors) + int(big.sum()))
        objects = np.where(big[lab], ids[lab], objects)
        colors.extend([k] * int(big.sum()))
    return objects, len(colors) - 1, np.asarray(colors, dtype=np.int64), coverage, color


def _features(objects: np.ndarray, n: int, colors: np.ndarray, coverage: np.ndarray, nearest: np.ndarray) -> dict:
    """Per-object features, each of shape ``(n + 1,)`` (entry 0 unused).

    Returns:
        The shape invariants of :func:`~leapalign.worlds.shapes.moments.invariants` and the centroid ``cx``,
        ``cy``, both from the object's smoothed coverage (see :data:`SMOOTH`); over its own pixels, its ``area``,
        ``purity`` and ``contrast`` (see :data:`MIN_PURITY`).
    """
    # Background level per image and colour (clipped noise has a positive mean), away from any object.
    inside = objects > 0
    far = ~ndimage.maximum_filter(inside, size=(1, 2 * FAR + 1, 2 * FAR + 1))
    count = np.maximum(far.sum(axis=(1, 2)), 1)[:, None]
    bg = (coverage * far[:, None]).sum(axis=(2, 3)) / count  # (N, 6)
    # The smoothed noise's standard deviation off the objects, per image and colour (a robust estimate: 1.4826
    # median absolute deviations; 0 for a clean image).
    smooth_all = ndimage.gaussian_filter(coverage, sigma=(0, 0, SMOOTH, SMOOTH))
    off = np.where(far[:, None], smooth_all - bg[:, :, None, None], np.nan).reshape(*bg.shape, -1)
    with warnings.catch_warnings():  # an image with no background pixel has no noise estimate: 0
        warnings.simplefilter("ignore", RuntimeWarning)
        noise = np.nan_to_num(1.4826 * np.nanmedian(np.abs(off), axis=-1), nan=0.0)
    noise = np.minimum(noise, 0.15)

    def pixels(mask_ids: np.ndarray) -> tuple[np.ndarray, ...]:
        img, yy, xx = np.nonzero(mask_ids)
        ids = mask_ids[img, yy, xx]
        return ids, coverage[img, colors[ids], yy, xx].astype(np.float64), nearest[img, yy, xx]

    def total(ids: np.ndarray, values: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(ids, weights=values, minlength=n + 1)

    ids, cov, near = pixels(objects)
    area = np.maximum(total(ids), 1)
    purity = total(ids, near == colors[ids]) / area
    ring = ndimage.grey_dilation(objects, footprint=np.ones((1, 5, 5), dtype=bool))
    ring[ndimage.maximum_filter(inside, size=(1, 3, 3))] = 0
    ids_r, cov_r = pixels(ring)[:2]
    contrast = total(ids, cov) / area - total(ids_r, cov_r) / np.maximum(total(ids_r), 1)

    # Moments of each object's own coverage (minus the background) on its territory, the pixels within GROW px
    # that are nearer to it than to any other object; smoothed, that coverage spreads past the territory and is
    # read wherever it spreads, so neither a neighbour's pixels nor the smoothing's tails change the invariants. The
    # canvas is padded first, so that an object at the border keeps its tails too.
    reach = int(np.ceil(3 * SMOOTH))
    margin = GROW + reach
    pad = ((0, 0), (margin, margin), (margin, margin))
    padded = np.pad(objects, pad)
    dist, (ii, jj, kk) = ndimage.distance_transform_edt(padded == 0, sampling=(1e6, 1, 1), return_indices=True)
    region = np.where(dist <= GROW, padded[ii, jj, kk], 0)
    level = np.pad(coverage - bg[:, :, None, None], ((0, 0), (0, 0), *pad[1:]))
    parts: list[tuple[np.ndarray, ...]] = []
    for i, sl in enumerate(ndimage.find_objects(region), start=1):
        if sl is None:
            continue
        k = sl[0].start
        ys, xs = slice(sl[1].start - reach, sl[1].stop + reach), slice(sl[2].start - reach, sl[2].stop + reach)
        own = np.where(region[k, ys, xs] == i, level[k, colors[i], ys, xs], 0.0)
        if SMOOTH:
            own = ndimage.gaussian_filter(own, SMOOTH, mode="constant")
        shrink = NOISE_SHRINK * noise[k, colors[i]]
        w = np.clip((own - shrink) / (1 - 2 * shrink), 0.0, 1.0)
        yy, xx = np.nonzero(w)
        parts.append((np.full(len(yy), i), w[yy, xx], xx + xs.start - margin + 0.5, yy + ys.start - margin + 0.5))
    ids, wt, x, y = (np.concatenate(p) for p in zip(*parts, strict=True)) if parts else (np.zeros(0),) * 4
    ids = ids.astype(np.int64)
    mass = np.maximum(total(ids, wt), 1e-6)
    cx, cy = total(ids, wt * x) / mass, total(ids, wt * y) / mass
    f = moments.invariants(ids, wt.astype(np.float64), x - cx[ids], y - cy[ids], n)
    return f | {"cx": cx, "cy": cy, "area": area, "purity": purity, "contrast": contrast}


def _classify(f: dict[str, np.ndarray]) -> np.ndarray:
    """Shape index into ``("circle", "square", "triangle", "unknown")`` from :func:`_features`: the class whose
    region (:data:`~leapalign.worlds.shapes.moments.REGIONS`) holds the object's invariants, unknown where none
    does or the object is implausible."""
    plausible = (f["purity"] >= MIN_PURITY) & (f["contrast"] >= MIN_CONTRAST)
    return np.where(plausible, moments.classify(f), 3)


def detect_batch(images: ImageBatch) -> list[list[Detection]]:
    """Detects the objects of a batch of images.

    Args:
        images: Tensor or array ``(N, 3, H, W)`` (or one ``(3, H, W)`` image), or a list of ``(3, H, W)``
            images; values in ``[0, 1]``.

    Returns:
        Per image, its detections sorted by decreasing area.
    """
    x = _as_batch(images)
    out: list[list[Detection]] = []
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start : start + _CHUNK]
        objects, n, colors, coverage, nearest = _segment(chunk)
        per_image: list[list[Detection]] = [[] for _ in range(chunk.shape[0])]
        if n:
            slices = ndimage.find_objects(objects)
            f = _features(objects, n, colors, coverage, nearest)
            shape = _classify(f)
            near = ndimage.maximum_filter((shape < 3)[objects] & (objects > 0), size=(1, 5, 5))
            bright = ((chunk.max(axis=1) > BACKGROUND_LEVEL) & ~near).sum(axis=(1, 2))
            noisy = bright > MAX_BRIGHT_BACKGROUND * np.maximum((~near).sum(axis=(1, 2)), 1)
            for i, sl in enumerate(slices, start=1):
                if sl is not None:
                    name = _SHAPE_NAMES[3 if noisy[sl[0].start] else shape[i]]
                    bbox = (sl[2].start, sl[1].start, sl[2].stop, sl[1].stop)
                    why = {k: float(f[k][i]) for k in (*moments.NAMES, "purity", "contrast")}
                    found = Detection(
                        name, COLOR_NAMES[colors[i]], float(f["cx"][i]), float(f["cy"][i]), int(f["area"][i]), bbox, why
                    )
                    per_image[sl[0].start].append(found)
        out.extend(sorted(d, key=lambda det: -det.area) for d in per_image)
    return out


def detect(image: torch.Tensor | np.ndarray) -> list[Detection]:
    """Detects the objects of one image.

    Args:
        image: Tensor or array of shape ``(3, H, W)``, values in ``[0, 1]``.

    Returns:
        Detections sorted by decreasing area (the largest object first).
    """
    x = _as_batch(image)
    if x.shape[0] != 1:
        raise ValueError(f"detect takes one (3, H, W) image, got {x.shape[0]}; use detect_batch.")
    return detect_batch(x)[0]


def relation_holds(a: Detection, b: Detection, relation: str) -> bool:
    """Whether ``a`` is ``relation`` ``b``: the centroid offset along the relation's axis points the right way,
    exceeds :data:`POSITION_MIN_OFFSET` and is larger than the offset across it."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    along, across = {
        "left of": (-dx, dy),
        "right of": (dx, dy),
        "above": (-dy, dx),
        "below": (dy, dx),
    }[relation]
    return along > POSITION_MIN_OFFSET and along > abs(across)


def _matches(entry: dict, det: Detection) -> bool:
    return det.shape == entry["class"] and (not entry.get("color") or det.color == entry["color"])


def check(metadata: dict, detections: Sequence[Detection]) -> bool:
    """Whether detections satisfy GenEval-style prompt metadata.

    Every ``include`` entry needs at least ``count`` detections of its ``class`` (and ``color`` when given);
    its group is the ``count`` largest of them. An entry with ``position: [relation, i]`` further needs every
    object of its group to be ``relation`` every object of include entry ``i``'s group
    (:func:`relation_holds`). Every ``exclude`` entry needs fewer than ``count`` detections of its class (and
    colour when given).

    Args:
        metadata: Prompt metadata with ``include`` and optionally ``exclude``.
        detections: Detections of one image (as from :func:`detect`).

    Returns:
        True when the image is correct for the prompt.
    """
    groups: list[list[Detection]] = []
    ok = True
    for entry in metadata.get("include", []):
        found = sorted((d for d in detections if _matches(entry, d)), key=lambda d: -d.area)
        count = int(entry.get("count", 1))
        if len(found) < count:
            ok = False
        group = found[:count]
        position = entry.get("position")
        if ok and position:
            relation, target = position[0], int(position[1])
            if target >= len(groups) or not groups[target]:
                ok = False
            else:
                ok = all(relation_holds(a, b, relation) for a in group for b in groups[target])
        groups.append(group)
        if not ok:
            return False
    return all(
        sum(_matches(entry, d) for d in detections) < int(entry["count"]) for entry in metadata.get("exclude", [])
    )


def _summarise(correct: Sequence[bool], tags: Sequence[str]) -> tuple[dict[str, float], float]:
    hits: dict[str, list[bool]] = {}
    for ok, tag in zip(correct, tags, strict=True):
        hits.setdefault(tag, []).append(bool(ok))
    order = [c for c in CATEGORIES if c in hits] + sorted(t for t in hits if t not in CATEGORIES)
    by_category = {t: float(np.mean(hits[t])) for t in order}
    overall = float(np.mean(list(by_category.values()))) if by_category else float("nan")
    return by_category, overall


def evaluate(images: ImageBatch, metadata: Sequence[dict]) -> ShapesEvalResult:
    """Scores generated images against their prompts' metadata.

    Args:
        images: Tensor or array ``(N, 3, H, W)``, or a list of ``(3, H, W)`` images, values in ``[0, 1]``.
        metadata: ``N`` GenEval-style prompt metadata dicts (with ``tag``), one per image.

    Returns:
        Per-image correctness, accuracy per category and the overall score.
    """
    detections = detect_batch(images)
    if len(detections) != len(metadata):
        raise ValueError(f"got {len(detections)} images but {len(metadata)} metadata entries.")
    correct = [check(m, d) for m, d in zip(metadata, detections, strict=True)]
    tags = [str(m.get("tag", "untagged")) for m in metadata]
    by_category, overall = _summarise(correct, tags)
    logger.debug("ShapesEval on %d images: overall %.4f %s", len(correct), overall, by_category)
    return ShapesEvalResult(correct, tags, by_category, overall, detections)
