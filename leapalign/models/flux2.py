"""FLUX.2 [dev] and FLUX.2 [klein] as :class:`~leapalign.models.base.FlowModel` adapters.

Both variants share the ``Flux2Transformer2DModel``, the ``AutoencoderKLFlux2`` and the text-to-image loop of their
pipelines (``Flux2Pipeline``, ``Flux2KleinPipeline``); they differ in the text encoder (:mod:`~.flux2_text`:
Mistral Small 3.1 with a system message, or Qwen3 with its chat template) and in guidance. Image conditioning
(editing), caption upsampling and the KV-cached klein pipeline are not part of that loop and are left out.

Latent layout: the *normalised patchified latent* ``(B, 4C, H/(2f), W/(2f))`` (``C`` VAE latent channels, ``f`` the
VAE scale factor: ``(128, H/16, W/16)`` for the published models), in which ``prepare_latents`` draws its noise
before ``_pack_latents`` flattens it to tokens ``(B, H/(2f) * W/(2f), 4C)``. Channel ``4c + 2i + j`` holds latent
channel ``c`` at offset ``(i, j)`` of each 2x2 patch, standardised by the VAE's batch-norm running statistics:
``z = (patchify(vae_latent) - bn.running_mean) / sqrt(bn.running_var + eps)``. Position ids have four axes
``(t, h, w, l)``: image token ``(0, row, col, 0)``, text token ``(0, 0, 0, index)``.

Time convention: sigma = 1 is noise, sigma = 0 is data; the transformer takes ``timestep = sigma`` (the pipelines pass
``t / 1000`` with ``t = 1000 sigma``) and returns the velocity ``noise - data``. Schedule (:func:`flux2_sigmas`):
``linspace(1, 1/T, T)`` shifted by the exponential time shift with :func:`empirical_mu` (which depends on the image
token count and on ``T``), then a final 0, as the pipelines' scheduler (``use_dynamic_shifting=True``) computes it.

Guidance (``model.guidance_scale``): [dev] embeds it (pipeline default 4.0); [klein] base runs true CFG with the
empty prompt when it is > 1 (1 disables it; default 4.0); the step-distilled [klein] (``is_distilled``) takes none: 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from torch import Tensor, nn

from leapalign.families import check_pretrained_path
from leapalign.models.base import Conditioning, check_resolution
from leapalign.models.common import TransformerPlumbing, fsdp_ram_efficient_loading, load_transformer
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import cast_module, unwrap_model, weight_dtypes
from leapalign.models.flux2_text import Flux2DevTextEncoder, Flux2KleinTextEncoder
from leapalign.models.hub import explain_load_errors
from leapalign.models.text import PromptCache, TextEncoder
from leapalign.models.tiny_flux2 import TINY_TEXT_LAYERS, build_tiny_flux2_klein_pipeline, build_tiny_flux2_pipeline


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's schedule shift ``mu`` (``compute_empirical_mu`` of the pipelines, from BFL's reference code).

    Beyond 4300 image tokens ``mu = 1.6927e-4 N + 0.45667``; below, ``mu`` is interpolated linearly in the number of
    steps between a 10-step line ``8.7381e-5 N + 1.89833`` and that 200-step line.
    """
    a1, b1 = 8.73809524e-05, 1.89833333
    a2, b2 = 0.00016927, 0.45666666
    m_200 = a2 * image_seq_len + b2
    if image_seq_len > 4300:
        return float(m_200)
    m_10 = a1 * image_seq_len + b1
    slope = (m_200 - m_10) / 190.0
    return float(slope * num_steps + (m_200 - 200.0 * slope))


def flux2_sigmas(num_steps: int, image_seq_len: int) -> Tensor:
    """The FLUX.2 sampling schedule ``(T + 1,)``, float32, computed as the pipelines' scheduler computes it.

    ``linspace(1, 1/T, T)`` cast to float32, ``e^mu / (e^mu + 1/sigma - 1)`` in float32 with
    ``mu = empirical_mu(image_seq_len, T)``, then a terminal 0.
    """
    if num_steps < 1:
        raise ValueError(f"the number of sampling steps must be >= 1, got {num_steps}.")
    base = np.linspace(1.0, 1.0 / num_steps, num_steps).astype(np.float32)
    shift = math.exp(empirical_mu(image_seq_len, num_steps))
    shifted = (shift / (shift + (1.0 / base - 1.0))).astype(np.float32)
    return torch.cat([torch.from_numpy(shifted), torch.zeros(1)])


