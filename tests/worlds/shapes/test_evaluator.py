"""ShapesEval: accuracy on ground-truth renders (clean, blurred, noisy), rejection of mismatched prompts and of
pure noise, the detector on hand-made images and the GenEval semantics of ``check``. The published figures
(768 renders, three kinds of noise) are tested in ``research/tests/test_evaluator_figures.py``."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scipy import ndimage

from leapalign.worlds.shapes.evaluator import (
    Detection,
    check,
    detect,
    detect_batch,
    evaluate,
    relation_holds,
)
from leapalign.worlds.shapes.negatives import KINDS, mismatch
from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
from leapalign.worlds.shapes.scenes import Obj, Scene, render, scene_for

MIN_ACCURACY = {"clean": 0.99, "blur": 0.97, "noise": 0.97}
MAX_GARBAGE_ACCEPTANCE, MAX_GARBAGE_CATEGORY_ACCEPTANCE = 0.02, 0.05  # pure noise, overall and per category


def render_ground_truth(metadata: list[dict], num_seeds: int) -> tuple[np.ndarray, list[dict]]:
    """``num_seeds`` ground-truth renders per prompt, ``(num_seeds * len(metadata), 3, 32, 32)``, and their metadata."""
    rngs = [np.random.default_rng([s, i]) for s in range(num_seeds) for i in range(len(metadata))]
    images = [render(scene_for(metadata[k % len(metadata)], rng)) for k, rng in enumerate(rngs)]
    return np.stack(images), [m for _ in range(num_seeds) for m in metadata]


def gaussian_noise(images: np.ndarray, std: float, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise of ``std`` on ``(N, 3, H, W)`` images, clipped to ``[0, 1]``."""
    noise = np.random.default_rng(seed).normal(0.0, std, size=images.shape)
    return np.clip(images + noise, 0.0, 1.0).astype(np.float32)


@pytest.mark.parametrize("condition", ["clean", "blur", "noise"])
def test_ground_truth_accuracy(condition: str) -> None:
    """Two renders of every held-out prompt, clean, blurred (sigma 0.6 px) or noisy (std 0.03: the evaluator's
    calibrated range, six times the base model's background noise)."""
    images, metas = render_ground_truth(load_metadata("eval"), 2)
    if condition == "blur":
        images = ndimage.gaussian_filter(images, sigma=(0, 0, 0.6, 0.6))
    elif condition == "noise":
        images = gaussian_noise(images, 0.03, seed=2)
    accuracy = evaluate(images, metas).to_dict()
    assert set(accuracy) == {"overall", *CATEGORIES}
    low = {cat: acc for cat, acc in accuracy.items() if acc < MIN_ACCURACY[condition]}
    assert not low, f"{condition}: per-category accuracy below {MIN_ACCURACY[condition]}: {low}"


@pytest.mark.parametrize("kind", ["uniform", "gaussian"])
def test_pure_noise_is_rejected(kind: str) -> None:
    """200 noise images (an untrained generator's outputs) against the held-out prompts, cycled."""
    metadata = load_metadata("eval")
    metas = [metadata[i % len(metadata)] for i in range(200)]
    torch.manual_seed(0)
    images = torch.rand(200, 3, 32, 32) if kind == "uniform" else (torch.randn(200, 3, 32, 32) * 0.5 + 0.5).clamp(0, 1)
    result = evaluate(images, metas)
    accepted = float(np.mean(result.correct))
    assert accepted <= MAX_GARBAGE_ACCEPTANCE, f"{kind}: {accepted:.3f} of noise images accepted"
    high = {c: a for c, a in result.by_category.items() if a > MAX_GARBAGE_CATEGORY_ACCEPTANCE}
    assert not high, f"{kind}: noise accepted above {MAX_GARBAGE_CATEGORY_ACCEPTANCE} in {high}"
    dets = [d for ds in result.detections for d in ds]
    assert dets and all(d.shape == "unknown" for d in dets if d.area > 200)  # image-wide noise stays visible


