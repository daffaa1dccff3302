"""What every method shares: the batch it receives, the output it returns, and the reward helpers.

A method is one object with one call, ``method.step(model, batch, reward) -> MethodOutput``: it runs the
on-policy rollout through :class:`leapalign.flow.Rollout`, takes gradients where its recipe says, and returns
a scalar loss whose gradient is the method's estimate. The trainer does the rest (backward, clipping, the
optimiser, EMA, logging), identically for every method.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from leapalign.flow.leap import hinge_loss
from leapalign.models.base import Conditioning, FlowModel
from leapalign.rewards.base import RewardFn


@dataclass
class Batch:
    """One micro-batch of on-policy samples to generate.

    Attributes:
        prompts: ``B`` prompts.
        cond: Their conditioning (batch ``B``).
        noise: Initial latents at ``sigma = 1``, shape ``(B, *latent_shape)``.
        sigmas: Sampling schedule, shape ``(T + 1,)``.
        height: Image height in pixels.
        width: Image width in pixels.
        generator: Per-rank generator for any extra noise a method draws (e.g. DRaFT-LV copies).
        step_generator: CPU generator seeded identically on every rank, for the choice of trained steps, so
            the whole global batch shares them (as the official LeapAlign code).
    """

    prompts: list[str]
    cond: Conditioning
    noise: Tensor
    sigmas: Tensor
    height: int
    width: int
    generator: torch.Generator
    step_generator: torch.Generator

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1


@dataclass
class MethodOutput:
    """Result of one method step.

    Attributes:
        loss: Scalar loss to backpropagate.
        rewards: Detached rewards of the scored samples, shape ``(B,)`` (or ``(B * copies,)``).
        metrics: Scalar diagnostics for the log (e.g. ``k``, ``j``, ``w_sim``).
    """

    loss: Tensor
    rewards: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class Method(Protocol):
    """A reward fine-tuning method over the shared rollout engine."""

    name: str
    requires_differentiable_reward: bool

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        """Generates ``batch`` on-policy and returns the loss whose gradient is the method's update."""
        ...


def velocity_fn(model: FlowModel, cond: Conditioning):
    """Binds the conditioning: returns ``v(x, sigma)`` for :class:`leapalign.flow.Rollout`."""

    def v(x: Tensor, sigma: Tensor) -> Tensor:
        return model.velocity(x, sigma, cond)

    return v


def score(model: FlowModel, latents: Tensor, batch: Batch, reward: RewardFn, prompts: Sequence[str] | None = None):
    """Decodes latents (differentiably) and scores them: returns rewards of shape ``(B,)``."""
    images = model.decode(latents, batch.height, batch.width)
    return reward(images, list(prompts) if prompts is not None else batch.prompts)


def reward_loss(rewards: Tensor, threshold: float | None) -> Tensor:
    r"""Per-sample loss: the hinge :math:`\max(0, \lambda - r)` when ``threshold`` is set, else :math:`-r`."""
    return -rewards if threshold is None else hinge_loss(rewards, threshold)


def reward_metrics(rewards: Tensor, threshold: float | None) -> dict[str, float]:
    """Reward mean/std and, for hinge losses, the fraction of samples whose hinge is active."""
    r = rewards.detach().float()
    out = {"reward_mean": r.mean().item(), "reward_std": r.std().item() if r.numel() > 1 else 0.0}
    if threshold is not None:
        out["hinge_active"] = (r < threshold).float().mean().item()
    return out


def check_differentiable(method: Method, reward: RewardFn) -> None:
    """Raises a ``ValueError`` when a direct-gradient method is paired with a non-differentiable reward."""
    if method.requires_differentiable_reward and not reward.differentiable:
        raise ValueError(
            f"method {method.name!r} backpropagates the reward into the model, but reward {reward.name!r} is not "
            f"differentiable. Choose a differentiable reward (see `leapalign rewards`) or a policy-gradient method."
        )
