r"""Stochastic steps for the policy-gradient family: the rectified-flow reverse SDE, one Gaussian step at a time.

In sigma notation (:mod:`leapalign.flow.conventions`, :math:`x_\sigma = (1-\sigma) x_0 + \sigma\varepsilon`), the
reverse-time SDE with the same marginals as the probability-flow ODE :math:`dx = v\,d\sigma` is

.. math::

    dx = \Big[v + \frac{g_\sigma^2}{2\sigma}\big(x + (1-\sigma) v\big)\Big] d\sigma + g_\sigma\, dw ,

since the score is :math:`\nabla \log p_\sigma(x) = -\big(x + (1-\sigma) v\big)/\sigma`. Its Euler-Maruyama step from
:math:`\sigma` to :math:`\sigma' < \sigma` (:math:`\Delta = \sigma' - \sigma < 0`) is the Gaussian transition

.. math::

    \mu = x + \Big[v + \frac{g_\sigma^2}{2\sigma}\big(x + (1-\sigma) v\big)\Big]\Delta, \qquad
    s = g_\sigma \sqrt{-\Delta}, \qquad x' = \mu + s\,\xi,\ \xi \sim \mathcal N(0, I).

Noise schedules :math:`g_\sigma` (``level`` is the schedule's one knob):

- ``flow-grpo`` (Liu et al. 2025, Eq. 7-9): :math:`g_\sigma = a\sqrt{\sigma/(1-\sigma)}`; at :math:`\sigma = 1` the
  reference divides by :math:`1 - \sigma'` instead of 0, and so does this module.
- ``dance-grpo`` (Xue et al. 2025): a constant :math:`g_\sigma = \eta`; their step, written with the score of
  :math:`\hat x_0 = x - \sigma v`, is algebraically the same transition.
- ``cps`` (coefficients-preserving sampling, arXiv 2509.05952): :math:`s = \sigma' \sin(a\pi/2)`,
  :math:`\mu = (1-\sigma')\hat x_0 + \sqrt{\sigma'^2 - s^2}\,\hat x_1` with :math:`\hat x_1 = x + (1-\sigma) v`.

With ``level = 0`` every schedule is the Euler step (``flow-grpo`` and ``dance-grpo`` bit for bit). The
``flow-grpo`` and ``dance-grpo`` steps keep the ODE's marginals as the steps shrink. ``cps`` keeps the coefficients
of the true data and noise, but with a posterior-mean velocity it drops the posterior variance of :math:`x_0` at
every step, whatever the step size: on :math:`\mathcal N(0.7, 0.5^2)` data with the exact velocity, two CPS steps at
level 0.3 in a 10-step trajectory end with variance 0.185 instead of 0.25 (``tests/flow/test_sde.py``).

The log-probability of a step is the Gaussian log-density **averaged** over the latent dimensions (not summed),
computed in float32, as the three reference implementations do: a sum over 10^4-10^5 dimensions makes the
importance ratio overflow. Flow-GRPO's CPS code drops the constants and the :math:`1/(2s^2)` factor and uses
:math:`-\mathrm{mean}(x'-\mu)^2`; this module keeps the true Gaussian density for every schedule (the paper's
definition), so a CPS clip range from the reference configs does not transfer as is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from leapalign.flow.conventions import _broadcast
from leapalign.flow.leap import euler_step
from leapalign.flow.rollout import VelocityFn

SDE_SCHEDULES = ("flow-grpo", "dance-grpo", "cps")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def check_sde(schedule: str, level: float) -> None:
    """Raises a ``ValueError`` naming the allowed values for an unknown schedule or a level out of range."""
    if schedule not in SDE_SCHEDULES:
        raise ValueError(f"SDE schedule {schedule!r} is unknown; allowed: {', '.join(SDE_SCHEDULES)}.")
    if schedule == "cps" and not 0.0 <= level <= 1.0:
        raise ValueError(f"the cps noise level must lie in [0, 1] (a fraction of pi/2), got {level}.")
    if not 0.0 <= level <= 10.0:
        raise ValueError(f"the {schedule} noise level must lie in [0, 10], got {level}.")


def diffusion_coefficient(schedule: str, level: float, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """:math:`g_\\sigma` of the ``flow-grpo`` and ``dance-grpo`` schedules (float32, same shape as ``sigma``)."""
    sigma, sigma_next = sigma.float(), sigma_next.float()
    if schedule == "dance-grpo":
        return torch.full_like(sigma, float(level))
    if schedule == "flow-grpo":
        denom = torch.where(sigma >= 1.0, 1.0 - sigma_next, 1.0 - sigma)
        return level * torch.sqrt(sigma / denom)
    raise ValueError(f"schedule {schedule!r} has no diffusion coefficient (cps sets the std directly).")


def transition(
    x: Tensor, v: Tensor, sigma: Tensor | float, sigma_next: Tensor | float, schedule: str, level: float
) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of the stochastic step from ``sigma`` to ``sigma_next``.

    Args:
        x: Latents at ``sigma``, shape ``(B, ...)``.
        v: Velocity at ``(x, sigma)``, same shape (with or without its autograd graph).
        sigma: Current noise level (float, scalar tensor or ``(B,)``), in ``(0, 1]``.
        sigma_next: Next noise level, ``< sigma``.
        schedule: One of :data:`SDE_SCHEDULES`.
        level: The schedule's noise level (``a`` or ``eta``); 0 gives the Euler step.

    Returns:
        ``(mean, std)``: the mean, float32, shape of ``x``; the std, float32, broadcastable to ``x`` (``(B, 1, ...)``
        or a scalar shape).
    """
    xf, vf = x.float(), v.float()
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    s_next = torch.as_tensor(sigma_next, dtype=torch.float32, device=x.device)
    dt = s_next - s
    if schedule == "cps":
        std = s_next * math.sin(level * math.pi / 2)
        x0_hat = xf - _broadcast(s, xf) * vf
        x1_hat = xf + _broadcast(1.0 - s, xf) * vf
        keep = torch.sqrt(torch.clamp(s_next**2 - std**2, min=0.0))
        mean = _broadcast(1.0 - s_next, xf) * x0_hat + _broadcast(keep, xf) * x1_hat
        return mean, _broadcast(std, xf)
    g = diffusion_coefficient(schedule, level, s, s_next)
    euler = xf + _broadcast(dt, xf) * vf  # level 0: exactly leapalign.flow.euler_step in float32
    if level == 0:
        return euler, _broadcast(torch.zeros_like(g), xf)
    drift = _broadcast(g**2 / (2 * s) * dt, xf) * (xf + _broadcast(1.0 - s, xf) * vf)
    return euler + drift, _broadcast(g * torch.sqrt(-dt), xf)


