"""Flow math against closed forms and diffusers' scheduler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from leapalign.flow import (
    Rollout,
    euler_step,
    flux_mu,
    flux_sigmas,
    hinge_loss,
    interpolate,
    leap,
    leap_distance,
    predict_x0,
    sample,
    sample_leap_steps,
    scale_grad,
    sd3_sigmas,
    similarity_weight,
    straight_through,
    velocity_target,
)


def test_interpolate_and_predict_x0_round_trip_float64() -> None:
    x0, eps = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.37, 1.0], dtype=torch.float64)
    x_sigma = interpolate(x0, eps, sigma)
    assert torch.allclose(x_sigma[0], x0[0]) and torch.allclose(x_sigma[2], eps[2])
    v = velocity_target(x0, eps)
    for i in range(3):
        assert torch.allclose(predict_x0(x_sigma[i], v[i], sigma[i]), x0[i], atol=1e-12)


def test_constant_velocity_leap_equals_multistep_rollout() -> None:
    a = torch.randn(2, 4, dtype=torch.float64)
    noise = torch.randn(2, 4, dtype=torch.float64)
    sigmas = flux_sigmas(13, 1024).double()
    ro = sample(lambda x, s: a.expand_as(x), noise, sigmas)
    assert torch.allclose(ro.latent, noise - a, atol=1e-12)  # x_0 = x_1 - a
    assert torch.allclose(leap(noise, a, 1.0, 0.0), ro.latent, atol=1e-12)
    # a leap between any two schedule points equals the Euler steps in between
    assert torch.allclose(leap(ro.latents[2], a, sigmas[2], sigmas[9]), ro.latents[9], atol=1e-12)


def test_linear_velocity_field_matches_euler_product() -> None:
    """v(x) = c x: each Euler step multiplies by (1 + c (sigma' - sigma)); the ODE solution is e^{-c}."""
    c, noise = 0.7, torch.randn(4, dtype=torch.float64)
    sigmas = torch.linspace(1, 0, 201, dtype=torch.float64)
    ro = sample(lambda x, s: c * x, noise, sigmas)
    factor = torch.prod(1 + c * (sigmas[1:] - sigmas[:-1]))
    assert torch.allclose(ro.latent, noise * factor, atol=1e-12)
    assert torch.allclose(ro.latent, noise * math.exp(-c), rtol=2e-3)


def test_euler_step_matches_diffusers_scheduler_step() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(10)
    x, v = torch.randn(2, 16, 8, 8), torch.randn(2, 16, 8, 8)
    ours = euler_step(x, v, sched.sigmas[3], sched.sigmas[4])
    sched._step_index = 3
    theirs = sched.step(v, sched.timesteps[3], x, return_dict=False)[0]
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize(("steps", "tokens"), [(25, 2025), (8, 64), (50, 4096)])
def test_flux_sigmas_match_diffusers(steps: int, tokens: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=flux_mu(tokens))
    assert torch.allclose(flux_sigmas(steps, tokens), sched.sigmas.float(), atol=1e-6)


def test_flux_sigmas_paper_values() -> None:
    """method.md: 720x720 (2025 tokens), 25 steps: mu = 0.7994, second sigma .9816, last non-zero .0848."""
    assert flux_mu(2025) == pytest.approx(0.7994, abs=1e-4)
    s = flux_sigmas(25, 2025)
    assert s[1].item() == pytest.approx(0.9816, abs=1e-4) and s[-2].item() == pytest.approx(0.0848, abs=1e-4)
    assert s[0] == 1 and s[-1] == 0 and torch.all(s[1:] < s[:-1])


@pytest.mark.parametrize("steps", [10, 28])
def test_sd3_sigmas_match_diffusers(steps: int) -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    assert torch.allclose(sd3_sigmas(steps, 3.0), sched.sigmas.float(), atol=1e-6)


def test_scale_grad_identity_forward_scaled_backward() -> None:
    for factor in (0.0, 0.3, 1.0):
        x = torch.randn(5, requires_grad=True)
        y = scale_grad(x, factor)
        assert torch.equal(y, x)
        if factor == 0.0:
            assert y.grad_fn is None and not y.requires_grad  # exactly detach
            continue
        (y * 2).sum().backward()
        assert torch.allclose(x.grad, torch.full((5,), 2 * factor))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        scale_grad(torch.ones(1), 1.5)


def test_straight_through_value_and_gradient() -> None:
    pred = torch.randn(3, requires_grad=True)
    actual = torch.randn(3)
    y = straight_through(pred, actual)
    assert torch.allclose(y, actual)
    (3 * y).sum().backward()
    assert torch.allclose(pred.grad, torch.full((3,), 3.0))


def test_similarity_weight_and_distance() -> None:
    x = torch.randn(4, 3, 2, 2)
    d_on_path = leap_distance(x, x.clone())
    assert d_on_path.dtype == torch.float64 and torch.all(d_on_path == 0)
    tau = 0.1
    assert torch.allclose(
        similarity_weight([d_on_path, d_on_path], tau), torch.full((4,), 1 / (2 * tau), dtype=torch.float64)
    )
    far = leap_distance(x, x + 2.0)  # mean |gap| = 2
    assert torch.allclose(similarity_weight([far, d_on_path], tau), torch.full((4,), 1 / 2.1, dtype=torch.float64))
    with pytest.raises(ValueError, match="tau"):
        similarity_weight([far], 0.0)


def test_hinge_loss() -> None:
    r = torch.tensor([0.2, 0.55, 0.9])
    assert torch.allclose(hinge_loss(r, 0.55), torch.tensor([0.35, 0.0, 0.0]))


def test_rollout_grad_step_keeps_trajectory_values() -> None:
    w = torch.nn.Parameter(torch.tensor(0.5))
    noise, sigmas = torch.randn(2, 3), flux_sigmas(6, 256)
    plain = sample(lambda x, s: w * x + s, noise, sigmas)
    ro = Rollout(lambda x, s: w * x + s, noise, sigmas)
    ro.run_to(2)
    v = ro.grad_step(ro.latent)
    ro.run_to(4)
    v2 = ro.grad_step(ro.latent * 1.0, use_checkpoint=True)
    ro.run_to(6)
    assert v.requires_grad and v2.requires_grad and ro.grad_steps == [2, 4]
    for a, b in zip(ro.latents, plain.latents, strict=True):
        assert torch.equal(a, b) and not a.requires_grad
    with pytest.raises(ValueError, match="finished"):
        ro.grad_step(ro.latent)
    with pytest.raises(ValueError, match="cannot run"):
        ro.run_to(3)


def test_sample_leap_steps_uniform_over_full_range() -> None:
    sigmas = flux_sigmas(25, 2025)
    gen = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(2000):
        k, j = sample_leap_steps(sigmas, 2, gen)
        assert 0 <= k < j <= 24
        seen.update((k, j))
    assert seen == set(range(25))  # every step, the first (sigma = 1) and the last non-zero one included


def test_sample_leap_steps_late_range_and_fixed_gap() -> None:
    sigmas = flux_sigmas(25, 2025)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        k, j = sample_leap_steps(sigmas, 2, gen, step_range="late")
        assert sigmas[k] <= 0.5 and sigmas[j] <= 0.5
        k, j = sample_leap_steps(sigmas, 2, gen, step_range="early")
        assert sigmas[k] > 0.5 and sigmas[j] > 0.5
        k, j = sample_leap_steps(sigmas, 2, gen, fixed_gap=0.5)
        assert abs(float(sigmas[k] - sigmas[j]) - 0.5) < 0.05
    assert len(sample_leap_steps(sigmas, 3, gen)) == 3
    with pytest.raises(ValueError, match="eligible"):
        sample_leap_steps(flux_sigmas(2, 64), 3, gen)
    with pytest.raises(ValueError, match="step_range"):
        sample_leap_steps(sigmas, 2, gen, step_range="middle")
