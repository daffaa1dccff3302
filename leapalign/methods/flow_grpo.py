r"""Flow-GRPO (Liu et al., NeurIPS 2025, arXiv 2505.05470), and its Fast window.

**Estimator.** PPO-clip on the per-step Gaussian likelihood ratio of the reverse SDE with
:math:`g_\sigma = a\sqrt{\sigma/(1-\sigma)}`, group advantages :math:`(r - \bar r_g)/(\mathrm{std} + \epsilon)`
(per group, or the iteration's global std), the same advantage at every trained step; optional KL to the base model.
Every step is stochastic and the first ``int(T * timestep_fraction)`` are trained (0.99: all but the last). With
``fast``, the trajectory is the ODE except a window of ``window_size`` stochastic steps starting uniformly in
``[0, T * window_range - window_size]`` (shared by every rank), and only the window is trained (Flow-GRPO-Fast).
Each sample of a group has its own initial noise (the paper, App. C.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from leapalign.methods.base import Batch
from leapalign.methods.grpo import GRPOOptions
from leapalign.methods.policy import PolicyGradientMethod


@dataclass
class FlowGRPOConfig(GRPOOptions):
    """Flow-GRPO options (the shared ones: :class:`~leapalign.methods.grpo.GRPOOptions`).

    Attributes:
        name: ``flow-grpo``.
        timestep_fraction: Share of the steps trained, from the first (0.99 of 10: the first 9).
        fast: Flow-GRPO-Fast: a short stochastic window on an otherwise deterministic trajectory.
        window_size: Stochastic (and trained) steps of the Fast window.
        window_range: The window lies in the first ``window_range`` share of the steps (0.5 in the reference).
    """

    name: str = "flow-grpo"
    noise_level: float = 0.7
    timestep_fraction: float = 0.99
    fast: bool = False
    window_size: int = 2
    window_range: float = 0.5

    def check(self) -> None:
        super().check()
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError("invalid value for method.timestep_fraction: it must lie in (0, 1].")
        if self.window_size < 1 or not 0 < self.window_range <= 1:
            raise ValueError("invalid values for method.window_size / window_range: an integer >= 1 and (0, 1].")


class FlowGRPO(PolicyGradientMethod):
    """Flow-GRPO: every step stochastic (or a Fast window), PPO-clip over the trained steps."""

    name = "flow-grpo"
    schedule = "flow-grpo"
    cfg: FlowGRPOConfig

    def plan(self, num_steps: int, iteration: int, batch: Batch) -> tuple[list[int], bool]:
        if not self.cfg.fast:
            return list(range(num_steps)), False
        size, hi = self.cfg.window_size, int(num_steps * self.cfg.window_range)
        if size > hi:
            raise ValueError(
                f"method.window_size={size} does not fit in the first {hi} of {num_steps} steps "
                f"(method.window_range={self.cfg.window_range}); lower it or raise sampler.num_steps."
            )
        start = int(torch.randint(0, hi - size + 1, (1,), generator=batch.step_generator))
        return list(range(start, start + size)), False

    def trained(self, sde_steps: list[int], num_samples: int, num_steps: int, batch: Batch) -> Tensor:
        limit = num_steps if self.cfg.fast else max(1, int(num_steps * self.cfg.timestep_fraction))
        row = torch.tensor([i < limit for i in sde_steps], dtype=torch.bool)
        return row.expand(num_samples, -1).clone()
