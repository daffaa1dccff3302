"""The layout reward's soft GenEval rules on exact perception maps (counts, colours, relations), its analytic colour
maps, the perception targets, and gradients reaching the image."""

from __future__ import annotations

import numpy as np
import torch

from leapalign.worlds.shapes.scenes import COLORS, Obj, Scene, render
from research.shapesworld.layout_reward import rule_scores
from research.shapesworld.layout_train import targets
from research.shapesworld.perception import CLASSES, ScenePerception, colour_maps


def exact_maps(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a perfect perception would say of ``scene``: one-hot classes, densities and the analytic colours."""
    cls, density = targets(scene)
    shapes = torch.nn.functional.one_hot(torch.from_numpy(cls), len(CLASSES)).permute(2, 0, 1).float()
    return shapes, torch.from_numpy(density), colour_maps(torch.from_numpy(render(scene))[None])[0]


def score(scene: Scene, meta: dict) -> list[float]:
    return rule_scores(*exact_maps(scene), meta).tolist()


def test_counts_colours_and_relations_score_as_the_rules_say() -> None:
    two = Scene((Obj("circle", "red", 8, 16, 10), Obj("square", "blue", 24, 16, 10)))
    left = {"include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}
    right = {"include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["right of", 0]}]}
    assert min(score(two, left)) > 0.95
    assert score(two, right)[-1] < 0.01 and min(score(two, right)[:2]) > 0.95  # objects there, relation wrong
    bound = {
        "include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]
    }
    swapped = {
        "include": [{"class": "circle", "count": 1, "color": "blue"}, {"class": "square", "count": 1, "color": "red"}]
    }
    assert min(score(two, bound)) > 0.95 and max(score(two, swapped)) < 0.1
    three = Scene(tuple(Obj("triangle", "green", x, 16, 8) for x in (5, 16, 27)))
    counts = [score(three, {"include": [{"class": "triangle", "count": n}]})[0] for n in (2, 3, 4)]
    assert counts[1] > 0.95 and counts[0] < 0.1 and counts[2] < 0.1


def test_colour_maps_gate_out_grey_and_follow_the_hue() -> None:
    image = torch.zeros(1, 3, 1, 4)
    image[0, :, 0, 0] = torch.tensor(COLORS["red"])
    image[0, :, 0, 1] = torch.tensor(COLORS["cyan"])
    image[0, :, 0, 2] = 0.6  # grey
    maps = colour_maps(image)[0, :, 0]
    names = list(COLORS)
    assert maps[names.index("red"), 0] > 0.95 and maps[names.index("cyan"), 1] > 0.95
    assert maps[:, 2].sum() < 0.01 and maps[:, 3].sum() < 0.01  # grey and black belong to no colour


def test_density_targets_count_each_object_once() -> None:
    scene = Scene((Obj("circle", "red", 8, 8, 9), Obj("circle", "blue", 24, 24, 9), Obj("square", "green", 24, 8, 9)))
    cls, density = targets(scene)
    assert np.allclose(density.sum(axis=(1, 2)), [2.0, 1.0, 0.0], atol=1e-5)
    assert cls[8, 8] == CLASSES.index("circle") and cls[8, 24] == CLASSES.index("square") and cls[0, 0] == 0
    hybrid = Scene((Obj("teardrop", "red", 16, 16, 12),))
    assert (targets(hybrid)[0] == CLASSES.index("other")).sum() > 20 and targets(hybrid)[1].sum() == 0


def test_the_reward_path_is_differentiable_in_the_image() -> None:
    torch.manual_seed(0)
    model = ScenePerception().eval()
    image = torch.from_numpy(render(Scene((Obj("circle", "red", 10, 16, 10),))))[None].requires_grad_(True)
    logits, density = model(image)
    meta = {"include": [{"class": "circle", "count": 1, "color": "red"}]}
    rule_scores(logits.softmax(1)[0], density[0], colour_maps(image)[0], meta).mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
