"""The full-size architectures of the GPU benchmarks (random weights, real shapes) and their tiny CPU twins.

Memory and time do not depend on weight values, so every network is built from its published architecture
(``transformer/config.json`` and ``vae/config.json`` of the hub folder named below) with random weights, directly on
the target device in bf16; nothing is downloaded. Each value's source is given beside it. Parameter counts, built on
the meta device (``tests/test_arch_configs.py``), against the published sizes:

=================  ============  ==========  =====================================================================
arch               counted       published   adapter, guidance as benchmarked
=================  ============  ==========  =====================================================================
flux1-dev          11.90 B       12 B        ``FluxAdapter``, embedded guidance 3.5 (one forward per step)
sd3.5-medium       2.24 B        2.5 B       ``SD3Adapter``, true CFG 4.5 (two forwards per step)
flux2-dev          32.22 B       32 B        ``Flux2Adapter``, embedded guidance 4.0 (one forward per step)
flux2-klein-9b     9.08 B        9 B         ``Flux2KleinAdapter``, base model, true CFG 4.0 (two forwards)
flux2-klein-4b     3.88 B        4 B         ``Flux2KleinAdapter``, base model, true CFG 4.0 (two forwards)
qwen-image         20.43 B       20 B        ``QwenImageAdapter``, true CFG 4.0 (two forwards per step)
z-image            6.15 B        6 B         ``ZImageAdapter``, base model, CFG 4.0 (two forwards per step)
=================  ============  ==========  =====================================================================

Text encoders are replaced by :class:`benchmarks.random_models.RandomText`: fixed random embeddings of the real
shapes, returned as the family's encoder returns them (FLUX.1 / SD3: ``(embeds, pooled)``; FLUX.2: ``(embeds,)``;
Qwen-Image and Z-Image: ``(embeds, mask)``). Token counts are :data:`leapalign.families.FAMILIES`' ``text_tokens``
(the padded length, or a long prompt's length for the families that trim prompts to their real tokens).
"""

from __future__ import annotations

from typing import Any

import torch

from leapalign.families import FAMILIES
from leapalign.models.tiny_qwen_image import QWEN_IMAGE_SCHEDULER_CONFIG

QWEN_IMAGE_SCHEDULER = QWEN_IMAGE_SCHEDULER_CONFIG  # Qwen/Qwen-Image scheduler/scheduler_config.json
Z_IMAGE_SCHEDULER = {  # Tongyi-MAI/Z-Image src/config/model.py (DEFAULT_SCHEDULER_*)
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": False,
}