def latent_ids(h: int, w: int, device: torch.device | str = "cpu") -> Tensor:
    """Position ids ``(h * w, 4)`` of the image tokens, row-major: ``(0, row, col, 0)``."""
    zero = torch.zeros(1, dtype=torch.long)
    return torch.cartesian_prod(zero, torch.arange(h), torch.arange(w), zero).to(device)


def text_ids(length: int, device: torch.device | str = "cpu") -> Tensor:
    """Position ids ``(length, 4)`` of the text tokens: ``(0, 0, 0, index)``."""
    zero = torch.zeros(1, dtype=torch.long)
    return torch.cartesian_prod(zero, zero, zero, torch.arange(length)).to(device)


def patchify(latents: Tensor) -> Tensor:
    """``(B, C, 2h, 2w) -> (B, 4C, h, w)``, each 2x2 patch folded into channels ``4c + 2i + j``."""
    b, c, hh, ww = latents.shape
    x = latents.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, 4 * c, hh // 2, ww // 2)


def unpatchify(latents: Tensor) -> Tensor:
    """The inverse of :func:`patchify`: ``(B, 4C, h, w) -> (B, C, 2h, 2w)``."""
    b, c4, h, w = latents.shape
    x = latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c4 // 4, 2 * h, 2 * w)


