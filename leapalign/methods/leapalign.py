r"""LeapAlign (Liang, Yang et al., CVPR 2026, arXiv 2604.15311): two one-step leaps over a full rollout.

**Gradient path.** A full on-policy Euler rollout is sampled; only the model calls at two steps
:math:`k < j` (indices; :math:`\sigma_k > \sigma_j`, drawn uniformly over all steps and shared by the batch)
keep a graph. Leap 1 jumps :math:`\hat x_{j|k} = x_k + (\sigma_j - \sigma_k) v_\theta(x_k)`; a
straight-through connector gives :math:`x_j^c = \hat x_{j|k} + \mathrm{sg}(x_j - \hat x_{j|k})`; leap 2
jumps :math:`\hat x_{0|j} = x_j^c - \sigma_j v_\theta(\alpha x_j^c + (1-\alpha)\,\mathrm{sg}(x_j^c))` and a
second connector joins it to the real final latent :math:`x_0`. The reward is computed on the real image,
so gradients reach step k directly (single-step term), step j directly, and step k through step j's input
(the nested term, scaled by :math:`\alpha`; Eq. 10). Each sample's hinge loss
:math:`\max(0, \lambda - r)` is weighted without gradient by
:math:`1/(\max(d_j,\tau) + \max(d_0,\tau))` (Eq. 12-13). Memory: two transformer graphs whatever the
number of steps.

The ablation switches of the paper's Figure 4 are options: ``num_leaps`` (1-3), ``reward_on``
(``x0`` or the one-step estimate ``x0_hat``), ``weighting``, ``step_range`` and ``fixed_gap``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from leapalign.flow import (
    Rollout,
    leap,
    leap_distance,
    sample_leap_steps,
    scale_grad,
    similarity_weight,
    straight_through,
)
from leapalign.flow.schedule import STEP_RANGES
from leapalign.methods.base import Batch, MethodOutput, reward_loss, reward_metrics, score, velocity_fn
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn

WEIGHTINGS = ("both", "d_j", "d_0", "none")


@dataclass
class LeapAlignConfig:
    """LeapAlign options (defaults: the paper's HPSv2.1 setting).

    Attributes:
        name: ``leapalign``.
        alpha: Discount of the nested gradient in ``[0, 1]`` (0.3 for HPSv2.1, 0.1 for PickScore/HPSv3).
        tau: Floor of each leap distance in the similarity weight (> 0).
        threshold: Hinge threshold lambda (0.55 for HPSv2.1, 0.4 PickScore, 13.5 HPSv3); ``None`` uses ``-r``.
        num_leaps: Steps that carry gradients (2 in the paper; 1 and 3 are ablations).
        reward_on: ``x0`` (real final image through the connector) or ``x0_hat`` (the last leap's estimate).
        weighting: Distances in the weight: ``both`` (d_j + d_0), ``d_j``, ``d_0`` or ``none`` (weight 1).
        step_range: ``full`` (every step), ``late`` (``sigma <= 0.5``) or ``early`` (``sigma > 0.5``).
        fixed_gap: Sigma gap between the leap starts; ``None`` draws them at random (the paper's default).
    """

    name: str = "leapalign"
    alpha: float = 0.3
    tau: float = 0.1
    threshold: float | None = 0.55
    num_leaps: int = 2
    reward_on: str = "x0"
    weighting: str = "both"
    step_range: str = "full"
    fixed_gap: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"method.alpha={self.alpha} must lie in [0, 1] (0 removes the nested gradient).")
        if self.tau <= 0:
            raise ValueError(f"method.tau={self.tau} must be > 0 (the paper uses 0.1).")
        if self.num_leaps not in (1, 2, 3):
            raise ValueError(f"method.num_leaps={self.num_leaps} is invalid; allowed values: 1, 2, 3.")
        if self.reward_on not in ("x0", "x0_hat"):
            raise ValueError(f"method.reward_on={self.reward_on!r} is invalid; allowed values: x0, x0_hat.")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"method.weighting={self.weighting!r} is invalid; allowed: {', '.join(WEIGHTINGS)}.")
        if self.weighting == "d_j" and self.num_leaps < 2:
            raise ValueError("method.weighting=d_j needs num_leaps >= 2 (one leap has no intermediate connector).")
        if self.step_range not in STEP_RANGES:
            raise ValueError(f"method.step_range={self.step_range!r} is invalid; allowed: {', '.join(STEP_RANGES)}.")
        if self.fixed_gap is not None and not 0.0 < self.fixed_gap < 1.0:
            raise ValueError(f"method.fixed_gap={self.fixed_gap} must lie in (0, 1), or be null for random steps.")


class LeapAlign:
    """LeapAlign over the shared rollout engine.

    Example:
        >>> method = LeapAlign(LeapAlignConfig(alpha=0.3))
        >>> out = method.step(model, batch, reward)
        >>> out.loss.backward()
    """

    name = "leapalign"
    requires_differentiable_reward = True

    def __init__(self, cfg: LeapAlignConfig) -> None:
        self.cfg = cfg

    def step(self, model: FlowModel, batch: Batch, reward: RewardFn) -> MethodOutput:
        cfg = self.cfg
        steps = sample_leap_steps(
            batch.sigmas,
            cfg.num_leaps,
            batch.step_generator,
            step_range=cfg.step_range,
            fixed_gap=cfg.fixed_gap,
        )
        ro = Rollout(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
        pred = None  # differentiable prediction of the latent at the next leap's start (or at sigma = 0)
        d_mid = []
        for n, i in enumerate(steps):
            x_real = ro.run_to(i)
            if pred is None:  # first leap starts from the rollout latent itself
                x_conn, model_input = x_real, x_real
            else:
                d_mid.append(leap_distance(x_real, pred))
                x_conn = straight_through(pred, x_real)  # Eq. 6
                model_input = scale_grad(x_conn, cfg.alpha)  # Eq. 9: discounted nested gradient
            v = ro.grad_step(model_input)
            sigma_to = batch.sigmas[steps[n + 1]] if n + 1 < len(steps) else batch.sigmas.new_zeros(())
            pred = leap(x_conn, v, batch.sigmas[i], sigma_to)  # Eqs. 4-5
        x0_real = ro.run_to(ro.num_steps)
        assert pred is not None
        d_0 = leap_distance(x0_real, pred)
        x0 = straight_through(pred, x0_real) if cfg.reward_on == "x0" else pred  # Eq. 7

        rewards = score(model, x0, batch, reward)
        weight = self._weight(d_mid, d_0).to(rewards)
        loss = (weight * reward_loss(rewards, cfg.threshold)).mean()

        metrics = reward_metrics(rewards, cfg.threshold)
        metrics.update({"w_sim": weight.mean().item(), "d_0": d_0.mean().item()})
        if d_mid:
            metrics["d_j"] = torch.stack(d_mid).mean().item()
        for name, i in zip(("k", "j", "l"), steps, strict=False):
            metrics[name] = float(i)
            metrics[f"sigma_{name}"] = float(batch.sigmas[i])
        return MethodOutput(loss=loss, rewards=rewards.detach(), metrics=metrics)

    def _weight(self, d_mid: list[torch.Tensor], d_0: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.weighting == "none":
            return torch.ones_like(d_0)
        terms = {"both": [*d_mid, d_0], "d_j": d_mid, "d_0": [d_0]}[cfg.weighting]
        return similarity_weight(terms, cfg.tau)
