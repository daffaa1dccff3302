"""FLUX.1 (and Flux-architecture pixel-space models) as a :class:`~leapalign.models.base.FlowModel`.

Latent layout: a *token grid* ``(B, H/(2f), W/(2f), 4C)``, where ``f`` is the VAE scale factor and ``C`` the
latent channels. Each token is a 2x2 patch of latent pixels packed exactly as ``FluxPipeline._pack_latents``
does; ``x.reshape(B, -1, 4C)`` is the pipeline's packed ``(B, N, 4C)`` layout
(see :meth:`FluxAdapter.to_tokens`).
Keeping the grid makes the latent self-describing (non-square resolutions need no side information).

With ``vae=None`` the model works directly in pixel space on pixels in ``[-1, 1]``: with ``f = 1`` a token is a
2x2 pixel patch (``C = 3``); with ``vae_scale_factor = f > 1`` the image is first folded space-to-depth
(``pixel_unshuffle``, ``C = 3 f^2``), so a token is a ``2f x 2f`` patch. Decoding is the exact inverse.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
from torch import Tensor, nn

from leapalign.families import check_pretrained_path
from leapalign.flow.schedule import flux_sigmas
from leapalign.models.base import Conditioning, Generators, check_resolution, pipeline_randn
from leapalign.models.common import (
    TransformerPlumbing,
    fsdp_ram_efficient_loading,
    load_transformer,
    vae_decode,
    vae_encode,
)
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import ATTENTION_TARGETS, cast_module, unwrap_model, weight_dtypes
from leapalign.models.hub import explain_load_errors
from leapalign.models.text import FluxTextEncoder, PromptCache, TextEncoder

logger = logging.getLogger(__name__)

# FLUX.1 dynamic-shift scheduler constants (the defaults of ``flux_mu``, used by ``flux_sigmas``).
FLUX_SHIFT_CONFIG = {
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}


def pack_latents(latents: Tensor) -> Tensor:
    """``(B, C, H, W) -> (B, H/2 * W/2, 4C)``, exactly ``FluxPipeline._pack_latents``."""
    b, c, h, w = latents.shape
    x = latents.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(packed: Tensor, height: int, width: int, vae_scale_factor: int) -> Tensor:
    """``(B, N, 4C) -> (B, C, H/f, W/f)`` for ``height x width`` pixels (``FluxPipeline._unpack_latents``)."""
    b, _, c4 = packed.shape
    h, w = 2 * (height // (vae_scale_factor * 2)), 2 * (width // (vae_scale_factor * 2))
    x = packed.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c4 // 4, h, w)


def latent_image_ids(grid_h: int, grid_w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Flux positional ids of the packed token grid, shape ``(grid_h * grid_w, 3)`` (no batch dimension)."""
    ids = torch.zeros(grid_h, grid_w, 3)
    ids[..., 1] += torch.arange(grid_h)[:, None]
    ids[..., 2] += torch.arange(grid_w)[None, :]
    return ids.reshape(grid_h * grid_w, 3).to(device=device, dtype=dtype)


