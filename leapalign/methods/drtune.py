r"""DRTune (Wu et al., ECCV 2024): stop-gradient at every model input, K evenly spaced trained steps.

**Gradient path.** The rollout stops early at a step :math:`m` drawn from the last ``early_stop_steps``
steps and scores the one-step estimate :math:`\hat x_0 = x_m - \sigma_m v_m`. Every model call sees a
*stop-gradient* input :math:`\mathrm{sg}(x_i)`, which deletes the nested gradient; the latents themselves
still chain, :math:`x_{i+1} = x_i + \Delta\sigma_i v_i`. Only :math:`K` steps among :math:`0..m` keep their
velocity's graph, evenly spaced: :math:`\{s + i\lfloor (m+1)/K \rfloor\}` with a random offset :math:`s`;
all others are fully detached. Gradients therefore reach early steps at the memory of :math:`K` forwards.
The stop-gradient is :func:`leapalign.flow.scale_grad` at factor 0, the same operation LeapAlign applies at
factor alpha. Loss: the hinge, as the other methods, for a fair comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.flow import Rollout, euler_step, predict_x0, scale_grad
from leapalign.methods.base import Batch, MethodOutput, reward_loss, reward_metrics, score, velocity_fn
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn


@dataclass
class DRTuneConfig:
    """DRTune options (the LeapAlign paper's reproduction: K = 2, early stop in the last 11 of 25 steps).

    Attributes:
        name: ``drtune``.
        num_train_steps: K, the steps whose velocity keeps its graph.
        early_stop_steps: m, the early-stop step is drawn from the last ``early_stop_steps`` steps.
        threshold: Hinge threshold lambda; ``None`` uses ``-r``.
    """

    name: str = "drtune"
    num_train_steps: int = 2
    early_stop_steps: int = 11
    threshold: float | None = 0.55

    def __post_init__(self) -> None:
        if self.num_train_steps < 1:
            raise ValueError(f"method.num_train_steps={self.num_train_steps} must be >= 1.")
        if self.early_stop_steps < 1:
            raise ValueError(f"method.early_stop_steps={self.early_stop_steps} must be >= 1.")


def train_steps(num_steps: int, k: int, generator: torch.Generator) -> list[int]:
    """DRTune's K evenly spaced step indices among ``0..num_steps-1`` with a random offset."""
    k = min(k, num_steps)
    spacing = num_steps // k
    offset = int(torch.randint(0, num_steps - (k - 1) * spacing, (1,), generator=generator))
    return [offset + i * spacing for i in range(k)]


class DRTune:
    """DRTune over the shared rollout engine."""

    name = "drtune"
    requires_differentiable_reward = True

    def __init__(self, cfg: DRTuneConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        num_steps = batch.num_steps
        stop = int(
            torch.randint(
                max(0, num_steps - self.cfg.early_stop_steps), num_steps, (1,), generator=batch.step_generator
            )
        )
        trained = set(train_steps(stop + 1, self.cfg.num_train_steps, batch.step_generator))
        ro = Rollout(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
        x = ro.latent
        for i in range(stop + 1):
            if i in trained:
                v = ro.grad_step(scale_grad(x, 0.0))  # stop-gradient at the model input
            else:
                ro.run_to(i + 1)
                v = ro.velocities[i]
            if i < stop:
                x = euler_step(x, v, batch.sigmas[i], batch.sigmas[i + 1])
        x0_hat = predict_x0(x, v, batch.sigmas[stop])
        rewards = score(model, x0_hat, batch, reward)
        loss = reward_loss(rewards, self.cfg.threshold).mean()
        metrics = reward_metrics(rewards, self.cfg.threshold)
        metrics.update({"early_stop": float(stop), "k": float(min(trained)), "j": float(max(trained))})
        return MethodOutput(loss=loss, rewards=rewards.detach(), metrics=metrics)
