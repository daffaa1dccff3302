"""Random-weight adapters of the benchmark architectures (:mod:`benchmarks.archs`), and their memory accounting.

:func:`build` makes a family's leapalign adapter around a transformer and VAE of the published shapes with random
bf16 weights, directly on the target device (``meta``: nothing is allocated), and a :class:`RandomText` stand-in for
the frozen text encoder. :func:`param_counts` and :func:`static_bytes` count what training keeps resident.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
from collections.abc import Iterator
from functools import cache
from typing import Any

import torch
from torch import nn

from benchmarks.archs import arch_spec


class RandomText:
    """Stands in for a family's frozen text encoder: per prompt, fixed random ``(L, D)`` token embeddings, then a
    ``(P,)`` pooled vector and/or an all-real ``(L,)`` mask when the family's encoder returns them (seeded by the
    prompt, so the same prompt always gets the same tensors).

    Args:
        tokens: ``L``. dim: ``D``. dtype: dtype of the embeddings.
        pooled: ``P``, or ``None`` when the family has no pooled embedding.
        mask: dtype of the mask (``torch.long`` for Qwen-Image, ``torch.bool`` for Z-Image), or ``None``.
    """

    def __init__(
        self, tokens: int, dim: int, dtype: torch.dtype, pooled: int | None = None, mask: torch.dtype | None = None
    ) -> None:
        self.tokens, self.dim, self.dtype, self.pooled, self.mask = tokens, dim, dtype, pooled, mask
        self.device = torch.device("cpu")
        self.model = nn.Module()  # what the adapters' frozen_modules() freeze (nothing here)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, ...]:
        embeds, pooled = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            embeds.append(torch.randn(self.tokens, self.dim, generator=g))
            pooled.append(torch.randn(self.pooled or 1, generator=g))
        out = [torch.stack(embeds).to(self.device, self.dtype)]
        if self.pooled is not None:
            out.append(torch.stack(pooled).to(self.device, self.dtype))
        if self.mask is not None:
            out.append(torch.ones(len(prompts), self.tokens, dtype=self.mask, device=self.device))
        return tuple(out)

    def to(self, device: torch.device | str) -> RandomText:
        self.device = torch.device(device)
        return self


@contextlib.contextmanager
def default_dtype_device(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def _import(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def build(
    arch: str,
    finetune: str,
    tiny: bool,
    device: torch.device,
    checkpointing: bool,
    lora_rank: int = 64,
    lora_targets: list[str] | None = None,
) -> Any:
    """The adapter with random bf16 weights on ``device`` (``meta``: nothing allocated), prepared for ``finetune``.

    ``lora``: leapalign's LoRA (``prepare_for_training``: rank ``lora_rank``, alpha = rank, the family's default
    targets unless ``lora_targets``, fp32 adapters over the bf16 base). ``full``: every transformer weight trains in
    bf16 (no fp32 master copy).
    """
    import diffusers

    from leapalign.models import prepare_for_training
    from leapalign.models.config import ModelConfig

    spec = arch_spec(arch, tiny)
    device = torch.device(device)
    with default_dtype_device(torch.bfloat16, device):
        torch.manual_seed(0)
        transformer = getattr(diffusers, spec["transformer_class"])(**spec["transformer"])
        vae = getattr(diffusers, spec["vae_class"])(**spec["vae"])
    t = spec["text"]
    text = RandomText(t["tokens"], t["dim"], torch.bfloat16, t.get("pooled"), t.get("mask")).to(device)
    extra = [spec["scheduler"]] if "scheduler" in spec else []
    model = _import(spec["adapter"])(transformer, vae, text, *extra, **spec["adapter_kwargs"])
    if finetune == "lora":  # leapalign's LoRA preparation (the model name only selects validation rules)
        mcfg = ModelConfig(name="tiny-flux", finetune="lora", lora_rank=lora_rank, lora_alpha=float(lora_rank))
        mcfg.lora_targets = lora_targets
        mcfg.gradient_checkpointing = checkpointing
        prepare_for_training(model, mcfg)
    else:  # pure bf16 full fine-tuning
        vae.requires_grad_(False).eval()
        transformer.requires_grad_(True).train()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
    return model.to(device)


@cache
def param_counts(arch: str, finetune: str, lora_rank: int = 64, lora_targets: tuple[str, ...] | None = None) -> dict:
    """Exact parameter counts of the prepared model, built on the meta device: ``transformer`` (base weights, LoRA
    excluded), ``trained`` (LoRA adapters, or the whole transformer) and ``vae``."""
    targets = list(lora_targets) if lora_targets is not None else None
    model = build(arch, finetune, False, torch.device("meta"), False, lora_rank, targets)
    trained = sum(p.numel() for p in model.trainable_parameters())
    total = sum(p.numel() for p in model.transformer.parameters())
    base = total - trained if finetune == "lora" else total
    return {"transformer": base, "trained": trained, "vae": sum(p.numel() for p in model.vae.parameters())}


def static_bytes(arch: str, finetune: str) -> int:
    """Bytes the benchmark's training keeps resident before any activation (exact parameter counts):

    LoRA: the bf16 base (2 bytes a weight) and VAE, fp32 adapters with their fp32 gradients and two AdamW moments
    (16 bytes). Full: bf16 weights, gradients and two AdamW moments, plus the one bf16 temporary of the size of the
    model that torch's multi-tensor AdamW allocates in its step (``_foreach_sqrt``): 10 bytes a weight.
    """
    c = param_counts(arch, finetune)
    if finetune == "lora":
        return 2 * c["transformer"] + 16 * c["trained"] + 2 * c["vae"]
    return 10 * c["transformer"] + 2 * c["vae"]


def activation_margin(resolution: int) -> int:
    """Bytes kept free for activations: 4 GB at 512 px (checkpointed block inputs of two gradient-carrying calls,
    one block's recomputation and the VAE decoder's graph, about 3 GB for FLUX.2 [dev], plus allocator slack),
    growing with the pixel count."""
    return int(4e9 * max(1.0, (resolution / 512) ** 2))
