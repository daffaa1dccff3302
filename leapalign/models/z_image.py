"""Z-Image (Z-Image-Turbo and the Z-Image base model) as a :class:`~leapalign.models.base.FlowModel`.

An adapter over diffusers' ``ZImageTransformer2DModel`` that does what ``ZImagePipeline.__call__`` does:

- **Latents** are the VAE's, unpacked: ``(B, 16, H/8, W/8)``. The pipeline draws its initial noise in this layout
  (``prepare_latents``: ``randn_tensor((B, C, 2 (H // 16), 2 (W // 16)))`` in float32), so the default
  :func:`~leapalign.models.base.noise_like_latents` reproduces it and no ``initial_noise`` is needed. The transformer
  takes a *list* of per-sample ``(C, 1, H/8, W/8)`` latents (one frame) and patchifies 2x2 itself, so height and
  width must be multiples of 16.
- **Text** (:class:`~leapalign.models.z_image_text.ZImageTextEncoder`): Qwen3's penultimate hidden state of the
  chat-formatted prompt, trimmed to the prompt's real tokens. The transformer takes a list of captions of different
  lengths; a batch here is right-padded with :attr:`Conditioning.mask` and turned back into that list by the mask,
  so padding never reaches the transformer.
- **Time**: the transformer is called with ``t = (1000 - 1000 sigma) / 1000``, i.e. ``t = 1 - sigma`` (0 is noise,
  1 is data), exactly as the pipeline computes it from the scheduler's ``timesteps = 1000 sigma``, and it predicts
  the velocity towards the data, ``dx/dt``: the library's ``v = dx/dsigma`` is its **negation** (the pipeline, too,
  steps the scheduler with ``-output``).
- **Schedule** (:meth:`ZImageAdapter.sigmas`): ``linspace(1, 1/T, T)`` through the pipeline's scheduler with the
  shift of ``(H/16)(W/16)`` image tokens, computed by that scheduler itself: Z-Image-Turbo's scheduler has a static
  shift of 3.0 (``mu`` is then ignored); a scheduler with ``use_dynamic_shifting`` gets the ``mu`` of
  ``calculate_shift``, as the pipeline passes it.
- **Guidance**: ``model.guidance_scale`` is ``ZImagePipeline``'s own ``guidance_scale`` ``g``, CFG with the empty
  prompt as negative written as ``v = v_pos + g (v_pos - v_neg)`` (the usual scale ``w`` is ``g + 1``), so a value
  from Z-Image's model card means the same here. ``g = 0`` disables CFG and runs the conditional pass only
  (Z-Image-Turbo, which is distilled to run without CFG). The pipeline's ``cfg_truncation`` (no CFG where
  ``t > cfg_truncation``) and ``cfg_normalization`` (cap ``|pred|`` at ``cfg_normalization * |pos|``) are
  reproduced (constructor arguments; defaults 1.0 and 0, the pipeline's, which change nothing).
- **VAE**: the folder's 16-channel ``AutoencoderKL``, with ``latents / scaling_factor + shift_factor`` before
  decoding and images mapped from ``[-1, 1]`` to ``[0, 1]`` (the pipeline's ``output_type="pt"``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from diffusers.pipelines.z_image.pipeline_z_image import calculate_shift, get_default_z_image_sigmas
from torch import Tensor, nn

from leapalign.families import check_pretrained_path
from leapalign.models.base import Conditioning, check_resolution
from leapalign.models.common import (
    TransformerPlumbing,
    fsdp_ram_efficient_loading,
    load_transformer,
    vae_decode,
    vae_encode,
)
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import cast_module, unwrap_model, weight_dtypes
from leapalign.models.flux import broadcast_sigma
from leapalign.models.hub import explain_load_errors
from leapalign.models.text import PromptCache
from leapalign.models.z_image_text import ZImageTextEncoder

logger = logging.getLogger(__name__)

FAMILY = "z-image"
#: Scheduler options whose sampling is not the plain Euler step on ``sigma`` from 1 to 0.
_UNSUPPORTED_SCHEDULER = ("invert_sigmas", "stochastic_sampling")


class ZImageAdapter(TransformerPlumbing):
    """``ZImageTransformer2DModel`` + VAE + Qwen3 text encoder behind the :class:`FlowModel` interface.

    Args:
        transformer: The velocity network (may later be replaced by an accelerate/DDP wrapper).
        vae: The autoencoder (its ``scaling_factor`` / ``shift_factor`` normalise the latents).
        text_encoder: The frozen prompt encoder returning embeddings ``(B, L, D)`` and a mask ``(B, L)``.
        scheduler_config: The pipeline's ``FlowMatchEulerDiscreteScheduler`` config (shift, dynamic shift).
        guidance_scale: ``ZImagePipeline``'s ``guidance_scale`` ``g`` (0: no CFG; the usual CFG scale is ``g + 1``).
        cfg_truncation: ``ZImagePipeline``'s ``cfg_truncation``: CFG is skipped where ``1 - sigma`` exceeds it
            (when it is ``<= 1``); 1.0 (or ``None``) never skips.
        cfg_normalization: ``ZImagePipeline``'s ``cfg_normalization``: when ``> 0`` the guided prediction's norm is
            capped at this multiple of the conditional one's (``True`` is 1.0); 0 (``False``) disables it.
        max_cached_prompts: Capacity of the prompt-embedding cache (``None``: unbounded).
    """

    pipeline_class = ZImagePipeline
    #: The attention projections of every block (main layers and both refiners; all are single-stream with
    #: separate q/k/v), as diffusers' Z-Image LoRA trainer (``train_dreambooth_lora_z_image.py``) targets.
    default_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKL,
        text_encoder: ZImageTextEncoder,
        scheduler_config: Any,
        guidance_scale: float = 0.0,
        cfg_truncation: float | None = 1.0,
        cfg_normalization: float | bool = 0.0,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        if guidance_scale < 0:
            raise ValueError(
                f"model.guidance_scale={guidance_scale} is invalid for Z-Image: use ZImagePipeline's guidance_scale, "
                f">= 0 (0: no CFG, as Z-Image-Turbo; about 4 for the base model)."
            )
        if float(cfg_normalization) < 0:
            raise ValueError(
                f"cfg_normalization={cfg_normalization} is invalid: use 0 (off, ZImagePipeline's default) or a "
                f"positive cap on the guided norm relative to the conditional one."
            )
        config = unwrap_model(transformer).config
        self.transformer = transformer
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder
        self.prompt_cache = PromptCache(text_encoder, max_cached_prompts)
        self.guidance_scale = float(guidance_scale)
        self.cfg_truncation = 1.0 if cfg_truncation is None else float(cfg_truncation)
        self.cfg_normalization = float(cfg_normalization)
        self.scheduler = _scheduler(scheduler_config)
        self.latent_channels = int(config.in_channels)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self.resolutions_multiple = self.vae_scale_factor * 2  # the transformer's 2x2 patches, as the pipeline checks
        self._sigmas: dict[tuple[int, int], Tensor] = {}

    @property
    def uses_true_cfg(self) -> bool:
        """Whether CFG with the empty prompt is used (``guidance_scale > 0``)."""
        return self.guidance_scale > 0.0

    def frozen_modules(self) -> list[nn.Module]:
        """The modules that never train: the VAE and the Qwen3 text encoder."""
        return [self.vae, self.text_encoder.model]

    # ----------------------------------------------------------------------------------------- conditioning
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Encodes prompts (each distinct prompt once): embeddings ``(B, L, D)`` and mask ``(B, L)``, right-padded
        to the longest prompt of the batch; with CFG also the empty prompt's (``negative_embeds``/``_mask``)."""
        embeds, mask = self.prompt_cache.encode(prompts)
        neg, neg_mask = self.prompt_cache.negative(len(prompts)) if self.uses_true_cfg else (None, None)
        return Conditioning(embeds, None, neg, None, mask=mask, negative_mask=neg_mask)

    # ----------------------------------------------------------------------------------------------- layout
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(C, H/8, W/8)``, e.g. ``(16, 128, 128)`` for a 1024x1024 image."""
        check_resolution(self, height, width)
        f = self.vae_scale_factor
        return self.latent_channels, height // f, width // f

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's schedule ``(num_steps + 1,)``, float32, from 1 to a final 0.

        ``ZImagePipeline`` calls ``scheduler.set_timesteps(sigmas=linspace(1, 1/T, T), mu=calculate_shift(N))``
        with ``N = (H/16)(W/16)`` image tokens; this makes the same call on a copy of its scheduler.
        """
        if num_steps < 1:
            raise ValueError(f"the number of sampling steps must be >= 1, got {num_steps}.")
        _, h, w = self.latent_shape(height, width)
        key = (num_steps, (h // 2) * (w // 2))
        if key not in self._sigmas:
            c = self.scheduler.config
            mu = calculate_shift(
                key[1],
                c.get("base_image_seq_len", 256),
                c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5),
                c.get("max_shift", 1.15),
            )
            self.scheduler.set_timesteps(sigmas=get_default_z_image_sigmas(num_steps), mu=mu)
            self._sigmas[key] = self.scheduler.sigmas.detach().to("cpu", torch.float32).clone()
        return self._sigmas[key].clone()

    # -------------------------------------------------------------------------------------------- velocity
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """Guided velocity ``dx/dsigma``, called as ``ZImagePipeline`` calls the transformer for one step.

        Args:
            x: Latents ``(B, C, H/8, W/8)``.
            sigma: Scalar or ``(B,)`` noise level in ``[0, 1]``; the transformer gets ``t = (1000 - 1000 sigma)/1000``.
            cond: Conditioning of batch ``B`` (its ``mask`` trims each caption to its real tokens).

        Returns:
            ``-(pos + g (pos - neg))`` with ``g = w - 1`` (``-pos`` without CFG), shape and dtype of ``x``.
        """
        b = x.shape[0]
        dtype = self.compute_dtype
        timestep = broadcast_sigma(sigma, b, x.device, torch.float32) * self.scheduler.config.num_train_timesteps
        t = (1000 - timestep) / 1000
        latents = list(x.to(dtype).unsqueeze(2).unbind(dim=0))
        pos = _captions(cond.prompt_embeds, cond.mask, x.device, dtype)
        if not self.uses_true_cfg:
            return (-self._forward(latents, t, pos)).to(x.dtype)
        active = None  # the samples that get CFG, where cfg_truncation skips some (t <= 1 never exceeds 1.0)
        if self.cfg_truncation < 1:
            # compared in float64 as the pipeline compares Python floats (on the CPU: some accelerators lack it)
            active = (t.detach().cpu().double() <= self.cfg_truncation).to(x.device)
            if not bool(active.any()):
                return (-self._forward(latents, t, pos)).to(x.dtype)
        if cond.negative_embeds is None:
            raise ValueError("CFG needs negative embeddings: build the Conditioning with encode_prompts.")
        neg = _captions(cond.negative_embeds, cond.negative_mask, x.device, dtype)
        out = self._forward(latents + latents, torch.cat([t, t]), pos + neg)
        v_pos, v_neg = out[:b], out[b:]
        pred = v_pos + self.guidance_scale * (v_pos - v_neg)
        if self.cfg_normalization > 0:
            cap = torch.linalg.vector_norm(v_pos, dim=(1, 2, 3)) * self.cfg_normalization
            norm = torch.linalg.vector_norm(pred, dim=(1, 2, 3))
            pred = pred * torch.where(norm > cap, cap / norm, torch.ones_like(norm))[:, None, None, None]
        if active is not None:
            pred = torch.where(active[:, None, None, None], pred, v_pos)
        return (-pred).to(x.dtype)

    def _forward(self, latents: list[Tensor], t: Tensor, captions: list[Tensor]) -> Tensor:
        """One transformer call on lists of ``(C, 1, h, w)`` latents and ``(L_i, D)`` captions -> float32
        ``(N, C, h, w)`` (the transformer's output, not yet negated)."""
        out = self.transformer(latents, t, captions, return_dict=False)[0]
        return torch.stack([o.float() for o in out]).squeeze(2)

    # ---------------------------------------------------------------------------------------------- decode
    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes ``(B, C, H/8, W/8)`` latents (differentiably) to ``[0, 1]`` images ``(B, 3, H, W)``."""
        expected = self.latent_shape(height, width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {height}x{width} ({expected}).")
        return vae_decode(self.vae, latents, self.scaling_factor, self.shift_factor)

    def encode_pixels(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, 3, H, W)`` -> normalised latents ``(B, C, H/8, W/8)``, the VAE's posterior
        mean (no gradient), as the pretraining-loss replay needs."""
        return vae_encode(self.vae, images, self.scaling_factor, self.shift_factor)

    # -------------------------------------------------------------------------------------------- factories
    @classmethod
    def from_pipeline(cls, pipe: ZImagePipeline, cfg: ModelConfig, **guidance: Any) -> ZImageAdapter:
        """Wraps a loaded ``ZImagePipeline``'s components (shared, not copied), cast per ``cfg``.

        Frozen parts (VAE, text encoder) go to ``cfg.weights_dtype``; the transformer too under LoRA, float32 for
        full fine-tuning. ``guidance`` takes ``cfg_truncation`` / ``cfg_normalization`` (see the class).
        """
        frozen, transformer_dtype = weight_dtypes(cfg)
        text = ZImageTextEncoder(cast_module(pipe.text_encoder, frozen), pipe.tokenizer, cfg.max_sequence_length)
        return cls(
            cast_module(pipe.transformer, transformer_dtype),
            cast_module(pipe.vae, frozen),
            text,
            pipe.scheduler.config,
            guidance_scale=cfg.guidance_scale,
            **guidance,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig, **guidance: Any) -> ZImageAdapter:
        """Loads the components of a diffusers ``ZImagePipeline`` folder (local directory or hub id) one by one.

        Under FSDP's RAM-efficient loading, ranks > 0 build the transformer on the meta device and only rank 0
        reads its weights (:func:`~leapalign.models.common.load_transformer`); the frozen VAE and text encoder load
        on every rank.

        Args:
            path: Pipeline folder with ``scheduler``, ``transformer``, ``vae``, ``text_encoder`` and ``tokenizer``.
            cfg: Model configuration (dtypes, guidance, token budget).
            **guidance: ``cfg_truncation`` / ``cfg_normalization`` (see the class).
        """
        from transformers import AutoModel, AutoTokenizer

        source = check_pretrained_path(path, FAMILY)
        frozen, transformer_dtype = weight_dtypes(cfg)
        with explain_load_errors(source):
            scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler")
            transformer = load_transformer(ZImageTransformer2DModel, source, transformer_dtype)
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=frozen)
            text = ZImageTextEncoder(
                AutoModel.from_pretrained(source, subfolder="text_encoder", dtype=frozen),
                AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
                cfg.max_sequence_length,
            )
        model = cls(transformer, vae, text, scheduler_config, guidance_scale=cfg.guidance_scale, **guidance)
        model.transformer_placed_by_fsdp = fsdp_ram_efficient_loading()
        return model


