"""Tiny random-init FLUX.2 pipelines (``Flux2Pipeline`` for [dev], ``Flux2KleinPipeline`` for [klein]), built
in-process with their tokenizers (no download), for tests and CPU smoke runs.

Every builder is deterministic given its ``seed`` and leaves the global torch RNG untouched. The components follow
the real layouts, only very small:

- text encoders: a 2-layer ``Mistral3ForConditionalGeneration`` (with a 1-layer Pixtral vision tower the text path
  never uses) for [dev] and a 2-layer ``Qwen3ForCausalLM`` for [klein], both of width :data:`TEXT_WIDTH`; the
  prompt embedding stacks the hidden states :data:`TINY_TEXT_LAYERS` (the real models stack three of their 40 / 36
  layers), so the transformer's ``joint_attention_dim`` is ``3 x TEXT_WIDTH``;
- tokenizers: byte-level BPE whose only merges spell the words of the [dev] system message (so it costs about 40
  tokens instead of 165 single bytes), with chat templates shaped like Mistral's (system prompt, ``[INST]``) and
  Qwen3's (``<|im_start|>``, the empty ``<think>`` block when ``enable_thinking=False``);
- an ``AutoencoderKLFlux2`` with ``vae_scale_factor = 8`` and 8 latent channels (32 patchified), whose batch-norm
  statistics are random (not the identity) so that the latent normalisation is exercised;
- a ``Flux2Transformer2DModel`` of about 80k parameters (1 double-stream and 2 single-stream blocks, width 32);
- the ``FlowMatchEulerDiscreteScheduler`` with dynamic (exponential) shifting, which the FLUX.2 pipelines need.

At 64x64 pixels a latent is ``(32, 4, 4)``: 16 image tokens.
"""

from __future__ import annotations

import string

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    MistralConfig,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)

TEXT_WIDTH = 16
#: Hidden states stacked into the prompt embedding by the tiny encoders (embeddings, layer 1, layer 2).
TINY_TEXT_LAYERS = (0, 1, 2)
LATENT_CHANNELS = 8

_MISTRAL_SPECIALS = (
    "<unk>",
    "<s>",
    "</s>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
)
_QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

# Mistral-like: [SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]; content is a string or a list of text parts.
_MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | map(attribute='text') | join('') %}{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Qwen3-like: ChatML turns; with enable_thinking=False the generation prompt carries an empty think block.
_QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _byte_bpe(specials: tuple[str, ...]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Byte-level BPE vocabulary and merges: every byte, plus left-to-right merges spelling the system message's
    words (with their leading-space marker), so a prompt's other words fall back to single bytes."""
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    words = SYSTEM_MESSAGE.replace("\n", " ").translate(str.maketrans("", "", string.punctuation)).split()
    for token in ["\u0120" + w for w in dict.fromkeys(words)] + words[:1]:  # a space-led word, or the first one
        for i in range(1, len(token)):
            if token[: i + 1] not in vocab:
                merges.append((token[:i], token[i]))
                vocab[token[: i + 1]] = len(vocab)
    return vocab, merges


def build_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (``PreTrainedTokenizerFast``) with a Mistral-like chat template."""
    vocab, merges = _byte_bpe(_MISTRAL_SPECIALS)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(_MISTRAL_SPECIALS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=512,
        chat_template=_MISTRAL_TEMPLATE,
    )


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level ``Qwen2Tokenizer`` (the class FLUX.2 [klein] ships) with a Qwen3-like chat template."""
    vocab, merges = _byte_bpe(_QWEN_SPECIALS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=512)
    tok.add_special_tokens({"additional_special_tokens": list(_QWEN_SPECIALS[1:])})
    tok.chat_template = _QWEN_TEMPLATE
    return tok


def _mistral3(vocab_size: int, pad_id: int) -> Mistral3ForConditionalGeneration:
    text = MistralConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=pad_id,
    )
    vision = PixtralVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=16
    )
    config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=vocab_size - 1)
    return Mistral3ForConditionalGeneration(config)


def _qwen3(vocab_size: int, pad_id: int) -> Qwen3ForCausalLM:
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
    )
    return Qwen3ForCausalLM(config)


def build_tiny_flux2_vae() -> AutoencoderKLFlux2:
    """An ``AutoencoderKLFlux2`` with four blocks (``vae_scale_factor = 8``) and 8 latent channels, whose batch-norm
    running statistics are random (uses the current torch RNG)."""
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=8,
        sample_size=64,
    )
    with torch.no_grad():
        vae.bn.running_mean.copy_(0.2 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(0.5 + torch.rand_like(vae.bn.running_var))
    return vae.eval()


def build_tiny_flux2_transformer(guidance_embeds: bool) -> Flux2Transformer2DModel:
    """A ``Flux2Transformer2DModel`` of about 80k parameters (uses the current torch RNG).

    Args:
        guidance_embeds: FLUX.2 [dev]-like embedded guidance ([klein] has none).
    """
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=len(TINY_TEXT_LAYERS) * TEXT_WIDTH,
        timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


def _scheduler() -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, time_shift_type="exponential")


def build_tiny_flux2_pipeline(seed: int = 0) -> Flux2Pipeline:
    """A complete tiny FLUX.2 [dev] ``Flux2Pipeline`` (random init, offline, deterministic given ``seed``).

    Call it with ``text_encoder_out_layers=TINY_TEXT_LAYERS`` (the pipeline's default, ``(10, 20, 30)``, needs the
    real 40-layer encoder).

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_mistral_tokenizer()
        text_encoder = _mistral3(len(tokenizer), tokenizer.pad_token_id)
        vae = build_tiny_flux2_vae()
        transformer = build_tiny_flux2_transformer(guidance_embeds=True)
    pipe = Flux2Pipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_flux2_klein_pipeline(seed: int = 0, is_distilled: bool = False) -> Flux2KleinPipeline:
    """A complete tiny FLUX.2 [klein] ``Flux2KleinPipeline`` (random init, offline, deterministic given ``seed``).

    Call it with ``text_encoder_out_layers=TINY_TEXT_LAYERS`` (the default, ``(9, 18, 27)``, needs a 36-layer
    Qwen3).

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.
        is_distilled: Like the step-distilled klein 4B / 9B (guidance ignored) rather than the base models (true
            CFG); the weights are the same.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_qwen_tokenizer()
        text_encoder = _qwen3(len(tokenizer), tokenizer.pad_token_id)
        vae = build_tiny_flux2_vae()
        transformer = build_tiny_flux2_transformer(guidance_embeds=False)
    pipe = Flux2KleinPipeline(
        scheduler=_scheduler(),
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=is_distilled,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
