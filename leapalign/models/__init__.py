"""Flow models (Flux, SD3 and their tiny random-init twins) behind one :class:`FlowModel` interface."""

from __future__ import annotations

import logging

import torch

from leapalign.models.base import Conditioning, FlowModel, check_resolution, noise_like_latents
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import (
    export_for_diffusers,
    load_trainable_state_dict,
    prepare_for_training,
    trainable_state_dict,
    unwrap_model,
)
from leapalign.models.flux import FluxAdapter, check_pretrained_path
from leapalign.models.sd3 import SD3Adapter
from leapalign.models.text import FluxTextEncoder, PromptCache, SD3TextEncoder, TextEncoder
from leapalign.models.tiny import build_tiny_flux_pipeline, build_tiny_sd3_pipeline

logger = logging.getLogger(__name__)

__all__ = [
    "Conditioning",
    "FlowModel",
    "FluxAdapter",
    "FluxTextEncoder",
    "ModelConfig",
    "PromptCache",
    "SD3Adapter",
    "SD3TextEncoder",
    "TextEncoder",
    "build_model",
    "build_tiny_flux_pipeline",
    "build_tiny_sd3_pipeline",
    "check_resolution",
    "export_for_diffusers",
    "load_trainable_state_dict",
    "noise_like_latents",
    "prepare_for_training",
    "trainable_state_dict",
    "unwrap_model",
]


def build_model(cfg: ModelConfig, device: torch.device | str = "cpu") -> FluxAdapter | SD3Adapter:
    """Builds the configured model, prepares it for training (LoRA or full) and moves it to ``device``.

    ``tiny-flux`` / ``tiny-sd3`` are random-init and built in-process from ``cfg.seed``; ``flux`` / ``sd3``
    are loaded from ``cfg.path`` (local diffusers pipeline folder or hub id).

    Args:
        cfg: The ``model.*`` configuration.
        device: Where every component ends up.

    Returns:
        The adapter, satisfying :class:`FlowModel`.
    """
    model: FluxAdapter | SD3Adapter
    if cfg.name == "shapes":
        from leapalign.worlds.shapes.model import build_shapes_model

        model = build_shapes_model(cfg)
    elif cfg.name == "tiny-flux":
        model = FluxAdapter.from_pipeline(build_tiny_flux_pipeline(cfg.seed), cfg)
    elif cfg.name == "tiny-sd3":
        model = SD3Adapter.from_pipeline(build_tiny_sd3_pipeline(cfg.seed), cfg)
    elif cfg.name == "flux":
        model = FluxAdapter.from_pretrained(check_pretrained_path(cfg.path, "flux"), cfg)
    elif cfg.name == "sd3":
        model = SD3Adapter.from_pretrained(check_pretrained_path(cfg.path, "sd3"), cfg)
    else:  # ModelConfig validates the name; kept for configs built without __post_init__
        raise ValueError(f"model.name={cfg.name!r} is unknown; allowed values: tiny-flux, tiny-sd3, flux, sd3.")
    prepare_for_training(model, cfg)
    logger.info("built model %s (finetune=%s) on %s", cfg.name, cfg.finetune, device)
    return model.to(device)
