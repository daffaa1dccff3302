"""A reward that breaks the contract fails at its first call with a message naming it and what it returned; a
reward built with arguments its constructor does not take fails with one line naming the accepted arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from leapalign.data import load_prompt_set
from leapalign.eval.runner import SamplingSettings, run_evaluation
from leapalign.rewards import (
    RewardConfig,
    RewardContractError,
    RewardTermConfig,
    WeightedReward,
    build_reward,
    build_reward_term,
)

PROMPTS = ["a red circle", "a blue square"]


class Returns:
    """A reward that returns ``out(images)``."""

    def __init__(self, out, differentiable: bool = True) -> None:
        self.name, self.out, self.differentiable = "user_reward", out, differentiable

    def __call__(self, images, prompts):
        return self.out(images)


class NeedsScale:
    """A user reward with a required constructor argument."""

    name = "needs_scale"
    differentiable = True

    def __init__(self, scale: float, offset: float = 0.0) -> None:
        self.scale, self.offset = scale, offset

    def __call__(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * self.scale + self.offset


@pytest.mark.parametrize(
    ("out", "said"),
    [
        (lambda im: im.mean(dim=(1, 2, 3)).tolist(), r"returned a list \(\[0\.\d+"),
        (lambda im: im.detach().mean(dim=(1, 2, 3)).numpy(), r"returned a ndarray"),
        (lambda im: im.mean(dim=(2, 3)), r"returned shape \(2, 3\).*shape \(2,\)"),
        (lambda im: torch.ones(2, dtype=torch.long), r"returned a torch\.int64 tensor.*floating-point"),
        (lambda im: im.mean(dim=(1, 2, 3)) > 0.5, r"returned a torch\.bool tensor"),
        (
            lambda im: im.mean(dim=(1, 2, 3)).detach(),
            r"says differentiable=True but returned scores without a gradient",
        ),
        (lambda im: torch.from_numpy(np.asarray(im.detach().mean(dim=(1, 2, 3)))), r"says .* without a gradient"),
    ],
)
def test_a_reward_breaking_the_contract_fails_at_its_first_call(out, said: str) -> None:
    reward = WeightedReward([(Returns(out), 1.0)])
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    with pytest.raises(RewardContractError, match=rf"^reward 'user_reward' {said}") as err:
        reward(images, PROMPTS)
    assert "\n" not in str(err.value)


def test_what_the_contract_allows() -> None:
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    detached = Returns(lambda im: im.mean(dim=(1, 2, 3)).detach(), differentiable=False)
    assert WeightedReward([(detached, 1.0)])(images, PROMPTS).shape == (2,)  # not differentiable: no gradient due
    with torch.no_grad():  # the policy-gradient methods score without gradients
        WeightedReward([(Returns(lambda im: im.mean(dim=(1, 2, 3)).detach()), 1.0)])(images, PROMPTS)
    WeightedReward([(Returns(lambda im: im.mean(dim=(1, 2, 3)).detach()), 1.0)])(images.detach(), PROMPTS)
    # non-finite scores reach the trainer, which skips the step and counts it
    nan = WeightedReward([(Returns(lambda im: im.mean(dim=(1, 2, 3)) * float("nan")), 1.0)])(images, PROMPTS)
    assert torch.isnan(nan).all() and nan.requires_grad


def test_the_evaluation_checks_every_reward_too(toy_model, tmp_path: Path) -> None:
    bad = Returns(lambda im: im.mean(dim=(2, 3)))
    sampling = SamplingSettings(images_per_prompt=1, num_steps=1, height=8, width=8, batch_size=2)
    with pytest.raises(RewardContractError, match=r"reward 'user_reward' returned shape \(2, 3\)"):
        run_evaluation(toy_model, load_prompt_set("builtin:tiny", limit=2), [bad], sampling, [], tmp_path, {})


def test_unknown_or_missing_reward_arguments_name_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'chekpoint'") as err:
        build_reward_term(RewardTermConfig("hpsv2", args={"chekpoint": "/weights/HPS_v2.1_compressed.pt"}))
    message = str(err.value)
    assert message.startswith("reward 'hpsv2': ") and "\n" not in message
    assert "it accepts: checkpoint, version, tokenizer, dtype" in message
    assert '"reward.terms=[{name: hpsv2, args: {key: value}}]"' in message

    name = f"{__name__}:NeedsScale"
    with pytest.raises(ValueError, match=r"missing a required argument: 'scale'.*accepts: scale \(required\), offset"):
        build_reward_term(RewardTermConfig(name))
    cfg = RewardConfig(terms=[RewardTermConfig("brightness"), RewardTermConfig(name, args={"scal": 2})])
    with pytest.raises(ValueError, match=r"Set them with reward\.terms\.1\.args\.KEY=VALUE"):
        build_reward(cfg)
    with pytest.raises(ValueError, match=r"reward 'target_color': .*'colour'.*accepts: color"):
        build_reward_term(RewardTermConfig("target_color", args={"colour": "red"}))
    built = build_reward_term(RewardTermConfig(name, args={"scale": 2.0}))
    assert built.scale == 2.0