VAE = {  # FLUX.1-dev and SD3.5 vae/config.json (AutoencoderKL, 16 latent channels)
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
# FLUX.2 [dev] and [klein] transformer/config.json: huggingface/diffusers scripts/convert_flux2_to_diffusers.py
# (get_flux2_transformer_config, "flux2-dev" / "klein-9b" / "klein-4b"); the klein values also in
# modelscope/DiffSynth-Studio diffsynth/configs/model_configs.py (flux2_dit extra_kwargs).
FLUX2 = {
    "patch_size": 1,
    "in_channels": 128,
    "attention_head_dim": 128,
    "timestep_guidance_channels": 256,
    "mlp_ratio": 3.0,
    "axes_dims_rope": (32, 32, 32, 32),
    "rope_theta": 2000,
    "eps": 1e-6,
}
ARCHS: dict[str, dict[str, Any]] = {
    "flux1-dev": {
        "adapter": "leapalign.models.flux:FluxAdapter",
        "adapter_kwargs": {"guidance_scale": 3.5},
        "transformer_class": "FluxTransformer2DModel",
        "transformer": {  # black-forest-labs/FLUX.1-dev (FluxTransformer2DModel defaults)
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": (16, 56, 56),
        },
        "vae_class": "AutoencoderKL",
        "vae": {**VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        "text": {"tokens": FAMILIES["flux"].text_tokens, "dim": 4096, "pooled": 768},  # T5-XXL tokens, CLIP-L pooled
        "published_b": 12.0,
    },
    "sd3.5-medium": {
        "adapter": "leapalign.models.sd3:SD3Adapter",
        "adapter_kwargs": {"guidance_scale": 4.5},
        "transformer_class": "SD3Transformer2DModel",
        "transformer": {  # stabilityai/stable-diffusion-3.5-medium
            "sample_size": 128,
            "patch_size": 2,
            "in_channels": 16,
            "out_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384,
            "dual_attention_layers": tuple(range(13)),
            "qk_norm": "rms_norm",
        },
        "vae_class": "AutoencoderKL",
        "vae": {**VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        "text": {"tokens": FAMILIES["sd3"].text_tokens, "dim": 4096, "pooled": 2048},  # 77 CLIP + 256 T5 tokens
        "published_b": 2.5,
    },
    "flux2-dev": {
        "adapter": "leapalign.models.flux2:Flux2Adapter",
        "adapter_kwargs": {"guidance_scale": 4.0},  # Flux2Pipeline's default embedded guidance
        "transformer_class": "Flux2Transformer2DModel",
        "transformer": {
            **FLUX2,
            "num_layers": 8,
            "num_single_layers": 48,
            "num_attention_heads": 48,
            "joint_attention_dim": 15360,  # 3 stacked hidden states of Mistral Small 3.1 (3 x 5120)
            "guidance_embeds": True,
        },
        # AutoencoderKLFlux2 defaults, which the same conversion script instantiates for the published VAE
        # (32 latent channels, batch-norm statistics over the 128 patchified channels).
        "vae_class": "AutoencoderKLFlux2",
        "vae": {},
        "text": {"tokens": FAMILIES["flux2"].text_tokens, "dim": 15360},
        "published_b": 32.0,
    },
    "flux2-klein-9b": {
        "adapter": "leapalign.models.flux2:Flux2KleinAdapter",
        "adapter_kwargs": {"guidance_scale": 4.0, "is_distilled": False},  # the base model, as trained
        "transformer_class": "Flux2Transformer2DModel",
        "transformer": {
            **FLUX2,
            "num_layers": 8,
            "num_single_layers": 24,
            "num_attention_heads": 32,
            "joint_attention_dim": 12288,  # 3 x Qwen3-8B's 4096
            "guidance_embeds": False,
        },
        "vae_class": "AutoencoderKLFlux2",
        "vae": {},
        "text": {"tokens": FAMILIES["flux2-klein"].text_tokens, "dim": 12288},
        "published_b": 9.0,
    },
    "flux2-klein-4b": {
        "adapter": "leapalign.models.flux2:Flux2KleinAdapter",
        "adapter_kwargs": {"guidance_scale": 4.0, "is_distilled": False},
        "transformer_class": "Flux2Transformer2DModel",
        "transformer": {
            **FLUX2,
            "num_layers": 5,
            "num_single_layers": 20,
            "num_attention_heads": 24,
            "joint_attention_dim": 7680,  # 3 x Qwen3-4B's 2560
            "guidance_embeds": False,
        },
        "vae_class": "AutoencoderKLFlux2",
        "vae": {},
        "text": {"tokens": FAMILIES["flux2-klein"].text_tokens, "dim": 7680},
        "published_b": 4.0,
    },
    "qwen-image": {
        "adapter": "leapalign.models.qwen_image:QwenImageAdapter",
        "adapter_kwargs": {"guidance_scale": 4.0},  # QwenImagePipeline's true_cfg_scale default
        "scheduler": QWEN_IMAGE_SCHEDULER,
        "transformer_class": "QwenImageTransformer2DModel",
        # Qwen/Qwen-Image: the QwenImageTransformer2DModel defaults of diffusers 0.42 (its docs load them from the
        # hub), as in filipstrand/mflux src/mflux/models/qwen/model/qwen_transformer/qwen_transformer.py and
        # modelscope/DiffSynth-Studio diffsynth/models/qwen_image_dit.py (60 layers).
        "transformer": {
            "patch_size": 2,
            "in_channels": 64,
            "out_channels": 16,
            "num_layers": 60,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 3584,  # Qwen2.5-VL 7B's hidden size
            "guidance_embeds": False,
            "axes_dims_rope": (16, 56, 56),
        },
        # AutoencoderKLQwenImage defaults (base_dim 96, z_dim 16, dim_mult [1, 2, 4, 4], 2 res blocks, the published
        # latents_mean/std), as in ModelTC/LightX2V configs/qwen_image/qwen_image_t2i.json (z_dim 16, factor 8).
        "vae_class": "AutoencoderKLQwenImage",
        "vae": {},
        "text": {"tokens": FAMILIES["qwen-image"].text_tokens, "dim": 3584, "mask": torch.long},
        "published_b": 20.0,
    },
    "z-image": {
        "adapter": "leapalign.models.z_image:ZImageAdapter",
        "adapter_kwargs": {"guidance_scale": 4.0},  # the base model with CFG, as z-image/leapalign_lora
        "scheduler": Z_IMAGE_SCHEDULER,  # the shift does not change the cost
        "transformer_class": "ZImageTransformer2DModel",
        "transformer": {  # Tongyi-MAI/Z-Image src/config/model.py (DEFAULT_TRANSFORMER_*, ROPE_*)
            "all_patch_size": (2,),
            "all_f_patch_size": (1,),
            "in_channels": 16,
            "dim": 3840,
            "n_layers": 30,
            "n_refiner_layers": 2,
            "n_heads": 30,
            "n_kv_heads": 30,
            "norm_eps": 1e-5,
            "qk_norm": True,
            "cap_feat_dim": 2560,  # Qwen3-4B's hidden size
            "rope_theta": 256.0,
            "t_scale": 1000.0,
            "axes_dims": [32, 48, 48],
            "axes_lens": [1536, 512, 512],
        },
        # FLUX.1's VAE: filipstrand/mflux src/mflux/models/z_image/model/z_image_vae/vae.py (scaling 0.3611, shift
        # 0.1159, 16 channels); DiffSynth-Studio loads Z-Image-Turbo's vae/ with its FLUX VAE classes.
        "vae_class": "AutoencoderKL",
        "vae": {**VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        "text": {"tokens": FAMILIES["z-image"].text_tokens, "dim": 2560, "mask": torch.bool},
        "published_b": 6.0,
    },
}

TINY_VAE = {**VAE, "block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
TINY_FLUX2 = {
    "patch_size": 1,
    "in_channels": 32,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 48,
    "timestep_guidance_channels": 32,
    "axes_dims_rope": (4, 4, 4, 4),
}
TINY_FLUX2_VAE = {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1, "latent_channels": 8}
TINY: dict[str, dict[str, Any]] = {  # overrides of ARCHS for the CPU smoke path (same code, tiny networks)
    "flux1-dev": {
        "transformer": {
            **ARCHS["flux1-dev"]["transformer"],
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": (4, 6, 6),
        },
        "vae": {**ARCHS["flux1-dev"]["vae"], **TINY_VAE},
        "text": {"tokens": 8, "dim": 32, "pooled": 32},
    },
    "sd3.5-medium": {
        "transformer": {
            **ARCHS["sd3.5-medium"]["transformer"],
            "num_layers": 2,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "caption_projection_dim": 32,
            "pooled_projection_dim": 32,
            "pos_embed_max_size": 32,
            "dual_attention_layers": (0,),
        },
        "vae": {**ARCHS["sd3.5-medium"]["vae"], **TINY_VAE},
        "text": {"tokens": 8, "dim": 32, "pooled": 32},
    },
    "flux2-dev": {
        "transformer": {**TINY_FLUX2, "guidance_embeds": True},
        "vae": {**TINY_FLUX2_VAE, "norm_num_groups": 8},
        "text": {"tokens": 8, "dim": 48},
    },
    "flux2-klein-9b": {
        "transformer": {**TINY_FLUX2, "guidance_embeds": False},
        "vae": {**TINY_FLUX2_VAE, "norm_num_groups": 8},
        "text": {"tokens": 8, "dim": 48},
    },
    "qwen-image": {
        "transformer": {
            **ARCHS["qwen-image"]["transformer"],
            "num_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "axes_dims_rope": (4, 6, 6),
        },
        "vae": {"base_dim": 8, "num_res_blocks": 1},
        "text": {"tokens": 8, "dim": 32, "mask": torch.long},
    },
    "z-image": {
        "transformer": {
            **ARCHS["z-image"]["transformer"],
            "dim": 32,
            "n_layers": 1,
            "n_refiner_layers": 1,
            "n_heads": 2,
            "n_kv_heads": 2,
            "cap_feat_dim": 32,
            "axes_dims": [4, 6, 6],
            "axes_lens": [576, 64, 64],
        },
        "vae": {**ARCHS["z-image"]["vae"], **TINY_VAE},
        "text": {"tokens": 8, "dim": 32, "mask": torch.bool},
    },
}
TINY["flux2-klein-4b"] = TINY["flux2-klein-9b"]


def arch_spec(name: str, tiny: bool) -> dict[str, Any]:
    """The spec of architecture ``name`` (with the tiny overrides when ``tiny``)."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}: choose from {', '.join(ARCHS)}.")
    spec = dict(ARCHS[name])
    if tiny:
        spec.update(TINY[name])
    return spec
