"""Exponential moving average of the trainable weights."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


class EMA:
    """Exponential moving average of the trainable weights (``torch.optim.swa_utils.AveragedModel``).

    ``ema <- decay * ema + (1 - decay) * theta`` after every optimiser step, as the paper (decay 0.995).
    """

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.names = list(params)
        self.live = nn.ParameterList(params.values())
        self.avg = AveragedModel(self.live, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)
        self.avg.update_parameters(self.live)  # starts at the initial weights

    def update(self) -> None:
        self.avg.update_parameters(self.live)

    def named(self) -> dict[str, nn.Parameter]:
        return dict(zip(self.names, self.avg.module, strict=True))

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges live and EMA weights (call twice to restore)."""
        for live, avg in zip(self.live, self.avg.module, strict=True):
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)
