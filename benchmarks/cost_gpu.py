"""Cost table at full size on one GPU: seconds per training iteration and peak memory, bf16, random weights.

One command on a single H100 / H200 (resumable; cells already in the results file are skipped):

    python -m benchmarks.cost_gpu                       # the 8-minute grid   -> benchmarks/results/cost_gpu.json
    python -m benchmarks.cost_gpu --grid large          # every arch, LoRA and full, 512 and 1024 px, every method, T
                                                        # = 10, 25, 50, 3 repeats, no time limit (hours)
    python -m benchmarks.cost_gpu --tiny --device cpu   # the same code path on tiny models (tests, smoke)

The architectures, their sources and the stand-ins (random text embeddings of the real shapes; no text encoder
cost) are in :mod:`benchmarks.archs`. Reward: a stand-in on the decoded image (its mean pixel value),
differentiable, behind the real-size VAE decoder with gradients; a real reward model adds its own forward and
backward, and its weights and the trainer's EMA copy add memory (``benchmarks/estimate_memory.py`` counts them).
``lora``: leapalign's LoRA (rank 64 on the family's default targets, fp32 adapters over a bf16 base, bf16
autocast). ``full``: every transformer weight trains in bf16 with bf16 AdamW state (no fp32 master copy). Per-block
gradient checkpointing is on (``--no-checkpointing`` turns it off). A cell that runs out of memory is recorded with
``"oom": true``; a full fine-tuning cell whose resident state alone (:func:`benchmarks.random_models.static_bytes`,
10 bytes a weight, plus 4 GB at 512 px for activations) exceeds the GPU's free memory is recorded as ``"oom": true,
"oom_predicted": true`` without being run. The policy-gradient methods run their whole iteration as the trainer does
with ``--batch`` prompts per iteration and ``G`` samples each for every ``G`` of ``--groups``; ``--match-batches``
also measures the direct-gradient methods at those batches.

**The default grid (8 minutes).** LeapAlign and ReFL, 512 px, T = 25, batch 1, 1 warm-up + 2 timed repeats, LoRA
for flux2-dev, flux2-klein-9b, qwen-image, z-image, flux1-dev and sd3.5-medium (in that order), and full fine-tuning
for z-image and sd3.5-medium, the only ones whose full state fits an 80 GB card (static bytes: z-image 61.7 GB,
sd3.5-medium 22.6 GB; flux2-klein-4b 38.9 GB is in the large grid; flux2-klein-9b 91.0, flux1-dev 119, qwen-image
205 and flux2-dev 322 GB do not fit). No GPU result exists yet (``cost_gpu.json`` is absent), so the plan rests on
FLOP counts (``torch.utils.flop_counter`` on the meta device; one velocity call at 512 px, batch 1, true CFG
doubling it): flux2-dev 87.8 TFLOP, flux2-klein-9b 2 x 22.7, qwen-image 2 x 18.6, z-image 2 x 15.3 (both with 256
text tokens), flux1-dev 21.5, sd3.5-medium 2 x 2.4. A pass (one sampling + one training iteration) costs, in velocity
calls: LeapAlign 25 (sampling) + 25 (rollout) + 2 x 2 (its two gradient-carrying calls, recomputed and
back-propagated through frozen weights) = 54; ReFL 25 + 20 (rollout to the mean trained step, 19) + 2 = 47; under
full fine-tuning the weight gradients add one call per gradient-carrying call (56, 48). Three passes per cell: a
LoRA arch costs 3 x (54 + 47) = 303 calls, a full one 312. Total: 303 x (87.8 + 45.5 + 37.2 + 30.6 + 21.5 + 4.9) +
312 x (30.6 + 4.9) = 80,000 TFLOP, plus 18 VAE decodes (2.5-2.8 TFLOP each, forward or backward) per arch pair,
0.4 % more. At 250 TFLOP/s sustained (a third of the ~790 TFLOP/s a large bf16 matmul reaches on these cards:
batch-1 steps of ~1,300-1,500 tokens, attention, norms, LoRA and recomputation) that is 320 s; with 8 model builds
(initialisation on the GPU and peft's adapters, ~5-10 s each), imports and CUDA start, about 6.5-7 minutes on an
H100 (an H200 computes as fast, its faster memory helps a little). FLUX.2 [dev] on an 80 GB card: LoRA only. Its
bf16 weights are 64.4 GB, the rank-64 adapters (308 M parameters) with fp32 gradients and AdamW moments 4.9 GB, the
VAE 0.2 GB: 69.5 GB resident, and about 3 GB of activations at 512 px leave ~10 GB of the 85 GB; 1024 px (3x the
tokens, 4x the VAE graph) is in the large grid and may run out of memory on 80 GB (recorded as such). Its full
fine-tuning (322 GB) is recorded as predicted OOM on any single GPU.

**The time limit.** ``--max-minutes`` (8 for the default grid, none for ``--grid large``) is checked before each
cell: a cell is not started when the elapsed time plus its predicted time (its velocity FLOPs, counted once per
model on the device, x the calls above, at the throughput measured on the cells already run, 250 TFLOP/s before the
first; x 1.1) would pass the limit. Such cells are listed at the end and not recorded, so running the same command
again resumes them. Every record carries ``velocity_tflop`` and ``cell_sec``, from which the throughput follows.
"""

