r"""One-step moves along the probability-flow ODE, and LeapAlign's trajectory-similarity weight and loss.

In sigma notation (see :mod:`leapalign.flow.conventions`):

.. math::

    \text{Euler / leap:}\quad x_{\sigma'} = x_\sigma + (\sigma' - \sigma)\, v, \qquad
    \hat x_0 = x_\sigma - \sigma v ,

    w_\text{sim} = \frac{1}{\max(d_j, \tau) + \max(d_0, \tau)}, \qquad
    d = \operatorname{mean}|x - \hat x| \;\text{(per sample)}, \qquad
    L = w_\text{sim} \cdot \max(0, \lambda - r).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from leapalign.flow.conventions import _broadcast


def leap(x: Tensor, velocity: Tensor, sigma_from: Tensor | float, sigma_to: Tensor | float) -> Tensor:
    """Moves ``x`` from ``sigma_from`` to ``sigma_to`` along ``velocity`` in one step (Euler step or leap).

    Args:
        x: Latents at ``sigma_from``, shape ``(B, ...)``.
        velocity: Velocity at ``(x, sigma_from)``, same shape.
        sigma_from: Start noise level (float, scalar tensor or ``(B,)``).
        sigma_to: Target noise level, usually ``< sigma_from``.

    Returns:
        ``x + (sigma_to - sigma_from) * velocity``, same shape as ``x``.
    """
    delta = sigma_to - sigma_from
    return x + _broadcast(delta, x) * velocity


euler_step = leap
"""An Euler step is a leap between adjacent sigmas of the schedule."""


def predict_x0(x: Tensor, velocity: Tensor, sigma: Tensor | float) -> Tensor:
    """One-step data estimate ``x - sigma * v``, shape of ``x``."""
    return leap(x, velocity, sigma, 0.0)


def renoise(x0: Tensor, noise: Tensor, sigma: float) -> Tensor:
    """Forward process ``(1 - sigma) x0 + sigma * noise`` at one noise level (DRaFT-LV copies)."""
    return (1.0 - sigma) * x0 + sigma * noise


@torch.no_grad()
def leap_distance(actual: Tensor, predicted: Tensor) -> Tensor:
    """Per-sample mean absolute gap ``mean(|x - x_hat|)`` in float64, shape ``(B,)``, no gradient."""
    diff = (actual.double() - predicted.detach().double()).abs()
    return diff.flatten(1).mean(dim=1)


@torch.no_grad()
def similarity_weight(distances: Sequence[Tensor], tau: float) -> Tensor:
    r"""Trajectory-similarity weight :math:`1 / \sum_i \max(d_i, \tau)` (Eq. 12), float64, no gradient.

    Args:
        distances: Per-sample distances, each of shape ``(B,)`` (LeapAlign: ``[d_j, d_0]``). An empty
            sequence means "no weighting" and returns ones.
        tau: Floor on each distance (> 0); the weight is at most ``1 / (len(distances) * tau)``.

    Returns:
        Weights of shape ``(B,)``.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}.")
    if not distances:
        raise ValueError("similarity_weight needs at least one distance; use weights of 1 for no weighting.")
    total = sum(d.clamp(min=tau) for d in distances)
    return 1.0 / total  # type: ignore[operator]


def hinge_loss(rewards: Tensor, threshold: float) -> Tensor:
    r"""Per-sample hinge :math:`\max(0, \lambda - r)` (Eq. 11), shape of ``rewards`` ``(B,)``."""
    return torch.relu(threshold - rewards)
