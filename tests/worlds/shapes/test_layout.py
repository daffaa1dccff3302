"""The layout reward (``shapes_layout``): its soft GenEval rules on exact perception maps (counts, colours,
relations), its analytic colour maps, the perception targets, gradients reaching the image, and the shipped
weights' ranking of true scenes above hard negatives."""

from __future__ import annotations

import pytest
import torch

from leapalign.rewards import build_reward_term
from leapalign.rewards.base import RewardTermConfig
from leapalign.worlds.shapes.layout import ShapesLayout, rule_scores
from leapalign.worlds.shapes.layout_train import NEGATIVE_KINDS, counts, ranking_accuracy, targets
from leapalign.worlds.shapes.perception import CLASSES, ScenePerception, colour_maps
from leapalign.worlds.shapes.scenes import COLORS, Obj, Scene, render


def exact_maps(scene: Scene) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What a perfect perception would say of ``scene``: one-hot classes, object areas and the analytic colours."""
    cls, area, _ = targets(scene)
    shapes = torch.nn.functional.one_hot(torch.from_numpy(cls), len(CLASSES)).permute(2, 0, 1).float()
    return shapes, torch.from_numpy(area), colour_maps(torch.from_numpy(render(scene))[None])[0]


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
    at_least = [score(three, {"include": [{"class": "triangle", "count": n}]})[0] for n in (2, 3, 4)]
    assert at_least[0] > 0.95 and at_least[1] > 0.95 and at_least[2] < 0.05  # GenEval: include is "at least"

    def exactly(n: int) -> float:  # a counting prompt's "exactly n": include n and exclude n + 1
        meta = {"include": [{"class": "triangle", "count": n}], "exclude": [{"class": "triangle", "count": n + 1}]}
        return min(score(three, meta))

    assert exactly(3) > 0.95 and exactly(2) < 0.05 and exactly(4) < 0.05


def test_colour_maps_gate_out_grey_and_follow_the_hue() -> None:
    image = torch.zeros(1, 3, 1, 4)
    image[0, :, 0, 0] = torch.tensor(COLORS["red"])
    image[0, :, 0, 1] = torch.tensor(COLORS["cyan"])
    image[0, :, 0, 2] = 0.6  # grey
    maps = colour_maps(image)[0, :, 0]
    names = list(COLORS)
    assert maps[names.index("red"), 0] > 0.95 and maps[names.index("cyan"), 1] > 0.95
    assert maps[:, 2].sum() < 0.01 and maps[:, 3].sum() < 0.01  # grey and black belong to no colour


def test_area_targets_count_each_object_once_whatever_its_size() -> None:
    scene = Scene((Obj("circle", "red", 8, 8, 6), Obj("circle", "blue", 22, 22, 14), Obj("square", "green", 24, 6, 9)))
    cls, area, number = targets(scene)
    assert number.tolist() == [2.0, 1.0, 0.0]
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(cls), len(CLASSES)).permute(2, 0, 1).float()[None]
    assert torch.allclose(counts(one_hot, torch.from_numpy(area)[None])[0], torch.tensor([2.0, 1.0, 0.0]))
    assert cls[8, 8] == CLASSES.index("circle") and cls[6, 24] == CLASSES.index("square") and cls[0, 31] == 0
    assert area[8, 8] < area[22, 22] and area[0, 31] == 0  # the small circle's pixels say it is small
    hybrid = Scene((Obj("teardrop", "red", 16, 16, 12),))
    assert (targets(hybrid)[0] == CLASSES.index("other")).sum() > 20 and targets(hybrid)[2].sum() == 0


def test_the_reward_path_is_differentiable_in_the_image() -> None:
    torch.manual_seed(0)
    model = ScenePerception().eval()
    image = torch.from_numpy(render(Scene((Obj("circle", "red", 10, 16, 10),))))[None].requires_grad_(True)
    logits, area = model(image)
    meta = {"include": [{"class": "circle", "count": 1, "color": "red"}]}
    rule_scores(logits.softmax(1)[0], area[0], colour_maps(image)[0], meta).mean().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0


def test_the_shipped_reward_ranks_true_scenes_above_every_kind_of_hard_negative() -> None:
    reward = build_reward_term(RewardTermConfig("shapes_layout"))
    assert reward.differentiable and reward.name == "shapes_layout"
    ranking = ranking_accuracy(reward, seeds=1, seed=7)  # fresh renders, not the card's
    for kind in NEGATIVE_KINDS:
        assert ranking[f"n_{kind}"] >= 8 and ranking[kind] >= 0.95, (kind, ranking)


def test_the_shipped_reward_passes_gradients_to_the_image_and_refuses_foreign_prompts() -> None:
    reward = ShapesLayout()
    image = torch.from_numpy(render(Scene((Obj("circle", "red", 10, 16, 10),))))[None].requires_grad_(True)
    score = reward(image, ["a photo of a red circle"])
    score.sum().backward()
    assert score.shape == (1,) and score.item() > 0.9 and image.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="reads ShapesWorld prompts only"):
        reward(image.detach(), ["a photo of a cat"])
    with pytest.raises(ValueError, match="sampler.height=sampler.width=32"):
        reward(torch.zeros(1, 3, 16, 16), ["a photo of a red circle"])


@pytest.mark.parametrize("method", ["leapalign", "drtune", "flow-grpo"])
def test_every_kind_of_method_trains_on_the_layout_reward(tmp_path, method: str) -> None:
    from leapalign.cli import main
    from leapalign.metrics import read_metrics

    run = tmp_path / method
    args = ["train", "--config", "shapes/leapalign", f"method={method}", f"run.output_dir={run}"]
    args += ["train.max_steps=1", "sampler.num_steps=4", "evaluation.enabled=false", "run.export=false"]
    args += ["run.tensorboard=false", "data.batch_size=4", "train.replay_weight=0"]
    if method == "flow-grpo":
        args += ["method.group_size=2"]
    assert main(args) == 0
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "reward_mean" in r]
    assert len(logged) == 1 and 0.0 <= logged[0]["reward_mean"] <= 1.0
