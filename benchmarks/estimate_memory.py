"""ESTIMATES of GPU memory and disk for the shipped FLUX and SD3 configs, from parameter counts (no GPU, no download).

    python -m benchmarks.estimate_memory            # Markdown tables on stdout (docs/flux.md quotes them)
    python -m benchmarks.estimate_memory --json     # the same numbers as JSON

Nothing here is a measurement. Every network is built on PyTorch's ``meta`` device from its architecture config,
so its parameters are counted exactly without allocating or downloading anything: the FLUX.1-dev and SD3.5-Medium
transformers and VAEs from :data:`benchmarks.cost_gpu.ARCHS`, the text encoders and reward models from the configs
below (the values of their published ``config.json`` files). LoRA adapters are added with peft exactly as
:func:`leapalign.models.finetune.prepare_for_training` adds them (rank and targets from the config).

Bytes per parameter follow what leapalign does (``leapalign/models/finetune.py``, ``trainer.py``, ``ema.py``,
``checkpoint.py``): frozen parts (VAE, text encoders, and the transformer base under LoRA) in ``model.weights_dtype``;
the trained weights in float32 (LoRA adapters, or the whole transformer under full fine-tuning) with float32
gradients, two float32 AdamW moments and, when ``train.ema_decay > 0``, a float32 EMA copy; rewards in their
``dtype`` argument (float32 by default), every training and evaluation reward resident at once (the trainer keeps
them loaded). A checkpoint holds the trained weights, their EMA and the two moments (all float32); the export holds
the EMA weights (float32). Activations are NOT included: they depend on resolution, batch, the method and
gradient checkpointing, and only a GPU run measures them (``peak_mem_mb`` in ``metrics.jsonl``). GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from functools import cache
from itertools import pairwise
from typing import Any

import torch
from torch import nn

from benchmarks.cost_gpu import ARCHS
from leapalign.config import config_dir, load_config

CONFIGS = (
    "flux/leapalign",
    "flux/leapalign_lora",
    "flux/dance-grpo",
    "flux/mix-grpo",
    "sd3/leapalign",
    "sd3/flow-grpo",
)
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GB = 1e9

# Published config.json values (hub repositories named in each comment).
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


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _clip_model(spec: dict[str, Any]) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    return CLIPModel(
        CLIPConfig(text_config=spec["text"], vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    )


@cache
def component_params(name: str) -> int:
    """Parameters of one network, built on the meta device (nothing is allocated)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    builders = {
        "flux_transformer": lambda: FluxTransformer2DModel(**ARCHS["flux1-dev"]["transformer"]),
        "flux_vae": lambda: AutoencoderKL(**ARCHS["flux1-dev"]["vae"]),
        "sd3_transformer": lambda: SD3Transformer2DModel(**ARCHS["sd3.5-medium"]["transformer"]),
        "sd3_vae": lambda: AutoencoderKL(**ARCHS["sd3.5-medium"]["vae"]),
        "clip_l_text": lambda: CLIPTextModel(CLIPTextConfig(**CLIP_L_TEXT)),
        "clip_l_text_proj": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_L_TEXT)),
        "clip_g_text_proj": lambda: CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT)),
        "t5_xxl": lambda: T5EncoderModel(T5Config(**T5_XXL)),
        "clip_h": lambda: _clip_model(CLIP_H),
        "clip_l": lambda: _clip_model(CLIP_L),
        "aesthetic_head": lambda: nn.Sequential(*(nn.Linear(a, b) for a, b in pairwise(AESTHETIC_HEAD))),
    }
    with torch.device("meta"):
        return count(builders[name]())


@cache
def lora_params(kind: str, rank: int, targets: tuple[str, ...]) -> int:
    """Adapter parameters peft adds for ``rank`` on ``targets`` (as ``prepare_for_training`` configures it)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from peft import LoraConfig

    cls, arch = (FluxTransformer2DModel, "flux1-dev") if kind == "flux" else (SD3Transformer2DModel, "sd3.5-medium")
    with torch.device("meta"):
        model = cls(**ARCHS[arch]["transformer"])
        model.add_adapter(
            LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))
        )
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


FROZEN = {
    "flux": ("flux_vae", "clip_l_text", "t5_xxl"),
    "sd3": ("sd3_vae", "clip_l_text_proj", "clip_g_text_proj", "t5_xxl"),
}
REWARDS = {
    "hpsv2": ("clip_h",),
    "pickscore": ("clip_h",),
    "clip_score": ("clip_l",),
    "aesthetic": ("clip_l", "aesthetic_head"),
}


@dataclass
class Estimate:
    """One config's estimate; every size in bytes."""

    config: str
    finetune: str
    launch_processes: int
    transformer_params: int
    trained_params: int
    frozen_params: int
    transformer_base: int
    trained_weights: int
    gradients: int
    adamw_moments: int
    ema: int
    kl_reference: int
    text_encoders_vae: int
    rewards: dict[str, int]
    total_one_process: int
    per_gpu_at_launch: int
    checkpoint: int
    checkpoint_disk_peak: int
    export: int
    pipeline_16bit: int


def launch_processes(name: str) -> int:
    """The ``--num_processes N`` of the launch line in the shipped config's header (1 when there is none)."""
    text = (config_dir() / f"{name}.yaml").read_text()
    found = re.search(r"--num_processes\s+(\d+)", text)
    return int(found.group(1)) if found else 1


