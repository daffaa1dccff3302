"""Sigma schedules (Flux dynamic shift, SD3 static shift) and the choice of trained steps.

All schedules return ``T + 1`` decreasing sigmas: ``sigmas[0] == 1`` (noise) and ``sigmas[T] == 0`` (data).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def flux_mu(
    image_seq_len: int,
    base_seq_len: int = 256,
    max_seq_len: int = 4096,
    base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """Flux's resolution-dependent shift ``mu``: linear in the number of image tokens.

    Args:
        image_seq_len: Number of packed image tokens, e.g. 2025 for a 720x720 Flux image.

    Returns:
        ``mu`` such that ``sigma' = e^mu / (e^mu + 1/sigma - 1)``.
    """
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)


def exponential_shift(sigmas: Tensor, mu: float) -> Tensor:
    """Flux time shift ``e^mu / (e^mu + (1/sigma - 1))`` (identity at ``sigma`` in ``{0, 1}`` limits)."""
    return math.exp(mu) / (math.exp(mu) + (1.0 / sigmas - 1.0))


def static_shift(sigmas: Tensor, shift: float) -> Tensor:
    """SD3 time shift ``shift * sigma / (1 + (shift - 1) * sigma)``."""
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flux_sigmas(num_steps: int, image_seq_len: int) -> Tensor:
    """The FLUX.1 sampling schedule, as ``FluxPipeline`` builds it.

    ``linspace(1, 1/T, T)`` shifted with ``mu = flux_mu(image_seq_len)``, then a terminal 0.

    Args:
        num_steps: Number of Euler steps ``T``.
        image_seq_len: Number of packed image tokens.

    Returns:
        Float32 tensor of shape ``(T + 1,)``.
    """
    _check_steps(num_steps)
    base = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    shifted = exponential_shift(base, flux_mu(image_seq_len))
    return torch.cat([shifted, shifted.new_zeros(1)]).float()


def sd3_sigmas(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> Tensor:
    """The SD3 / SD3.5 sampling schedule, as ``StableDiffusion3Pipeline`` with its default scheduler builds it.

    diffusers spaces the steps linearly between 1 and its shifted minimum training sigma, then shifts again
    (so the last non-zero sigma is small, e.g. 0.0089 for 28 steps at shift 3).

    Args:
        num_steps: Number of Euler steps ``T``.
        shift: Static shift (3.0 for SD3 / SD3.5).
        num_train_timesteps: Training timesteps of the scheduler (1000).

    Returns:
        Float32 tensor of shape ``(T + 1,)``.
    """
    _check_steps(num_steps)
    sigma_min = float(static_shift(torch.tensor(1.0 / num_train_timesteps, dtype=torch.float64), shift))
    base = torch.linspace(1.0, sigma_min, num_steps, dtype=torch.float64)
    shifted = static_shift(base, shift)
    return torch.cat([shifted, shifted.new_zeros(1)]).float()


def _check_steps(num_steps: int) -> None:
    if num_steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {num_steps}.")


STEP_RANGES = ("full", "late", "early")


def candidate_steps(sigmas: Tensor, step_range: str = "full") -> list[int]:
    """Step indices (``0..T-1``) eligible to carry gradients.

    Args:
        sigmas: Schedule of shape ``(T + 1,)``.
        step_range: ``"full"`` (every step, as the paper), ``"late"`` (steps with ``sigma <= 0.5``, the
            paper's ``[0, 1/2]`` ablation read as a sigma interval) or ``"early"`` (the others, ``sigma > 0.5``,
            where the layout is decided).
    """
    num_steps = sigmas.numel() - 1
    if step_range == "full":
        return list(range(num_steps))
    if step_range == "late":
        return [i for i in range(num_steps) if float(sigmas[i]) <= 0.5]
    if step_range == "early":
        return [i for i in range(num_steps) if float(sigmas[i]) > 0.5]
    raise ValueError(f"step_range={step_range!r} is invalid; allowed values: {', '.join(STEP_RANGES)}.")


def sample_leap_steps(
    sigmas: Tensor,
    num_leaps: int,
    generator: torch.Generator,
    *,
    step_range: str = "full",
    fixed_gap: float | None = None,
) -> list[int]:
    """Draws the start indices of the leaps, earliest first (``k < j`` as indices, ``sigma_k > sigma_j``).

    Random mode (default) draws ``num_leaps`` distinct indices uniformly without replacement among the
    eligible steps, as the official code's ``randperm``; adjacent steps are allowed. Fixed-gap mode draws
    the first index uniformly among those from which the chain exists, then each next index is the step
    whose sigma is closest to the previous sigma minus ``fixed_gap``.

    Args:
        sigmas: Schedule of shape ``(T + 1,)``.
        num_leaps: How many steps carry gradients (LeapAlign: 2).
        generator: CPU generator; seed it identically on every rank to share the steps across the batch.
        step_range: See :func:`candidate_steps`.
        fixed_gap: Sigma distance between consecutive leap starts, or ``None`` for random.

    Returns:
        Sorted list of ``num_leaps`` step indices.
    """
    steps = candidate_steps(sigmas, step_range)
    if len(steps) < num_leaps:
        raise ValueError(
            f"{num_leaps} leap(s) need at least {num_leaps} eligible steps, but step_range={step_range!r} leaves "
            f"{len(steps)} of {sigmas.numel() - 1}; use more sampling steps or step_range='full'."
        )
    if fixed_gap is None:
        perm = torch.randperm(len(steps), generator=generator)[:num_leaps]
        return sorted(steps[int(p)] for p in perm)
    starts = [c for c in (_gap_chain(sigmas, steps, s, num_leaps, fixed_gap) for s in steps) if c is not None]
    if not starts:
        raise ValueError(f"no chain of {num_leaps} steps spaced by sigma {fixed_gap} fits the schedule.")
    return starts[int(torch.randint(len(starts), (1,), generator=generator))]


def _gap_chain(sigmas: Tensor, steps: list[int], first: int, n: int, gap: float) -> list[int] | None:
    chain = [first]
    for _ in range(n - 1):
        later = [s for s in steps if s > chain[-1]]
        target = float(sigmas[chain[-1]]) - gap
        if not later or target < float(sigmas[later[-1]]) - 1e-6:  # the target must lie on the schedule
            return None
        chain.append(min(later, key=lambda s: abs(float(sigmas[s]) - target)))
    return chain
