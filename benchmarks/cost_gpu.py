"""Cost table at full size on one GPU: FLUX.1-dev and SD3.5-Medium, bf16, LoRA and full fine-tuning.

One command on a single H100 / H200 (resumable; cells already in the results file are skipped):

    python -m benchmarks.cost_gpu                       # -> benchmarks/results/cost_gpu.json
    python -m benchmarks.cost_gpu --tiny --device cpu   # the same code path on tiny models (tests, smoke)

Memory and time do not depend on weight values, so every network is built from the real architecture config
with random weights, directly on the device in bf16 (nothing is downloaded):

* FLUX.1-dev: ``FluxTransformer2DModel`` with its defaults (19 double + 38 single blocks, 24 heads of 128,
  joint_attention_dim 4096, pooled 768, embedded guidance 3.5) and the FLUX VAE (16 latent channels).
* SD3.5-Medium: ``SD3Transformer2DModel`` (24 layers, 24 heads of 64, joint_attention_dim 4096, pooled 2048,
  caption projection 1536, qk rms_norm, dual attention in layers 0-12, pos_embed_max_size 384) with true CFG
  4.5 (two forwards per step) and the SD3 VAE.
* Text encoders are replaced by fixed random embeddings of the real shapes (FLUX: 512 T5 tokens x 4096 and
  a 768 pooled vector; SD3.5: 77 CLIP + 256 T5 tokens x 4096 and 2048 pooled), so their cost is left out
  (they run without gradients, once per prompt).
* Reward: a stand-in on the decoded image (its mean pixel value), differentiable, behind the real-size VAE
  decoder with gradients. A real reward model (HPSv2.1's ViT-H) would add its own forward and backward.

Fine-tuning: ``lora`` is leapalign's LoRA (rank 64 on to_q/to_k/to_v/to_out.0, fp32 adapters over a bf16
base, bf16 autocast); ``full`` trains every transformer weight in bf16 with AdamW state in bf16 (no fp32
master copy; FLUX.1-dev's 12B parameters then need about 96 GB for weights, gradients and optimiser state,
so expect an out-of-memory record on 80 GB). Per-block gradient checkpointing is on (``--no-checkpointing``
turns it off). A cell that runs out of memory is recorded with ``"oom": true``.

The policy-gradient methods (Flow-GRPO, DanceGRPO, MixGRPO) run their whole iteration as the trainer does (the
rollout of whole groups without gradients, then one forward and backward per trained step) with ``--batch``
prompts per iteration and ``G`` samples each for every ``G`` of ``--groups``; ``--match-batches`` also measures
the direct-gradient methods at those batches (``batch * G``), so each has a same-batch LeapAlign row.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import itertools
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, provenance, read_records, set_threads, upsert_record
from benchmarks.cost import POLICY_GRADIENT, STEPS, method_overrides
from benchmarks.costlib import MemoryProbe
from benchmarks.protocol import DEFAULT_PROTOCOL, load_protocol

OUT = RESULTS / "cost_gpu.json"
VAE = {
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
ARCHS: dict[str, dict[str, Any]] = {
    "flux1-dev": {
        "kind": "flux",
        "transformer": {
            "patch_size": 1,
            "in_channels": 64,
            "num_layers": 19,
            "num_single_layers": 38,
            "attention_head_dim": 128,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "pooled_projection_dim": 768,
            "guidance_embeds": True,
            "axes_dims_rope": [16, 56, 56],
        },
        "vae": {**VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
        "text_tokens": 512,
        "guidance": 3.5,
    },
    "sd3.5-medium": {
        "kind": "sd3",
        "transformer": {
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
            "dual_attention_layers": list(range(13)),
            "qk_norm": "rms_norm",
        },
        "vae": {**VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609},
        "text_tokens": 77 + 256,
        "guidance": 4.5,
    },
}
TINY_VAE = {**VAE, "block_out_channels": [16, 32, 32, 32], "layers_per_block": 1, "norm_num_groups": 8}
TINY: dict[str, dict[str, Any]] = {
    "flux1-dev": {
        "transformer": {
            **ARCHS["flux1-dev"]["transformer"],
            "num_layers": 1,
            "num_single_layers": 1,
            "attention_head_dim": 16,
            "num_attention_heads": 2,
            "joint_attention_dim": 32,
            "pooled_projection_dim": 32,
            "axes_dims_rope": [4, 6, 6],
        },
        "vae": {**ARCHS["flux1-dev"]["vae"], **TINY_VAE},
        "text_tokens": 8,
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
            "dual_attention_layers": [0],
        },
        "vae": {**ARCHS["sd3.5-medium"]["vae"], **TINY_VAE},
        "text_tokens": 8,
    },
}


def arch_spec(name: str, tiny: bool) -> dict[str, Any]:
    spec = dict(ARCHS[name])
    if tiny:
        spec.update(TINY[name])
    return spec


class RandomText:
    """Stands in for the frozen text encoders: fixed random ``(L, D)`` tokens and ``(P,)`` pooled per prompt."""

    def __init__(self, tokens: int, dim: int, pooled: int, dtype: torch.dtype) -> None:
        self.tokens, self.dim, self.pooled, self.dtype = tokens, dim, pooled, dtype
        self.device = torch.device("cpu")

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        embeds, pooled = [], []
        for p in prompts:
            g = torch.Generator().manual_seed(int(hashlib.sha256(p.encode()).hexdigest()[:8], 16))
            embeds.append(torch.randn(self.tokens, self.dim, generator=g))
            pooled.append(torch.randn(self.pooled, generator=g))
        return torch.stack(embeds).to(self.device, self.dtype), torch.stack(pooled).to(self.device, self.dtype)

    def to(self, device: torch.device | str) -> RandomText:
        self.device = torch.device(device)
        return self


class PixelMeanReward:
    """Stand-in differentiable reward: the mean pixel value of each decoded image, shape ``(B,)``."""

    name = "pixel_mean"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


@contextlib.contextmanager
def default_dtype_device(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(old)


def build(arch: str, finetune: str, tiny: bool, device: torch.device, checkpointing: bool) -> Any:
    """The adapter with random bf16 weights on ``device``, prepared for ``finetune``."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    from leapalign.models import FluxAdapter, SD3Adapter, prepare_for_training
    from leapalign.models.config import ModelConfig

    spec = arch_spec(arch, tiny)
    tcfg = dict(spec["transformer"])
    for key in ("axes_dims_rope", "dual_attention_layers"):
        if key in tcfg:
            tcfg[key] = tuple(tcfg[key])
    with default_dtype_device(torch.bfloat16, device):
        torch.manual_seed(0)
        cls = FluxTransformer2DModel if spec["kind"] == "flux" else SD3Transformer2DModel
        transformer = cls(**tcfg)
        vae = AutoencoderKL(**spec["vae"])
    text = RandomText(spec["text_tokens"], tcfg["joint_attention_dim"], tcfg["pooled_projection_dim"], torch.bfloat16)
    adapter_cls = FluxAdapter if spec["kind"] == "flux" else SD3Adapter
    model = adapter_cls(transformer, vae, text, guidance_scale=spec["guidance"])
    if finetune == "lora":  # leapalign's LoRA preparation (the model name only selects validation rules)
        mcfg = ModelConfig(name="tiny-flux", finetune="lora", lora_rank=64, lora_alpha=64.0)
        mcfg.gradient_checkpointing = checkpointing
        prepare_for_training(model, mcfg)
    else:  # pure bf16 full fine-tuning
        vae.requires_grad_(False).eval()
        transformer.requires_grad_(True).train()
        if checkpointing:
            transformer.enable_gradient_checkpointing()
    return model.to(device)


