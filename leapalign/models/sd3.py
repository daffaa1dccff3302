"""SD3 / SD3.5 as a :class:`~leapalign.models.base.FlowModel`.

Latents are unpacked, ``(B, 16, H/8, W/8)``; the transformer patchifies internally.
``timestep = 1000 * sigma``.
Guidance is true classifier-free guidance with the empty prompt (batch doubled in one call, unconditional
first, as ``StableDiffusion3Pipeline``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from torch import Tensor, nn

from leapalign.families import check_pretrained_path
from leapalign.flow.schedule import sd3_sigmas
from leapalign.models.base import Conditioning, check_resolution
from leapalign.models.common import (
    TransformerPlumbing,
    fsdp_ram_efficient_loading,
    load_transformer,
    vae_decode,
    vae_encode,
)
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import ATTENTION_TARGETS, cast_module, unwrap_model, weight_dtypes
from leapalign.models.flux import broadcast_sigma
from leapalign.models.hub import explain_load_errors
from leapalign.models.text import PromptCache, SD3TextEncoder, TextEncoder

logger = logging.getLogger(__name__)


class SD3Adapter(TransformerPlumbing):
    """``SD3Transformer2DModel`` + VAE + text encoders behind the :class:`FlowModel` interface.

    Args:
        transformer: The velocity network (may later be replaced by an accelerate/DDP wrapper).
        vae: The autoencoder (its ``scaling_factor``/``shift_factor`` are used by :meth:`decode`).
        text_encoder: Frozen text encoder producing ``(B, L, D)`` tokens and ``(B, P)`` pooled embeddings.
        guidance_scale: True CFG scale; ``<= 1`` disables CFG (conditional velocity only).
        shift: Static schedule shift of the pipeline's scheduler (3.0 for SD3 / SD3.5).
        num_train_timesteps: Training timesteps of the scheduler (1000).
        vae_scale_factor: Default ``2 ** (len(vae.config.block_out_channels) - 1)`` (8).
        max_cached_prompts: Capacity of the prompt-embedding cache (``None``: unbounded).
    """

    pipeline_class = StableDiffusion3Pipeline
    default_lora_targets: tuple[str, ...] = ATTENTION_TARGETS

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKL,
        text_encoder: TextEncoder,
        guidance_scale: float = 4.5,
        shift: float = 3.0,
        num_train_timesteps: int = 1000,
        vae_scale_factor: int | None = None,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        config = unwrap_model(transformer).config
        self.transformer = transformer
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder
        self.prompt_cache = PromptCache(text_encoder, max_cached_prompts)
        self.guidance_scale = float(guidance_scale)
        self.shift = float(shift)
        self.num_train_timesteps = int(num_train_timesteps)
        self.latent_channels = int(config.in_channels)
        self.patch_size = int(config.patch_size)
        self.vae_scale_factor = vae_scale_factor or 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.resolutions_multiple = self.vae_scale_factor * self.patch_size

    @property
    def uses_true_cfg(self) -> bool:
        """True classifier-free guidance is used (``guidance_scale > 1``)."""
        return self.guidance_scale > 1.0

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Encodes prompts (each distinct prompt once): embeddings ``(B, 77 + L_t5, D)``, pooled ``(B, P)``.

        Negative (empty-prompt) embeddings are filled only when true CFG is used.
        """
        embeds, pooled = self.prompt_cache.encode(prompts)
        neg, neg_pooled = self.prompt_cache.negative(len(prompts)) if self.uses_true_cfg else (None, None)
        return Conditioning(embeds, pooled, neg, neg_pooled)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, H/f, W/f)``, e.g. ``(16, 128, 128)`` for a 1024x1024 SD3.5 image."""
        check_resolution(self, height, width)
        f = self.vae_scale_factor
        return self.latent_channels, height // f, width // f

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """SD3 static-shift schedule ``(num_steps + 1,)`` (independent of the resolution)."""
        check_resolution(self, height, width)
        return sd3_sigmas(num_steps, shift=self.shift, num_train_timesteps=self.num_train_timesteps)

    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """Guided velocity, called as ``StableDiffusion3Pipeline`` calls the transformer for one step.

        Args:
            x: Latents ``(B, C, H/f, W/f)``.
            sigma: Scalar or ``(B,)`` noise level in ``[0, 1]`` (passed as ``timestep = 1000 * sigma``).
            cond: Conditioning of batch ``B``.

        Returns:
            ``v_u + g (v_c - v_u)`` (or ``v_c`` without CFG), shape and dtype of ``x``.
        """
        b = x.shape[0]
        dtype = self.compute_dtype
        hidden = x.to(dtype)
        timestep = broadcast_sigma(sigma, b, x.device, dtype) * self.num_train_timesteps
        embeds, pooled = cond.prompt_embeds.to(x.device, dtype), cond.pooled.to(x.device, dtype)
        if not self.uses_true_cfg:
            v = self.transformer(
                hidden_states=hidden,
                timestep=timestep,
                encoder_hidden_states=embeds,
                pooled_projections=pooled,
                return_dict=False,
            )[0]
            return v.to(x.dtype)
        if cond.negative_embeds is None or cond.negative_pooled is None:
            raise ValueError("true CFG needs negative embeddings: build the Conditioning with encode_prompts.")
        neg = cond.negative_embeds.to(x.device, dtype)
        neg_pooled = cond.negative_pooled.to(x.device, dtype)
        out = self.transformer(
            hidden_states=torch.cat([hidden, hidden]),
            timestep=torch.cat([timestep, timestep]),
            encoder_hidden_states=torch.cat([neg, embeds]),
            pooled_projections=torch.cat([neg_pooled, pooled]),
            return_dict=False,
        )[0]
        v_uncond, v_cond = out.chunk(2)
        return (v_uncond + self.guidance_scale * (v_cond - v_uncond)).to(x.dtype)

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes ``(B, C, H/f, W/f)`` latents (differentiably) to ``[0, 1]`` images ``(B, 3, H, W)``."""
        expected = self.latent_shape(height, width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {height}x{width} ({expected}).")
        return vae_decode(self.vae, latents, self.scaling_factor, self.shift_factor)

    def encode_pixels(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, 3, H, W)`` -> normalised latents ``(B, C, H/f, W/f)``, the VAE's posterior
        mean (no gradient), as the pretraining-loss replay needs."""
        return vae_encode(self.vae, images, self.scaling_factor, self.shift_factor)

    @classmethod
    def from_pipeline(cls, pipe: StableDiffusion3Pipeline, cfg: ModelConfig) -> SD3Adapter:
        """Wraps a loaded ``StableDiffusion3Pipeline``'s components (shared, not copied), cast per ``cfg``."""
        frozen, transformer_dtype = weight_dtypes(cfg)
        t5 = cast_module(pipe.text_encoder_3, frozen) if pipe.text_encoder_3 is not None else None
        text = SD3TextEncoder(
            cast_module(pipe.text_encoder, frozen),
            pipe.tokenizer,
            cast_module(pipe.text_encoder_2, frozen),
            pipe.tokenizer_2,
            t5,
            pipe.tokenizer_3,
            max_sequence_length=_sd3_max_length(cfg),
            joint_attention_dim=pipe.transformer.config.joint_attention_dim,
        )
        return cls(
            cast_module(pipe.transformer, transformer_dtype),
            cast_module(pipe.vae, frozen),
            text,
            guidance_scale=cfg.guidance_scale,
            **_scheduler_settings(pipe.scheduler.config),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig) -> SD3Adapter:
        """Loads the components of a diffusers SD3 / SD3.5 pipeline folder (local dir or hub id) one by one.

        Under FSDP's RAM-efficient loading, ranks > 0 build the transformer on the meta device and only rank 0
        reads its weights (:func:`~leapalign.models.common.load_transformer`); the frozen VAE and text encoders,
        which FSDP does not shard, load on every rank.

        Args:
            path: Pipeline folder with ``transformer``, ``vae``, ``text_encoder``/``_2``/``_3``,
                ``tokenizer``/``_2``/``_3`` and ``scheduler`` subfolders (``text_encoder_3`` may be absent).
            cfg: Model configuration (dtypes, guidance, T5 length).
        """
        from transformers import AutoTokenizer, CLIPTextModelWithProjection, T5EncoderModel

        source = check_pretrained_path(path, "sd3")
        frozen, transformer_dtype = weight_dtypes(cfg)
        with explain_load_errors(source):
            settings = _scheduler_settings(FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler"))
            transformer = load_transformer(SD3Transformer2DModel, source, transformer_dtype)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=frozen)
            has_t5 = not Path(source).is_dir() or (Path(source) / "text_encoder_3").is_dir()
            text = SD3TextEncoder(
                CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder", dtype=frozen),
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
                CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=frozen),
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2"),
                T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", dtype=frozen) if has_t5 else None,
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer_3") if has_t5 else None,
                max_sequence_length=_sd3_max_length(cfg),
                joint_attention_dim=transformer.config.joint_attention_dim,
            )
        model = cls(transformer, vae, text, guidance_scale=cfg.guidance_scale, **settings)
        model.transformer_placed_by_fsdp = fsdp_ram_efficient_loading()
        return model


def _sd3_max_length(cfg: ModelConfig) -> int:
    if cfg.max_sequence_length > 512:
        raise ValueError(f"model.max_sequence_length={cfg.max_sequence_length} must be <= 512 for SD3.")
    return cfg.max_sequence_length


def _scheduler_settings(config: Any) -> dict[str, Any]:
    """``shift`` and ``num_train_timesteps`` of an SD3 scheduler config; rejects what ``sd3_sigmas`` lacks."""
    unsupported = [
        key
        for key in (
            "use_dynamic_shifting",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "invert_sigmas",
            "shift_terminal",
        )
        if config.get(key)
    ]
    if unsupported:
        raise ValueError(
            f"the SD3 scheduler uses {', '.join(unsupported)}, which leapalign's static-shift schedule does "
            f"not implement; use a pipeline whose scheduler has only a static shift (as SD3 / SD3.5)."
        )
    return {
        "shift": float(config.get("shift", 3.0)),
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
    }
