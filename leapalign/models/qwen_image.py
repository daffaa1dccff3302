"""Qwen-Image as a :class:`~leapalign.models.base.FlowModel`, an adapter over diffusers' ``QwenImagePipeline``.

Latent layout: a token grid ``(B, H/16, W/16, 4C)`` (``C = 16`` VAE channels): each token is a 2x2 patch of latent
pixels packed as ``QwenImagePipeline._pack_latents`` packs them, so ``x.reshape(B, -1, 4C)`` is the pipeline's
``(B, N, 4C)``. The VAE (``AutoencoderKLQwenImage``, a video VAE) works on 5-D ``(B, C, 1, H/8, W/8)`` latents, one
frame; the pipeline draws its noise in that layout and packs it (:meth:`QwenImageAdapter.initial_noise`).

Time: the transformer's ``timestep`` is ``sigma`` itself (the pipeline passes ``scheduler.timesteps / 1000``;
``sigma = 1`` noise, ``sigma = 0`` data). Schedule (:meth:`QwenImageAdapter.sigmas`): the pipeline scheduler's,
``linspace(1, 1/T, T)`` shifted with ``mu = calculate_shift(H/16 * W/16)`` from the scheduler config (Qwen/Qwen-Image:
base 0.5 at 256 tokens, max 0.9 at 8192, exponential), stretched so the last non-zero sigma is ``shift_terminal``
(0.02), then a final 0.

Guidance: true classifier-free guidance against the empty prompt (the pipeline's ``negative_prompt=""``),
``model.guidance_scale`` being the pipeline's ``true_cfg_scale`` (``> 1`` turns it on, 1 is conditional only, below 1 is
refused; 4.0 is the pipeline's default), with the pipeline's rescaling of the combined velocity to the conditional
one's per-token norm. Qwen-Image has no embedded guidance (a ``guidance_embeds`` transformer is refused).
Prompts have different lengths: ``Conditioning.mask`` marks real tokens, passed as ``encoder_hidden_states_mask``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift
from torch import Tensor, nn

from leapalign.families import check_pretrained_path
from leapalign.models.base import Conditioning, Generators, check_resolution, pipeline_randn
from leapalign.models.common import TransformerPlumbing, fsdp_ram_efficient_loading, load_transformer
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import cast_module, unwrap_model, weight_dtypes
from leapalign.models.flux import broadcast_sigma
from leapalign.models.hub import explain_load_errors
from leapalign.models.qwen_image_text import QwenImageTextEncoder
from leapalign.models.text import PromptCache

logger = logging.getLogger(__name__)

FAMILY = "qwen-image"
#: Both streams' attention projections and MLPs of every (dual-stream) block, as Qwen-Image LoRA trainers target.
QWEN_IMAGE_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "add_q_proj",
    "add_k_proj",
    "add_v_proj",
    "to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
)
#: Modules of the LAST block that cannot change the output: the transformer discards the last block's text stream, so
#: their LoRA weights would get no gradient (``to_add_out``, ``txt_mlp``) or an exactly zero one (``add_q_proj``).
LAST_BLOCK_UNUSED = ("attn.add_q_proj", "attn.to_add_out", "txt_mlp.net.0.proj", "txt_mlp.net.2")
_UNSUPPORTED_TRANSFORMER = {
    "guidance_embeds": "a guidance embedding, which QwenImagePipeline cannot run",
    "zero_cond_t": "zero_cond_t (an image-editing variant)",
    "use_additional_t_cond": "an additional timestep condition (a layered variant)",
    "use_layer3d_rope": "layer-3D RoPE (the layered variant)",
}


class QwenImageAdapter(TransformerPlumbing):
    """``QwenImageTransformer2DModel`` + ``AutoencoderKLQwenImage`` + Qwen2.5-VL behind the FlowModel interface.

    Args:
        transformer: The velocity network (may later be replaced by an accelerate/DDP wrapper).
        vae: The autoencoder (its ``latents_mean``/``latents_std`` normalise the latents).
        text_encoder: Frozen text encoder returning token embeddings ``(B, L, D)`` and their mask ``(B, L)``.
        scheduler_config: The pipeline scheduler's config (a ``FlowMatchEulerDiscreteScheduler``).
        guidance_scale: True-CFG scale (``true_cfg_scale``): ``> 1`` guides against the empty prompt, 1 does not.
        max_cached_prompts: Capacity of the prompt-embedding cache (``None``: unbounded).
    """

    pipeline_class = QwenImagePipeline
    default_lora_targets: tuple[str, ...] = QWEN_IMAGE_LORA_TARGETS

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKLQwenImage,
        text_encoder: QwenImageTextEncoder,
        scheduler_config: Any,
        guidance_scale: float = 4.0,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        config = unwrap_model(transformer).config
        _check_transformer_config(config)
        if guidance_scale < 1.0:
            raise ValueError(
                f"model.guidance_scale={guidance_scale} is not used by Qwen-Image: it is the true-CFG scale "
                f"(true_cfg_scale), which the pipeline only applies above 1; set 1 to turn CFG off or a value > 1 "
                f"(4.0 is the pipeline's default)."
            )
        self.transformer = transformer
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder
        self.prompt_cache = PromptCache(text_encoder, max_cached_prompts)
        self.guidance_scale = float(guidance_scale)
        self.scheduler_config = _check_scheduler(scheduler_config)
        self.token_dim = int(config.in_channels)
        self.latent_channels = self.token_dim // 4
        if int(vae.config.z_dim) != self.latent_channels:
            raise ValueError(
                f"the VAE has {vae.config.z_dim} latent channels but the transformer takes {self.token_dim} = 4 x "
                f"{self.latent_channels}: load the VAE and transformer of the same Qwen-Image pipeline."
            )
        self.vae_scale_factor = 2 ** len(vae.temperal_downsample)
        self.resolutions_multiple = self.vae_scale_factor * 2
        self._sigmas: dict[tuple[int, int], Tensor] = {}

    @property
    def uses_true_cfg(self) -> bool:
        """True classifier-free guidance is used (``guidance_scale > 1``)."""
        return self.guidance_scale > 1.0

    # ----------------------------------------------------------------------------------------- conditioning
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Encodes prompts (each distinct prompt once) into embeddings ``(B, L, D)`` and the mask ``(B, L)``.

        Prompts are right-padded with zeros to the longest of the batch, as the pipeline pads them. The empty
        prompt's embeddings and mask fill ``negative_embeds``/``negative_mask`` when true CFG is used.
        """
        embeds, mask = self.prompt_cache.encode(prompts)
        neg, neg_mask = self.prompt_cache.negative(len(prompts)) if self.uses_true_cfg else (None, None)
        return Conditioning(embeds, None, neg, None, mask=mask, negative_mask=neg_mask)

    # ----------------------------------------------------------------------------------------------- layout
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(H / 16, W / 16, 4C)``: the packed token grid of one sample."""
        check_resolution(self, height, width)
        m = self.resolutions_multiple
        return height // m, width // m, self.token_dim

    def to_tokens(self, latents: Tensor) -> Tensor:
        """Model layout ``(B, h, w, 4C)`` -> the pipeline's packed tokens ``(B, h * w, 4C)``."""
        return latents.reshape(latents.shape[0], -1, latents.shape[-1])

    def pack(self, latents: Tensor) -> Tensor:
        """VAE latents ``(B, C, 1, 2h, 2w)`` -> model layout ``(B, h, w, 4C)`` (``QwenImagePipeline._pack_latents``)."""
        b, c, frames, hh, ww = latents.shape
        if frames != 1:
            raise ValueError(f"Qwen-Image latents have one frame, got shape {tuple(latents.shape)}.")
        x = latents.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, hh // 2, ww // 2, 4 * c)

    def unpack(self, latents: Tensor) -> Tensor:
        """Model layout ``(B, h, w, 4C)`` -> VAE latents ``(B, C, 1, 2h, 2w)`` (the pipeline's ``_unpack_latents``)."""
        b, h, w, c4 = latents.shape
        x = latents.reshape(b, h, w, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c4 // 4, 1, 2 * h, 2 * w)

    def initial_noise(self, batch: int, height: int, width: int, generator: Generators) -> Tensor:
        """Float32 noise ``(B, h, w, 4C)`` drawn as ``QwenImagePipeline.prepare_latents`` draws it: 5-D
        ``(B, 1, C, 2h, 2w)`` noise (one generator, or one per image), then packed."""
        h, w, _ = self.latent_shape(height, width)
        noise = pipeline_randn((batch, 1, self.latent_channels, 2 * h, 2 * w), generator)
        return self.pack(noise.transpose(1, 2))

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """The pipeline's schedule ``(num_steps + 1,)``: its scheduler after ``set_timesteps`` with the sigmas and
        the dynamic shift ``mu`` of ``H/16 * W/16`` image tokens that ``QwenImagePipeline.__call__`` passes."""
        h, w, _ = self.latent_shape(height, width)
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1.")
        key = (num_steps, h * w)
        if key not in self._sigmas:
            scheduler = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler_config)
            c = scheduler.config
            mu = calculate_shift(
                h * w,
                c.get("base_image_seq_len", 256),
                c.get("max_image_seq_len", 4096),
                c.get("base_shift", 0.5),
                c.get("max_shift", 1.15),
            )
            with np.errstate(divide="ignore", invalid="ignore"):  # a one-step shift_terminal stretch: checked below
                scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps), mu=mu)
            sigmas = scheduler.sigmas.float().cpu()
            if not bool(torch.isfinite(sigmas).all()):
                raise ValueError(
                    f"the Qwen-Image scheduler gives no schedule for {num_steps} step(s) (its shift_terminal "
                    f"stretch divides by zero for one step, as in QwenImagePipeline): use at least 2 steps."
                )
            if abs(float(sigmas[0]) - 1.0) > 1e-6 or float(sigmas[-1]) != 0.0:
                raise ValueError(
                    "the Qwen-Image scheduler's schedule does not run from sigma 1 to 0 (karras/beta/exponential "
                    "sigmas?): use the pipeline's own FlowMatchEulerDiscreteScheduler configuration."
                )
            self._sigmas[key] = sigmas
        return self._sigmas[key].clone()

    # -------------------------------------------------------------------------------------------- velocity
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """Guided velocity, called as ``QwenImagePipeline`` calls the transformer for one step.

        Args:
            x: Latents ``(B, h, w, 4C)``.
            sigma: Scalar or ``(B,)`` noise level in ``[0, 1]`` (the transformer's ``timestep``).
            cond: Conditioning of batch ``B`` with its ``mask`` (``None``: every token is real).

        Returns:
            Velocity ``(B, h, w, 4C)`` in the dtype of ``x``: the conditional one, or with true CFG
            ``v_u + g (v_c - v_u)`` rescaled per token to the norm of ``v_c``.
        """
        b, h, w, c4 = x.shape
        dtype = self.compute_dtype
        hidden = x.reshape(b, h * w, c4).to(dtype)
        timestep = broadcast_sigma(sigma, b, x.device, dtype)
        img_shapes = [[(1, h, w)]] * b
        v = self._forward(hidden, timestep, cond.prompt_embeds, cond.mask, img_shapes)
        if self.uses_true_cfg:
            if cond.negative_embeds is None:
                raise ValueError("true CFG needs negative embeddings: build the Conditioning with encode_prompts.")
            v_neg = self._forward(hidden, timestep, cond.negative_embeds, cond.negative_mask, img_shapes)
            combined = v_neg + self.guidance_scale * (v - v_neg)
            v_norm = torch.norm(v, dim=-1, keepdim=True)
            combined_norm = torch.norm(combined, dim=-1, keepdim=True)
            v = combined * (v_norm / combined_norm)
        return v.reshape(b, h, w, c4).to(x.dtype)

    def _forward(
        self, hidden: Tensor, timestep: Tensor, embeds: Tensor, mask: Tensor | None, img_shapes: list[Any]
    ) -> Tensor:
        """One transformer call; an all-ones mask is dropped (``None``) as ``QwenImagePipeline.encode_prompt`` does."""
        if mask is not None:
            mask = None if bool(mask.all()) else mask.to(hidden.device)
        return self.transformer(
            hidden_states=hidden,
            timestep=timestep,
            encoder_hidden_states=embeds.to(hidden.device, hidden.dtype),
            encoder_hidden_states_mask=mask,
            img_shapes=img_shapes,
            return_dict=False,
        )[0]

    # ---------------------------------------------------------------------------------------------- decode
    def _latent_stats(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The VAE's ``latents_mean`` and ``1 / latents_std`` as ``(1, C, 1, 1, 1)``, as the pipeline forms them."""
        shape = (1, self.latent_channels, 1, 1, 1)
        mean = torch.tensor(self.vae.config.latents_mean).view(shape).to(device, dtype)
        inv_std = 1.0 / torch.tensor(self.vae.config.latents_std).view(shape).to(device, dtype)
        return mean, inv_std

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes ``(B, h, w, 4C)`` latents (differentiably) to ``[0, 1]`` images ``(B, 3, H, W)``.

        As the pipeline: unpack to one frame, ``z / (1 / std) + mean`` in the VAE's dtype, decode, take the frame and
        map ``[-1, 1]`` to ``[0, 1]``.
        """
        expected = self.latent_shape(height, width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {height}x{width} ({expected}).")
        vae_dtype = next(self.vae.parameters()).dtype
        lat = self.unpack(latents).to(vae_dtype)
        mean, inv_std = self._latent_stats(lat.device, vae_dtype)
        img = self.vae.decode(lat / inv_std + mean, return_dict=False)[0][:, :, 0]
        return (img.to(latents.dtype) * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_pixels(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, 3, H, W)`` -> normalised latents ``(B, h, w, 4C)``: the VAE posterior mean,
        ``(z - mean) * (1 / std)`` as the Qwen-Image img2img pipeline normalises it (no gradient)."""
        vae_dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode((images * 2.0 - 1.0).to(vae_dtype)[:, :, None]).latent_dist.mode()
        mean, inv_std = self._latent_stats(z.device, z.dtype)
        return self.pack(((z - mean) * inv_std).to(images.dtype))

    # -------------------------------------------------------------------------------------------- plumbing
    def unused_modules(self) -> list[str]:
        """Full names of the modules whose outputs the transformer discards: :data:`LAST_BLOCK_UNUSED` of the last
        block. :func:`~leapalign.models.finetune.prepare_for_training` gives them no LoRA adapter and freezes them
        under full fine-tuning (under DDP, parameters without gradient are an error)."""
        last = len(unwrap_model(self.transformer).transformer_blocks) - 1
        return [f"transformer_blocks.{last}.{name}" for name in LAST_BLOCK_UNUSED]

    def frozen_modules(self) -> list[nn.Module]:
        """The modules training never updates: the VAE and the Qwen2.5-VL text encoder."""
        return [self.vae, self.text_encoder.model]

    # ------------------------------------------------------------------------------------------- factories
    @classmethod
    def from_pipeline(cls, pipe: QwenImagePipeline, cfg: ModelConfig) -> QwenImageAdapter:
        """Wraps a loaded ``QwenImagePipeline``'s components (shared, not copied), cast per ``cfg``: frozen parts
        to ``cfg.weights_dtype``, the transformer too under LoRA, float32 for full fine-tuning. The pipeline's
        prompt template and dropped-token count are used as they are."""
        frozen, transformer_dtype = weight_dtypes(cfg)
        text = QwenImageTextEncoder(
            cast_module(pipe.text_encoder, frozen),
            pipe.tokenizer,
            max_sequence_length=cfg.max_sequence_length,
            template=pipe.prompt_template_encode,
            template_start_idx=pipe.prompt_template_encode_start_idx,
        )
        return cls(
            cast_module(pipe.transformer, transformer_dtype),
            cast_module(pipe.vae, frozen),
            text,
            pipe.scheduler.config,
            guidance_scale=cfg.guidance_scale,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, cfg: ModelConfig) -> QwenImageAdapter:
        """Loads the components of a diffusers Qwen-Image pipeline folder (local directory or hub id) one by one.

        Under FSDP's RAM-efficient loading, ranks > 0 build the transformer on the meta device and only rank 0
        reads its weights (:func:`~leapalign.models.common.load_transformer`); the frozen VAE and text encoder load
        on every rank.

        Args:
            path: Pipeline folder with ``transformer``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``.
            cfg: Model configuration (dtypes, true-CFG scale, ``max_sequence_length``).
        """
        from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

        source = check_pretrained_path(path, FAMILY)
        frozen, transformer_dtype = weight_dtypes(cfg)
        with explain_load_errors(source):
            scheduler_config = FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler")
            _check_transformer_config(QwenImageTransformer2DModel.load_config(source, subfolder="transformer"))
            text = QwenImageTextEncoder(
                Qwen2_5_VLForConditionalGeneration.from_pretrained(source, subfolder="text_encoder", dtype=frozen),
                Qwen2Tokenizer.from_pretrained(source, subfolder="tokenizer"),
                max_sequence_length=cfg.max_sequence_length,
            )
            transformer = load_transformer(QwenImageTransformer2DModel, source, transformer_dtype)
            vae = AutoencoderKLQwenImage.from_pretrained(source, subfolder="vae", torch_dtype=frozen)
        model = cls(transformer, vae, text, scheduler_config, guidance_scale=cfg.guidance_scale)
        model.transformer_placed_by_fsdp = fsdp_ram_efficient_loading()
        return model


def _check_transformer_config(config: Any) -> None:
    """Refuses transformer variants the text-to-image ``QwenImagePipeline`` does not run."""
    found = [what for key, what in _UNSUPPORTED_TRANSFORMER.items() if config.get(key)]
    if found:
        raise ValueError(
            f"this QwenImageTransformer2DModel has {', '.join(found)}; leapalign adapts the text-to-image "
            f"QwenImagePipeline only: point model.path at a Qwen-Image text-to-image pipeline (e.g. Qwen/Qwen-Image)."
        )
    if int(config.get("patch_size", 2)) != 2:
        raise ValueError(f"Qwen-Image packs 2x2 patches but the transformer has patch_size={config['patch_size']}.")


def _check_scheduler(config: Any) -> dict[str, Any]:
    """The scheduler config as a dict; refuses settings whose steps are not the deterministic Euler ODE step."""
    bad = [key for key in ("stochastic_sampling", "invert_sigmas") if config.get(key)]
    if bad:
        raise ValueError(
            f"the Qwen-Image scheduler sets {', '.join(bad)}, which leapalign's Euler ODE rollout does not "
            f"implement: use the pipeline's FlowMatchEulerDiscreteScheduler configuration without them."
        )
    return dict(config)


def build_tiny_qwen_image(cfg: ModelConfig) -> QwenImageAdapter:
    """The tiny random-init Qwen-Image (``model.name=tiny-qwen-image``), built in-process from ``cfg.seed``."""
    from leapalign.models.tiny_qwen_image import build_tiny_qwen_image_pipeline

    return QwenImageAdapter.from_pipeline(build_tiny_qwen_image_pipeline(cfg.seed), cfg)


def build_qwen_image(cfg: ModelConfig) -> QwenImageAdapter:
    """Qwen-Image from ``model.path`` (``model.name=qwen-image``): a QwenImagePipeline folder or hub id."""
    return QwenImageAdapter.from_pretrained(check_pretrained_path(cfg.path, FAMILY), cfg)
