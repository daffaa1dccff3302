r"""DRaFT-K and DRaFT-LV (Clark, Vicol, Swersky, Fleet, ICLR 2024), on flow models.

**DRaFT-K gradient path.** The rollout runs without gradients until step :math:`T-K`; the latent entering
the window is detached, and the last :math:`K` steps are taken with gradients (each model call
checkpointed, so memory stays about one forward), chaining :math:`x_{i+1} = x_i + \Delta\sigma_i
v_\theta(x_i)` differentiably. The reward is computed on the real final sample; loss :math:`-r`.

**DRaFT-LV gradient path** (variance-reduced K = 1). The last step is taken with gradients as in
DRaFT-1, giving :math:`x_0`. Then :math:`n` copies are re-noised from the *detached* final sample to the last
non-zero sigma, :math:`x^i = (1-\sigma_{T-1})\,\mathrm{sg}(x_0) + \sigma_{T-1}\varepsilon_i`, and denoised
in one step with gradients, :math:`x_0^i = x^i - \sigma_{T-1} v_\theta(x^i)`. The loss sums the rewards of
:math:`x_0` and the :math:`n` copies, :math:`-\sum r` (per prompt, averaged over the batch); this costs
:math:`n` extra forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.flow import Rollout, euler_step, predict_x0, renoise
from leapalign.methods.base import Batch, MethodOutput, reward_loss, reward_metrics, score, velocity_fn
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn


def backprop_window(model: FlowModel, batch: Batch, first: int, use_checkpoint: bool) -> tuple[torch.Tensor, int]:
    """Rolls out with no grad to step ``first``, then with gradients (detached entry) to ``sigma = 0``.

    Shared by DRaFT-K and AlignProp.

    Returns:
        The differentiable final latent ``(B, ...)`` and the number of steps that carried gradients.
    """
    ro = Rollout(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
    x = ro.run_to(first)  # detached: gradients stop at the window's entry
    for i in range(first, ro.num_steps):
        v = ro.grad_step(x, use_checkpoint=use_checkpoint)
        x = euler_step(x, v, batch.sigmas[i], batch.sigmas[i + 1])
    return x, ro.num_steps - first


@dataclass
class DRaFTKConfig:
    """DRaFT-K options.

    Attributes:
        name: ``draft-k``.
        k: Number of final steps that carry gradients (K = 1 is the common choice).
        threshold: ``None`` (loss ``-r``, the DRaFT paper) or a hinge threshold.
        checkpoint: Recompute each window step in the backward pass (memory ~ one forward).
    """

    name: str = "draft-k"
    k: int = 1
    threshold: float | None = None
    checkpoint: bool = True

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"method.k={self.k} must be >= 1.")


class DRaFTK:
    """DRaFT-K: truncated backprop through the last K sampling steps."""

    name = "draft-k"
    requires_differentiable_reward = True

    def __init__(self, cfg: DRaFTKConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        first = max(0, batch.num_steps - self.cfg.k)
        x0, n_grad = backprop_window(model, batch, first, self.cfg.checkpoint)
        rewards = score(model, x0, batch, reward)
        loss = reward_loss(rewards, self.cfg.threshold).mean()
        metrics = reward_metrics(rewards, self.cfg.threshold)
        metrics.update({"grad_steps": float(n_grad), "k": float(first)})
        return MethodOutput(loss=loss, rewards=rewards.detach(), metrics=metrics)


@dataclass
class DRaFTLVConfig:
    """DRaFT-LV options.

    Attributes:
        name: ``draft-lv``.
        num_copies: Re-noised copies ``n`` of the final sample (2 in the LeapAlign reproduction).
        threshold: ``None`` (loss ``-r``) or a hinge threshold.
    """

    name: str = "draft-lv"
    num_copies: int = 2
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.num_copies < 1:
            raise ValueError(f"method.num_copies={self.num_copies} must be >= 1.")


class DRaFTLV:
    """DRaFT-LV: DRaFT-1 plus n re-noised, one-step-denoised copies of the final sample."""

    name = "draft-lv"
    requires_differentiable_reward = True

    def __init__(self, cfg: DRaFTLVConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        n = self.cfg.num_copies
        last = batch.num_steps - 1
        x0, _ = backprop_window(model, batch, last, use_checkpoint=False)
        sigma = float(batch.sigmas[last])
        base = x0.detach().repeat_interleave(n, dim=0)
        noise = torch.randn(base.shape, generator=batch.generator, device=batch.generator.device).to(base)
        x_noisy = renoise(base, noise, sigma)
        v = model.velocity(x_noisy, batch.sigmas[last], batch.cond.repeat(n))
        copies = predict_x0(x_noisy, v, sigma)
        prompts = [p for p in batch.prompts for _ in range(n)]
        r_main = score(model, x0, batch, reward)
        r_copies = score(model, copies, batch, reward, prompts)
        thr = self.cfg.threshold
        loss = (reward_loss(r_main, thr) + reward_loss(r_copies, thr).view(-1, n).sum(dim=1)).mean()
        metrics = reward_metrics(r_main, self.cfg.threshold)
        metrics["reward_copies_mean"] = r_copies.detach().mean().item()
        return MethodOutput(loss=loss, rewards=r_main.detach(), metrics=metrics)
