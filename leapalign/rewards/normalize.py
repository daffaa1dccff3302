"""Per-reward running normalisation for multi-reward training (``reward.normalize: running``).

Rewards live on different scales (HPSv2 about 0.3, PickScore about 22, ImageReward about 0 +- 1), so a raw
weighted sum lets the largest-scale reward dominate whatever the weights. With running normalisation each term
is standardised by an exponential moving average of its own mean and variance before weighting::

    r = sum_i w_i (r_i - m_i) / sqrt(v_i + eps)

``m_i`` and ``v_i`` are bias-corrected EMAs (as in Adam) of the batch mean and of the batch mean square, updated
from every training batch before it is normalised (the first batch is standardised by its own statistics).
Under several processes the batch statistics are averaged over all ranks first, so every rank uses the same
``m_i`` and ``v_i``. The state is part of :meth:`state_dict` for exact resumption.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


class RunningNormalizer:
    """Standardises scores with bias-corrected EMA statistics.

    Args:
        momentum: EMA decay in ``[0, 1)`` (0.99 averages roughly the last 100 batches).
        eps: Added to the variance before the square root.
    """

    def __init__(self, momentum: float = 0.99, eps: float = 1e-8) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"reward.momentum={momentum} must be in [0, 1).")
        self.momentum, self.eps = momentum, eps
        self.mean_ema = 0.0
        self.sq_ema = 0.0
        self.count = 0

    @property
    def mean(self) -> float:
        """Bias-corrected running mean (0 before the first update)."""
        return self.mean_ema / (1.0 - self.momentum**self.count) if self.count else 0.0

    @property
    def var(self) -> float:
        """Bias-corrected running variance (1 before the first update)."""
        if not self.count:
            return 1.0
        return max(self.sq_ema / (1.0 - self.momentum**self.count) - self.mean**2, 0.0)

    @torch.no_grad()
    def update(self, scores: Tensor) -> None:
        """Folds the batch ``scores`` ``(B,)`` into the statistics (averaged over ranks when distributed)."""
        stats = torch.stack([scores.detach().float().mean(), scores.detach().float().pow(2).mean()])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(stats)
            stats /= dist.get_world_size()
        batch_mean, batch_sq = (float(v) for v in stats.cpu())
        m = self.momentum
        self.mean_ema = m * self.mean_ema + (1.0 - m) * batch_mean
        self.sq_ema = m * self.sq_ema + (1.0 - m) * batch_sq
        self.count += 1

    def normalize(self, scores: Tensor) -> Tensor:
        """``(scores - mean) / sqrt(var + eps)``, differentiable in ``scores``."""
        return (scores - self.mean) / (self.var + self.eps) ** 0.5

    def __call__(self, scores: Tensor, update: bool = True) -> Tensor:
        if update:
            self.update(scores)
        return self.normalize(scores)

    def state_dict(self) -> dict[str, float]:
        return {"mean_ema": self.mean_ema, "sq_ema": self.sq_ema, "count": float(self.count)}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean_ema, self.sq_ema = float(state["mean_ema"]), float(state["sq_ema"])
        self.count = int(state["count"])