def broadcast_sigma(sigma: Tensor | float, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A scalar or ``(B,)`` sigma as a ``(B,)`` tensor on ``device`` in ``dtype``."""
    s = torch.as_tensor(sigma).to(device=device, dtype=dtype).reshape(-1)
    if s.numel() == 1:
        return s.expand(batch)
    if s.numel() != batch:
        raise ValueError(f"sigma has {s.numel()} entries but the batch has {batch} samples.")
    return s


class FluxAdapter(TransformerPlumbing):
    """``FluxTransformer2DModel`` + VAE + text encoders behind the :class:`FlowModel` interface.

    Args:
        transformer: The velocity network (may later be replaced by an accelerate/DDP wrapper).
        vae: The autoencoder, or ``None`` for pixel-space models.
        text_encoder: Frozen text encoder producing ``(B, L, D)`` tokens and ``(B, P)`` pooled embeddings.
        guidance_scale: Embedded guidance value when ``transformer.config.guidance_embeds``; otherwise true
            classifier-free guidance with the empty prompt when ``> 1``, else conditional only.
        vae_scale_factor: Pixels per latent pixel; default ``2 ** (len(vae.config.block_out_channels) - 1)``
            (8 for FLUX.1), or 1 without a VAE.
        max_cached_prompts: Capacity of the prompt-embedding cache (``None``: unbounded).
    """

    pipeline_class = FluxPipeline
    default_lora_targets: tuple[str, ...] = ATTENTION_TARGETS

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKL | None,
        text_encoder: TextEncoder,
        guidance_scale: float = 3.5,
        vae_scale_factor: int | None = None,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        config = unwrap_model(transformer).config
        if config.in_channels % 4:
            raise ValueError(f"Flux in_channels={config.in_channels} must be 4 x the latent channels.")
        self.transformer = transformer
        self.vae = vae
        self.text_encoder = text_encoder
        self.prompt_cache = PromptCache(text_encoder, max_cached_prompts)
        self.guidance_scale = float(guidance_scale)
        self.guidance_embeds = bool(config.guidance_embeds)
        self.token_dim = int(config.in_channels)
        self.latent_channels = self.token_dim // 4
        if vae is None:
            self.vae_scale_factor = vae_scale_factor or 1
            self.scaling_factor, self.shift_factor = 1.0, 0.0
        else:
            vae.requires_grad_(False).eval()
            self.vae_scale_factor = vae_scale_factor or 2 ** (len(vae.config.block_out_channels) - 1)
            self.scaling_factor = float(vae.config.scaling_factor)
            self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.resolutions_multiple = self.vae_scale_factor * 2
        self._image_ids: dict[tuple[int, int, torch.device, torch.dtype], Tensor] = {}

    @property
    def uses_true_cfg(self) -> bool:
        """True classifier-free guidance is used (no guidance embedding and ``guidance_scale > 1``)."""
        return not self.guidance_embeds and self.guidance_scale > 1.0

    # ----------------------------------------------------------------------------------------- conditioning
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Encodes prompts (each distinct prompt once) into embeddings ``(B, L, D)``, pooled ``(B, P)``.

        Negative (empty-prompt) embeddings are filled only when true CFG is used. ``extras["txt_ids"]`` holds
        the ``(L, 3)`` zero text ids.
        """
        embeds, pooled = self.prompt_cache.encode(prompts)
        neg, neg_pooled = self.prompt_cache.negative(len(prompts)) if self.uses_true_cfg else (None, None)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=embeds.device, dtype=embeds.dtype)
        return Conditioning(embeds, pooled, neg, neg_pooled, extras={"txt_ids": txt_ids})

    # ----------------------------------------------------------------------------------------------- layout
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(H / (2f), W / (2f), 4C)``: the packed token grid of one sample."""
        check_resolution(self, height, width)
        m = self.resolutions_multiple
        return height // m, width // m, self.token_dim

    def to_tokens(self, latents: Tensor) -> Tensor:
        """Model layout ``(B, h, w, 4C)`` -> the pipeline's packed tokens ``(B, h * w, 4C)``."""
        return latents.reshape(latents.shape[0], -1, latents.shape[-1])

    def from_tokens(self, tokens: Tensor, height: int, width: int) -> Tensor:
        """Pipeline tokens ``(B, N, 4C)`` -> model layout ``(B, h, w, 4C)`` for ``height x width`` pixels."""
        return tokens.reshape(tokens.shape[0], *self.latent_shape(height, width))

    def pack(self, latents: Tensor) -> Tensor:
        """Unpacked latents ``(B, C, H/f, W/f)`` -> model layout ``(B, H/(2f), W/(2f), 4C)``."""
        b, _, h, w = latents.shape
        return pack_latents(latents).reshape(b, h // 2, w // 2, -1)

    def unpack(self, latents: Tensor) -> Tensor:
        """Model layout ``(B, h, w, 4C)`` -> unpacked latents ``(B, C, 2h, 2w)``."""
        b, h, w, _ = latents.shape
        f = self.vae_scale_factor
        return unpack_latents(self.to_tokens(latents), 2 * f * h, 2 * f * w, f)

    def initial_noise(self, batch: int, height: int, width: int, generator: Generators) -> Tensor:
        """Float32 noise ``(B, h, w, 4C)`` on the generator's device, drawn as ``FluxPipeline.prepare_latents`` does.

        The pipeline draws unpacked ``(B, C, 2h, 2w)`` noise and packs it; drawing in the packed layout would give
        other noise for the same generator. Pixel-space models (``vae=None``) have no pipeline: their noise is drawn
        in the token layout, as it always was (ShapesWorld's documented results depend on it).

        Args:
            batch: Number of images.
            height: Image height in pixels.
            width: Image width in pixels.
            generator: One generator for the batch or one per image, as the pipeline takes.
        """
        h, w, c4 = self.latent_shape(height, width)
        if self.vae is None:
            return pipeline_randn((batch, h, w, c4), generator)
        return self.pack(pipeline_randn((batch, self.latent_channels, 2 * h, 2 * w), generator))

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """FLUX.1 schedule ``(num_steps + 1,)`` with the shift of ``H/16 * W/16`` image tokens."""
        h, w, _ = self.latent_shape(height, width)
        return flux_sigmas(num_steps, h * w)

    # -------------------------------------------------------------------------------------------- velocity
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """Guided velocity, called as ``FluxPipeline`` calls the transformer for one step.

        Args:
            x: Latents ``(B, h, w, 4C)``.
            sigma: Scalar or ``(B,)`` noise level in ``[0, 1]`` (passed as ``timestep``; Flux scales by 1000).
            cond: Conditioning of batch ``B``.

        Returns:
            Velocity ``(B, h, w, 4C)`` in the dtype of ``x``.
        """
        b, h, w, c4 = x.shape
        dtype = self.compute_dtype
        hidden = x.reshape(b, h * w, c4).to(dtype)
        timestep = broadcast_sigma(sigma, b, x.device, dtype)
        embeds, pooled = cond.prompt_embeds.to(x.device, dtype), cond.pooled.to(x.device, dtype)
        txt_ids = cond.extras.get("txt_ids")
        if txt_ids is None:
            txt_ids = torch.zeros(embeds.shape[1], 3, device=x.device, dtype=dtype)
        kwargs: dict[str, Any] = {
            "txt_ids": txt_ids.to(x.device),
            "img_ids": self._ids(h, w, x.device, dtype),
            "return_dict": False,
        }
        if self.uses_true_cfg:
            if cond.negative_embeds is None or cond.negative_pooled is None:
                raise ValueError("true CFG needs negative embeddings: build the Conditioning with encode_prompts.")
            neg = cond.negative_embeds.to(x.device, dtype)
            neg_pooled = cond.negative_pooled.to(x.device, dtype)
            out = self.transformer(
                hidden_states=torch.cat([hidden, hidden]),
                timestep=torch.cat([timestep, timestep]),
                guidance=None,
                pooled_projections=torch.cat([neg_pooled, pooled]),
                encoder_hidden_states=torch.cat([neg, embeds]),
                **kwargs,
            )[0]
            v_uncond, v_cond = out.chunk(2)
            v = v_uncond + self.guidance_scale * (v_cond - v_uncond)
        else:
            guidance = None
            if self.guidance_embeds:
                guidance = torch.full((b,), self.guidance_scale, device=x.device, dtype=torch.float32)
            v = self.transformer(
                hidden_states=hidden,
                timestep=timestep,
                guidance=guidance,
                pooled_projections=pooled,
                encoder_hidden_states=embeds,
                **kwargs,
            )[0]
        return v.reshape(b, h, w, c4).to(x.dtype)

    def _ids(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        key = (h, w, device, dtype)
        if key not in self._image_ids:
            self._image_ids[key] = latent_image_ids(h, w, device, dtype)
        return self._image_ids[key]

    # ---------------------------------------------------------------------------------------------- decode
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes ``(B, h, w, 4C)`` latents (differentiably) to ``[0, 1]`` images ``(B, C_img, H, W)``.

        ``C_img`` is 3 for the VAE (and for RGB pixel-space models).
        """
        expected = self.latent_shape(height, width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {height}x{width} ({expected}).")
        lat = self.unpack(latents)
        if self.vae is not None:
            return vae_decode(self.vae, lat, self.scaling_factor, self.shift_factor)
        # pixel space; f > 1 is a space-to-depth "autoencoder" (f x f pixels per latent pixel)
        img = F.pixel_shuffle(lat, self.vae_scale_factor) if self.vae_scale_factor > 1 else lat
        return (img * 0.5 + 0.5).clamp(0.0, 1.0)

    def encode_pixels(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, C_img, H, W)`` -> packed latents ``(B, h, w, 4C)`` (the pretraining-loss replay).

        With a VAE: its posterior mean, normalised as :meth:`decode` expects (no gradient). In pixel space: the
        exact inverse of :meth:`decode` (before clamping), used to train pixel-space models from scratch.
        """
        if self.vae is not None:
            return self.pack(vae_encode(self.vae, images, self.scaling_factor, self.shift_factor))
        x = images * 2.0 - 1.0
        if self.vae_scale_factor > 1:
            x = F.pixel_unshuffle(x, self.vae_scale_factor)
        return self.pack(x)

    # -------------------------------------------------------------------------------------------- plumbing
    def to(self, device: torch.device | str) -> FluxAdapter:
        """As :meth:`TransformerPlumbing.to` (a pixel-space model has no VAE), and drops the cached position ids."""
        super().to(device)
        self._image_ids.clear()
        return self

    # ------------------------------------------------------------------------------------------- factories
    @classmethod
    def from_pipeline(cls, pipe: FluxPipeline, cfg: ModelConfig) -> FluxAdapter:
        """Wraps the components of a loaded ``FluxPipeline``, casting them to the dtypes ``cfg`` asks for.

        Frozen parts (VAE, text encoders) go to ``cfg.weights_dtype``; the transformer too under LoRA, float32
        for full fine-tuning. The pipeline's modules are shared, not copied.
        """
        frozen, transformer_dtype = weight_dtypes(cfg)
        _check_scheduler(pipe.scheduler.config)
        text = FluxTextEncoder(
            cast_module(pipe.text_encoder, frozen),
            pipe.tokenizer,
            cast_module(pipe.text_encoder_2, frozen),
            pipe.tokenizer_2,
            max_sequence_length=cfg.max_sequence_length,
        )
        vae = cast_module(pipe.vae, frozen) if pipe.vae is not None else None
        return cls(cast_module(pipe.transformer, transformer_dtype), vae, text, guidance_scale=cfg.guidance_scale)

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig) -> FluxAdapter:
        """Loads the components of a diffusers FLUX.1 pipeline folder (local directory or hub id) one by one.

        Under FSDP's RAM-efficient loading, ranks > 0 build the transformer on the meta device and only rank 0
        reads its weights (:func:`~leapalign.models.common.load_transformer`); the frozen VAE and text encoders,
        which FSDP does not shard, load on every rank.

        Args:
            path: Pipeline folder with ``transformer``, ``vae``, ``text_encoder``, ``tokenizer``,
                ``text_encoder_2``, ``tokenizer_2`` and ``scheduler`` subfolders.
            cfg: Model configuration (dtypes, guidance, T5 length).
        """
        from transformers import AutoTokenizer, CLIPTextModel, T5EncoderModel

        source = check_pretrained_path(path, "flux")
        frozen, transformer_dtype = weight_dtypes(cfg)
        with explain_load_errors(source):
            _check_scheduler(FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler"))
            transformer = load_transformer(FluxTransformer2DModel, source, transformer_dtype)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=frozen)
            text = FluxTextEncoder(
                CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=frozen),
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
                T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", dtype=frozen),
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2"),
                max_sequence_length=cfg.max_sequence_length,
            )
        model = cls(transformer, vae, text, guidance_scale=cfg.guidance_scale)
        model.transformer_placed_by_fsdp = fsdp_ram_efficient_loading()
        return model


def _check_scheduler(config: Any) -> None:
    """Warns when a scheduler differs from the FLUX.1 dynamic shift that ``flux_sigmas`` implements."""
    if not config.get("use_dynamic_shifting", False):
        logger.warning("Flux scheduler has use_dynamic_shifting=False; leapalign uses the FLUX.1 dynamic shift.")
    for key, value in FLUX_SHIFT_CONFIG.items():
        if key in config and abs(float(config[key]) - value) > 1e-9:
            logger.warning(
                "Flux scheduler %s=%s differs from %s used by leapalign's schedule.", key, config[key], value
            )
