r"""DanceGRPO (Xue et al., arXiv 2505.07818).

**Estimator.** PPO-clip on the per-step Gaussian likelihood ratio of the reverse SDE with a constant diffusion
coefficient :math:`g_\sigma = \eta`, per-group advantages; every step is stochastic, all ``G`` samples of a group
share one initial noise (their diversity comes from the SDE noise alone), and each sample trains on its own random
``int(T * timestep_fraction)`` of the steps before the last. No KL term in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from leapalign.methods.base import Batch
from leapalign.methods.grpo import GRPOOptions
from leapalign.methods.policy import PolicyGradientMethod


@dataclass
class DanceGRPOConfig(GRPOOptions):
    """DanceGRPO options.

    Attributes:
        name: ``dance-grpo``.
        noise_level: ``eta``, the constant diffusion coefficient (0.3 in the reference).
        timestep_fraction: Share of the steps each sample trains on, drawn at random per sample (0.6).
        adv_eps: The reference's 1e-8 (near-ties are then guarded by the advantage clip only).
    """

    name: str = "dance-grpo"
    noise_level: float = 0.3
    timestep_fraction: float = 0.6
    adv_eps: float = 1e-8

    def check(self) -> None:
        super().check()
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError("invalid value for method.timestep_fraction: it must lie in (0, 1].")


class DanceGRPO(PolicyGradientMethod):
    """DanceGRPO: constant-eta SDE, shared initial noise per group, random trained steps per sample."""

    name = "dance-grpo"
    schedule = "dance-grpo"
    cfg: DanceGRPOConfig

    def plan(self, num_steps: int, iteration: int, batch: Batch) -> tuple[list[int], bool]:
        return list(range(num_steps)), True

    def trained(self, sde_steps: list[int], num_samples: int, num_steps: int, batch: Batch) -> Tensor:
        candidates = [k for k, i in enumerate(sde_steps) if i < num_steps - 1]  # the last step is never trained
        count = max(1, min(len(candidates), int(num_steps * self.cfg.timestep_fraction)))
        mask = torch.zeros(num_samples, len(sde_steps), dtype=torch.bool)
        for b in range(num_samples):  # shared by every rank (step_generator), so every rank runs the same steps
            pick = torch.randperm(len(candidates), generator=batch.step_generator)[:count]
            mask[b, [candidates[int(p)] for p in pick]] = True
        return mask
