"""A tiny random-init ``ZImagePipeline``, built in-process (no download), for tests and CPU smoke runs.

Every component follows the real Z-Image layout at a very small width: a 2-layer ``Qwen3Model`` text encoder
(hidden size 32) behind a byte-level tokenizer whose chat template renders a user turn as Qwen3's does
(``<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n``), the 16-channel ``AutoencoderKL`` of the Flux
family (``vae_scale_factor = 8``, with FLUX.1's scaling and shift), a ``ZImageTransformer2DModel`` with 2 main
layers and 1 noise / 1 context refiner (about 365k parameters, 296k of them in the timestep MLP, whose 1024-wide
hidden layer diffusers fixes), and the ``FlowMatchEulerDiscreteScheduler`` of Z-Image-Turbo (static
shift 3.0) or, with ``dynamic_shift=True``, the resolution-dependent shift the pipeline also supports.

The builders are deterministic given their ``seed`` and leave the global torch RNG untouched.
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from tokenizers.pre_tokenizers import ByteLevel
from transformers import PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

from leapalign.models.tiny import FLUX_VAE_SCALING, FLUX_VAE_SHIFT, build_tiny_vae

TEXT_WIDTH = 32
#: Positions along the caption axis of the transformer's RoPE: the padded caption plus the image's frame index must
#: fit, so prompts of up to ``MAX_TOKENS`` tokens are supported.
MAX_TOKENS = 512
TURBO_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}

# A ChatML template: a user turn followed by the assistant header, with Qwen3's empty thinking block only when
# ``enable_thinking=False`` (ZImagePipeline passes ``enable_thinking=True``, so none is added).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)


def build_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (one token per byte, no merges, 259 tokens) with Qwen's chat special tokens.

    ``<|endoftext|>`` (id 0) pads, ``<|im_start|>`` and ``<|im_end|>`` (ids 1, 2) delimit turns, and
    :data:`CHAT_TEMPLATE` is its chat template. Padding is on the right, as Qwen3's tokenizer pads.
    """
    vocab = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=MAX_TOKENS,
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_qwen3(vocab_size: int) -> Qwen3Model:
    """A 2-layer ``Qwen3Model`` of width :data:`TEXT_WIDTH` (2 query heads, 1 key/value head; uses the torch RNG)."""
    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=MAX_TOKENS,
        pad_token_id=0,
    )
    return Qwen3Model(config)


def build_tiny_z_image_transformer() -> ZImageTransformer2DModel:
    """A ``ZImageTransformer2DModel`` of width 32 (2 heads of 16 = RoPE axes 4 + 6 + 6) for 16-channel latents."""
    return ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=TEXT_WIDTH,
        axes_dims=[4, 6, 6],
        axes_lens=[MAX_TOKENS + 64, 64, 64],
    )


def build_tiny_z_image_pipeline(seed: int = 0, dynamic_shift: bool = False) -> ZImagePipeline:
    """A complete tiny ``ZImagePipeline`` (random init, offline, deterministic given ``seed``).

    Args:
        seed: Initialisation seed; the global torch RNG state is restored afterwards.
        dynamic_shift: Use a scheduler with the resolution-dependent (``mu``) shift instead of Z-Image-Turbo's
            static shift 3.0.

    Returns:
        The pipeline in float32 on the CPU; latents are ``(B, 16, H/8, W/8)``, heights and widths multiples of 16.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = build_chat_tokenizer()
        text_encoder = build_tiny_qwen3(len(tokenizer))
        vae = build_tiny_vae(FLUX_VAE_SCALING, FLUX_VAE_SHIFT)
        transformer = build_tiny_z_image_transformer()
    if dynamic_shift:
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True)
    else:
        scheduler = FlowMatchEulerDiscreteScheduler(**TURBO_SCHEDULER)
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe
