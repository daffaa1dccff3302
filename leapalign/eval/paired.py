"""Paired change between two evaluations of the same prompts and noise, with a bootstrap interval.

Two models evaluated with the same prompt set and seeds draw image ``r`` of prompt ``i`` from the same noise, so
their difference is paired. The unit of resampling is the prompt (a prompt's images are not independent of
each other: they share its difficulty), stratified by the prompt's ``tag`` when the prompts carry one, so that
a category-balanced summary such as GenEval's ``overall`` keeps every category in every resample. Any
evaluator key is recomputed with the evaluator's own ``summarize`` on each resample, so the interval is that of
the very number the evaluation reports.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from leapalign.eval.runner import EvalRun

BOOTSTRAP_SAMPLES = 2000


def _by_prompt(run: EvalRun) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for rec in run.records:
        out[rec["prompt_index"]].append(rec)
    return out


def _summary(run: EvalRun, per_prompt: dict[int, list[dict]], chosen: Sequence[int]) -> dict[str, float]:
    """Every reward mean and evaluator key of the images of the ``chosen`` prompts (with repeats)."""
    return run.headline([r for i in chosen for r in per_prompt[i]])


def paired_changes(
    a: EvalRun, b: EvalRun, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95
) -> dict[str, dict[str, float]]:
    """``a - b`` for every reward mean and evaluator key the two evaluations share, with a paired, prompt-level
    (tag-stratified) percentile bootstrap interval.

    Args:
        a: An evaluation.
        b: An evaluation of another model on the same prompts and seeds.
        samples: Bootstrap resamples.
        seed: Seed of the resampling.
        level: Coverage of the interval.

    Returns:
        ``{key: {"change", "ci_low", "ci_high", "level"}}``.

    Raises:
        ValueError: The two evaluations do not hold the same images (prompts and repeats).
    """
    pa, pb = _by_prompt(a), _by_prompt(b)
    if {i: len(v) for i, v in pa.items()} != {i: len(v) for i, v in pb.items()}:
        raise ValueError("a paired change needs the same prompts and images per prompt in both evaluations.")
    prompts = sorted(pa)
    strata: dict[str, list[int]] = defaultdict(list)
    for i in prompts:
        strata[str(a.prompt_set.entries[i].get("tag", ""))].append(i)
    full_a, full_b = _summary(a, pa, prompts), _summary(b, pb, prompts)
    keys = [k for k in full_a if k in full_b]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(samples):
        chosen = [int(i) for s in strata.values() for i in rng.choice(s, size=len(s), replace=True)]
        sa, sb = _summary(a, pa, chosen), _summary(b, pb, chosen)
        for k in keys:
            draws[k].append(sa[k] - sb[k])
    tail = 100 * (1 - level) / 2
    out = {}
    for k in keys:
        lo, hi = np.percentile(draws[k], [tail, 100 - tail])
        out[k] = {"change": full_a[k] - full_b[k], "ci_low": float(lo), "ci_high": float(hi), "level": level}
    return out


def change_cell(c: dict[str, Any]) -> str:
    """``+0.0123 [-0.0040, +0.0290]``: a change and its interval, for tables."""
    return f"{c['change']:+.4f} [{c['ci_low']:+.4f}, {c['ci_high']:+.4f}]"
