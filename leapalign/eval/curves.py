"""Proxy-versus-gold curves: the training reward and the held-out evaluators over the course of a run.

Every evaluation during training (before, every ``evaluation.every_n_steps`` steps, after) adds a point to
``<run>/curve.json``, measured on the same fixed subset of the held-out images: the first
``evaluation.curve_images_per_prompt`` images of every prompt, whose noise is the same at every step (an image's
seed depends on its prompt and repeat only). The before and after evaluations draw more images; their points
read the subset's records, so every point of the curve compares the same images. ``<run>/proxy_gold.png`` plots
the proxy (the first reward's mean) and the gold (the first evaluator's ``overall``) against the step, and
:func:`summarize_curve` gives the gold's peak, the step of the peak and its final value: with a reward that can be
hacked, the final value is not the best one the run reached.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from leapalign.eval.runner import EvalRun
from leapalign.eval.store import write_json

logger = logging.getLogger(__name__)

CURVE_FILE = "curve.json"
CURVE_PLOT = "proxy_gold.png"


def curve_point(run: EvalRun, step: int, images_per_prompt: int) -> dict[str, Any]:
    """One point of the curve at ``step``: every reward mean and evaluator key over the first
    ``images_per_prompt`` images of every prompt."""
    records = [r for r in run.records if r["repeat"] < images_per_prompt]
    return {"step": step, "num_images": len(records), **run.headline(records)}


def read_curve(run_dir: Path) -> dict[str, Any] | None:
    """``curve.json`` of a run (``{"proxy", "gold", "points", "summary"}``), or None if it has none."""
    path = Path(run_dir) / CURVE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def summarize_curve(points: list[dict[str, Any]], gold: str) -> dict[str, Any]:
    """The gold metric's start, peak, step of the peak and final value over the points (in step order)."""
    values = [(p["step"], p[gold]) for p in points if p.get(gold) is not None]
    if not values:
        return {}
    peak_step, peak = max(values, key=lambda v: (v[1], -v[0]))
    return {
        "metric": gold,
        "start": values[0][1],
        "peak": peak,
        "peak_step": peak_step,
        "final": values[-1][1],
        "final_step": values[-1][0],
    }


def add_point(run_dir: Path, point: dict[str, Any], proxy: str | None, gold: str | None) -> dict[str, Any]:
    """Adds ``point`` to ``<run_dir>/curve.json`` and redraws the plot; returns the whole curve.

    Points at or after ``point``'s step are dropped first: they come from an earlier attempt at the same steps
    (a run killed after an evaluation and resumed from an earlier checkpoint), which this one recomputes.
    """
    run_dir = Path(run_dir)
    earlier = read_curve(run_dir) or {}
    points = [p for p in earlier.get("points", []) if p["step"] < point["step"]] + [point]
    curve = {"proxy": proxy, "gold": gold, "points": points, "summary": summarize_curve(points, gold) if gold else {}}
    write_json(run_dir / CURVE_FILE, curve)
    try:
        plot_curve(curve, run_dir / CURVE_PLOT)
    except Exception as err:  # a plot must not end a training run
        logger.warning("could not draw %s: %s", CURVE_PLOT, err)
    return curve


def plot_curve(curve: dict[str, Any], out: Path) -> None:
    """Draws the proxy (left axis) and the gold (right axis) against the optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if curve["proxy"]:
        ax.plot(steps, [p.get(curve["proxy"]) for p in curve["points"]], "o-", color="tab:blue")
        ax.set_ylabel(f"proxy: {curve['proxy']}", color="tab:blue")
    if curve["gold"]:
        gold_ax = ax.twinx()
        gold_ax.plot(steps, [p.get(curve["gold"]) for p in curve["points"]], "s-", color="tab:red")
        gold_ax.set_ylabel(f"gold: {curve['gold']}", color="tab:red")
    ax.set_xlabel("optimiser step")
    n = curve["points"][-1]["num_images"]
    ax.set_title(f"held-out proxy and gold on the same {n} images at every step", fontsize=9)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
