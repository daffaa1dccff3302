"""ESTIMATES of GPU memory and disk for the shipped configs of every family, from parameter counts (no GPU, no
download).

    python -m benchmarks.estimate_memory            # Markdown tables on stdout (docs/flux.md quotes them)
    python -m benchmarks.estimate_memory --json     # the same numbers as JSON
    python -m benchmarks.estimate_memory --arch flux2-dev --finetune lora --lora-rank 64 --text-encoder-device cpu
                                                    # one architecture and its settings directly, without a config

Nothing here is a measurement. Every network is built on PyTorch's ``meta`` device from its architecture config,
so its parameters are counted exactly without allocating or downloading anything: the transformers and VAEs of
:data:`benchmarks.archs.ARCHS` (FLUX.1-dev, SD3.5-Medium, FLUX.2 [dev], FLUX.2 [klein] 9B / 4B, Qwen-Image,
Z-Image), the text encoders and reward models of :mod:`benchmarks.encoder_configs` (the values of their published
``config.json`` files). LoRA adapters are added with peft exactly as :func:`leapalign.models.finetune.
prepare_for_training` adds them (rank and targets from the config; no targets: the family adapter's
``default_lora_targets``). A config whose ``model.name`` is a family's real model maps to its architecture
(``flux2-klein``: 9B unless ``model.path`` names the 4B). Shipped configs that are not there yet are left out.

Bytes per parameter follow what leapalign does (``leapalign/models/finetune.py``, ``trainer.py``, ``ema.py``,
``checkpoint.py``): frozen parts (VAE, text encoders, and the transformer base under LoRA) in ``model.weights_dtype``;
the trained weights in float32 (LoRA adapters, or the whole transformer under full fine-tuning) with float32
gradients, two float32 AdamW moments and, when ``train.ema_decay > 0``, a float32 EMA copy; rewards in their
``dtype`` argument (float32 by default), every training and evaluation reward resident at once (the trainer keeps
them loaded). With ``model.text_encoder_device: cpu`` the text encoders sit in host memory (the ``host`` column) and
not on the GPU. A checkpoint holds the trained weights, their EMA and the two moments (all float32); the export holds
the EMA weights (float32). Activations are NOT included: they depend on resolution, batch, the method and gradient
checkpointing, and only a GPU run measures them (``peak_mem_mb`` in ``metrics.jsonl``; ``benchmarks/cost_gpu.py``
for random weights). GB = 1e9 bytes.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass

from benchmarks.archs import ARCHS
from benchmarks.encoder_configs import TEXT_ENCODERS, component_params
from benchmarks.random_models import param_counts
from leapalign.config import config_dir, load_config

CONFIGS = (
    "flux/leapalign",
    "flux/leapalign_lora",
    "flux/dance-grpo",
    "flux/mix-grpo",
    "sd3/leapalign",
    "sd3/flow-grpo",
    "flux2/leapalign_lora",
    "flux2-klein/leapalign",
    "qwen-image/leapalign_lora",
    "z-image/leapalign_lora",
)
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
GB = 1e9
ARCH_OF_MODEL = {
    "flux": "flux1-dev",
    "sd3": "sd3.5-medium",
    "flux2": "flux2-dev",
    "flux2-klein": "flux2-klein-9b",
    "qwen-image": "qwen-image",
    "z-image": "z-image",
}
REWARDS = {
    "hpsv2": ("clip_h",),
    "pickscore": ("clip_h",),
    "clip_score": ("clip_l",),
    "aesthetic": ("clip_l", "aesthetic_head"),
}


@dataclass(frozen=True)
class Settings:
    """What the estimate depends on: the architecture and the training settings a config (or the CLI) sets.

    ``rewards``: ``(key, reward name, dtype)`` of every distinct reward loaded (training and evaluation).
    """

    label: str
    arch: str
    finetune: str = "lora"
    lora_rank: int = 64
    lora_targets: tuple[str, ...] | None = None
    weights_dtype: str = "bf16"
    ema: bool = True
    kl_reference: bool = False
    text_on_host: bool = False
    rewards: tuple[tuple[str, str, str], ...] = ()
    processes: int = 1
    keep_checkpoints: int = 2


@dataclass
class Estimate:
    """One config's estimate; every size in bytes."""

    config: str
    arch: str
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
    text_encoders_host: int
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


def shipped_configs() -> list[str]:
    """The names of :data:`CONFIGS` whose YAML file exists in this checkout."""
    return [name for name in CONFIGS if (config_dir() / f"{name}.yaml").is_file()]