def _per_sample(sigma: Tensor | float, batch: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    s = torch.as_tensor(sigma).to(device=device, dtype=dtype).reshape(-1)
    if s.numel() not in (1, batch):
        raise ValueError(f"sigma has {s.numel()} entries but the batch has {batch} samples.")
    return s.expand(batch)


_SCHEDULER = {"use_dynamic_shifting": True, "time_shift_type": "exponential", "invert_sigmas": False,
              "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False}  # fmt: skip


def check_scheduler(config: Any) -> None:
    """Refuses a scheduler whose sigmas :func:`flux2_sigmas` would not reproduce (one line naming the fix)."""
    changed = [f"{k}={config[k]!r}" for k, v in _SCHEDULER.items() if k in config and config[k] != v]
    changed += [f"shift_terminal={config['shift_terminal']!r}"] if config.get("shift_terminal") else []
    if changed:
        raise ValueError(
            f"the FLUX.2 scheduler config has {', '.join(changed)}; leapalign reproduces the published FLUX.2 "
            f"FlowMatchEulerDiscreteScheduler (dynamic exponential shift): use the pipeline's original scheduler/."
        )


class Flux2Adapter(TransformerPlumbing):
    """FLUX.2 [dev]: ``Flux2Transformer2DModel`` + ``AutoencoderKLFlux2`` + Mistral text encoder, embedded guidance.

    Args:
        transformer: The velocity network (may later be wrapped by accelerate/DDP); needs a guidance embedding.
        vae: The FLUX.2 autoencoder (its ``bn`` running statistics normalise the latents).
        text_encoder: Frozen encoder returning ``(prompt_embeds (B, L, D),)``.
        guidance_scale: The embedded guidance value.
        max_cached_prompts: Capacity of the prompt-embedding cache (``None``: unbounded).
    """

    pipeline_class: type = Flux2Pipeline
    text_encoder_class: Any = Flux2DevTextEncoder
    family = "flux2"
    #: The diffusers FLUX.2 LoRA scripts' targets: attention of the double-stream blocks and the fused
    #: QKV + MLP-input projection of the single-stream blocks. Each instance adds the single-stream blocks' fused
    #: output projections by name (``single_transformer_blocks.{i}.attn.to_out``), because a bare ``to_out`` would
    #: also match the double-stream blocks' ``to_out`` ModuleList, which peft cannot wrap.
    default_lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "to_qkv_mlp_proj")

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKLFlux2,
        text_encoder: TextEncoder,
        guidance_scale: float = 4.0,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        config = unwrap_model(transformer).config
        self.transformer = transformer
        self.vae = vae.requires_grad_(False).eval()
        self.text_encoder = text_encoder
        self.prompt_cache = PromptCache(text_encoder, max_cached_prompts)
        self.token_dim = int(config.in_channels)
        if self.token_dim != vae.bn.num_features:
            raise ValueError(f"transformer in_channels={self.token_dim} != 4 x VAE latent channels.")
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.resolutions_multiple = 2 * self.vae_scale_factor
        singles = len(unwrap_model(transformer).single_transformer_blocks)
        self.default_lora_targets = type(self).default_lora_targets + tuple(
            f"single_transformer_blocks.{i}.attn.to_out" for i in range(singles)
        )
        self.embedded_guidance: float | None = None
        self.cfg_scale: float | None = None
        self._set_guidance(float(guidance_scale), bool(config.guidance_embeds))

    def _set_guidance(self, scale: float, guidance_embeds: bool) -> None:
        if not guidance_embeds:
            raise ValueError(
                "this FLUX.2 transformer has no guidance embedding, so Flux2Pipeline would ignore "
                "model.guidance_scale: load it with model.name=flux2-klein (Flux2KleinPipeline) instead."
            )
        self.embedded_guidance = scale

    # ----------------------------------------------------------------------------------------- conditioning
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Prompt embeddings ``(B, L, D)`` (each distinct prompt encoded once); the empty prompt's as negatives
        only under true CFG. No pooled embedding and no mask: every one of the ``L`` tokens is attended to."""
        (embeds,) = self.prompt_cache.encode(prompts)
        negative = self.prompt_cache.negative(len(prompts))[0] if self.cfg_scale is not None else None
        return Conditioning(embeds, None, negative)

    # ----------------------------------------------------------------------------------------------- layout
    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """``(4C, H / (2f), W / (2f))``: the normalised patchified latent of one image."""
        check_resolution(self, height, width)
        m = self.resolutions_multiple
        return self.token_dim, height // m, width // m

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """:func:`flux2_sigmas` for the ``H/16 * W/16`` image tokens of ``height x width`` pixels."""
        _, h, w = self.latent_shape(height, width)
        return flux2_sigmas(num_steps, h * w)

    # -------------------------------------------------------------------------------------------- velocity
    def velocity(self, x: Tensor, sigma: Tensor | float, cond: Conditioning) -> Tensor:
        """Guided velocity, calling the transformer as the pipeline does for one step.

        Args:
            x: Latents ``(B, 4C, h, w)``.
            sigma: Scalar or ``(B,)`` noise level in ``[0, 1]``.
            cond: Conditioning of batch ``B`` (with negative embeddings under true CFG).

        Returns:
            The velocity, shape and dtype of ``x``.
        """
        b, c, h, w = x.shape
        dtype = self.compute_dtype
        tokens = x.to(dtype).reshape(b, c, h * w).transpose(1, 2)  # Flux2Pipeline._pack_latents
        timestep = _per_sample(sigma, b, x.device, dtype)
        embeds = cond.prompt_embeds.to(x.device, dtype)
        guidance = None
        if self.embedded_guidance is not None:
            guidance = torch.full((b,), self.embedded_guidance, device=x.device, dtype=torch.float32)
        if self.cfg_scale is not None:  # the negative (empty-prompt) and the conditional pass in one batch
            if cond.negative_embeds is None:
                raise ValueError("true CFG needs negative embeddings: build the Conditioning with encode_prompts.")
            tokens, timestep = torch.cat([tokens, tokens]), torch.cat([timestep, timestep])
            embeds = torch.cat([cond.negative_embeds.to(x.device, dtype), embeds])
        v = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=embeds,
            timestep=timestep,
            img_ids=latent_ids(h, w, x.device),
            txt_ids=text_ids(embeds.shape[1], x.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        if self.cfg_scale is not None:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + self.cfg_scale * (v_cond - v_uncond)
        return v.transpose(1, 2).reshape(b, c, h, w).to(x.dtype)

    # ---------------------------------------------------------------------------------------------- decode
    def _bn_stats(self, like: Tensor) -> tuple[Tensor, Tensor]:
        bn = self.vae.bn
        mean = bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
        std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + self.vae.config.batch_norm_eps).to(like.device, like.dtype)
        return mean, std

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes ``(B, 4C, h, w)`` latents (differentiably) to ``[0, 1]`` images ``(B, 3, height, width)``:
        undo the batch-norm standardisation, unpatchify, VAE decode, map ``[-1, 1]`` to ``[0, 1]``."""
        expected = self.latent_shape(height, width)
        if tuple(latents.shape[1:]) != expected:
            raise ValueError(f"latents of shape {tuple(latents.shape)} do not match {height}x{width} ({expected}).")
        mean, std = self._bn_stats(latents)
        z = unpatchify(latents * std + mean)
        vae_dtype = next(self.vae.parameters()).dtype
        img = self.vae.decode(z.to(vae_dtype), return_dict=False)[0].to(latents.dtype)
        return (img * 0.5 + 0.5).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_pixels(self, images: Tensor) -> Tensor:
        """Images in ``[0, 1]`` ``(B, 3, H, W)`` -> normalised latents ``(B, 4C, h, w)`` (the posterior mean, as the
        pipelines encode reference images), the inverse of :meth:`decode`. No gradient."""
        vae_dtype = next(self.vae.parameters()).dtype
        z = self.vae.encode((images * 2.0 - 1.0).to(vae_dtype)).latent_dist.mode()
        z = patchify(z.to(images.dtype))
        mean, std = self._bn_stats(z)
        return (z - mean) / std

    # -------------------------------------------------------------------------------------------- plumbing
    def frozen_modules(self) -> list[nn.Module]:
        """The modules training never updates: the VAE and the text encoder."""
        return [self.vae, self.text_encoder.model]  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------------------- factories
    @classmethod
    def _build(cls, transformer: nn.Module, vae: Any, text: TextEncoder, cfg: ModelConfig, config: Any) -> Any:
        return cls(transformer, vae, text, guidance_scale=cfg.guidance_scale)

    @classmethod
    def from_pipeline(
        cls, pipe: Any, cfg: ModelConfig, text_encoder_out_layers: tuple[int, ...] | None = None
    ) -> Flux2Adapter:
        """Wraps the components of a loaded pipeline (shared, not copied), cast to the dtypes ``cfg`` asks for.

        Args:
            pipe: A ``Flux2Pipeline`` ([dev]) or ``Flux2KleinPipeline`` ([klein]), matching the class.
            cfg: Model configuration (dtypes, guidance, ``max_sequence_length``).
            text_encoder_out_layers: Hidden states to stack, as the pipeline's argument of that name (default: the
                published encoders' layers).
        """
        if not isinstance(pipe, cls.pipeline_class):
            raise ValueError(f"{cls.__name__} wraps a {cls.pipeline_class.__name__}, got {type(pipe).__name__}.")
        check_scheduler(pipe.scheduler.config)
        frozen, transformer_dtype = weight_dtypes(cfg)
        cast_module(pipe.text_encoder, frozen)
        text = cls.text_encoder_class.from_pipeline(pipe, cfg.max_sequence_length, text_encoder_out_layers)
        transformer = cast_module(pipe.transformer, transformer_dtype)
        return cls._build(transformer, cast_module(pipe.vae, frozen), text, cfg, pipe.config)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, cfg: ModelConfig, text_encoder_out_layers: tuple[int, ...] | None = None
    ) -> Flux2Adapter:
        """Loads a diffusers pipeline folder (local directory or hub id) component by component; under FSDP's
        RAM-efficient loading only rank 0 reads the transformer (:func:`~leapalign.models.common.load_transformer`).

        Args:
            path: Folder with ``transformer``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``.
            cfg: Model configuration.
            text_encoder_out_layers: Hidden states to stack (default: the published encoders' layers).
        """
        source = check_pretrained_path(path, cls.family)
        frozen, transformer_dtype = weight_dtypes(cfg)
        with explain_load_errors(source):
            check_scheduler(FlowMatchEulerDiscreteScheduler.load_config(source, subfolder="scheduler"))
            config = cls.pipeline_class.load_config(source)
            text = cls.text_encoder_class.from_pretrained(
                source, frozen, cfg.max_sequence_length, text_encoder_out_layers
            )
            vae = AutoencoderKLFlux2.from_pretrained(source, subfolder="vae", torch_dtype=frozen)
            transformer = load_transformer(Flux2Transformer2DModel, source, transformer_dtype)
        model = cls._build(transformer, vae, text, cfg, config)
        model.transformer_placed_by_fsdp = fsdp_ram_efficient_loading()
        return model