def _captions(embeds: Tensor, mask: Tensor | None, device: torch.device, dtype: torch.dtype) -> list[Tensor]:
    """Right-padded ``(B, L, D)`` embeddings -> the transformer's list of ``(L_i, D)`` captions (real tokens only)."""
    embeds = embeds.to(device, dtype)
    if mask is None:
        return list(embeds.unbind(dim=0))
    return [e[m] for e, m in zip(embeds, mask.to(device).bool(), strict=True)]


def _scheduler(config: Any) -> FlowMatchEulerDiscreteScheduler:
    """A private ``FlowMatchEulerDiscreteScheduler`` from the pipeline's config (its ``set_timesteps`` makes the
    schedule); refuses options under which the pipeline's sampling is not an Euler step from sigma 1 to 0."""
    bad = [key for key in _UNSUPPORTED_SCHEDULER if config.get(key)]
    if bad:
        raise ValueError(
            f"the Z-Image scheduler sets {', '.join(bad)}, which leapalign's deterministic Euler sampling from "
            f"sigma 1 to 0 does not reproduce; use the pipeline's FlowMatchEulerDiscreteScheduler without them."
        )
    return FlowMatchEulerDiscreteScheduler.from_config(dict(config))


def build_tiny_z_image(cfg: ModelConfig) -> ZImageAdapter:
    """The tiny random-init Z-Image model (``tiny-z-image``), built in-process from ``cfg.seed``."""
    from leapalign.models.tiny_z_image import build_tiny_z_image_pipeline

    return ZImageAdapter.from_pipeline(build_tiny_z_image_pipeline(cfg.seed), cfg)


def build_z_image(cfg: ModelConfig) -> ZImageAdapter:
    """Z-Image (Turbo or base) from ``cfg.path``: a diffusers ``ZImagePipeline`` folder or hub id."""
    return ZImageAdapter.from_pretrained(check_pretrained_path(cfg.path, FAMILY), cfg)
