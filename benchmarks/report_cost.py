"""The cost sections of ``docs/benchmarks.md`` (CPU cost table, LeapAlign's targets, GPU cost)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.cost import GROUP_SWEEP, SIZES
from benchmarks.report_common import MEM_TARGET, NOT_RUN, TIME_TARGET, Section


def at_size_batch(cost: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records at their size's own batch (the T tables); the group-size sweep's other batches are left out."""
    return [r for r in cost if r["model_size"] not in SIZES or r["batch"] == SIZES[r["model_size"]]["batch"]]


def label(r: dict[str, Any]) -> str:
    return f"{r['method']} (G={r['group_size']})" if r.get("group_size") else r["method"]


def leapalign_targets(cost: Sequence[dict[str, Any]], size: str) -> dict[str, Any] | None:
    rows = {r["T"]: r for r in at_size_batch(cost) if r["method"] == "leapalign" and r["model_size"] == size}
    if 10 not in rows or 50 not in rows:
        return None
    return {
        "delta_ratio": rows[50]["peak_mem_delta_mb"] / rows[10]["peak_mem_delta_mb"],
        "abs_ratio": rows[50]["peak_mem_mb"] / rows[10]["peak_mem_mb"],
        "time": {t: (r["iter_over_sampling"], (t + 4) / t) for t, r in sorted(rows.items())},
    }


def cost_section(cost: list[dict[str, Any]], assets: Path) -> Section:
    s = Section("Cost per training iteration (CPU)")
    if not cost:
        s.lines.append(f"{NOT_RUN} Run `make bench-cost` (`python -m benchmarks.cost`).")
        return s
    s.lines += [
        "One training iteration = the method's step (rollout, gradient-carrying forwards, decode, reward), backward,",
        "gradient clipping and AdamW (`benchmarks/costlib.py`). Sampling = a plain no-grad T-step sampling of the",
        "same batch, timed in the same process, interleaved with the iterations (medians of the repeats).",
        "Memory: each (size, method) runs in a fresh process with jemalloc preloaded, whose own counters give the",
        "exact live memory: **Δpeak** is the peak of bytes allocated minus bytes freed during the iteration (jemalloc",
        "`thread.peak`; with one torch thread every tensor is allocated by the main thread), i.e. activations,",
        "graphs, gradients and temporaries on top of weights, optimiser state and libraries; **peak** adds the live",
        "bytes before the iteration. The resident set (peak RSS after resetting the kernel's mark) is in the",
        "records too (`peak_rss_mb`); it also counts libraries and pages the allocator keeps.",
        "Why these counters: with glibc malloc the RSS overstates live memory (freed blocks are kept); making the RSS",
        "track live memory (`MALLOC_MMAP_THRESHOLD_`, or jemalloc returning pages at once) slowed the iterations",
        "markedly while this benchmark was built, which would corrupt the timings taken in the same process;",
        "jemalloc's counters are exact, and reading them costs nothing. Without jemalloc the script falls back to",
        "the RSS under `MALLOC_MMAP_THRESHOLD_=131072` and says so in `memory_method`.",
        "AlignProp is measured with its window at the whole chain (its worst case: DRaFT with full backprop).",
        "The policy-gradient methods run the trainer's own iteration (`policy_gradient_iteration`): the rollout of",
        "whole groups of G samples per prompt without gradients (sampling, decode, reward, advantages), then the",
        "updates with one forward and backward per trained step, at the protocol's options (one update per",
        "rollout); the batch is the same number of samples as the direct methods'.",
        "",
    ]
    sweep = [r for r in cost if r not in at_size_batch(cost)]
    cost = at_size_batch(cost)
    for size in dict.fromkeys(r["model_size"] for r in cost):
        rows = sorted(
            (r for r in cost if r["model_size"] == size),
            key=lambda r: (r["method"] != "leapalign", r["method"], r["T"]),
        )
        r0 = rows[0]
        s.lines += [
            f"**{size}**: {r0['model_params'] / 1e6:.2f}M-parameter Flux-architecture transformer, "
            f"{r0['resolution']} px, batch {r0['batch']}, {r0['forwards_per_step']} forward(s) per step, "
            f"full fine-tuning ({r0['trainable_params'] / 1e6:.2f}M trainable), {r0['repeats']} timed repeats.",
            "",
            "| method | T | s / iter | sampling s | iter / sampling | (T+4)/T | Δpeak MiB | peak MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            s.lines.append(
                f"| {label(r)} | {r['T']} | {r['sec_per_iter']:.3f} | {r['sampling_sec']:.3f} | "
                f"{r['iter_over_sampling']:.2f} | {(r['T'] + 4) / r['T']:.2f} | {r['peak_mem_delta_mb']:.1f} | "
                f"{r['peak_mem_mb']:.0f} |"
            )
        plots.plot_cost(cost, size, assets / f"cost_{size}.png")
        s.lines += ["", f"![cost {size}](assets/benchmarks/cost_{size}.png)", ""]
        t = leapalign_targets(cost, size)
        if t is not None:
            time_bits = ", ".join(f"T={k}: {v[0]:.2f} (ideal {v[1]:.2f})" for k, v in t["time"].items())
            s.lines += [
                f"LeapAlign targets at {size}: peak memory T=50 / T=10 = {t['delta_ratio']:.2f} on Δpeak and "
                f"{t['abs_ratio']:.2f} on absolute peak (target ≤ {MEM_TARGET}: "
                f"{'met' if t['delta_ratio'] <= MEM_TARGET else 'not met'} on Δpeak); iteration / sampling "
                f"time {time_bits} (target ≤ {TIME_TARGET}: "
                f"{time_verdict(t)}).",
                "",
                *breakdown_table(cost, size),
                *memory_comparison(cost, size),
            ]
        s.lines += policy_breakdown_table(cost, size)
    s.lines += group_sweep_table([*cost, *sweep])
    return s


