"""The reference policy of the policy-gradient family's KL term.

Under LoRA the reference is the base model itself: the adapters are disabled for the reference forward, which
costs no memory. Under full fine-tuning there is no base model left once the weights move, so the reference is a
frozen copy of the transformer taken before the first update: one more set of transformer weights in their
training dtype (no gradients, no optimiser state), e.g. about 24 GB for FLUX.1-dev's 12B parameters in bf16 and
5 GB for SD3.5-Medium's 2.5B. The copy is taken from the weights the model was built with, so a resumed run
compares with the same base as the run it resumes.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from leapalign.models.base import Conditioning, FlowModel
from leapalign.models.finetune import has_lora, unwrap_model

logger = logging.getLogger(__name__)


class ReferencePolicy:
    """The frozen policy a KL term is measured against.

    Args:
        model: The model about to be trained, with its initial weights (before any update or resume).

    Attributes:
        kind: ``"adapters"`` (LoRA: the adapter-disabled base) or ``"frozen-copy"`` (full fine-tuning).
        copy: The frozen transformer copy (``None`` under LoRA).
    """

    def __init__(self, model: FlowModel) -> None:
        transformer = unwrap_model(model.transformer)
        self.copy: torch.nn.Module | None = None
        if has_lora(transformer):
            self.kind = "adapters"
            return
        self.kind = "frozen-copy"
        self.copy = copy.deepcopy(transformer).requires_grad_(False).eval()
        size = sum(p.numel() * p.element_size() for p in self.copy.parameters()) / 2**30
        logger.info("KL reference: a frozen copy of the transformer (%.2f GiB more weights)", size)

    @contextmanager
    def _active(self, model: FlowModel) -> Iterator[None]:
        if self.copy is None:
            transformer = unwrap_model(model.transformer)
            transformer.disable_adapters()
            try:
                yield
            finally:
                transformer.enable_adapters()
            return
        trained = model.transformer
        model.transformer = self.copy
        try:
            yield
        finally:
            model.transformer = trained

    @torch.no_grad()
    def velocity(self, model: FlowModel, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """The reference policy's velocity at ``x`` (shape ``(B, *latent_shape)``), without gradients."""
        with self._active(model):
            return model.velocity(x, sigma, cond)