def measure_gpu_cell(
    model: Any, protocol: Any, method: str, num_steps: int, res: int, batch: int, repeats: int, group: int | None
):
    from benchmarks.costlib import grouped_prompts, make_policy_iteration, make_sampling, make_train_iteration, measure
    from leapalign.methods import Batch, build_method, is_policy_gradient

    device = model.device
    overrides = [*method_overrides(protocol, method, num_steps), f"sampler.num_steps={num_steps}"]
    if group is not None:
        overrides += [f"method.group_size={group}", f"data.batch_size={batch}"]
    method_cfg = protocol.load(overrides)
    prompts = [f"a photo of object {i}" for i in range(batch)]
    if group is not None:
        prompts = grouped_prompts(prompts, batch, group)
    noise = torch.randn((batch, *model.latent_shape(res, res)), generator=torch.Generator().manual_seed(0))
    batch_obj = Batch(
        prompts=prompts,
        cond=model.encode_prompts(prompts),
        noise=noise.to(device),  # latents in float32; the transformer computes in bf16
        sigmas=model.sigmas(num_steps, res, res).to(device),
        height=res,
        width=res,
        generator=torch.Generator(device=device).manual_seed(1),
        step_generator=torch.Generator().manual_seed(2),
    )
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5, weight_decay=1e-4)
    built = build_method(method_cfg.method)
    make = make_policy_iteration if is_policy_gradient(built) else make_train_iteration
    iteration = make(model, built, batch_obj, PixelMeanReward(), optimizer, 1.0)

    def autocast_iteration() -> dict[str, float]:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return iteration()

    def autocast_sampling() -> Any:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return make_sampling(model, batch_obj)()

    return measure(autocast_iteration, autocast_sampling, device, repeats).summary(), method_cfg.method


