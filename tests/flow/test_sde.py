"""The stochastic steps of the policy-gradient family: Euler at noise level 0, the right marginals on a Gaussian
data distribution with its exact velocity field, the analytic log-density, and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from leapalign.flow import (
    SDE_SCHEDULES,
    flux_sigmas,
    gaussian_log_prob,
    sample,
    sample_sde,
    sde_step,
    step_log_prob,
    transition,
)

M, S = 0.7, 0.5  # data distribution N(M, S^2) in every dimension


def gaussian_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact rectified-flow velocity E[eps - x0 | x_sigma = x] of x0 ~ N(M, S^2), eps ~ N(0, 1)."""
    a = 1.0 - sigma
    var = a**2 * S**2 + sigma**2
    return (sigma - a * S**2) / var * (x - a * M) - M


def model_velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """A nonlinear stand-in for a network: used where only the algebra matters."""
    return torch.tanh(x) * (1 + sigma) - 0.3 * x


@pytest.mark.parametrize("schedule", ["flow-grpo", "dance-grpo"])
def test_noise_level_zero_is_the_euler_sampler_bit_for_bit(schedule: str) -> None:
    noise = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    sigmas = flux_sigmas(8, 256)
    ode = sample(model_velocity, noise, sigmas)
    sde = sample_sde(model_velocity, noise, sigmas, range(8), schedule, 0.0, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(ode.latents, sde.latents, strict=True))
    assert sde.steps == []  # deterministic steps have no log-probability to record


def test_cps_at_level_zero_is_the_euler_step_up_to_rounding() -> None:
    x, v = torch.randn(4, 6), torch.randn(4, 6)
    mean, std = transition(x, v, torch.tensor(0.6), torch.tensor(0.45), "cps", 0.0)
    assert torch.allclose(mean, x + (0.45 - 0.6) * v, atol=1e-6) and float(std.max()) == 0.0


@pytest.mark.parametrize(("schedule", "level"), [("flow-grpo", 0.7), ("dance-grpo", 0.3)])
def test_sde_marginals_match_the_ode_on_gaussian_data(schedule: str, level: float) -> None:
    n = 40_000
    noise = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigmas = torch.linspace(1.0, 0.0, 101, dtype=torch.float64)
    ode = sample(gaussian_velocity, noise, sigmas).latent
    sde = sample_sde(gaussian_velocity, noise, sigmas, range(100), schedule, level, torch.Generator().manual_seed(2))
    final = sde.final
    se_mean = S / math.sqrt(n)  # Monte-Carlo standard errors of the mean and of the variance
    se_var = S**2 * math.sqrt(2 / n)
    assert abs(ode.mean().item() - M) < 4 * se_mean and abs(ode.var().item() - S**2) < 4 * se_var
    assert abs(final.mean().item() - M) < 4 * se_mean + 0.01, final.mean().item()
    assert abs(final.var().item() - S**2) < 4 * se_var + 0.01, final.var().item()
    assert len(sde.steps) == 100


def test_cps_preserves_the_coefficients_of_the_true_data_and_noise() -> None:
    """Given the true x0 and noise (v = eps - x0), a CPS step lands on (1 - sigma') x0 + sigma' eps' with eps'
    standard normal. With a posterior-mean velocity it does not keep the marginals at finite steps (it omits the
    posterior variance of x0): on N(0.7, 0.5^2) data, 2 CPS steps at level 0.3 in 10 give variance 0.185."""
    n, s, s_next = 100_000, 0.6, 0.45
    gen = torch.Generator().manual_seed(0)
    x0, eps = M + S * torch.randn(n, 1, generator=gen), torch.randn(n, 1, generator=gen)
    x = (1 - s) * x0 + s * eps
    nxt, _, std, log_prob = sde_step(x, eps - x0, s, s_next, "cps", 0.8, torch.Generator().manual_seed(1))
    eps_next = (nxt - (1 - s_next) * x0) / s_next
    assert abs(eps_next.mean().item()) < 0.02 and abs(eps_next.var().item() - 1) < 0.02
    assert torch.allclose(std.flatten(), torch.tensor(s_next * math.sin(0.8 * math.pi / 2)))
    assert log_prob is not None and torch.isfinite(log_prob).all()
    traj = sample_sde(model_velocity, torch.randn(2, 3), torch.linspace(1, 0, 5), range(4), "cps", 0.5)
    assert [st.index for st in traj.steps] == [0, 1, 2]  # the last step (sigma' = 0) is deterministic


def test_log_prob_is_the_analytic_gaussian_density_averaged_over_dimensions() -> None:
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    v = model_velocity(x, torch.tensor(0.8))
    nxt, mean, std, log_prob = sde_step(x, v, 0.8, 0.7, "flow-grpo", 0.7, torch.Generator().manual_seed(1))
    expected = torch.distributions.Normal(mean, std.expand_as(mean)).log_prob(nxt).flatten(1).mean(1)
    assert log_prob.shape == (5,) and torch.allclose(log_prob, expected, atol=1e-6)
    g = 0.7 * math.sqrt(0.8 / 0.2)
    assert torch.allclose(std.flatten(), torch.tensor(g * math.sqrt(0.1)), atol=1e-7)
    # at sigma = 1 the flow-grpo coefficient uses 1 - sigma' (the reference's guard against dividing by 0)
    _, std1 = transition(x, v, torch.tensor(1.0), torch.tensor(0.9), "flow-grpo", 0.7)
    assert torch.allclose(std1.flatten(), torch.tensor(0.7 * math.sqrt(1 / 0.1) * math.sqrt(0.1)), atol=1e-6)


def test_recorded_steps_replay_their_log_prob_and_carry_gradients() -> None:
    net = torch.nn.Linear(6, 6)
    torch.nn.init.eye_(net.weight)

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return net(x) * sigma

    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    sigmas = torch.linspace(1, 0, 6)
    traj = sample_sde(velocity, noise, sigmas, [1, 2, 3], "flow-grpo", 0.7, torch.Generator().manual_seed(3))
    assert [s.index for s in traj.steps] == [1, 2, 3]
    for step in traj.steps:
        v = velocity(step.latent, sigmas[step.index])
        log_prob, _ = step_log_prob(v, step, sigmas[step.index], sigmas[step.index + 1], "flow-grpo", 0.7)
        assert torch.allclose(log_prob, step.log_prob, atol=1e-6)  # the ratio is 1 for the sampling policy
        log_prob.sum().backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0
    # steps outside the window are Euler steps
    assert torch.equal(traj.latents[1], noise + (sigmas[1] - sigmas[0]) * velocity(noise, sigmas[0]).detach())


def test_bad_input_names_the_allowed_values() -> None:
    noise, sigmas = torch.randn(2, 3), torch.linspace(1, 0, 5)
    with pytest.raises(ValueError, match="allowed: " + ", ".join(SDE_SCHEDULES)):
        sample_sde(model_velocity, noise, sigmas, [0], "ddim", 0.5)
    with pytest.raises(ValueError, match=r"cps noise level must lie in \[0, 1\]"):
        sample_sde(model_velocity, noise, sigmas, [0], "cps", 1.5)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\)"):
        sample_sde(model_velocity, noise, sigmas, [4], "flow-grpo", 0.7)
    with pytest.raises(ValueError, match="std is 0"):
        gaussian_log_prob(noise, noise, torch.zeros(1))
