r"""ReFL (Xu et al., ImageReward, NeurIPS 2023), adapted to flow models as in the LeapAlign paper.

**Gradient path.** The rollout runs without gradients until one step :math:`m` drawn uniformly from the
last ``late_steps`` steps; there the model is called with gradients on the detached latent and the reward
is computed on the one-step estimate :math:`\hat x_0 = x_m - \sigma_m v_\theta(x_m)`. Only that single late
step receives gradient, and the rollout stops there (no compute is spent on the remaining steps). Loss:
hinge :math:`\max(0, \lambda - r)`, no pretraining loss (as the paper's reproduction).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.flow import Rollout, predict_x0
from leapalign.methods.base import Batch, MethodOutput, reward_loss, reward_metrics, score, velocity_fn
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn


@dataclass
class ReFLConfig:
    """ReFL options.

    Attributes:
        name: ``refl``.
        late_steps: The trained step is drawn from the last ``late_steps`` steps (11 of 25 in the paper).
        threshold: Hinge threshold lambda; ``None`` uses ``-r``.
    """

    name: str = "refl"
    late_steps: int = 11
    threshold: float | None = 0.55

    def __post_init__(self) -> None:
        if self.late_steps < 1:
            raise ValueError(f"method.late_steps={self.late_steps} must be >= 1.")


class ReFL:
    """ReFL: a single gradient-carrying step near the end, scored on its one-step estimate."""

    name = "refl"
    requires_differentiable_reward = True

    def __init__(self, cfg: ReFLConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        num_steps = batch.num_steps
        first = max(0, num_steps - self.cfg.late_steps)
        m = int(torch.randint(first, num_steps, (1,), generator=batch.step_generator))
        ro = Rollout(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
        x_m = ro.run_to(m)
        v = ro.grad_step(x_m)
        x0_hat = predict_x0(x_m, v, batch.sigmas[m])
        rewards = score(model, x0_hat, batch, reward)
        loss = reward_loss(rewards, self.cfg.threshold).mean()
        metrics = reward_metrics(rewards, self.cfg.threshold)
        metrics.update({"k": float(m), "sigma_k": float(batch.sigmas[m])})
        return MethodOutput(loss=loss, rewards=rewards.detach(), metrics=metrics)
