"""LeapAlign's gradient equals the Eq. 8/10 decomposition, computed independently with explicit VJPs."""

from __future__ import annotations

import pytest
import torch
from conftest import ToyFlowModel, make_batch
from torch import Tensor

from leapalign.flow import flux_sigmas, sample, sample_leap_steps
from leapalign.methods import LeapAlign
from leapalign.methods.leapalign import LeapAlignConfig
from leapalign.models.base import Conditioning


class SquareReward:
    name, differentiable = "square", True

    def __call__(self, images: Tensor, prompts) -> Tensor:
        return (images**2).mean(dim=(1, 2, 3))


def _steps_of(batch) -> tuple[int, int]:
    state = batch.step_generator.get_state()
    k, j = sample_leap_steps(batch.sigmas, 2, batch.step_generator)
    batch.step_generator.set_state(state)
    return k, j


def _grads(model, loss: Tensor) -> list[Tensor]:
    return list(torch.autograd.grad(loss, model.trainable_parameters(), allow_unused=False))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gradient_equals_eq10_decomposition(alpha: float) -> None:
    model, reward = ToyFlowModel(), SquareReward()
    batch = make_batch(model, ["a red cat", "blue"], num_steps=10, seed=3)
    k, j = _steps_of(batch)
    cfg = LeapAlignConfig(alpha=alpha, threshold=None, weighting="none")
    out = LeapAlign(cfg).step(model, batch, reward)
    got = _grads(model, out.loss)

    # Independent computation from the no-grad rollout latents.
    ro = sample(lambda x, s: model.velocity(x, s, batch.cond), batch.noise, batch.sigmas)
    x_k, x_j, x_0 = ro.latents[k], ro.latents[j], ro.latents[-1]
    s_k, s_j = batch.sigmas[k], batch.sigmas[j]
    x0_leaf = x_0.clone().requires_grad_(True)
    loss_of_x0 = -reward(model.decode(x0_leaf, 8, 8), batch.prompts).mean()
    a = torch.autograd.grad(loss_of_x0, x0_leaf)[0]  # dL/dx_0
    v = lambda x, s: model.velocity(x, s, batch.cond)  # noqa: E731
    g_j = _grads(model, (-s_j * v(x_j, s_j) * a).sum())  # single-step term at j
    g_k = _grads(model, ((s_j - s_k) * v(x_k, s_k) * a).sum())  # single-step term at k (through connectors)
    x_j_leaf = x_j.clone().requires_grad_(True)
    b = torch.autograd.grad((-s_j * v(x_j_leaf, s_j) * a).sum(), x_j_leaf)[0]  # a^T d(-s_j v_j)/dx_j
    g_nested = _grads(model, ((s_j - s_k) * v(x_k, s_k) * b).sum())
    for g, gj, gk, gn in zip(got, g_j, g_k, g_nested, strict=True):
        assert torch.allclose(g, gj + gk + alpha * gn, atol=1e-6, rtol=1e-4)
    assert any(gn.abs().max() > 1e-6 for gn in g_nested)  # the nested term is not trivially zero


class LinearModel(ToyFlowModel):
    """v_theta(x) = theta * x with a scalar theta; decode is the identity."""

    def __init__(self) -> None:
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.8, dtype=torch.float64))

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return self.theta * x

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        return latents

    def trainable_parameters(self):
        return [self.theta]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_closed_form_on_linear_field(alpha: float) -> None:
    """method.md 2.4: d x_0/d theta = -s_j x_j - (s_k - s_j) x_k + alpha s_j (s_k - s_j) theta x_k."""
    model = LinearModel()
    batch = make_batch(model, ["p", "q"], num_steps=7, seed=1)
    batch.noise, batch.sigmas = batch.noise.double(), flux_sigmas(7, 64).double()
    k, j = _steps_of(batch)

    class SumReward:
        name, differentiable = "sum", True

        def __call__(self, images, prompts):
            return images.sum(dim=(1, 2, 3))

    out = LeapAlign(LeapAlignConfig(alpha=alpha, threshold=None, weighting="none")).step(model, batch, SumReward())
    (got,) = _grads(model, out.loss)
    ro = sample(lambda x, s: model.theta.detach() * x, batch.noise, batch.sigmas)
    x_k, x_j = ro.latents[k], ro.latents[j]
    s_k, s_j, th = batch.sigmas[k], batch.sigmas[j], model.theta.detach()
    dx0 = -s_j * x_j - (s_k - s_j) * x_k + alpha * s_j * (s_k - s_j) * th * x_k
    expected = -dx0.sum() / batch.noise.shape[0]  # loss = -mean_b sum(x_0)
    assert torch.allclose(got, expected, atol=1e-10)


def test_connected_latents_equal_rollout_values_and_weighting() -> None:
    model = ToyFlowModel()
    seen = {}

    class Recorder(SquareReward):
        def __call__(self, images, prompts):
            seen["images"] = images.detach()
            return super().__call__(images, prompts)

    batch = make_batch(model, ["a", "b"], num_steps=9, seed=5)
    out = LeapAlign(LeapAlignConfig(threshold=10.0)).step(model, batch, Recorder())
    ro = sample(lambda x, s: model.velocity(x, s, batch.cond), batch.noise, batch.sigmas)
    # the reward sees the real final image (equal up to the rounding of x_hat + (x - x_hat))
    assert torch.allclose(seen["images"], model.decode(ro.latent, 8, 8), atol=1e-6, rtol=0)
    # loss = mean(w * hinge) with w = 1 / (max(d_j, tau) + max(d_0, tau)) in (0, 1 / (2 tau)]
    assert 0 < out.metrics["w_sim"] <= 5.0
    hinge = (10.0 - out.rewards).mean().item()
    assert out.loss.item() == pytest.approx(out.metrics["w_sim"] * hinge, rel=1e-4)
    assert out.metrics["k"] < out.metrics["j"] and out.metrics["sigma_k"] > out.metrics["sigma_j"]


@pytest.mark.parametrize(
    "options",
    [
        {"num_leaps": 1},
        {"num_leaps": 3},
        {"reward_on": "x0_hat"},
        {"weighting": "d_0"},
        {"weighting": "d_j"},
        {"step_range": "late"},
        {"fixed_gap": 0.5},
    ],
)
def test_ablation_options_run_and_give_gradients(options: dict) -> None:
    model = ToyFlowModel()
    batch = make_batch(model, ["a", "b"], num_steps=12, seed=2)
    out = LeapAlign(LeapAlignConfig(threshold=None, **options)).step(model, batch, SquareReward())
    grads = _grads(model, out.loss)
    assert torch.isfinite(out.loss) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("alpha", 1.5, "alpha"),
        ("alpha", -0.1, "alpha"),
        ("tau", 0.0, "tau"),
        ("num_leaps", 4, "num_leaps"),
        ("weighting", "d_x", "weighting"),
        ("step_range", "middle", "step_range"),
        ("fixed_gap", 1.5, "fixed_gap"),
    ],
)
def test_config_rejects_bad_values(field: str, value, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LeapAlignConfig(**{field: value})
