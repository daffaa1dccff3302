"""Statistics of an evaluation: mean, standard deviation and 95% interval per reward, ShapesEval breakdown,
per-prompt win rates between two models.

The 95% interval treats prompts as the sampling unit, because the images of one prompt are correlated: with
``P`` prompts and per-prompt mean scores ``m_p``, it is ``mean(m) +- 1.96 * sd(m) / sqrt(P)`` (normal
approximation; with the same number of images per prompt ``mean(m)`` is the mean over images). With one prompt
it falls back to the images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _sd(xs: Sequence[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def group_means(values: Sequence[float], groups: Sequence[int]) -> dict[int, float]:
    """Mean of ``values`` per group id (the prompt index of each image)."""
    acc: dict[int, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        acc.setdefault(int(g), []).append(float(v))
    return {g: _mean(vs) for g, vs in acc.items()}


def summarize(values: Sequence[float], groups: Sequence[int]) -> dict[str, float]:
    """``mean``, ``std`` (over images), ``ci95_low`` / ``ci95_high`` (over prompt means) and ``n``."""
    if not values:
        raise ValueError("no values to summarise.")
    means = list(group_means(values, groups).values())
    units = means if len(means) > 1 else [float(v) for v in values]
    mean = _mean([float(v) for v in values])
    half = Z95 * _sd(units) / math.sqrt(len(units))
    return {"mean": mean, "std": _sd([float(v) for v in values]), "ci95_low": mean - half, "ci95_high": mean + half}


def category_accuracy(correct: Sequence[float], tags: Sequence[str], order: Sequence[str]) -> dict[str, float]:
    """GenEval-style summary: accuracy per category (in ``order``, then others) and ``overall``, the mean over
    the categories present."""
    hits: dict[str, list[float]] = {}
    for ok, tag in zip(correct, tags, strict=True):
        hits.setdefault(tag, []).append(float(ok))
    cats = [c for c in order if c in hits] + sorted(t for t in hits if t not in order)
    by_cat = {c: _mean(hits[c]) for c in cats}
    return {"overall": _mean(list(by_cat.values())), **by_cat}


def win_rate(a: dict[int, float], b: dict[int, float]) -> dict[str, float]:
    """Per-prompt comparison of two models' mean scores: the share of prompts where ``a`` beats ``b`` (ties count
    one half), and the mean difference ``a - b``."""
    common = sorted(set(a) & set(b))
    if not common:
        raise ValueError("the two evaluations share no prompt.")
    wins = sum(a[p] > b[p] for p in common)
    ties = sum(a[p] == b[p] for p in common)
    return {
        "win_rate": (wins + 0.5 * ties) / len(common),
        "wins": float(wins),
        "ties": float(ties),
        "losses": float(len(common) - wins - ties),
        "mean_diff": _mean([a[p] - b[p] for p in common]),
        "prompts": float(len(common)),
    }