def settings_of(name: str) -> Settings:
    """The :class:`Settings` of shipped config ``name``."""
    cfg = load_config(name)
    m, t = cfg.model, cfg.train
    if m.name not in ARCH_OF_MODEL:
        raise ValueError(f"{name}: model.name={m.name} has no benchmark architecture; add it to ARCH_OF_MODEL.")
    arch = ARCH_OF_MODEL[m.name]
    if m.name == "flux2-klein" and "4b" in str(m.path or "").lower():
        arch = "flux2-klein-4b"
    terms = [(r.name, r.args) for r in cfg.reward.terms]
    if cfg.evaluation.enabled:
        terms += [(r.name, r.args) for r in cfg.evaluation.rewards]
    rewards = {}
    for reward, args in terms:  # the same name and arguments load once (the trainer reuses it for evaluation)
        key = reward if not args else f"{reward}{json.dumps(dict(args), sort_keys=True)}"
        rewards[key] = (key, reward, str(args.get("dtype", "fp32")))
    return Settings(
        label=name,
        arch=arch,
        finetune=m.finetune,
        lora_rank=m.lora_rank,
        lora_targets=tuple(m.lora_targets) if m.lora_targets is not None else None,
        weights_dtype=m.weights_dtype,
        ema=t.ema_decay > 0,
        kl_reference=getattr(cfg.method, "kl_weight", 0.0) > 0,
        text_on_host=getattr(m, "text_encoder_device", None) == "cpu",
        rewards=tuple(rewards.values()),
        processes=launch_processes(name),
        keep_checkpoints=cfg.run.keep_checkpoints,
    )


def estimate_settings(s: Settings) -> Estimate:
    """The memory and disk estimate of one architecture under settings ``s``."""
    p_t = component_params(f"{s.arch}:transformer")
    full = s.finetune == "full"
    trained = p_t if full else param_counts(s.arch, "lora", s.lora_rank, s.lora_targets)["trained"]
    w = BYTES[s.weights_dtype]
    text = sum(component_params(c) for c in TEXT_ENCODERS[s.arch])
    frozen = component_params(f"{s.arch}:vae") + text
    base = p_t * (4 if full else w)
    weights = 0 if full else trained * 4
    grads, moments = trained * 4, trained * 8
    ema = trained * 4 if s.ema else 0
    kl_ref = p_t * 4 if full and s.kl_reference else 0
    rewards = {}
    for key, reward, dtype in s.rewards:
        parts = REWARDS.get(reward)
        if parts is not None:  # image_reward (BLIP) and plugin rewards are not estimated
            rewards[key] = sum(component_params(c) for c in parts) * BYTES[dtype]
    host = text * w if s.text_on_host else 0
    frozen_bytes = frozen * w - host
    total = base + weights + grads + moments + ema + kl_ref + frozen_bytes + sum(rewards.values())
    n = s.processes
    sharded = base + grads + moments + ema + kl_ref if full else 0  # FSDP full-shard, even split assumed
    ckpt = trained * 4 + ema + trained * 8
    return Estimate(
        config=s.label,
        arch=s.arch,
        finetune=s.finetune,
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
        text_encoders_host=host,
        rewards=rewards,
        total_one_process=total,
        per_gpu_at_launch=total - sharded + sharded // n,
        checkpoint=ckpt,
        checkpoint_disk_peak=ckpt * (s.keep_checkpoints + 1),
        export=trained * 4,
        pipeline_16bit=(p_t + frozen) * 2,
    )


def estimate(name: str) -> Estimate:
    """The memory and disk estimate of one shipped config."""
    return estimate_settings(settings_of(name))


def _gb(n: int) -> str:
    return f"{n / GB:.1f}" if n >= GB else f"{n / GB:.2f}"


