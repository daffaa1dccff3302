"""The ShapesEval figures (``research/shapesworld/results/shapes_eval_figures.json``): accuracy on ground-truth renders
(clean, blurred, noisy), rejection of mismatched prompts and of pure-noise images, and the noise generators."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from leapalign.worlds.shapes.evaluator import ShapesEvalResult, evaluate
from leapalign.worlds.shapes.negatives import KINDS
from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
from research.shapesworld.evaluator_figures import NOISE_KINDS, RESULTS, measure, noise_images

MIN_ACCURACY = {"clean": 0.99, "blur": 0.97, "noise": 0.95}  # noise std 0.03: six times the base model's
MAX_ACCEPTANCE = {"clean": 0.02, "blur": 0.03, "noise": 0.03}
MAX_GARBAGE_ACCEPTANCE, MAX_GARBAGE_CATEGORY_ACCEPTANCE = 0.02, 0.05  # pure noise, overall and per category


@pytest.fixture(scope="module")
def figures() -> dict:
    """``measure(8)``: 96 held-out prompts x 8 seeds = 768 ground-truth images, clean / blur 0.6 / noise 0.03, and
    200 pure-noise images per kind."""
    return measure(num_seeds=8)


@pytest.mark.parametrize("condition", ["clean", "blur", "noise"])
def test_ground_truth_accuracy(figures: dict, condition: str) -> None:
    assert figures["num_images"] == 768
    accuracy = figures[condition]["accuracy"]
    assert set(accuracy) == {"overall", *CATEGORIES}
    low = {cat: acc for cat, acc in accuracy.items() if acc < MIN_ACCURACY[condition]}
    assert not low, f"{condition}: per-category accuracy below {MIN_ACCURACY[condition]}: {low}"


@pytest.mark.parametrize("condition", ["clean", "blur", "noise"])
def test_mismatch_acceptance(figures: dict, condition: str) -> None:
    acceptance, counts = figures[condition]["mismatch_acceptance"], figures[condition]["mismatch_count"]
    assert set(acceptance) == set(KINDS)
    assert counts == {"color": 480, "count": 64, "relation": 128, "shape": 768}  # images where each kind applies
    high = {kind: rate for kind, rate in acceptance.items() if rate > MAX_ACCEPTANCE[condition]}
    assert not high, f"{condition}: mismatched prompts accepted more than {MAX_ACCEPTANCE[condition]}: {high}"


def _assert_rejects_noise(result: ShapesEvalResult, name: str) -> None:
    accepted = float(np.mean(result.correct))
    assert accepted <= MAX_GARBAGE_ACCEPTANCE, f"{name}: {accepted:.3f} of noise images accepted"
    high = {c: a for c, a in result.by_category.items() if a > MAX_GARBAGE_CATEGORY_ACCEPTANCE}
    assert not high, f"{name}: noise accepted above {MAX_GARBAGE_CATEGORY_ACCEPTANCE} in {high}"


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_garbage_acceptance(figures: dict, kind: str) -> None:
    acceptance = figures["garbage_acceptance"][kind]
    assert set(acceptance) == {"images", "overall", *CATEGORIES}
    assert acceptance["images"] <= MAX_GARBAGE_ACCEPTANCE and acceptance["overall"] <= MAX_GARBAGE_ACCEPTANCE
    high = {cat: rate for cat, rate in acceptance.items() if rate > MAX_GARBAGE_CATEGORY_ACCEPTANCE}
    assert not high, f"{kind} noise accepted above {MAX_GARBAGE_CATEGORY_ACCEPTANCE}: {high}"


def test_blob_noise_is_rejected() -> None:
    """200 images of faint blobs on noise against the held-out prompts, cycled (uniform and Gaussian noise: in
    ``tests/worlds/shapes/test_evaluator.py``)."""
    metadata = load_metadata("eval")
    metas = [metadata[i % len(metadata)] for i in range(200)]
    result = evaluate(torch.from_numpy(noise_images("blobs", 200, seed=1)), metas)
    _assert_rejects_noise(result, "blobs")
    dets = [d for ds in result.detections for d in ds]
    assert dets and all(d.shape == "unknown" for d in dets if d.area > 200)  # image-wide noise stays visible
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise_images("speckle", 1)


@pytest.mark.parametrize("condition", ["clean", "blur", "noise"])
def test_independent_scenes(figures: dict, condition: str) -> None:
    """PIL-drawn scenes: every valid kind named (>= 0.99 clean, >= 0.98 blurred or noisy), every other kind of
    shape accepted at most 2% (clean: the issue's target; also blurred and noisy), scenes of three small objects."""
    row = figures["independent"][condition]
    low_bar = 0.99 if condition == "clean" else 0.98
    assert min(row["valid"].values()) >= low_bar, row["valid"]
    assert max(row["invalid"].values()) <= 0.02, row["invalid"]
    assert row["scenes_of_three"] >= (0.99 if condition == "clean" else 0.9)


def test_the_published_figures_are_reproduced(figures: dict) -> None:
    published = json.loads((RESULTS / "shapes_eval_figures.json").read_text())
    assert _flatten(figures).keys() == _flatten(published).keys()
    for key, value in _flatten(published).items():
        assert _flatten(figures)[key] == pytest.approx(value, abs=1e-9), key


def _flatten(tree: dict, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in tree.items():
        out |= _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
    return out
