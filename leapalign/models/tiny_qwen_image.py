"""A tiny random-init ``QwenImagePipeline``, built in-process (no download), for tests and CPU smoke runs.

Every component follows the real layout at a very small width: a Qwen2.5-VL text encoder (2 text layers of width
32, a 1-layer vision tower that the text path never runs), a byte-level BPE ``Qwen2Tokenizer`` whose merges make the
prompt template's system prefix exactly ``QwenImagePipeline.prompt_template_encode_start_idx`` (34) tokens, as with the
real tokenizer, a 16-channel ``AutoencoderKLQwenImage`` with ``vae_scale_factor = 8`` and the real
``latents_mean``/``latents_std``, a ~100k-parameter ``QwenImageTransformer2DModel`` (2 blocks, width 32) and the
``FlowMatchEulerDiscreteScheduler`` configuration of Qwen/Qwen-Image (dynamic shift, ``shift_terminal=0.02``).
At 64x64 pixels a latent packs to a 4x4 token grid of width 64.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from leapalign.models.qwen_image_text import PROMPT_TEMPLATE

#: The scheduler configuration of Qwen/Qwen-Image (``scheduler/scheduler_config.json``).
QWEN_IMAGE_SCHEDULER_CONFIG = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}
TEXT_WIDTH = 32
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def _template_words() -> list[str]:
    """The words of the prompt template, as the Qwen2 pre-tokenizer splits them (``Ġ`` marks a leading space)."""
    system = PROMPT_TEMPLATE.split(":<|im_end|>")[0].removeprefix("<|im_start|>system\n")
    words = ["system", "user", "assistant"]
    for i, word in enumerate(system.replace(",", "").split(" ")):
        words.append(word if i == 0 else "\u0120" + word)
    return list(dict.fromkeys(words))


def build_qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE ``Qwen2Tokenizer`` (367 tokens, right padding) with the chat special tokens.

    The vocabulary holds ``<|endoftext|>`` (also the pad token), ``<|im_start|>``, ``<|im_end|>``, the 256 byte
    symbols and the merges that make every word of the template's system prompt one token, so the template prefix
    tokenizes to 34 tokens like the real Qwen-Image tokenizer (other text is mostly one token per byte).
    """
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    merges = []
    for word in _template_words():
        for end in range(2, len(word) + 1):
            if word[:end] not in vocab:
                vocab[word[:end]] = len(vocab)
                merges.append((word[: end - 1], word[end - 1]))
    return Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(SPECIAL_TOKENS[1:]))


def build_tiny_qwen_text_encoder(vocab_size: int) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL of text width 32 (2 layers, 2 heads of 16, M-RoPE sections 2+3+3) and a 1-layer vision tower."""
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1000000.0},
            "bos_token_id": None,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
    )
    return Qwen2_5_VLForConditionalGeneration(config)


def build_tiny_qwen_vae() -> AutoencoderKLQwenImage:
    """A 16-latent-channel ``AutoencoderKLQwenImage`` (base width 8, ``vae_scale_factor = 8``; random init)."""
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    )


def build_tiny_qwen_image_transformer() -> QwenImageTransformer2DModel:
    """A ~100k-parameter ``QwenImageTransformer2DModel`` (2 blocks, 2 heads of 16, 64-wide packed tokens)."""
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=64,
        out_channels=16,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )


def build_tiny_qwen_image_pipeline(seed: int = 0) -> QwenImagePipeline:
    """A complete tiny ``QwenImagePipeline`` (random init, offline, deterministic given ``seed``).

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.

    Returns:
        The pipeline in float32 on the CPU. ``pipe(prompt, height=64, width=64, output_type="latent")`` returns
        packed latents of shape ``(B, 16, 64)``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_qwen_tokenizer()
        text_encoder = build_tiny_qwen_text_encoder(len(tokenizer))
        vae = build_tiny_qwen_vae()
        transformer = build_tiny_qwen_image_transformer()
    pipe = QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG),
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