def gaussian_log_prob(sample: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Log-density of ``sample`` under ``N(mean, std^2)``, averaged over every dimension but the batch (float32).

    Args:
        sample: ``(B, ...)``, treated as data (detached).
        mean: ``(B, ...)``, may carry gradients.
        std: Broadcastable to ``mean``, ``> 0``.

    Returns:
        ``(B,)`` mean per-dimension log-density.
    """
    sample, mean, std = sample.detach().float(), mean.float(), std.float()
    if bool((std <= 0).any()):
        raise ValueError("the step's std is 0 (a deterministic step): its log-probability is undefined.")
    z = (sample - mean) / std
    log_density = -0.5 * z**2 - torch.log(std) - LOG_SQRT_2PI
    return log_density.flatten(1).mean(1) if log_density.ndim > 1 else log_density


@dataclass
class SDEStep:
    """One recorded stochastic step of a trajectory (all detached).

    Attributes:
        index: Step index ``i`` (from ``sigmas[i]`` to ``sigmas[i + 1]``).
        latent: ``x`` before the step, ``(B, ...)``.
        next_latent: ``x'`` after it, ``(B, ...)``.
        mean: The transition mean, float32, ``(B, ...)``.
        std: The transition std, float32, broadcastable to ``(B, ...)``.
        log_prob: ``(B,)`` mean per-dimension log-density of ``next_latent`` (the old policy's).
    """

    index: int
    latent: Tensor
    next_latent: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor


def sde_step(
    x: Tensor,
    v: Tensor,
    sigma: Tensor | float,
    sigma_next: Tensor | float,
    schedule: str,
    level: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Takes one stochastic step.

    Args:
        x: Latents at ``sigma``, ``(B, ...)``.
        v: Velocity at ``(x, sigma)`` (detached for sampling).
        sigma: Current noise level.
        sigma_next: Next noise level.
        schedule: One of :data:`SDE_SCHEDULES`.
        level: Noise level; 0 gives the Euler step.
        generator: Generator of the noise ``xi`` (drawn on the generator's device, then moved to ``x``'s).

    Returns:
        ``(next_latent, mean, std, log_prob)``; ``next_latent`` has ``x``'s dtype; ``log_prob`` is ``None`` for a
        deterministic step (std 0).
    """
    mean, std = transition(x, v, sigma, sigma_next, schedule, level)
    if bool((std == 0).all()):
        return mean.to(x.dtype), mean, std, None
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32).to(x.device)
    next_latent = (mean + std * noise).to(x.dtype)
    return next_latent, mean, std, gaussian_log_prob(next_latent, mean, std)


def step_log_prob(
    v: Tensor, step: SDEStep, sigma: Tensor | float, sigma_next: Tensor | float, schedule: str, level: float
) -> tuple[Tensor, Tensor]:
    """Log-probability of a recorded step under a (new) velocity, for the importance ratio.

    Args:
        v: Velocity of the current policy at ``(step.latent, sigma)``, with its autograd graph.
        step: The recorded step.
        sigma: ``sigmas[step.index]``.
        sigma_next: ``sigmas[step.index + 1]``.
        schedule: The schedule the step was sampled with.
        level: Its noise level.

    Returns:
        ``(log_prob (B,), mean)``: the mean per-dimension log-density of ``step.next_latent`` and the new mean
        (for a KL term against a reference policy).
    """
    mean, std = transition(step.latent, v, sigma, sigma_next, schedule, level)
    return gaussian_log_prob(step.next_latent, mean, std), mean


@dataclass
class SDETrajectory:
    """A sampled trajectory whose chosen steps were stochastic.

    Attributes:
        latents: Every latent visited, ``latents[i]`` at ``sigmas[i]`` (detached), ``T + 1`` of them.
        steps: The recorded stochastic steps, in order.
    """

    latents: list[Tensor]
    steps: list[SDEStep]

    @property
    def final(self) -> Tensor:
        """The final sample ``x_0``, ``(B, ...)``."""
        return self.latents[-1]


@torch.no_grad()
def sample_sde(
    velocity_fn: VelocityFn,
    noise: Tensor,
    sigmas: Tensor,
    sde_steps: Iterable[int],
    schedule: str,
    level: float,
    generator: torch.Generator | None = None,
) -> SDETrajectory:
    """Samples from ``noise`` with stochastic steps at ``sde_steps`` and Euler steps elsewhere (no gradients).

    Args:
        velocity_fn: ``v(x, sigma)``, the (guided) velocity field.
        noise: Initial latents at ``sigma = 1``, ``(B, ...)``.
        sigmas: Schedule ``(T + 1,)`` from 1 to 0.
        sde_steps: Indices ``i`` in ``[0, T)`` whose step is stochastic (a window, all steps, ...).
        schedule: One of :data:`SDE_SCHEDULES`.
        level: Noise level; 0 reproduces :func:`leapalign.flow.sample` bit for bit (``flow-grpo``, ``dance-grpo``).
        generator: Generator of the step noise.

    Returns:
        The :class:`SDETrajectory`; a stochastic step with std 0 (e.g. level 0, or CPS's last step) is not recorded.
    """
    check_sde(schedule, level)
    num_steps = sigmas.numel() - 1
    chosen = sorted({int(i) for i in sde_steps})
    if chosen and not 0 <= chosen[0] <= chosen[-1] < num_steps:
        raise ValueError(f"SDE steps {chosen} must lie in [0, {num_steps}) for a {num_steps}-step schedule.")
    latents, steps = [noise.detach()], []
    for i in range(num_steps):
        x, s, s_next = latents[-1], sigmas[i], sigmas[i + 1]
        v = velocity_fn(x, s)
        if i in chosen:
            x_next, mean, std, log_prob = sde_step(x, v, s, s_next, schedule, level, generator)
            if log_prob is not None:
                steps.append(SDEStep(i, x, x_next, mean, std, log_prob))
        else:
            x_next = euler_step(x, v, s, s_next)
        latents.append(x_next)
    return SDETrajectory(latents, steps)