def test_heavy_noise_scene_has_few_spurious_objects() -> None:
    metadata = load_metadata("eval")[::6]  # 16 held-out prompts, every category
    scenes = [scene_for(m, np.random.default_rng(i)) for i, m in enumerate(metadata)]
    noisy = gaussian_noise(np.stack([render(s) for s in scenes]), 0.3, seed=0)
    spurious = []
    for scene, dets in zip(scenes, detect_batch(noisy), strict=True):
        real = scene.objects
        spurious.append(
            sum(
                d.shape != "unknown"
                and not any(
                    (d.shape, d.color) == (o.shape, o.color) and abs(d.cx - o.cx) < 3 and abs(d.cy - o.cy) < 3
                    for o in real
                )
                for d in dets
            )
        )
    print("spurious objects per heavy-noise scene", spurious)
    assert max(spurious) <= 2 and sum(spurious) <= 4


def test_objects_among_noise_and_faint_blobs() -> None:
    """A real object next to a faint blob and on mild speckle is found; the blob is detected as ``unknown``."""
    image = render(Scene((Obj("circle", "red", 9, 9, 10), Obj("square", "blue", 22, 22, 9))))
    yy, xx = np.mgrid[:32, :32] + 0.5
    image[1] += 0.6 * np.exp(-((xx - 24) ** 2 + (yy - 8) ** 2) / (2 * 3.0**2))  # faint green blob, peak cover 0.66
    image = gaussian_noise(np.clip(image, 0, 1)[None], 0.05, seed=3)[0]
    dets = detect(image)
    assert sorted((d.shape, d.color) for d in dets) == [("circle", "red"), ("square", "blue"), ("unknown", "green")]
    assert check({"include": [{"class": "circle", "count": 1, "color": "red"}]}, dets)
    assert not check({"include": [{"class": "circle", "count": 1, "color": "green"}]}, dets)
    assert not check({"include": [{"class": "circle", "count": 2}]}, dets)


def test_evaluate_inputs() -> None:
    metadata = load_metadata("eval")
    images, metas = render_ground_truth(metadata, 3)  # 288 images
    result = evaluate(torch.from_numpy(images), metas)
    assert len(result.correct) == len(metas) and all(result.correct)
    as_list = evaluate(list(images[:10]), metas[:10])
    assert as_list.correct == result.correct[:10]
    assert as_list.to_dict() == {"overall": 1.0, **{t: 1.0 for t in as_list.by_category}}


def test_overall_is_mean_over_present_categories() -> None:
    circle = render(Scene((Obj("circle", "red", 16, 16, 14),)))
    metas = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}]},
        {"tag": "single_object", "include": [{"class": "square", "count": 1}]},
        {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]},
    ]
    result = evaluate(np.stack([circle] * 3), metas)
    assert result.correct == [True, False, True]
    assert result.by_category == {"single_object": 0.5, "colors": 1.0}
    assert result.overall == pytest.approx(0.75)
    assert result.to_dict() == {"overall": 0.75, "single_object": 0.5, "colors": 1.0}


# --- detector on hand-made images ------------------------------------------------------------------------------


def test_empty_image_detects_nothing() -> None:
    assert detect(np.zeros((3, 32, 32), dtype=np.float32)) == []
    assert detect(torch.zeros(3, 32, 32)) == []
    assert detect_batch(np.zeros((4, 3, 32, 32), dtype=np.float32)) == [[], [], [], []]


def test_single_red_circle() -> None:
    image = render(Scene((Obj("circle", "red", 12.3, 19.6, 12.0),)))
    for inp in (image, torch.from_numpy(image)):
        (det,) = detect(inp)
        assert (det.shape, det.color) == ("circle", "red")
        assert det.cx == pytest.approx(12.3, abs=0.1) and det.cy == pytest.approx(19.6, abs=0.1)
        assert det.area == pytest.approx(np.pi * 36, rel=0.1)
        assert det.bbox == (
            6,
            14,
            18,
            25,
        )  # half-open pixel bounds of the >= 50 %-covered pixels (x in [6.3, 18.3], y in [13.6, 25.6])


