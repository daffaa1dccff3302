"""Cost table on the CPU: seconds per training iteration and peak memory of every method against ``T``.

Usage (from the repository root; under half an hour at 1 thread on the project machine):

    python -m benchmarks.cost                                  # every method x T in {10, 25, 50} x both sizes,
                                                               # then the group-size sweep
    python -m benchmarks.cost --sizes shapes --methods leapalign --steps 25 --groups none --force  # one cell again

For every model size and method, one fresh process (jemalloc preloaded when installed, else glibc with
``MALLOC_MMAP_THRESHOLD_``) builds the model, reward and optimiser once, runs one warm-up iteration and
sampling, then measures each ``T``: ``repeats`` training iterations and as many plain no-grad samplings of
the same batch, interleaved (see :mod:`benchmarks.costlib` for what is timed and how memory is measured).
Records are upserted into ``benchmarks/results/cost.json`` as each ``T`` finishes, keyed by
``(method, T, device, model_size)``; a cell whose settings hash matches is skipped.

Sizes (``SIZES``): ``shapes`` is the shipped ShapesWorld model at the protocol's settings (32 px, true CFG,
batch 8); ``flux-20m`` is a random-init Flux-architecture transformer (2 double + 4 single blocks, hidden 384)
in the same pixel-space adapter at 64 px with one forward per step (no CFG, like the guidance-distilled
FLUX.1-dev), batch 2 and 2 timed repeats (to keep the whole run near 25 minutes). Method options are those of
the methods suite in ``benchmarks/protocol.yaml``, except that AlignProp backpropagates through the whole
chain (its window is random in the sweep; here its worst case, which is DRaFT with full backprop).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, ROOT, allocator_env, provenance, read_records, set_threads, upsert_record
from benchmarks.costlib import grouped_prompts
from benchmarks.protocol import DEFAULT_PROTOCOL, Protocol, load_protocol

OUT = RESULTS / "cost.json"
MODELS_DIR = ROOT / "benchmarks" / "runs" / "cost_models"
STEPS = (10, 25, 50)
SIZES: dict[str, dict[str, Any]] = {
    "shapes": {"arch": None, "resolution": 32, "batch": 8, "guidance": None, "repeats": 3, "group_size": 4},
    "flux-20m": {
        "group_size": 2,
        "arch": {
            "num_layers": 2,
            "num_single_layers": 4,
            "num_attention_heads": 6,
            "attention_head_dim": 64,
            "axes_dims_rope": [16, 24, 24],
        },
        "resolution": 64,
        "batch": 2,
        "guidance": 1.0,
        "repeats": 2,
    },
}


# The group-size sweep: `prompts` prompts per iteration, G samples each, at one size and T.
GROUP_SWEEP: dict[str, Any] = {"size": "shapes", "T": 25, "prompts": 2, "groups": (2, 4, 8), "direct": ("leapalign",)}
POLICY_GRADIENT = ("flow-grpo", "dance-grpo", "mix-grpo")


# Extra rows: a method with one memory option changed, to show what the option buys.
VARIANTS: dict[str, tuple[str, list[str]]] = {
    "alignprop-no-ckpt": ("alignprop", ["method.checkpoint=false"]),  # full backprop keeping every graph
    "leapalign-block-ckpt": ("leapalign", ["model.gradient_checkpointing=true"]),  # per-block recompute
}


def method_overrides(protocol: Protocol, name: str, num_steps: int) -> list[str]:
    """The methods suite's overrides for method ``name`` (AlignProp: full chain); defaults if absent.

    ``name`` may also be a key of ``VARIANTS``: the base method's overrides plus the variant's.
    """
    if name in VARIANTS:
        base, extra = VARIANTS[name]
        return [*method_overrides(protocol, base, num_steps), *extra]
    cell = next((c for c in protocol.cells("methods") if c.method == name and not c.is_base), None)
    overrides = list(cell.overrides) if cell is not None else [f"method={name}"]
    if name == "alignprop":
        overrides += [f"method.min_grad_steps={num_steps}", f"method.max_grad_steps={num_steps}"]
    return overrides


def size_overrides(size: str, num_steps: int, batch: int | None = None, group: int | None = None) -> list[str]:
    """The size's sampler, batch (default: the size's) and model overrides; ``group`` sets method.group_size."""
    spec = SIZES[size]
    res = spec["resolution"]
    out = [f"sampler.num_steps={num_steps}", f"sampler.height={res}", f"sampler.width={res}"]
    out.append(f"data.batch_size={batch or spec['batch']}")
    if group is not None:
        out.append(f"method.group_size={group}")
    if spec["arch"] is not None:
        out.append(f"model.path={MODELS_DIR / size}")
    if spec["guidance"] is not None:
        out.append(f"model.guidance_scale={spec['guidance']}")
    return out


def cell_hash(
    protocol: Protocol, size: str, method: str, num_steps: int, repeats: int, batch: int, group: int | None
) -> str:
    spec = {k: v for k, v in SIZES[size].items() if k != "group_size"}
    payload: dict[str, Any] = {
        "size": spec,
        "overrides": [*protocol.common, *method_overrides(protocol, method, num_steps)],
        "base": protocol.base_config,
        "T": num_steps,
        "repeats": repeats,
    }
    if batch != spec["batch"] or group is not None:  # (the direct methods at their size's batch keep their hash)
        payload.update({"batch": batch, "group_size": group})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ensure_model(size: str) -> None:
    """Writes the random-init transformer of ``size`` (seed 0) once, as a diffusers model folder."""
    spec = SIZES[size]
    folder = MODELS_DIR / size
    if spec["arch"] is None or (folder / "config.json").is_file():
        return
    from leapalign.worlds.shapes.model import ShapesArch

    arch = dict(spec["arch"])
    arch["axes_dims_rope"] = tuple(arch["axes_dims_rope"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ShapesArch(**arch).build().save_pretrained(str(folder))


class MethodBench:
    """One method at one size in this process: model, reward and optimiser built once, then any ``T``."""

    def __init__(self, protocol: Protocol, size: str, method: str, batch: int, group: int | None) -> None:
        from leapalign.data import load_prompts
        from leapalign.models import build_model
        from leapalign.rewards import build_reward

        self.protocol, self.size, self.method, self.batch, self.group = protocol, size, method, batch, group
        cfg = self.config(STEPS[0])
        torch.manual_seed(0)
        self.model = build_model(cfg.model)
        self.reward = build_reward(cfg.reward)
        self.params = self.model.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        self.grad_clip = cfg.train.grad_clip
        prompts = load_prompts(cfg.data.prompts)
        self.prompts = grouped_prompts(prompts, batch, group) if group else prompts[:batch]
        self.warm = False

    def config(self, num_steps: int) -> Any:
        return self.protocol.load(
            [
                *method_overrides(self.protocol, self.method, num_steps),
                *size_overrides(self.size, num_steps, self.batch, self.group),
            ]
        )

    def measure(self, num_steps: int, repeats: int) -> dict[str, Any]:
        """Measures ``T = num_steps`` (one warm-up iteration and sampling before the first ``T`` only)."""
        from benchmarks.costlib import MemoryProbe, make_policy_iteration, make_sampling, make_train_iteration, measure
        from leapalign.methods import Batch, build_method, is_policy_gradient

        cfg, model = self.config(num_steps), self.model
        h, w, b = cfg.sampler.height, cfg.sampler.width, cfg.data.batch_size
        batch = Batch(
            prompts=self.prompts,
            cond=model.encode_prompts(self.prompts),
            noise=torch.randn((b, *model.latent_shape(h, w)), generator=torch.Generator().manual_seed(0)),
            sigmas=model.sigmas(num_steps, h, w),
            height=h,
            width=w,
            generator=torch.Generator().manual_seed(1),
            step_generator=torch.Generator().manual_seed(2),
        )
        method = build_method(cfg.method)
        make = make_policy_iteration if is_policy_gradient(method) else make_train_iteration
        iteration = make(model, method, batch, self.reward, self.optimizer, self.grad_clip)
        result = measure(
            iteration, make_sampling(model, batch), torch.device("cpu"), repeats, warmup=0 if self.warm else 1
        )
        self.warm = True
        return {
            "method": self.method,
            "T": num_steps,
            "device": "cpu",
            "model_size": self.size,
            "model_params": sum(p.numel() for p in model.transformer.parameters()),
            "trainable_params": sum(p.numel() for p in self.params),
            "resolution": h,
            "batch": b,
            "group_size": self.group,
            "forwards_per_step": 2 if getattr(model, "uses_true_cfg", False) else 1,
            **result.summary(),
            "memory_method": MemoryProbe(torch.device("cpu")).method,
            "method_config": asdict(cfg.method),
            "repeats": repeats,
        }


def run_worker(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    set_threads(int(spec["threads"]))
    protocol = load_protocol(spec["protocol"])
    out = Path(spec["out"])
    batch, group = spec["batch"], spec["group_size"]
    bench = MethodBench(protocol, spec["size"], spec["method"], batch, group)
    for num_steps in spec["steps"]:
        record = bench.measure(num_steps, spec["repeats"])
        record["cost_hash"] = cell_hash(
            protocol, spec["size"], spec["method"], num_steps, spec["repeats"], batch, group
        )
        record.update(provenance(int(spec["threads"])))
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        upsert_record(out, record, cost_key)
        print(
            f"{spec['size']} {spec['method']} T={num_steps} batch={batch} G={group}: "
            f"{record['sec_per_iter']:.3f} s/iter, sampling "
            f"{record['sampling_sec']:.3f} s, live peak +{record['peak_mem_delta_mb']:.1f} MiB",
            flush=True,
        )
        gc.collect()
    return 0


def cost_key(record: dict[str, Any]) -> tuple[Any, ...]:
    keys = ("method", "T", "device", "model_size", "batch", "group_size")
    return tuple(record.get(k) for k in keys)


def jobs(
    sizes: list[str], methods: list[str], steps: list[int], groups: list[int], group_steps: int
) -> list[dict[str, Any]]:
    """The cells to measure, one process per ``(size, method, batch, group_size)`` with its ``steps``."""
    cells: dict[tuple[str, str, int, int | None], list[int]] = {}
    for size in sizes:
        for method in methods:
            group = SIZES[size]["group_size"] if method in POLICY_GRADIENT else None
            cells.setdefault((size, method, SIZES[size]["batch"], group), []).extend(steps)
    sweep = GROUP_SWEEP
    if sweep["size"] in sizes:
        for method in [m for m in methods if m in POLICY_GRADIENT or m in sweep["direct"]]:
            for g in groups:
                group = g if method in POLICY_GRADIENT else None
                cells.setdefault((sweep["size"], method, sweep["prompts"] * g, group), []).append(group_steps)
    return [
        {"size": size, "method": method, "batch": batch, "group_size": group, "steps": sorted(set(todo))}
        for (size, method, batch, group), todo in cells.items()
    ]


def main(argv: list[str] | None = None) -> int:
    from leapalign.methods import METHODS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated sizes (default: %(default)s)")
    p.add_argument("--methods", default=",".join([*METHODS, *VARIANTS]), help="methods (default: all + VARIANTS)")
    p.add_argument("--steps", default=",".join(map(str, STEPS)), help="sampling steps T (default: %(default)s)")
    p.add_argument(
        "--groups",
        default=",".join(map(str, GROUP_SWEEP["groups"])),
        help="group sizes of the group-size sweep, or 'none' to skip it (default: %(default)s)",
    )
    p.add_argument("--group-steps", type=int, default=GROUP_SWEEP["T"], help="T of the group-size sweep (%(default)s)")
    p.add_argument("--repeats", type=int, help="timed iterations per cell (default: per size, 3 or 2)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default: %(default)s)")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--out", type=Path, default=OUT, help="results file (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="measure again even if a matching record exists")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker)
    protocol = load_protocol(args.protocol)
    sizes, methods = args.sizes.split(","), args.methods.split(",")
    bad = [s for s in sizes if s not in SIZES] + [m for m in methods if m not in METHODS and m not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown size(s)/method(s) {bad}; sizes: {list(SIZES)}, methods: {[*METHODS, *VARIANTS]}.")
    steps = [int(s) for s in args.steps.split(",")]
    groups = [] if args.groups == "none" else [int(g) for g in args.groups.split(",")]
    env = {**os.environ, **allocator_env()[0]}
    env.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    failures = 0
    for size in sizes:
        ensure_model(size)
    for job in jobs(sizes, methods, steps, groups, args.group_steps):
        size, method, batch, group = job["size"], job["method"], job["batch"], job["group_size"]
        repeats = args.repeats or SIZES[size]["repeats"]
        done = {
            r["T"]
            for r in read_records(args.out)
            if cost_key(r)[2:] == ("cpu", size, batch, group) and r.get("method") == method
            and r.get("cost_hash") == cell_hash(protocol, size, method, r["T"], repeats, batch, group)
        }  # fmt: skip
        todo = job["steps"] if args.force else [t for t in job["steps"] if t not in done]
        label = f"{size} {method} batch={batch} G={group}"
        if not todo:
            print(f"{label}: done, skipped", flush=True)
            continue
        spec_path = MODELS_DIR.parent / "cost_specs" / f"{size}_{method}_b{batch}_g{group}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec = {"protocol": str(args.protocol.resolve()), "size": size, "method": method, "steps": todo}
        spec.update({"repeats": repeats, "threads": args.threads, "out": str(args.out.resolve())})
        spec.update({"batch": batch, "group_size": group})
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "benchmarks.cost", "--worker", str(spec_path)]
        failures += subprocess.run(cmd, env=env, cwd=ROOT, check=False).returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