def policy_breakdown_table(cost: Sequence[dict[str, Any]], size: str) -> list[str]:
    """The policy-gradient methods against LeapAlign at the same batch, with their rollout / update split."""
    rows = [r for r in cost if r["model_size"] == size and r.get("group_size")]
    if not rows:
        return []
    lines = [
        f"The policy-gradient iteration at {size} (medians, seconds): `collect` = the rollout without gradients",
        "(T steps, the SDE ones recorded), decode, reward and advantages; `update` = one forward and backward per",
        "trained step, clipping and AdamW. LeapAlign's iteration at the same batch and T for comparison.",
        "",
        "| method | T | collect | update | s / iter | LeapAlign s / iter | ratio | Δpeak MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["T"])):
        b, la = r["breakdown_sec"], row(cost, size, "leapalign", r["T"])
        la_sec = f"{la['sec_per_iter']:.3f}" if la else "–"
        ratio = f"{r['sec_per_iter'] / la['sec_per_iter']:.2f}" if la else "–"
        lines.append(
            f"| {label(r)} | {r['T']} | {b['collect']:.3f} | "
            f"{b['update']:.3f} | {r['sec_per_iter']:.3f} | {la_sec} | {ratio} | {r['peak_mem_delta_mb']:.1f} |"
        )
    return [*lines, ""]


def group_sweep_table(cost: Sequence[dict[str, Any]]) -> list[str]:
    """Seconds per iteration and memory against the group size at a fixed number of prompts per iteration."""
    size, steps, prompts = GROUP_SWEEP["size"], GROUP_SWEEP["T"], GROUP_SWEEP["prompts"]
    rows = [
        r
        for r in cost
        if (r["model_size"], r["T"]) == (size, steps)
        and ((r.get("group_size") and r["batch"] == prompts * r["group_size"]) or r["method"] in GROUP_SWEEP["direct"])
    ]
    groups = sorted({r["group_size"] for r in rows if r.get("group_size")})
    if not groups:
        return []
    lines = [
        f"**Group size** at {size}, T = {steps}, {prompts} prompts per iteration and G samples each (batch "
        f"{prompts}G); LeapAlign at the same batches. Cells: s / iter, Δpeak MiB.",
        "",
        "| method | " + " | ".join(f"G = {g} (batch {prompts * g})" for g in groups) + " |",
        "|---|" + "---|" * len(groups),
    ]
    for method in dict.fromkeys(r["method"] for r in sorted(rows, key=lambda r: r["method"] != "leapalign")):
        cells = []
        for g in groups:
            hit = next(
                (r for r in rows if r["method"] == method and r["batch"] == prompts * g),
                None,
            )
            cells.append(f"{hit['sec_per_iter']:.2f} s, {hit['peak_mem_delta_mb']:.0f} MiB" if hit else "–")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def row(cost: Sequence[dict[str, Any]], size: str, method: str, steps: int) -> dict[str, Any] | None:
    """The record of ``method`` at ``size``, ``T = steps`` and the size's own batch (``None`` if absent)."""
    return next(
        (r for r in at_size_batch(cost) if (r["model_size"], r["method"], r["T"]) == (size, method, steps)), None
    )


def breakdown_table(cost: Sequence[dict[str, Any]], size: str) -> list[str]:
    """Where LeapAlign's iteration time goes, against the no-grad sampling of the same batch."""
    rows = [r for r in cost if r["model_size"] == size and r["method"].startswith("leapalign") and "breakdown_sec" in r]
    if not rows:
        return []
    lines = [
        f"Where LeapAlign's iteration time goes at {size} (medians, seconds): `step` = rollout with the two",
        "gradient-carrying forwards, decode and reward; then the backward pass; then clipping and AdamW.",
        "",
        "| variant | T | sampling | step | step / sampling | backward | optimizer | (T+4)/T x sampling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["method"], r["T"])):
        b = r["breakdown_sec"]
        lines.append(
            f"| {r['method']} | {r['T']} | {r['sampling_sec']:.3f} | {b['step']:.3f} | "
            f"{b['step'] / r['sampling_sec']:.2f} | {b['backward']:.3f} | {b['optimizer']:.3f} | "
            f"{(r['T'] + 4) / r['T'] * r['sampling_sec']:.3f} |"
        )
    return [*lines, ""]


def memory_comparison(cost: Sequence[dict[str, Any]], size: str, steps: int = 50) -> list[str]:
    """LeapAlign's memory and time at ``T = steps`` against full backprop with and without checkpointing."""
    names = {
        "leapalign": "LeapAlign",
        "leapalign-block-ckpt": "LeapAlign with per-block gradient checkpointing",
        "alignprop": "full-chain backprop with per-step checkpointing (AlignProp, whole window)",
        "alignprop-no-ckpt": "full-chain backprop keeping every graph",
    }
    found = {m: row(cost, size, m, steps) for m in names}
    if found["leapalign"] is None:
        return []
    parts = [
        f"{text}: Δpeak {r['peak_mem_delta_mb']:.0f} MiB at {r['iter_over_sampling']:.2f}x the sampling time"
        for m, text in names.items()
        if (r := found[m]) is not None
    ]
    return [f"Memory at T = {steps}, {size}: " + "; ".join(parts) + ".", ""]


def time_verdict(t: dict[str, Any]) -> str:
    met = [k for k, v in t["time"].items() if v[0] <= TIME_TARGET]
    if len(met) == len(t["time"]):
        return "met at every T"
    return f"met at T = {', '.join(map(str, met))}" if met else "not met at any T"


def cost_gpu_section(records: list[dict[str, Any]]) -> Section:
    s = Section("Cost at full size (GPU)")
    if not records:
        s.lines += [
            "**Pending a GPU.** No GPU was available where these benchmarks were produced. On one H100 or H200:",
            "`python -m benchmarks.cost_gpu` (FLUX.2 [dev], FLUX.2 [klein] 9B, Qwen-Image, Z-Image, FLUX.1-dev and",
            "SD3.5-Medium architectures with random weights, bf16: LeapAlign and ReFL at 512 px, LoRA, and full",
            "fine-tuning where it fits one GPU, sized to finish within 8 minutes; `--grid large` for every method,",
            "both resolutions and FLUX.2 [klein] 4B; writes `benchmarks/results/cost_gpu.json`; the script's",
            "docstring lists what is real and what is a stand-in). `python -m benchmarks.cost_gpu --tiny --device",
            "cpu` runs the same code on tiny models (a test does).",
        ]
        return s
    s.lines += ["| arch | finetune | px | method | batch | T | s / iter | sampling s | peak MiB | Δpeak MiB | OOM |"]
    s.lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in records:
        where = f"| {r['model_size']} | {r['finetune']} | {r['resolution']} | {label(r)} | {r['batch']} | {r['T']} |"
        if r.get("oom"):
            s.lines.append(where + " – | – | – | – | yes |")
        else:
            s.lines.append(
                f"{where} "
                f"{r['sec_per_iter']:.2f} | {r['sampling_sec']:.2f} | {r['peak_mem_mb']:.0f} | "
                f"{r['peak_mem_delta_mb']:.0f} | no |"
            )
    return s


# ------------------------------------------------------------------------------------------ grad fidelity