from __future__ import annotations

import time

_T0 = time.monotonic()  # the time limit counts from here, before torch and the models are imported

import argparse  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from benchmarks.archs import ARCHS  # noqa: E402
from benchmarks.common import RESULTS, provenance, read_records, set_threads, upsert_record  # noqa: E402
from benchmarks.cost import POLICY_GRADIENT, STEPS  # noqa: E402
from benchmarks.costlib import MemoryProbe  # noqa: E402
from benchmarks.protocol import DEFAULT_PROTOCOL, load_protocol  # noqa: E402
from benchmarks.random_models import activation_margin, build, static_bytes  # noqa: E402

OUT = RESULTS / "cost_gpu.json"
NEW_ARCHS = ("flux2-dev", "flux2-klein-9b", "qwen-image", "z-image")
DEFAULT_PAIRS = (
    *((a, "lora") for a in NEW_ARCHS),
    ("z-image", "full"),
    ("flux1-dev", "lora"),
    ("sd3.5-medium", "lora"),
    ("sd3.5-medium", "full"),
)
GRIDS: dict[str, dict[str, Any]] = {
    "default": {"resolutions": "512", "methods": "leapalign,refl", "steps": "25", "repeats": 2, "max_minutes": 8.0},
    "large": {"resolutions": "512,1024", "methods": None, "steps": ",".join(map(str, STEPS)), "repeats": 3},
}
PRIOR_TFLOPS = {"cuda": 250.0, "cpu": 0.05}  # sustained TFLOP/s assumed before the first cell is measured
SAFETY = 1.1  # predictions are stretched by this factor before they are checked against the time limit
NAMES = ("method", "T", "device", "model_size", "finetune", "resolution", "tiny", "batch", "group_size")


class PixelMeanReward:
    """Stand-in differentiable reward: the mean pixel value of each decoded image, shape ``(B,)``."""

    name = "pixel_mean"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.float().mean(dim=(1, 2, 3))


