"""ShapesEval on scenes drawn by code that shares nothing with the world's renderer (PIL polygons at random
rotations, ``research/shapesworld/pil_shapes.py``): circles, squares and triangles of several proportions at any
rotation and scale are named (>= 0.99), and other shapes (other polygons, elongated shapes, hybrids of two shapes,
concave shapes, rings, blobs) are ``unknown`` (<= 2% accepted as any class, per kind). The shape invariants do not
move under rotation, scale and blur."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # research/ is a folder of tools at the repository root, not an installed package

from leapalign.worlds.shapes import moments  # noqa: E402
from leapalign.worlds.shapes.evaluator import detect_batch  # noqa: E402
from research.shapesworld.pil_shapes import INVALID, VALID, Drawn, draw_scene, random_scene  # noqa: E402

NUM = 200  # objects per kind
MIN_ACCURACY, MAX_ACCEPTANCE = 0.99, 0.02


def single_objects(kind: str, seed: int) -> tuple[np.ndarray, list[list[Drawn]]]:
    rng = np.random.default_rng(seed)
    scenes = [random_scene([kind], rng) for _ in range(NUM)]
    return np.stack([draw_scene(s, seed=i) for i, s in enumerate(scenes)]), scenes


@pytest.mark.parametrize("kind", list(VALID))
def test_valid_shapes_are_named_at_any_rotation_and_scale(kind: str) -> None:
    images, scenes = single_objects(kind, seed=sum(map(ord, kind)))
    found = detect_batch(images)
    right = [
        len(d) == 1 and d[0].shape == VALID[kind] and d[0].color == s[0].color
        for d, s in zip(found, scenes, strict=True)
    ]
    assert np.mean(right) >= MIN_ACCURACY, Counter(tuple(x.shape for x in d) for d in found)


@pytest.mark.parametrize("kind", INVALID)
def test_other_shapes_are_unknown(kind: str) -> None:
    images, _ = single_objects(kind, seed=sum(map(ord, kind)) + 1)
    accepted = [any(x.shape != "unknown" for x in d) for d in detect_batch(images)]
    assert np.mean(accepted) <= MAX_ACCEPTANCE, Counter(x.shape for d in detect_batch(images) for x in d)


def test_scenes_of_several_objects_are_read_object_by_object() -> None:
    rng = np.random.default_rng(7)
    kinds = list(VALID)
    scenes = [random_scene([kinds[i] for i in rng.integers(0, len(kinds), size=3)], rng, (8, 12)) for _ in range(NUM)]
    found = detect_batch(np.stack([draw_scene(s, seed=i) for i, s in enumerate(scenes)]))
    right = [
        Counter((x.shape, x.color) for x in d) == Counter((VALID[o.kind], o.color) for o in s)
        for d, s in zip(found, scenes, strict=True)
    ]
    assert np.mean(right) >= MIN_ACCURACY


def test_invariants_do_not_move_with_rotation_scale_and_blur() -> None:
    """The same triangle at 4 angles, 3 sizes, sharp or blurred by 0.7 px: every invariant within its tolerance's
    half of the exact triangle's."""
    exact = None
    for size in (10.0, 14.0, 18.0):
        for angle in (0.0, 0.5, 1.9, 4.0):
            image = draw_scene([Drawn("isosceles", "blue", 16.0, 16.0, size, angle)])[None]
            for blur in (0.0, 0.7):
                x = ndimage.gaussian_filter(image, sigma=(0, 0, blur, blur)) if blur else image
                (det,) = detect_batch(x)[0]
                values = np.array([det.invariants[n] for n in moments.NAMES])
                exact = values if exact is None else exact
                tol = np.array([moments.TOLERANCE["triangle"][n][0] for n in moments.NAMES])
                assert det.shape == "triangle" and np.all(np.abs(values - exact) <= tol / 2), (size, angle, blur)


def test_templates_are_the_exact_shapes() -> None:
    t = moments.templates()
    assert t["circle"][0][moments.NAMES.index("r4")] == pytest.approx(1000 / (6 * np.pi**2), rel=1e-3)
    assert t["square"][0][moments.NAMES.index("a4")] == pytest.approx(1000 / 60, rel=1e-3)  # |k40| = s^4/60
    assert len(t["triangle"]) > 100 and np.all(t["triangle"][:, moments.NAMES.index("a3")] > 60)