def estimate(name: str) -> Estimate:
    """The memory and disk estimate of one shipped config."""
    cfg = load_config(name)
    kind, m, t = cfg.model.name, cfg.model, cfg.train
    p_t = component_params(f"{kind}_transformer")
    full = m.finetune == "full"
    trained = p_t if full else lora_params(kind, m.lora_rank, tuple(m.lora_targets))
    frozen = sum(component_params(c) for c in FROZEN[kind])
    w = BYTES[m.weights_dtype]
    base = p_t * (4 if full else w)
    weights = 0 if full else trained * 4
    grads, moments = trained * 4, trained * 8
    ema = trained * 4 if t.ema_decay > 0 else 0
    kl_ref = p_t * 4 if full and getattr(cfg.method, "kl_weight", 0.0) > 0 else 0
    terms = [(r.name, r.args) for r in cfg.reward.terms]
    if cfg.evaluation.enabled:
        terms += [(r.name, r.args) for r in cfg.evaluation.rewards]
    rewards: dict[str, int] = {}
    for reward, args in terms:  # the same name and arguments load once (the trainer reuses it for evaluation)
        key = reward if not args else f"{reward}{json.dumps(dict(args), sort_keys=True)}"
        parts = REWARDS.get(reward)
        if parts is not None:  # image_reward (BLIP) and plugin rewards are not estimated
            rewards[key] = sum(component_params(c) for c in parts) * BYTES[str(args.get("dtype", "fp32"))]
    frozen_bytes = frozen * w
    total = base + weights + grads + moments + ema + kl_ref + frozen_bytes + sum(rewards.values())
    n = launch_processes(name)
    sharded = base + grads + moments + ema + kl_ref if full else 0  # FSDP full-shard, even split assumed
    per_gpu = total - sharded + sharded // n
    ckpt = trained * 4 + ema + trained * 8
    return Estimate(
        config=name,
        finetune=m.finetune,
        launch_processes=n,
        transformer_params=p_t,
        trained_params=trained,
        frozen_params=frozen,
        transformer_base=base,
        trained_weights=weights,
        gradients=grads,
        adamw_moments=moments,
        ema=ema,
        kl_reference=kl_ref,
        text_encoders_vae=frozen_bytes,
        rewards=rewards,
        total_one_process=total,
        per_gpu_at_launch=per_gpu,
        checkpoint=ckpt,
        checkpoint_disk_peak=ckpt * (cfg.run.keep_checkpoints + 1),
        export=trained * 4,
        pipeline_16bit=(p_t + frozen) * 2,
    )


def _gb(n: int) -> str:
    return f"{n / GB:.1f}" if n >= GB else f"{n / GB:.2f}"


def components_table() -> str:
    rows = [
        ("FLUX.1-dev transformer", "flux_transformer"),
        ("FLUX VAE", "flux_vae"),
        ("CLIP-L text encoder (FLUX)", "clip_l_text"),
        ("T5-XXL encoder", "t5_xxl"),
        ("SD3.5-Medium transformer", "sd3_transformer"),
        ("SD3 VAE", "sd3_vae"),
        ("CLIP-L text + projection (SD3)", "clip_l_text_proj"),
        ("CLIP-G text + projection (SD3)", "clip_g_text_proj"),
        ("CLIP ViT-H-14 (hpsv2, pickscore)", "clip_h"),
        ("CLIP ViT-L/14 (clip_score, aesthetic)", "clip_l"),
    ]
    lines = ["| network | parameters | GB at 2 bytes | GB at 4 bytes |", "|---|---|---|---|"]
    for label, key in rows:
        p = component_params(key)
        lines.append(f"| {label} | {p:,} | {_gb(p * 2)} | {_gb(p * 4)} |")
    return "\n".join(lines)


def configs_table(estimates: list[Estimate]) -> str:
    head = (
        "| config | fine-tuning | trained params | transformer weights | adapters + grads + AdamW + EMA "
        "| text encoders + VAE | rewards | total, one process | per GPU at the launch size | checkpoint "
        "| checkpoint disk peak | export |"
    )
    lines = [head, "|" + "---|" * 12]
    for e in estimates:
        state = e.trained_weights + e.gradients + e.adamw_moments + e.ema + e.kl_reference
        launch = f"{_gb(e.per_gpu_at_launch)} ({e.launch_processes} GPUs)" if e.launch_processes > 1 else "—"
        lines.append(
            f"| `{e.config}` | {e.finetune} | {e.trained_params:,} | {_gb(e.transformer_base)} | {_gb(state)} "
            f"| {_gb(e.text_encoders_vae)} | {_gb(sum(e.rewards.values()))} ({', '.join(e.rewards)}) "
            f"| {_gb(e.total_one_process)} | {launch} | {_gb(e.checkpoint)} | {_gb(e.checkpoint_disk_peak)} "
            f"| {_gb(e.export)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the estimates as JSON")
    args = parser.parse_args(argv)
    estimates = [estimate(name) for name in CONFIGS]
    if args.json:
        print(json.dumps([asdict(e) for e in estimates], indent=1))
        return
    print("ESTIMATES from parameter counts (GB = 1e9 bytes; activations not included).\n")
    print(components_table() + "\n")
    print(configs_table(estimates))


if __name__ == "__main__":
    main()
