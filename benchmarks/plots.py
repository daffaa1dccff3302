"""PNG figures of the benchmark results (matplotlib, Agg backend). Every function reads result dicts only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from leapalign.eval.stats import mean_ci  # noqa: E402

ALPHA_COLORS = {0.0: "tab:blue", 0.3: "tab:orange", 1.0: "tab:red"}


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def _centres(rows: Sequence[dict[str, Any]]) -> list[float]:
    return [(r["gap_lo"] + r["gap_hi"]) / 2 for r in rows]


def plot_grad_fidelity(result: dict[str, Any], path: Path) -> None:
    """Cosine with the true gradient and norm ratio against the sigma gap, per method (two panels)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=120)
    la = result["leapalign"]["by_gap"]
    for alpha in result["settings"]["alphas"]:
        for ax, key in zip(axes, ("cos", "ratio"), strict=True):
            mean = [r[f"{key}_{alpha}"] for r in la]
            std = [r[f"{key}_{alpha}_std"] for r in la]
            x = _centres(la)
            ax.plot(x, mean, "o-", color=ALPHA_COLORS.get(alpha), label=f"LeapAlign alpha={alpha}")
            lo = [m - s for m, s in zip(mean, std, strict=True)]
            hi = [m + s for m, s in zip(mean, std, strict=True)]
            ax.fill_between(x, lo, hi, color=ALPHA_COLORS.get(alpha), alpha=0.12)
    for name, rows, style in (("ReFL (gap = sigma_m)", result["refl"]["by_gap"], "s--"),
                              ("DRTune", result["drtune"]["by_gap"], "^:")):  # fmt: skip
        for ax, key in zip(axes, ("cos", "ratio"), strict=True):
            ax.plot(_centres(rows), [r[key] for r in rows], style, color="0.3" if "ReFL" in name else "tab:green",
                    label=name)  # fmt: skip
    axes[0].axhline(0, color="k", lw=0.5)
    s = result["settings"]
    title = f"Gradient fidelity on ShapesWorld (T={s['T']}, batch {s['batch']}, {len(s['noise_seeds'])} seeds)"
    labels = ["cosine with the full-backprop gradient", "|g| / |g_true|"]
    _finish(fig, axes, "sigma gap between the trained steps", labels, [1], title, path)


def _finish(fig: Any, axes: Any, xlabel: str, ylabels: list[str], log_axes: list[int], title: str, path: Path) -> None:
    """Labels, log scales, grids, the legend of the first panel, the title; then saves the figure."""
    for n, (ax, ylabel) in enumerate(zip(axes, ylabels, strict=True)):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if n in log_axes:
            ax.set_yscale("log")
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


def plot_cost(records: Sequence[dict[str, Any]], size: str, path: Path) -> None:
    """Seconds per iteration (relative to sampling) and peak memory increase against T, one line per method."""
    rows = [r for r in records if r.get("model_size") == size and r.get("device") == "cpu"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=120)
    for method in methods:
        pts = sorted((r for r in rows if r["method"] == method), key=lambda r: r["T"])
        steps = [r["T"] for r in pts]
        style = {"lw": 2.5} if method == "leapalign" else {"lw": 1.2}
        axes[0].plot(steps, [r["sec_per_iter"] for r in pts], "o-", label=method, **style)
        axes[1].plot(steps, [r["iter_over_sampling"] for r in pts], "o-", label=method, **style)
        axes[2].plot(steps, [r["peak_mem_delta_mb"] for r in pts], "o-", label=method, **style)
    if rows:
        ts = sorted({r["T"] for r in rows})
        samp = {t: [r["sampling_sec"] for r in rows if r["T"] == t] for t in ts}
        axes[0].plot(ts, [sum(v) / len(v) for v in samp.values()], "k--", label="no-grad sampling")
        axes[1].plot(ts, [(t + 4) / t for t in ts], "k--", label="(T+4)/T")
    labels = [
        "seconds per training iteration",
        "iteration time / no-grad sampling time",
        "Δpeak: live memory added by the iteration (MiB)",
    ]
    _finish(
        fig, axes, "sampling steps T", labels, [2], f"Cost per training iteration on the CPU, model size {size}", path
    )


def plot_curves(
    records: Sequence[dict[str, Any]], base: dict[str, Any] | None, key: str, path: Path, title: str
) -> None:
    """Held-out ``key`` (a curve field) against training seconds, mean over seeds per variant."""
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for variant in dict.fromkeys(r["variant"] for r in records):
        runs = [r["curve"] for r in records if r["variant"] == variant]
        steps = sorted({p["step"] for c in runs for p in c})
        xs, ys = [], []
        for s in steps:
            pts = [p for c in runs for p in c if p["step"] == s]
            xs.append(sum(p["train_sec"] for p in pts) / len(pts))
            ys.append(sum(p[key] for p in pts) / len(pts))
        if base is not None:
            xs, ys = [0.0, *xs], [base["curve"][0][key], *ys]
        ax.plot(xs, ys, "o-", label=variant, lw=2.5 if variant == "leapalign" else 1.2)
    ax.set_xlabel("training wall-clock (s, mean over seeds)")
    ax.set_ylabel(key)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_categories(records: Sequence[dict[str, Any]], base: dict[str, Any] | None, path: Path, title: str) -> None:
    """ShapesEval per category: bars of the mean over seeds with 95% t-intervals, one bar group per category."""
    variants = list(dict.fromkeys(r["variant"] for r in records))
    groups = [("base", [base])] if base is not None else []
    groups += [(v, [r for r in records if r["variant"] == v]) for v in variants]
    cats = [c for c in records[0]["shapes_eval"] if c != "overall"] + ["overall"]
    fig, ax = plt.subplots(figsize=(max(8, 1.6 * len(cats)), 4.2), dpi=120)
    width = 0.8 / max(1, len(groups))
    for n, (name, recs) in enumerate(groups):
        stats = [mean_ci([r["shapes_eval"][c] for r in recs]) for c in cats]
        xs = [i + n * width for i in range(len(cats))]
        errs = [(s["hi"] - s["lo"]) / 2 if s["hi"] is not None else 0 for s in stats]
        ax.bar(xs, [s["mean"] for s in stats], width, yerr=errs, capsize=2, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(cats))])
    ax.set_xticklabels(cats, rotation=15)
    ax.set_ylabel("ShapesEval accuracy (held out)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, path)