def velocity_tflop(model: Any, res: int) -> float:
    """TFLOP of one guided velocity call (batch 1, ``res`` px, CFG included), counted on the model's device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = model.device
    cond = model.encode_prompts(["a photo of object 0"])
    x = torch.randn((1, *model.latent_shape(res, res)), generator=torch.Generator().manual_seed(0)).to(device)
    sigma = model.sigmas(2, res, res)[0].to(device)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16), FlopCounterMode(display=False) as fc:
        model.velocity(x, sigma, cond)
    return fc.get_total_flops() / 1e12


def velocity_calls(method: str, num_steps: int, batch: int) -> float:
    """Single-image velocity calls (forward-equivalents) of one pass: a sampling plus a training iteration.

    Direct-gradient methods: the rollout plus at most two gradient-carrying calls, each recomputed and
    back-propagated (``T + 6``, an upper bound of LeapAlign's ``T + 4``); AlignProp back-propagates every step
    (``4T``); the policy-gradient methods' updates are bounded by a forward and backward per step (``3T``).
    """
    if method in POLICY_GRADIENT:
        iteration = 3 * num_steps
    elif method == "alignprop":
        iteration = 4 * num_steps
    else:
        iteration = num_steps + 6
    return batch * (num_steps + iteration)


@dataclass
class TimeLimit:
    """Decides whether the next cell still fits ``limit_s`` (0: no limit), learning the throughput as cells run."""

    limit_s: float
    prior_tflops: float
    done_tflop: float = 0.0
    done_sec: float = 0.0
    start: float = _T0
    builds: list[float] = field(default_factory=list)
    not_started: list[dict[str, Any]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def tflops(self) -> float:
        return self.done_tflop / self.done_sec if self.done_sec > 0 else self.prior_tflops

    def fits(self, tflop: float, build: bool = False) -> bool:
        """Whether a cell of ``tflop`` (plus a model build) is predicted to end before the limit."""
        if self.limit_s <= 0:
            return True
        extra = (sum(self.builds) / len(self.builds) if self.builds else 10.0) if build else 0.0
        return self.elapsed() + SAFETY * (tflop / self.tflops() + extra) <= self.limit_s

    def ran(self, tflop: float, sec: float) -> None:
        self.done_tflop += tflop
        self.done_sec += sec


def full_fits(arch: str, res: int, device: torch.device) -> str | None:
    """``None`` when full fine-tuning of ``arch`` may fit the GPU's free memory, else why it is not run."""
    if device.type != "cuda":
        return None
    need, margin = static_bytes(arch, "full"), activation_margin(res)
    free = torch.cuda.mem_get_info(device)[0]
    if need + margin <= free:
        return None
    return (
        f"not run: full fine-tuning keeps {need / 1e9:.1f} GB resident (bf16 weights, gradients, two AdamW moments "
        f"and AdamW's step temporary) + {margin / 1e9:.0f} GB for activations > {free / 1e9:.1f} GB free"
    )


def measure_gpu_cell(
    model: Any, protocol: Any, method: str, num_steps: int, res: int, batch: int, repeats: int, group: int | None
):
    from benchmarks.cost import method_overrides
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
    release(model.device)
    return record


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=tuple(GRIDS), default="default", help="preset the flags below leave unset")
    p.add_argument("--archs", help=f"comma-separated, of {', '.join(ARCHS)} (default: the grid's)")
    p.add_argument("--finetune", help="lora,full (default: the grid's; --archs or --finetune make a full product)")
    p.add_argument("--resolutions")
    p.add_argument("--methods")
    p.add_argument("--steps")
    p.add_argument("--repeats", type=int)
    p.add_argument("--max-minutes", type=float, help="stop starting cells past this (default grid: 8; 0: no limit)")
    p.add_argument(
        "--batch", type=int, default=1, help="prompts (= images for direct methods) per iteration (%(default)s)"
    )
    p.add_argument(
        "--groups", default="2,4", help="group sizes G of the policy-gradient methods (default: %(default)s)"
    )
    p.add_argument("--match-batches", action="store_true", help="direct methods also at every batch * G")
    p.add_argument("--no-checkpointing", action="store_true", help="no per-block gradient checkpointing")
    p.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke test of this script)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (CPU runs only)")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    preset = GRIDS[args.grid]
    if args.archs or args.finetune or args.grid == "large":
        archs = args.archs or ",".join(ARCHS if args.grid == "large" else dict.fromkeys(a for a, _ in DEFAULT_PAIRS))
        modes = (args.finetune or "lora,full").split(",")
        args.pairs = list(itertools.product(archs.split(","), modes))
    else:
        args.pairs = list(DEFAULT_PAIRS)
    unknown = sorted({a for a, _ in args.pairs} - set(ARCHS))
    if unknown:
        p.error(f"unknown --archs {', '.join(unknown)}: choose from {', '.join(ARCHS)}.")
    for name in ("resolutions", "methods", "steps", "repeats", "max_minutes"):
        if getattr(args, name) is None:
            setattr(args, name, preset.get(name))
    if args.methods is None:
        from leapalign.methods import METHODS

        args.methods = ",".join(METHODS)
    args.max_minutes = args.max_minutes or 0.0
    return args


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
    groups = [int(g) for g in args.groups.split(",")]
    clock = TimeLimit(args.max_minutes * 60, PRIOR_TFLOPS["cuda" if device.type == "cuda" else "cpu"])

    def cells(method: str) -> list[tuple[int, int | None]]:
        """(batch, group_size) of ``method``: whole groups for the policy-gradient family."""
        if method in POLICY_GRADIENT:
            return [(args.batch * g, g) for g in groups]
        extra = [(args.batch * g, None) for g in groups if g != 1] if args.match_batches else []
        return [(args.batch, None), *extra]

    def key_of(r: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(r.get(k) for k in NAMES)

    def write(record: dict[str, Any]) -> None:
        record.update(provenance(args.threads))
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        upsert_record(args.out, record, key_of)
        print(json.dumps({k: record.get(k) for k in (*NAMES, "sec_per_iter", "peak_mem_mb", "oom")}), flush=True)

    for arch, finetune in args.pairs:
        model, build_error = None, None
        flops: dict[int, float | str] = {}
        grid = [
            (res, method, num_steps, batch, group)
            for res, method, num_steps in itertools.product(
                map(int, args.resolutions.split(",")), args.methods.split(","), map(int, args.steps.split(","))
            )
            for batch, group in cells(method)
        ]
        for res, method, num_steps, batch, group in grid:
            values = (method, num_steps, device_name, arch, finetune, res, args.tiny, batch, group)
            key = dict(zip(NAMES, values, strict=True))
            if not args.force and any(key_of(r) == key_of(key) for r in read_records(args.out)):
                print(f"{key}: done, skipped", flush=True)
                continue
            record = {**key, "precision": "bf16", "gradient_checkpointing": checkpointing}
            reason = full_fits(arch, res, device) if finetune == "full" and not args.tiny else None
            if reason is not None:  # decided from the parameter count, not by running out of memory
                write({**record, "oom": True, "oom_predicted": True, "error": reason})
                continue
            if model is None and build_error is None:
                if not clock.fits(0.0, build=True):
                    clock.not_started.append(key)
                    continue
                start = time.monotonic()
                try:
                    model = build(arch, finetune, args.tiny, device, checkpointing)
                except torch.cuda.OutOfMemoryError as err:  # the weights alone do not fit
                    build_error = "building the model: " + str(err).splitlines()[0]
                    release(device)
                clock.builds.append(time.monotonic() - start)
            if build_error is not None:
                write({**record, "oom": True, "error": build_error})
                continue
            if res not in flops:
                try:
                    flops[res] = velocity_tflop(model, res)
                except torch.cuda.OutOfMemoryError as err:  # one velocity call without gradients does not fit
                    flops[res] = "counting one velocity call's FLOPs: " + str(err).splitlines()[0]
                    release(device)
            if isinstance(flops[res], str):
                write({**record, "oom": True, "error": flops[res]})
                continue
            tflop = (1 + args.repeats) * velocity_calls(method, num_steps, batch) * float(flops[res])
            if not clock.fits(tflop):
                clock.not_started.append(key)
                continue
            start = time.monotonic()
            record.update(measure_or_oom(model, protocol, key, args.repeats))
            clock.ran(tflop, time.monotonic() - start)
            record.update({"velocity_tflop": flops[res], "cell_sec": time.monotonic() - start})
            record["memory_method"] = MemoryProbe(device).method
            record["model_params"] = sum(p.numel() for p in model.transformer.parameters())
            record["trainable_params"] = sum(p.numel() for p in model.trainable_parameters())
            write(record)
        del model
        release(device)
    if clock.not_started:
        print(f"{len(clock.not_started)} cells not started (--max-minutes {args.max_minutes:g}); run the same command "
              f"again to resume them: " + "; ".join(json.dumps(k) for k in clock.not_started), flush=True)  # fmt: skip
    print(f"finished in {clock.elapsed():.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
