"""Tiny random-init Flux and SD3 pipelines, built in-process (no download), for tests and CPU smoke runs.

Every builder is deterministic given its ``seed`` and leaves the global torch RNG untouched. The components
follow the real layouts (CLIP + T5 text encoders, a 16-channel VAE with ``vae_scale_factor = 8``, the
``FlowMatchEulerDiscreteScheduler`` with the model's shift settings), only with very small widths:
the Flux transformer has about 120k parameters, the SD3 one about 83k. At 128x128 pixels a Flux latent packs
to 64 tokens and an SD3 latent is ``(16, 16, 16)``.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from leapalign.models.flux import FLUX_SHIFT_CONFIG

FLUX_VAE_SCALING, FLUX_VAE_SHIFT = 0.3611, 0.1159
SD3_VAE_SCALING, SD3_VAE_SHIFT = 1.5305, 0.0609
CLIP_WIDTH = 32
FLUX_T5_WIDTH = 32
SD3_T5_WIDTH = 80  # wider than the two concatenated CLIP states (64), so the SD3 padding path is exercised


def build_clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer (single-byte tokens, no merges, 514 tokens), ``model_max_length=77``."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=77)


def build_t5_tokenizer() -> T5Tokenizer:
    """A character-level unigram T5 tokenizer (124 pieces, ``<pad>`` = 0, ``</s>`` = 1), max length 512."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("\u2581" + c, -2.5) for c in string.ascii_lowercase]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=CLIP_WIDTH,
    )


def _t5_encoder(vocab_size: int, width: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


def build_tiny_vae(scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    """A 16-latent-channel ``AutoencoderKL`` with four blocks, i.e. ``vae_scale_factor = 8`` (random init)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 32, 32),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=8,
        sample_size=128,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def build_tiny_flux_transformer(guidance_embeds: bool = True, in_channels: int = 64) -> FluxTransformer2DModel:
    """A ~120k-parameter ``FluxTransformer2DModel`` (uses the current torch RNG).

    Args:
        guidance_embeds: FLUX.1-dev-like embedded guidance (then ``guidance`` must be passed).
        in_channels: Packed token width, ``4 x`` the latent channels (64 for 16-channel latents).
    """
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=in_channels,
        num_layers=2,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=FLUX_T5_WIDTH,
        pooled_projection_dim=CLIP_WIDTH,
        axes_dims_rope=(4, 6, 6),
        guidance_embeds=guidance_embeds,
    )


def build_tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    """A complete tiny ``FluxPipeline`` (random init, offline, deterministic given ``seed``).

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.
        guidance_embeds: Whether the transformer has a guidance embedding (FLUX.1-dev style).

    Returns:
        The pipeline in float32 on the CPU. ``pipe(prompt, height=128, width=128, max_sequence_length=32,
        output_type="latent")`` returns packed latents of shape ``(B, 64, 64)``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tok, t5_tok = build_clip_tokenizer(), build_t5_tokenizer()
        clip = CLIPTextModel(_clip_config(len(clip_tok)))
        t5 = _t5_encoder(len(t5_tok), FLUX_T5_WIDTH)
        vae = build_tiny_vae(FLUX_VAE_SCALING, FLUX_VAE_SHIFT)
        transformer = build_tiny_flux_transformer(guidance_embeds=guidance_embeds)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, **FLUX_SHIFT_CONFIG)
    pipe = FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_sd3_transformer() -> SD3Transformer2DModel:
    """A ~83k-parameter ``SD3Transformer2DModel`` (patch 2, 16 latent channels; uses the torch RNG)."""
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=SD3_T5_WIDTH,
        caption_projection_dim=32,
        pooled_projection_dim=2 * CLIP_WIDTH,
        pos_embed_max_size=32,
    )


def build_tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """A complete tiny ``StableDiffusion3Pipeline`` (random init, offline, deterministic given ``seed``).

    Two ``CLIPTextModelWithProjection`` (width 32, projection 32) and a T5 of width 80; the scheduler uses the
    SD3 static shift 3.0.

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.

    Returns:
        The pipeline in float32 on the CPU; latents are ``(B, 16, H/8, W/8)``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clip_tok, clip_tok_2, t5_tok = build_clip_tokenizer(), build_clip_tokenizer(), build_t5_tokenizer()
        clip = CLIPTextModelWithProjection(_clip_config(len(clip_tok)))
        clip_2 = CLIPTextModelWithProjection(_clip_config(len(clip_tok_2)))
        t5 = _t5_encoder(len(t5_tok), SD3_T5_WIDTH)
        vae = build_tiny_vae(SD3_VAE_SCALING, SD3_VAE_SHIFT)
        transformer = build_tiny_sd3_transformer()
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=clip_2.eval(),
        tokenizer_2=clip_tok_2,
        text_encoder_3=t5.eval(),
        tokenizer_3=t5_tok,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