def test_every_shape_and_colour() -> None:
    objs = [
        Obj(s, c, 8 + 16 * (i % 2), 8 + 16 * (i // 2 % 2), 12)
        for i, (s, c) in enumerate(
            [("triangle", "yellow"), ("square", "green"), ("circle", "cyan"), ("triangle", "magenta")]
        )
    ]
    dets = detect(render(Scene(tuple(objs))))
    assert len(dets) == 4
    for o in objs:
        (d,) = [d for d in dets if abs(d.cx - o.cx) < 3 and abs(d.cy - o.cy) < 3]
        assert (d.shape, d.color) == (o.shape, o.color)
    blue_square = detect(render(Scene((Obj("square", "blue", 16, 16, 7),))))
    assert [(d.shape, d.color) for d in blue_square] == [("square", "blue")]


def test_grey_and_tiny_blobs_are_not_objects() -> None:
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[:, 4:12, 4:12] = 0.9  # white square: no hue
    image[0, 20:22, 20:22] = 1.0  # 4 red pixels: noise
    assert detect(image) == []


# --- check: GenEval semantics on hand-made detections ---------------------------------------------------------


def _det(shape: str, color: str, cx: float, cy: float, area: int = 100) -> Detection:
    return Detection(shape, color, cx, cy, area, (int(cx) - 5, int(cy) - 5, int(cx) + 5, int(cy) + 5))


def test_check_include_counts() -> None:
    meta = {"include": [{"class": "circle", "count": 2}]}
    assert not check(meta, [_det("circle", "red", 5, 5)])
    assert check(meta, [_det("circle", "red", 5, 5), _det("circle", "blue", 20, 20)])
    assert check(meta, [_det("circle", "red", 5, 5), _det("circle", "red", 20, 20), _det("circle", "red", 5, 25)])
    assert not check(meta, [_det("circle", "red", 5, 5), _det("square", "red", 20, 20)])
    two = {"include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]}
    assert check(two, [_det("square", "red", 5, 5), _det("circle", "red", 20, 20)])
    assert not check(two, [_det("circle", "red", 5, 5), _det("circle", "red", 20, 20)])


def test_check_exclude_means_exactly() -> None:
    meta = {"include": [{"class": "square", "count": 2}], "exclude": [{"class": "square", "count": 3}]}
    squares = [_det("square", "green", 5 + 9 * i, 5) for i in range(4)]
    assert not check(meta, squares[:1])
    assert check(meta, squares[:2])
    assert check(meta, squares[:2] + [_det("circle", "green", 5, 25)])  # other classes do not count
    assert not check(meta, squares[:3])
    assert not check(meta, squares)


def test_check_color() -> None:
    meta = {"include": [{"class": "triangle", "count": 1, "color": "blue"}]}
    assert check(meta, [_det("triangle", "blue", 10, 10)])
    assert not check(meta, [_det("triangle", "red", 10, 10)])
    assert not check(meta, [_det("square", "blue", 10, 10)])
    assert check(meta, [_det("triangle", "red", 10, 10), _det("triangle", "blue", 20, 20)])
    binding = {
        "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
    }
    assert check(binding, [_det("circle", "red", 5, 5), _det("square", "blue", 20, 20)])
    assert not check(binding, [_det("circle", "blue", 5, 5), _det("square", "red", 20, 20)])  # swapped colours


@pytest.mark.parametrize(
    ("relation", "offset"), [("left of", (-8, 1)), ("right of", (8, -1)), ("above", (1, -8)), ("below", (-1, 8))]
)
def test_check_position(relation: str, offset: tuple[float, float]) -> None:
    meta = {"include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": [relation, 0]}]}
    square = _det("square", "red", 16, 16)
    circle = _det("circle", "blue", 16 + offset[0], 16 + offset[1])
    assert check(meta, [square, circle])
    assert check(meta, [circle, square])  # detection order is irrelevant
    mirrored = _det("circle", "blue", 16 - offset[0], 16 - offset[1])
    assert not check(meta, [square, mirrored])
    for other in {"left of", "right of", "above", "below"} - {relation}:
        wrong = {**meta, "include": [meta["include"][0], {**meta["include"][1], "position": [other, 0]}]}
        assert not check(wrong, [square, circle])
    assert not check(meta, [circle])  # no reference object


def test_relation_thresholds() -> None:
    a = _det("circle", "red", 10, 10)
    assert relation_holds(a, _det("square", "red", 13, 10), "left of")
    assert not relation_holds(a, _det("square", "red", 11.5, 10), "left of")  # offset within 2 px
    assert not relation_holds(a, _det("square", "red", 15, 16), "left of")  # perpendicular offset dominates
    assert relation_holds(a, _det("square", "red", 15, 16), "above")


# --- mismatched prompts ---------------------------------------------------------------------------------------


def _prompt(tag: str, split: str = "eval") -> dict:
    return next(m for m in load_metadata(split) if m["tag"] == tag)


APPLICABLE = {
    "color": ["colors", "color_attr"],
    "count": ["counting"],
    "relation": ["position"],
    "shape": list(CATEGORIES),
}


@pytest.mark.parametrize("kind", KINDS)
def test_mismatch_rejected_on_ground_truth(kind: str) -> None:
    for tag in CATEGORIES:
        for split in ("train", "eval"):
            for meta in [m for m in load_metadata(split) if m["tag"] == tag][:12]:
                negative = mismatch(meta, kind, random.Random(0))
                if tag not in APPLICABLE[kind]:
                    assert negative is None, (kind, meta["prompt"])
                    continue
                assert negative is not None, (kind, meta["prompt"])
                assert negative["prompt"] != meta["prompt"] and negative["tag"] == meta["tag"]
                for seed in range(3):
                    dets = detect(render(scene_for(meta, np.random.default_rng(seed))))
                    assert check(meta, dets), meta["prompt"]
                    assert not check(negative, dets), (meta["prompt"], negative["prompt"])


def test_mismatch_count_phrasing() -> None:
    meta = {
        "tag": "counting",
        "prompt": "a photo of three circles",
        "include": [{"class": "circle", "count": 3}],
        "exclude": [{"class": "circle", "count": 4}],
    }
    seen = {}
    for seed in range(40):
        neg = mismatch(meta, "count", random.Random(seed))
        seen[neg["include"][0]["count"]] = neg
        assert neg["exclude"] == [{"class": "circle", "count": neg["include"][0]["count"] + 1}]
    assert {n: m["prompt"] for n, m in sorted(seen.items())} == {
        1: "a photo of one circle",
        2: "a photo of two circles",
        4: "a photo of four circles",
    }
    assert meta["include"][0]["count"] == 3 and meta["exclude"][0]["count"] == 4  # input untouched


def test_mismatch_color_swap_and_replace() -> None:
    meta = {
        "tag": "color_attr",
        "prompt": "an image of a blue circle and a green square",
        "include": [
            {"class": "circle", "count": 1, "color": "blue"},
            {"class": "square", "count": 1, "color": "green"},
        ],
    }
    prompts = {mismatch(meta, "color", random.Random(seed))["prompt"] for seed in range(40)}
    assert "an image of a green circle and a blue square" in prompts  # the binding swap
    assert len(prompts) > 3  # and single recolourings with unused colours
    for p in prompts:
        assert p.startswith("an image of a ") and " and a " in p and p != meta["prompt"]


def test_mismatch_shape_and_relation_phrasing() -> None:
    counting = {
        "tag": "counting",
        "prompt": "two triangles",
        "include": [{"class": "triangle", "count": 2}],
        "exclude": [{"class": "triangle", "count": 3}],
    }
    neg = mismatch(counting, "shape", random.Random(0))
    assert neg["prompt"] in ("two circles", "two squares")
    assert neg["include"][0]["class"] == neg["exclude"][0]["class"] == neg["prompt"].split()[1][:-1]
    position = _prompt("position")
    neg = mismatch(position, "relation", random.Random(0))
    old, new = position["include"][1]["position"][0], neg["include"][1]["position"][0]
    assert old != new and neg["prompt"] == position["prompt"].replace(old, new)
    two = {
        "tag": "two_object",
        "prompt": "a circle and a square",
        "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
    }
    assert mismatch(two, "shape", random.Random(0))["prompt"] in ("a triangle and a square", "a circle and a triangle")
    with pytest.raises(ValueError, match="unknown mismatch kind"):
        mismatch(two, "size", random.Random(0))
