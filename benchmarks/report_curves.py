"""Proxy versus gold in the benchmark report: for each method, the held-out ShapesEval it peaked at over its
curve, the step of the peak and its final value, each against the base model on the same images and noise."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from leapalign.eval.stats import fmt_ci, mean_ci

GOLD = "shapes_eval_overall"


def peak(record: dict[str, Any], key: str = GOLD) -> tuple[float, int]:
    """The highest ``key`` over a cell's curve points and the step it was reached at (the first such step)."""
    best = max(record["curve"], key=lambda p: (p[key], -p["step"]))
    return best[key], best["step"]


def peak_gold_lines(trained: Sequence[dict[str, Any]], base: dict[str, Any] | None, key: str = GOLD) -> list[str]:
    """A markdown table: per method, the mean over seeds of the peak, the step of the peak, the final value, and
    the peak's and final value's change against the base (95% t-intervals over seeds; every curve point, the
    base's included, is measured on the same held-out images and noise)."""
    if base is None or not base.get("curve"):
        return []
    start = base["curve"][0][key]
    lines = [
        "| method | seeds | base | peak | step of peak (median) | final | peak − base | final − base |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in dict.fromkeys(r["variant"] for r in trained):
        recs = [r for r in trained if r["variant"] == variant and r.get("curve")]
        if not recs:
            continue
        peaks = [peak(r, key) for r in recs]
        finals = [r["curve"][-1][key] for r in recs]
        lines.append(
            f"| {variant} | {len(recs)} | {start:.3f} | {fmt_ci(mean_ci([p for p, _ in peaks]))} | "
            f"{statistics.median(s for _, s in peaks):.0f} | {fmt_ci(mean_ci(finals))} | "
            f"{fmt_ci(mean_ci([p - start for p, _ in peaks]))} | {fmt_ci(mean_ci([f - start for f in finals]))} |"
        )
    return lines
