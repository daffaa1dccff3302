"""Pieces shared by the diffusers adapters (Flux, SD3): transformer accessors, VAE coding and the transformer
loader that, under FSDP's RAM-efficient loading, reads the weights on rank 0 only (:func:`load_transformer`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from leapalign.models.finetune import unwrap_model

logger = logging.getLogger(__name__)


class TransformerPlumbing:
    """Parameter, dtype and device accessors of an adapter whose velocity network is ``self.transformer``, with its
    VAE in ``self.vae`` (``None`` in pixel space) and its text encoders behind ``self.prompt_cache``."""

    transformer: nn.Module
    vae: nn.Module | None
    prompt_cache: Any
    #: Set when the transformer was loaded for FSDP's RAM-efficient loading (:func:`fsdp_ram_efficient_loading`):
    #: ``to()`` then leaves it where loading put it (CPU on rank 0, the meta device elsewhere) for FSDP to move,
    #: fill from rank 0 and shard in ``accelerator.prepare``.
    transformer_placed_by_fsdp: bool = False

    def move_transformer(self, device: torch.device | str) -> None:
        """Moves the transformer to ``device``, unless FSDP places it (:attr:`transformer_placed_by_fsdp`)."""
        if self.transformer_placed_by_fsdp:
            logger.debug("transformer left on %s: FSDP moves and shards it in accelerator.prepare", self.device)
            return
        unwrap_model(self.transformer).to(device)

    def to(self, device: torch.device | str) -> Any:
        """Moves the transformer (unless FSDP places it: :attr:`transformer_placed_by_fsdp`), the VAE, the text
        encoders and the cached embeddings (:class:`~leapalign.models.text.PromptCache`) to ``device``; returns
        ``self``."""
        self.move_transformer(device)
        if self.vae is not None:
            self.vae.to(device)
        self.prompt_cache.to(device)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the transformer that require gradients."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype the transformer computes in (its first floating parameter)."""
        return unwrap_model(self.transformer).dtype

    @property
    def device(self) -> torch.device:
        """Device of the transformer."""
        return next(self.transformer.parameters()).device


def vae_decode(vae: nn.Module, latents: Tensor, scaling_factor: float, shift_factor: float) -> Tensor:
    """Differentiable VAE decode of unpacked latents ``(B, C, h, w)`` to images in ``[0, 1]`` ``(B, 3, H, W)``.

    Undoes the latent normalisation (``latents / scaling + shift``), decodes in the VAE's dtype and maps
    ``[-1, 1]`` to ``[0, 1]`` with a clamp, as the diffusers pipelines do.
    """
    lat = latents / scaling_factor + shift_factor
    vae_dtype = next(vae.parameters()).dtype
    img = vae.decode(lat.to(vae_dtype), return_dict=False)[0].to(latents.dtype)
    return (img * 0.5 + 0.5).clamp(0.0, 1.0)


@torch.no_grad()
def vae_encode(vae: nn.Module, images: Tensor, scaling_factor: float, shift_factor: float) -> Tensor:
    """VAE encode of images in ``[0, 1]`` ``(B, 3, H, W)`` to normalised, unpacked latents ``(B, C, h, w)``.

    The inverse of :func:`vae_decode`: ``(z - shift) * scaling`` with ``z`` the posterior mean (the mode, so the
    same image always gives the same latent; the pretraining loss adds its own noise). No gradient: the VAE is
    frozen and the images are data.
    """
    vae_dtype = next(vae.parameters()).dtype
    z = vae.encode((images * 2.0 - 1.0).to(vae_dtype)).latent_dist.mode()
    return ((z.float() - shift_factor) * scaling_factor).to(images.dtype)


def fsdp_ram_efficient_loading() -> bool:
    """Whether this process runs under FSDP with RAM-efficient loading, detected as accelerate and transformers do.

    ``accelerate launch`` with ``fsdp_cpu_ram_efficient_loading: true`` exports ``ACCELERATE_USE_FSDP`` and
    ``FSDP_CPU_RAM_EFFICIENT_LOADING``; like transformers' ``is_fsdp_enabled``, it also needs an initialised process
    group (the trainer's ``Accelerator`` creates it before the model is built), so a lone process that merely
    inherits the variables loads normally.
    """
    from accelerate.utils import parse_flag_from_env

    return (
        parse_flag_from_env("ACCELERATE_USE_FSDP")
        and parse_flag_from_env("FSDP_CPU_RAM_EFFICIENT_LOADING")
        and torch.distributed.is_available()
        and torch.distributed.is_initialized()
    )


def process_rank() -> int:
    """Global rank of this process: ``RANK`` as launchers (torchrun, accelerate launch) export it, else
    ``LOCAL_RANK``, else 0."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _cast_as_loaded(model: nn.Module, dtype: torch.dtype) -> None:
    """Casts ``model``'s floating state-dict tensors (parameters, persistent buffers) to ``dtype`` as diffusers'
    ``from_pretrained(torch_dtype=dtype)`` does (``_keep_in_fp32_modules`` stay float32, non-persistent buffers
    keep their dtype), so that every rank's tensors have rank 0's dtypes for FSDP's broadcast."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    in_state = set(model.state_dict())
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if name in in_state and tensor.is_floating_point():
            target = torch.float32 if any(k in name.split(".") for k in keep) else dtype
            if tensor.dtype != target:
                tensor.data = tensor.data.to(target)


def load_transformer(model_cls: Any, source: str | Path, dtype: torch.dtype) -> nn.Module:
    """``model_cls.from_pretrained(source, subfolder="transformer", torch_dtype=dtype)``, except on ranks > 0
    under FSDP's RAM-efficient loading (:func:`fsdp_ram_efficient_loading`).

    There the transformer is built from its config under ``accelerate.init_empty_weights()``: its parameters are on
    the meta device (buffers stay real, as accelerate and transformers do it) with the dtypes rank 0 loads, so only
    rank 0 reads the weights and holds the whole model in host memory. FSDP1's ``sync_module_states`` (with
    accelerate's ``param_init_fn``) or FSDP2's rank-0 broadcast then materialises and fills the other ranks' modules
    in ``accelerator.prepare``; until then they must not be moved or used.

    Args:
        model_cls: The diffusers transformer class (``FluxTransformer2DModel``, ``SD3Transformer2DModel``).
        source: Pipeline folder or hub id with a ``transformer`` subfolder.
        dtype: dtype of the weights.
    """
    if not (fsdp_ram_efficient_loading() and process_rank() != 0):
        return model_cls.from_pretrained(source, subfolder="transformer", torch_dtype=dtype)
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_cls.from_config(model_cls.load_config(source, subfolder="transformer"))
    _cast_as_loaded(model, dtype)
    logger.info(
        "FSDP RAM-efficient loading: rank %d builds %s on the meta device; FSDP fills it from rank 0 in prepare",
        process_rank(),
        model_cls.__name__,
    )
    return model.eval()
