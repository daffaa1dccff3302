"""Flow models (Flux, SD3 and their tiny random-init twins) behind one :class:`FlowModel` interface, and the
model registry :data:`MODELS` that plugins extend. Loading from a folder or the hub turns hub and OS errors into
one-line messages naming the fix (:func:`explain_load_errors`, usable by a plugin's own builder)."""

from __future__ import annotations

import logging

import torch

from leapalign.families import FAMILIES, Family, check_pretrained_path
from leapalign.models.base import Conditioning, FlowModel, check_resolution, noise_like_latents
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import (
    export_for_diffusers,
    load_trainable_state_dict,
    prepare_for_training,
    trainable_state_dict,
    unwrap_model,
)
from leapalign.models.flux import FluxAdapter
from leapalign.models.hub import explain_load_errors
from leapalign.models.registry import MODELS
from leapalign.models.sd3 import SD3Adapter
from leapalign.models.text import FluxTextEncoder, PromptCache, SD3TextEncoder, TextEncoder
from leapalign.models.tiny import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

logger = logging.getLogger(__name__)

__all__ = [
    "Conditioning",
    "FAMILIES",
    "Family",
    "FlowModel",
    "FluxAdapter",
    "FluxTextEncoder",
    "MODELS",
    "ModelConfig",
    "PromptCache",
    "SD3Adapter",
    "SD3TextEncoder",
    "TextEncoder",
    "build_model",
    "build_tiny_flux_pipeline",
    "build_tiny_sd3_pipeline",
    "check_pretrained_path",
    "check_resolution",
    "explain_load_errors",
    "export_for_diffusers",
    "load_trainable_state_dict",
    "noise_like_latents",
    "prepare_for_training",
    "trainable_state_dict",
    "unwrap_model",
]


# The built-in builders, declared in MODELS by import path (with their descriptions) in leapalign.registry.
def _tiny_flux(cfg: ModelConfig) -> FluxAdapter:
    return FluxAdapter.from_pipeline(build_tiny_flux_pipeline(cfg.seed), cfg)


def _tiny_sd3(cfg: ModelConfig) -> SD3Adapter:
    return SD3Adapter.from_pipeline(build_tiny_sd3_pipeline(cfg.seed), cfg)


def _flux(cfg: ModelConfig) -> FluxAdapter:
    return FluxAdapter.from_pretrained(check_pretrained_path(cfg.path, "flux"), cfg)


def _sd3(cfg: ModelConfig) -> SD3Adapter:
    return SD3Adapter.from_pretrained(check_pretrained_path(cfg.path, "sd3"), cfg)


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> FlowModel:
    """Builds the configured model, prepares it for training (LoRA or full) and moves it to ``device``.

    The builder comes from :data:`MODELS` (``cfg.name``: a registered name or an import path). Under FSDP with
    RAM-efficient loading (``fsdp_cpu_ram_efficient_loading: true``, as leapalign/accelerate/fsdp.yaml), the
    ``flux`` and ``sd3`` transformers hold real weights on rank 0 only (on the CPU) and are on the meta device, LoRA
    adapters included, on the other ranks; they stay there (``transformer_placed_by_fsdp``) until
    ``accelerator.prepare`` moves, fills from rank 0 and shards them, while the frozen parts go to ``device``.

    Args:
        cfg: The ``model.*`` configuration.
        device: Where every component ends up.

    Returns:
        The adapter, satisfying :class:`FlowModel`.
    """
    model = MODELS.resolve(cfg.name)(cfg)
    prepare_for_training(model, cfg)
    if cfg.text_encoder_device is not None:
        cache = getattr(model, "prompt_cache", None)
        if cache is None:
            raise ValueError(
                f"model.text_encoder_device is set but {type(model).__name__} has no prompt_cache to honour it; "
                f"leave model.text_encoder_device unset for this model."
            )
        cache.encoder_device = cfg.text_encoder_device
    where = (
        "frozen parts on %s, transformer left for FSDP"
        if getattr(model, "transformer_placed_by_fsdp", False)
        else "on %s"
    )
    logger.info("built model %s (finetune=%s) " + where, cfg.name, cfg.finetune, device)
    return model.to(device)
