r"""MixGRPO (Li et al., arXiv 2507.21802).

**Estimator.** PPO-clip on the per-step Gaussian likelihood ratio, only inside a sliding window: the trajectory is
the ODE except ``window_size`` stochastic steps (Flow-GRPO's :math:`g_\sigma = a\sqrt{\sigma/(1-\sigma)}`) starting
at :math:`l`, and only the window is trained. The window moves by ``window_stride`` steps every ``window_every``
iterations and rolls back to 0 past the last position (the "progressive" schedule); it is a function of the
iteration, so a resumed run continues exactly. Groups share their initial noise (as the reference, after DanceGRPO);
no KL term (beta 0 in the reference).
"""

from __future__ import annotations

from dataclasses import dataclass

from leapalign.methods.base import Batch
from leapalign.methods.grpo import GRPOOptions
from leapalign.methods.policy import PolicyGradientMethod


@dataclass
class MixGRPOConfig(GRPOOptions):
    """MixGRPO options.

    Attributes:
        name: ``mix-grpo``.
        noise_level: ``a`` of the Flow-GRPO schedule inside the window (0.7).
        window_size: ``w``, stochastic and trained steps (4).
        window_every: ``tau``, iterations between window moves (25).
        window_stride: Steps the window moves by (1).
    """

    name: str = "mix-grpo"
    noise_level: float = 0.7
    window_size: int = 4
    window_every: int = 25
    window_stride: int = 1

    def check(self) -> None:
        super().check()
        if self.window_size < 1 or self.window_every < 1 or self.window_stride < 1:
            raise ValueError("invalid value for method.window_size / window_every / window_stride: integers >= 1.")


class MixGRPO(PolicyGradientMethod):
    """MixGRPO: a sliding stochastic window inside an ODE trajectory; only the window is trained."""

    name = "mix-grpo"
    schedule = "flow-grpo"
    cfg: MixGRPOConfig

    def window_start(self, num_steps: int, iteration: int) -> int:
        """``l`` at ``iteration`` (0-based): progressive, rolling back to 0 after ``T - w``."""
        positions = num_steps - self.cfg.window_size + 1
        if positions < 1:
            raise ValueError(
                f"method.window_size={self.cfg.window_size} is longer than the {num_steps}-step trajectory "
                f"(sampler.num_steps); allowed: 1..{num_steps}."
            )
        return (iteration // self.cfg.window_every * self.cfg.window_stride) % positions

    def plan(self, num_steps: int, iteration: int, batch: Batch) -> tuple[list[int], bool]:
        start = self.window_start(num_steps, iteration)
        return list(range(start, start + self.cfg.window_size)), True
