r"""AlignProp (Prabhudesai, Goyal, Pathak, Fragkiadaki, 2023): randomised truncated backprop through sampling.

**Gradient path.** Once per update a number of final steps :math:`K \sim U\{K_{min}, \dots, K_{max}\}` is
drawn (clipped to the trajectory length); the rollout runs without gradients until step :math:`T-K`, and
the last :math:`K` steps chain gradients with every model call checkpointed, down to the real final sample,
which is scored; loss :math:`-r`. ``min_grad_steps = max_grad_steps = T`` is full backprop (DRaFT).

We draw the truncation point once per update, the stated intent of AlignProp, rather than once per step as
its v1 code and TRL did (which made the detached steps a non-contiguous set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.methods.base import Batch, MethodOutput, reward_loss, reward_metrics, score
from leapalign.methods.draft import backprop_window
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn


@dataclass
class AlignPropConfig:
    """AlignProp options.

    Attributes:
        name: ``alignprop``.
        min_grad_steps: Fewest final steps carrying gradients.
        max_grad_steps: Most final steps carrying gradients (clipped to ``T``).
        threshold: ``None`` (loss ``-r``) or a hinge threshold.
        checkpoint: Per-step gradient checkpointing (memory ~ flat in the window length).
    """

    name: str = "alignprop"
    min_grad_steps: int = 1
    max_grad_steps: int = 1000
    threshold: float | None = None
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.min_grad_steps <= self.max_grad_steps:
            raise ValueError(
                f"method.min_grad_steps={self.min_grad_steps} and method.max_grad_steps={self.max_grad_steps} "
                f"must satisfy 1 <= min_grad_steps <= max_grad_steps."
            )


class AlignProp:
    """AlignProp: backprop through a random-length final window of the sampling chain."""

    name = "alignprop"
    requires_differentiable_reward = True

    def __init__(self, cfg: AlignPropConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        hi = min(self.cfg.max_grad_steps, batch.num_steps)
        lo = min(self.cfg.min_grad_steps, hi)
        window = int(torch.randint(lo, hi + 1, (1,), generator=batch.step_generator))
        x0, n_grad = backprop_window(model, batch, batch.num_steps - window, self.cfg.checkpoint)
        rewards = score(model, x0, batch, reward)
        loss = reward_loss(rewards, self.cfg.threshold).mean()
        metrics = reward_metrics(rewards, self.cfg.threshold)
        metrics.update({"grad_steps": float(n_grad), "k": float(batch.num_steps - window)})
        return MethodOutput(loss=loss, rewards=rewards.detach(), metrics=metrics)
