"""The contrastive ShapesScore: near-miss prompts and the probability reward built on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leapalign.worlds.shapes.evaluator import check
from leapalign.worlds.shapes.prompts import load_metadata
from leapalign.worlds.shapes.scenes import render, scene_for
from leapalign.worlds.shapes.score_train import scene_detections
from research.shapesworld.contrast import NEAR_MISS_KINDS, metadata_of, near_misses, parse_kinds
from research.shapesworld.score_variants import ResearchShapesScore


def test_near_misses_are_distinct_valid_prompts_that_a_true_scene_fails() -> None:
    rng = np.random.default_rng(0)
    shipped = {m["prompt"] for m in load_metadata("train")}
    for meta in load_metadata("train")[::7]:
        misses = near_misses(meta["prompt"], 8)
        assert misses and len(set(misses)) == len(misses) and meta["prompt"] not in misses
        dets = scene_detections(scene_for(meta, rng))
        assert check(meta, dets)
        for miss in misses:  # a render of the prompt never satisfies a near miss that is a shipped prompt
            if miss in shipped:
                assert not check(metadata_of(miss), dets), (meta["prompt"], miss)


def test_two_object_prompts_get_collapse_negatives_first() -> None:
    assert near_misses("a photo of a circle and a square", 2) == (
        "a photo of a circle and a circle",
        "a photo of a square and a square",
    )
    misses = near_misses("a photo of a red circle and a cyan triangle", 4)
    assert "a photo of a red circle and a red triangle" in misses
    assert near_misses("a photo of a circle and a square", 3, seed=0) == near_misses(
        "a photo of a circle and a square", 3, seed=0
    )


def test_unknown_prompt_names_the_fix() -> None:
    with pytest.raises(KeyError, match="negatives=0"):
        metadata_of("a cat on a mat")


def test_contrastive_score_is_a_probability_that_prefers_the_true_scene() -> None:
    prompt = "a photo of a circle and a square"
    meta = metadata_of(prompt)
    rng = np.random.default_rng(1)
    right = torch.stack([torch.from_numpy(render(scene_for(meta, rng))) for _ in range(8)])
    wrong_meta = metadata_of("a photo of two circles")
    wrong = torch.stack([torch.from_numpy(render(scene_for(wrong_meta, rng))) for _ in range(8)])
    reward = ResearchShapesScore(negatives=8)
    images = torch.cat([right, wrong]).requires_grad_(True)
    scores = reward(images, [prompt] * 16)
    assert scores.shape == (16,) and (scores > 0).all() and (scores < 1).all()
    assert scores[:8].mean() > scores[8:].mean() + 0.3  # two circles are a near miss of "a circle and a square"
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="negatives"):
        ResearchShapesScore(negatives=-1)


def test_near_miss_kinds_keep_only_the_chosen_edits() -> None:
    kinds = parse_kinds("color,count")
    assert kinds == ("color", "count") and parse_kinds(None) == NEAR_MISS_KINDS
    binding = "a photo of a red circle and a cyan triangle"
    misses = near_misses(binding, 8, kinds=kinds)
    assert misses and all(m.count("circle") == 1 and m.count("triangle") == 1 for m in misses)  # shapes kept
    assert all(m.split()[-1] == "triangle" and m != binding for m in misses)
    counts = near_misses("a photo of one circle", 8, kinds=kinds)
    assert set(counts) == {"a photo of two circles", "a photo of three circles", "a photo of four circles"}
    assert near_misses("a photo of a circle and a square", 8, kinds=kinds) == ()  # no colour, no number
    assert near_misses("a photo of a circle and a square", 2, kinds=("collapse",)) == near_misses(
        "a photo of a circle and a square", 2
    )
    with pytest.raises(ValueError, match="near_miss_kinds=color,count"):
        parse_kinds("colour")


def test_a_prompt_without_near_misses_scores_one_and_gives_no_gradient() -> None:
    reward = ResearchShapesScore(negatives=8, near_miss_kinds=["color", "count"])
    assert reward.name == "shapes_score_contrast8_color_count"
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = reward(images, ["a photo of a circle and a square", "a photo of a blue circle"])
    assert scores[0].item() == pytest.approx(1.0) and 0 < scores[1].item() < 1
    scores[0].backward()
    assert images.grad is None or images.grad.abs().sum() == 0