def measure_or_oom(model: Any, protocol: Any, key: dict[str, Any], repeats: int) -> dict[str, Any]:
    """One cell's record; an out-of-memory error is a result (``"oom": true``), and its memory is released."""
    from dataclasses import asdict

    record: dict[str, Any] = {"oom": False}
    try:
        summary, mcfg = measure_gpu_cell(
            model, protocol, key["method"], key["T"], key["resolution"], key["batch"], repeats, key["group_size"]
        )
        record.update(summary)
        record["method_config"] = asdict(mcfg)
    except torch.cuda.OutOfMemoryError as err:
        record.update({"oom": True, "error": str(err).splitlines()[0]})
    for param in model.trainable_parameters():
        param.grad = None
    gc.collect()
    if model.device.type == "cuda":
        torch.cuda.empty_cache()
    return record


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from leapalign.methods import METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archs", default=",".join(ARCHS))
    p.add_argument("--finetune", default="lora,full")
    p.add_argument("--resolutions", default="512,1024")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", default=",".join(map(str, STEPS)))
    p.add_argument(
        "--batch", type=int, default=1, help="prompts (= images for direct methods) per iteration (%(default)s)"
    )
    p.add_argument(
        "--groups", default="2,4", help="group sizes G of the policy-gradient methods (default: %(default)s)"
    )
    p.add_argument("--match-batches", action="store_true", help="direct methods also at every batch * G")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-checkpointing", action="store_true", help="no per-block gradient checkpointing")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke test of this script)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--force", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and not args.tiny:
        raise SystemExit("full-size models need a GPU: run on a CUDA machine, or pass --tiny for the CPU smoke test.")
    if device.type == "cpu":
        set_threads(args.threads)
    protocol = load_protocol(args.protocol)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    checkpointing = not args.no_checkpointing
    names = ("method", "T", "device", "model_size", "finetune", "resolution", "tiny", "batch", "group_size")
    groups = [int(g) for g in args.groups.split(",")]

    def cells(method: str) -> list[tuple[int, int | None]]:
        """(batch, group_size) of ``method``: whole groups for the policy-gradient family."""
        if method in POLICY_GRADIENT:
            return [(args.batch * g, g) for g in groups]
        extra = [(args.batch * g, None) for g in groups if g != 1] if args.match_batches else []
        return [(args.batch, None), *extra]

    def key_of(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(r.get(k) for k in names)

    for arch, finetune in itertools.product(args.archs.split(","), args.finetune.split(",")):
        model = None
        grid = [
            (res, method, num_steps, batch, group)
            for res, method, num_steps in itertools.product(
                map(int, args.resolutions.split(",")), args.methods.split(","), map(int, args.steps.split(","))
            )
            for batch, group in cells(method)
        ]
        for res, method, num_steps, batch, group in grid:
            values = (method, num_steps, device_name, arch, finetune, res, args.tiny, batch, group)
            key = dict(zip(names, values, strict=True))
            if not args.force and any(key_of(r) == key_of(key) for r in read_records(args.out)):
                print(f"{key}: done, skipped", flush=True)
                continue
            if model is None:
                model = build(arch, finetune, args.tiny, device, checkpointing)
            record = {**key, "precision": "bf16", "gradient_checkpointing": checkpointing}
            record.update(measure_or_oom(model, protocol, key, args.repeats))
            record["memory_method"] = MemoryProbe(device).method
            record["model_params"] = sum(p.numel() for p in model.transformer.parameters())
            record["trainable_params"] = sum(p.numel() for p in model.trainable_parameters())
            record.update(provenance(args.threads))
            record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            upsert_record(args.out, record, key_of)
            print(json.dumps({k: record.get(k) for k in (*names, "sec_per_iter", "peak_mem_mb", "oom")}), flush=True)
        del model
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
