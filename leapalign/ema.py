"""Exponential moving average of the trainable weights.

What the EMA holds under each kind of training, given the trainable parameters *as prepared by accelerate*
(``named_trainable(accelerator.unwrap_model(model))``):

* one process, DDP: a full copy of every trainable weight on every rank (the ranks' copies stay equal because
  their weights do).
* FSDP2 (``fully_shard``): a ``DTensor`` like the parameter, i.e. this rank's shard only.
* FSDP1 with ``use_orig_params=True``: this rank's part of each parameter (a flat slice, empty where the rank
  holds none of it).

So under FSDP the EMA is sharded exactly like the weights it follows: it costs ``1 / world_size`` of a full copy
per rank and its update needs no communication. It is updated elementwise, so the sharded EMA equals the EMA a
single process would keep, element for element. To read or write it as full tensors, swap it into the model
(:meth:`EMA.swapped`) and use the model's gather and load (:func:`leapalign.checkpoint.save_weights`,
:func:`leapalign.checkpoint.load_weights`); every rank must swap, and the EMA must be created after
``accelerator.prepare``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import get_ema_multi_avg_fn


class EMA:
    """Exponential moving average of the trainable weights.

    ``ema <- decay * ema + (1 - decay) * theta`` after every optimiser step, as the paper (decay 0.995); the update
    is ``torch.optim.swa_utils.get_ema_multi_avg_fn``. The average lives in its own tensors, cloned one by one from
    the parameters (``AveragedModel`` deep-copies, which for FSDP1's parameters, views into a flat buffer holding
    frozen weights too, would copy the whole buffer).

    Args:
        params: The trainable parameters by name, as the model uses them (after ``accelerator.prepare``).
        decay: The weight of the old average, in ``[0, 1)``.
    """

    def __init__(self, params: dict[str, nn.Parameter], decay: float) -> None:
        self.names = list(params)
        self.live = list(params.values())
        self._update = get_ema_multi_avg_fn(decay)
        with torch.no_grad():
            self.average = [p.detach().clone() for p in self.live]  # starts at the initial weights
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        self._update(self.average, [p.detach() for p in self.live], self.updates)

    def named(self) -> dict[str, Tensor]:
        """The averaged tensors by parameter name (this rank's shards under FSDP)."""
        return dict(zip(self.names, self.average, strict=True))

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges live and EMA weights (call twice to restore)."""
        for live, avg in zip(self.live, self.average, strict=True):
            tmp = live.detach().clone()
            live.copy_(avg)
            avg.copy_(tmp)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The EMA weights in the model for the duration of the block (live weights restored after, also on error)."""
        self.swap()
        try:
            yield
        finally:
            self.swap()
