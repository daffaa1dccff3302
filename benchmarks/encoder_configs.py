"""Published architectures of the frozen networks beside the transformers: text encoders and reward models.

Each dictionary holds the values of the named hub repository's ``config.json`` that decide the parameter count.
:func:`component_params` builds any network of the estimates (these, and the transformers and VAEs of
:data:`benchmarks.archs.ARCHS`, named ``<arch>:transformer`` / ``<arch>:vae``) on PyTorch's meta device and counts
its parameters exactly, allocating nothing.
"""

from __future__ import annotations

from functools import cache
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from benchmarks.archs import ARCHS

CLIP_L_TEXT = {  # FLUX.1-dev text_encoder and SD3.5-Medium text_encoder (openai/clip-vit-large-patch14 text tower)
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
}
CLIP_G_TEXT = {  # SD3.5-Medium text_encoder_2 (OpenCLIP bigG text tower)
    **CLIP_L_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "projection_dim": 1280,
}
T5_XXL = {  # FLUX.1-dev text_encoder_2 and SD3.5-Medium text_encoder_3 (T5 v1.1 XXL encoder)
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
MISTRAL_SMALL = {  # FLUX.2-dev text_encoder: mistralai/Mistral-Small-3.1-24B-Instruct-2503 (Mistral3, whole VLM)
    "text_config": {
        "model_type": "mistral",
        "vocab_size": 131072,
        "hidden_size": 5120,
        "intermediate_size": 32768,
        "num_hidden_layers": 40,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
    },
    "vision_config": {  # the Pixtral tower (loaded, never run on the text path)
        "model_type": "pixtral",
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "head_dim": 64,
        "patch_size": 14,
        "image_size": 1540,
    },
    "spatial_merge_size": 2,
    "multimodal_projector_bias": False,
    "tie_word_embeddings": False,
}
QWEN3_8B = {  # FLUX.2-klein-9B text_encoder: Qwen/Qwen3-8B (Qwen3ForCausalLM)
    "vocab_size": 151936,
    "hidden_size": 4096,
    "intermediate_size": 12288,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "tie_word_embeddings": False,
}
QWEN3_4B = {  # FLUX.2-klein-4B and Z-Image text_encoder: Qwen/Qwen3-4B (tied embeddings)
    **QWEN3_8B,
    "hidden_size": 2560,
    "intermediate_size": 9728,
    "tie_word_embeddings": True,
}
QWEN25_VL_7B = {  # Qwen-Image text_encoder: Qwen/Qwen2.5-VL-7B-Instruct (whole VLM; only the text path runs)
    "text_config": {
        "vocab_size": 152064,
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6},
    },
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
CLIP_H = {  # HPSv2.1 (OpenCLIP ViT-H-14, converted) and yuvalkirstain/PickScore_v1
    "text": {
        **CLIP_L_TEXT,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
    },
    "vision": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
    },
    "projection_dim": 1024,
}
CLIP_L = {  # openai/clip-vit-large-patch14 (clip_score, and the aesthetic predictor's backbone)
    "text": CLIP_L_TEXT,
    "vision": {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 224,
    },
    "projection_dim": 768,
}
AESTHETIC_HEAD = (768, 1024, 128, 64, 16, 1)  # LAION aesthetic predictor v2 MLP (leapalign/rewards/aesthetic.py)

TEXT_ENCODERS = {  # the frozen text encoders of each benchmark architecture (component names below)
    "flux1-dev": ("clip_l_text", "t5_xxl"),
    "sd3.5-medium": ("clip_l_text_proj", "clip_g_text_proj", "t5_xxl"),
    "flux2-dev": ("mistral_small_24b",),
    "flux2-klein-9b": ("qwen3_8b",),
    "flux2-klein-4b": ("qwen3_4b",),
    "qwen-image": ("qwen2.5_vl_7b",),
    "z-image": ("qwen3_4b",),
}


def _clip_model(spec: dict[str, Any]) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(
        CLIPConfig(text_config=spec["text"], vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    )


def _builders() -> dict[str, Any]:
    import transformers as tf

    return {
        "clip_l_text": lambda: tf.CLIPTextModel(tf.CLIPTextConfig(**CLIP_L_TEXT)),
        "clip_l_text_proj": lambda: tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**CLIP_L_TEXT)),
        "clip_g_text_proj": lambda: tf.CLIPTextModelWithProjection(tf.CLIPTextConfig(**CLIP_G_TEXT)),
        "t5_xxl": lambda: tf.T5EncoderModel(tf.T5Config(**T5_XXL)),
        "mistral_small_24b": lambda: tf.Mistral3ForConditionalGeneration(tf.Mistral3Config(**MISTRAL_SMALL)),
        "qwen3_8b": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**QWEN3_8B)),
        "qwen3_4b": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**QWEN3_4B)),
        "qwen2.5_vl_7b": lambda: tf.Qwen2_5_VLForConditionalGeneration(tf.Qwen2_5_VLConfig(**QWEN25_VL_7B)),
        "clip_h": lambda: _clip_model(CLIP_H),
        "clip_l": lambda: _clip_model(CLIP_L),
        "aesthetic_head": lambda: nn.Sequential(*(nn.Linear(a, b) for a, b in pairwise(AESTHETIC_HEAD))),
    }


@cache
def component_params(name: str) -> int:
    """Parameters of one network, built on the meta device (nothing is allocated): a key of :func:`_builders`, or
    ``<arch>:transformer`` / ``<arch>:vae`` for an architecture of :data:`benchmarks.archs.ARCHS`."""
    import diffusers

    if ":" in name:
        arch, part = name.split(":")
        spec = ARCHS[arch]
        cls, kwargs = getattr(diffusers, spec[f"{part}_class"]), spec[part]
        build = lambda: cls(**kwargs)  # noqa: E731
    else:
        build = _builders()[name]
    with torch.device("meta"):
        return sum(p.numel() for p in build().parameters())