class Flux2KleinAdapter(Flux2Adapter):
    """FLUX.2 [klein] (4B / 9B, base or step-distilled): Qwen3 text encoder, no guidance embedding.

    Args as :class:`Flux2Adapter`, except ``guidance_scale``: the true-CFG scale with the empty prompt (> 1), or 1 for
    none, and 1 when ``is_distilled`` (the pipeline's flag: the step-distilled models ignore guidance).
    """

    pipeline_class = Flux2KleinPipeline
    text_encoder_class = Flux2KleinTextEncoder
    family = "flux2-klein"

    def __init__(
        self,
        transformer: nn.Module,
        vae: AutoencoderKLFlux2,
        text_encoder: TextEncoder,
        guidance_scale: float = 4.0,
        is_distilled: bool = False,
        max_cached_prompts: int | None = 1024,
    ) -> None:
        self.is_distilled = bool(is_distilled)
        super().__init__(transformer, vae, text_encoder, guidance_scale, max_cached_prompts)

    def _set_guidance(self, scale: float, guidance_embeds: bool) -> None:
        if self.is_distilled and scale != 1.0:
            raise ValueError(
                f"model.guidance_scale={scale:g} would be ignored: this FLUX.2 [klein] is step-distilled "
                f"(is_distilled=True) and takes no guidance; set model.guidance_scale=1."
            )
        if scale < 1.0:
            raise ValueError(
                f"model.guidance_scale={scale:g} is not used by FLUX.2 [klein]: set a true-CFG scale > 1 "
                f"(the pipeline's default is 4) or 1 for no guidance."
            )
        self.cfg_scale = scale if scale > 1.0 else None

    @classmethod
    def _build(cls, transformer: nn.Module, vae: Any, text: TextEncoder, cfg: ModelConfig, config: Any) -> Any:
        distilled = bool(config.get("is_distilled", False))
        return cls(transformer, vae, text, guidance_scale=cfg.guidance_scale, is_distilled=distilled)


# ----------------------------------------------------------------------------------- registry builders
def build_tiny_flux2(cfg: ModelConfig) -> Flux2Adapter:
    """Tiny random-init FLUX.2 [dev] (in-process, deterministic given ``cfg.seed``)."""
    return Flux2Adapter.from_pipeline(build_tiny_flux2_pipeline(cfg.seed), cfg, TINY_TEXT_LAYERS)


def build_tiny_flux2_klein(cfg: ModelConfig) -> Flux2KleinAdapter:
    """Tiny random-init FLUX.2 [klein] base (true CFG; in-process, deterministic given ``cfg.seed``)."""
    return Flux2KleinAdapter.from_pipeline(build_tiny_flux2_klein_pipeline(cfg.seed), cfg, TINY_TEXT_LAYERS)


def build_flux2(cfg: ModelConfig) -> Flux2Adapter:
    """FLUX.2 [dev] from ``cfg.path`` (a ``Flux2Pipeline`` folder or hub id)."""
    return Flux2Adapter.from_pretrained(cfg.path or "", cfg)


def build_flux2_klein(cfg: ModelConfig) -> Flux2KleinAdapter:
    """FLUX.2 [klein] from ``cfg.path`` (a ``Flux2KleinPipeline`` folder or hub id)."""
    return Flux2KleinAdapter.from_pretrained(cfg.path or "", cfg)  # type: ignore[return-value]