COMPONENT_ROWS = (
    ("FLUX.1-dev transformer", "flux1-dev:transformer"),
    ("FLUX VAE (FLUX.1, Z-Image)", "flux1-dev:vae"),
    ("CLIP-L text encoder (FLUX)", "clip_l_text"),
    ("T5-XXL encoder", "t5_xxl"),
    ("SD3.5-Medium transformer", "sd3.5-medium:transformer"),
    ("SD3 VAE", "sd3.5-medium:vae"),
    ("CLIP-L text + projection (SD3)", "clip_l_text_proj"),
    ("CLIP-G text + projection (SD3)", "clip_g_text_proj"),
    ("FLUX.2 [dev] transformer", "flux2-dev:transformer"),
    ("FLUX.2 VAE", "flux2-dev:vae"),
    ("Mistral Small 3.1 24B (FLUX.2 [dev])", "mistral_small_24b"),
    ("FLUX.2 [klein] 9B transformer", "flux2-klein-9b:transformer"),
    ("Qwen3-8B (klein 9B)", "qwen3_8b"),
    ("FLUX.2 [klein] 4B transformer", "flux2-klein-4b:transformer"),
    ("Qwen3-4B (klein 4B, Z-Image)", "qwen3_4b"),
    ("Qwen-Image transformer", "qwen-image:transformer"),
    ("Qwen-Image VAE", "qwen-image:vae"),
    ("Qwen2.5-VL 7B (Qwen-Image)", "qwen2.5_vl_7b"),
    ("Z-Image transformer", "z-image:transformer"),
    ("CLIP ViT-H-14 (hpsv2, pickscore)", "clip_h"),
    ("CLIP ViT-L/14 (clip_score, aesthetic)", "clip_l"),
)


def components_table() -> str:
    lines = ["| network | parameters | GB at 2 bytes | GB at 4 bytes |", "|---|---|---|---|"]
    for label, key in COMPONENT_ROWS:
        p = component_params(key)
        lines.append(f"| {label} | {p:,} | {_gb(p * 2)} | {_gb(p * 4)} |")
    return "\n".join(lines)


def configs_table(estimates: list[Estimate]) -> str:
    head = (
        "| config | arch | fine-tuning | trained params | transformer weights | adapters + grads + AdamW + EMA "
        "| text encoders + VAE (GPU) | text encoders (host) | rewards | total, one process | per GPU at the launch "
        "size | checkpoint | checkpoint disk peak | export |"
    )
    lines = [head, "|" + "---|" * 14]
    for e in estimates:
        state = e.trained_weights + e.gradients + e.adamw_moments + e.ema + e.kl_reference
        launch = f"{_gb(e.per_gpu_at_launch)} ({e.launch_processes} GPUs)" if e.launch_processes > 1 else "—"
        host = _gb(e.text_encoders_host) if e.text_encoders_host else "—"
        lines.append(
            f"| `{e.config}` | {e.arch} | {e.finetune} | {e.trained_params:,} | {_gb(e.transformer_base)} "
            f"| {_gb(state)} | {_gb(e.text_encoders_vae)} | {host} | {_gb(sum(e.rewards.values()))} "
            f"({', '.join(e.rewards)}) | {_gb(e.total_one_process)} | {launch} | {_gb(e.checkpoint)} "
            f"| {_gb(e.checkpoint_disk_peak)} | {_gb(e.export)} |"
        )
    return "\n".join(lines)


def cli_settings(args: argparse.Namespace) -> Settings:
    """The :class:`Settings` the ``--arch`` flags describe."""
    rewards = tuple((r, r, "fp32") for r in dict.fromkeys(args.reward or ["hpsv2"]))
    label = f"--arch {args.arch} --finetune {args.finetune}" + (
        f" --lora-rank {args.lora_rank}" if args.finetune == "lora" else ""
    )
    return Settings(
        label=label,
        arch=args.arch,
        finetune=args.finetune,
        lora_rank=args.lora_rank,
        weights_dtype=args.weights_dtype,
        ema=not args.no_ema,
        text_on_host=args.text_encoder_device == "cpu",
        rewards=rewards,
        processes=args.processes,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the estimates as JSON")
    parser.add_argument("--arch", choices=tuple(ARCHS), help="estimate this architecture instead of the configs")
    parser.add_argument("--finetune", choices=("lora", "full"), default="lora")
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--weights-dtype", choices=tuple(BYTES), default="bf16")
    parser.add_argument("--no-ema", action="store_true", help="train.ema_decay=0")
    parser.add_argument("--text-encoder-device", choices=("cpu",), help="text encoders in host memory")
    parser.add_argument("--reward", action="append", choices=tuple(REWARDS), help="loaded rewards (default hpsv2)")
    parser.add_argument("--processes", type=int, default=1, help="FSDP processes the full state is sharded over")
    args = parser.parse_args(argv)
    chosen = [cli_settings(args)] if args.arch else [settings_of(name) for name in shipped_configs()]
    estimates = [estimate_settings(s) for s in chosen]
    if args.json:
        print(json.dumps([asdict(e) for e in estimates], indent=1))
        return
    print("ESTIMATES from parameter counts (GB = 1e9 bytes; activations not included).\n")
    if not args.arch:
        print(components_table() + "\n")
    print(configs_table(estimates))


if __name__ == "__main__":
    main()
