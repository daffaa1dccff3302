"""Each method's gradient reaches exactly the steps its recipe names, and nowhere else.

A probe model multiplies the velocity at step i by (1 + p_i) with p = 0: the gradient of p_i is non-zero
exactly when step i's velocity is on the gradient path.
"""

from __future__ import annotations

import pytest
import torch
from conftest import ToyFlowModel, make_batch
from torch import Tensor

from leapalign.methods import METHODS, build_method, check_differentiable, is_policy_gradient
from leapalign.models.base import Conditioning
from leapalign.rewards.synthetic import PngCompressibility

T = 12


class SquareReward:
    name, differentiable = "square", True

    def __call__(self, images: Tensor, prompts) -> Tensor:
        return (images**2).mean(dim=(1, 2, 3))


class ProbeModel(ToyFlowModel):
    def __init__(self, sigmas: Tensor) -> None:
        super().__init__()
        self.schedule = sigmas
        self.probes = torch.nn.Parameter(torch.zeros(len(sigmas) - 1))
        self.log: list[tuple[int, bool, bool]] = []  # (step, grad enabled, model input requires grad)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        i = int(torch.argmin((self.schedule - sigma).abs()))
        self.log.append((i, torch.is_grad_enabled(), x.requires_grad))
        return super().velocity(x, sigma, cond) * (1 + self.probes[i])


def run(name: str, seed: int = 0, **options):
    model = ProbeModel(ToyFlowModel().sigmas(T, 8, 8))
    cfg = METHODS[name][0](**{"threshold": None, **options})
    batch = make_batch(model, ["a", "bb"], num_steps=T, seed=seed)
    out = build_method(cfg).step(model, batch, SquareReward())
    (g,) = torch.autograd.grad(out.loss, [model.probes])
    reached = {i for i in range(T) if g[i].abs() > 0}
    return reached, out, model


def test_leapalign_reaches_k_and_j_including_early_steps() -> None:
    early = False
    for seed in range(12):
        reached, out, model = run("leapalign", seed=seed)
        k, j = int(out.metrics["k"]), int(out.metrics["j"])
        assert reached == {k, j}
        early |= k < T // 3
        grad_calls = [i for i, grad, _ in model.log if grad]
        assert sorted(grad_calls) == [k, j]  # the two grad forwards replace rollout forwards: no extra calls
        assert len(model.log) == T
    assert early  # some draws put k among the earliest steps


def test_refl_reaches_only_one_late_step_and_stops_there() -> None:
    for seed in range(6):
        reached, out, model = run("refl", seed=seed, late_steps=4)
        m = int(out.metrics["k"])
        assert reached == {m} and m >= T - 4
        assert len(model.log) == m + 1  # the rollout stops at the trained step


def test_draft_k_reaches_the_last_k_steps() -> None:
    reached, _, _ = run("draft-k", k=3)
    assert reached == {T - 3, T - 2, T - 1}


def test_draft_lv_reaches_the_last_step_with_copies() -> None:
    reached, out, model = run("draft-lv", num_copies=2)
    assert reached == {T - 1}
    assert len(model.log) == T + 1  # one extra forward for the re-noised copies (batched)
    assert "reward_copies_mean" in out.metrics


def test_alignprop_reaches_exactly_its_truncation_window() -> None:
    windows = set()
    for seed in range(8):
        reached, out, _ = run("alignprop", seed=seed, min_grad_steps=2, max_grad_steps=6)
        first = int(out.metrics["k"])
        assert reached == set(range(first, T)) and 2 <= T - first <= 6
        windows.add(T - first)
    assert len(windows) > 1  # the window length is random


def test_drtune_stops_gradients_at_every_model_input() -> None:
    for seed in range(6):
        reached, out, model = run("drtune", seed=seed, num_train_steps=2, early_stop_steps=4)
        stop = int(out.metrics["early_stop"])
        assert stop >= T - 4 and len(reached) == 2 and max(reached) <= stop
        assert all(not input_grad for _, _, input_grad in model.log)  # sg(x) at every model input
        a, b = sorted(reached)
        assert b - a == (stop + 1) // 2  # evenly spaced


@pytest.mark.parametrize("name", list(METHODS))
def test_direct_gradient_methods_refuse_a_non_differentiable_reward(name: str) -> None:
    method = build_method(METHODS[name][0]())
    if is_policy_gradient(method):  # the policy-gradient family needs no reward gradient
        check_differentiable(method, PngCompressibility())
        return
    with pytest.raises(ValueError, match="not differentiable"):
        check_differentiable(method, PngCompressibility())
