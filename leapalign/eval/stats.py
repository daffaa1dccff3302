"""The statistics of the library, used by evaluation reports and benchmarks alike: means with two-sided
Student-t intervals (scipy), per-group means, GenEval-style accuracy by category, win rates and a Welch test.

An evaluation's interval treats prompts as the sampling unit, because the images of one prompt are correlated:
with ``P`` prompts and per-prompt mean scores ``m_p`` it is ``mean(m) +- t_{0.975, P-1} * sd(m) / sqrt(P)`` (with
the same number of images per prompt ``mean(m)`` is the mean over images). With one prompt it falls back to the
images.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from typing import Any

from scipy import stats as scipy_stats


def t_half_width(sd: float, n: int, level: float = 0.95) -> float:
    """Half-width of the two-sided Student-t interval of a mean of ``n`` values with standard deviation ``sd``."""
    return float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t interval of ``values``.

    Values that are all equal (``sd == 0``, common with accuracies over a few seeds) give no interval: a zero width
    would claim a precision that was never measured. The interval is then ``None`` and ``fmt_ci`` says so.

    Returns:
        ``{"mean", "lo", "hi", "n", "sd"}``; ``lo`` and ``hi`` are ``None`` with fewer than 2 values or no spread,
        ``sd`` is ``None`` with fewer than 2 values.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    mean = statistics.fmean(vals)
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = statistics.stdev(vals)
    if sd == 0:
        return {"mean": mean, "lo": None, "hi": None, "n": n, "sd": 0.0}
    half = t_half_width(sd, n, level)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd}


def group_means(values: Sequence[float], groups: Sequence[int]) -> dict[int, float]:
    """Mean of ``values`` per group id (the prompt index of each image)."""
    acc: dict[int, list[float]] = {}
    for v, g in zip(values, groups, strict=True):
        acc.setdefault(int(g), []).append(float(v))
    return {g: statistics.fmean(vs) for g, vs in acc.items()}


def summarize(values: Sequence[float], groups: Sequence[int]) -> dict[str, float]:
    """``mean``, ``std`` (over images), ``ci95_low`` / ``ci95_high`` (Student-t over prompt means)."""
    if not values:
        raise ValueError("no values to summarise.")
    vals = [float(v) for v in values]
    means = list(group_means(vals, groups).values())
    units = means if len(means) > 1 else vals
    mean = statistics.fmean(vals)
    half = t_half_width(statistics.stdev(units), len(units)) if len(units) > 1 else 0.0
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std, "ci95_low": mean - half, "ci95_high": mean + half}


def category_accuracy(correct: Sequence[float], tags: Sequence[str], order: Sequence[str] = ()) -> dict[str, float]:
    """GenEval-style summary: accuracy per category (in ``order``, then the others sorted) and ``overall``, the
    mean over the categories present."""
    hits: dict[str, list[float]] = {}
    for ok, tag in zip(correct, tags, strict=True):
        hits.setdefault(tag, []).append(float(ok))
    cats = [c for c in order if c in hits] + sorted(t for t in hits if t not in order)
    by_cat = {c: statistics.fmean(hits[c]) for c in cats}
    return {"overall": statistics.fmean(by_cat.values()), **by_cat}


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
        "mean_diff": statistics.fmean(a[p] - b[p] for p in common),
        "prompts": float(len(common)),
    }


def _welch_test(a: Sequence[float], b: Sequence[float]) -> Any:
    """scipy's Welch t-test of ``a`` against ``b``, or ``None`` where there is no test (see ``welch``)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return None
    with warnings.catch_warnings():
        # one side without spread is a valid Welch test; scipy only warns that the constant side's moments are exact
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        return scipy_stats.ttest_ind(a, b, equal_var=False)


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value of ``mean(a) != mean(b)``.

    ``None`` (no test) with fewer than 2 values on a side, or when neither side varies: with no measured spread the
    test has no variance to compare the difference with.
    """
    test = _welch_test(a, b)
    return None if test is None else float(test.pvalue)


def welch_diff_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float] | None:
    """The difference ``mean(a) - mean(b)`` and its two-sided Welch interval (Welch-Satterthwaite degrees of
    freedom), the interval behind ``welch``'s p-value: what a "no significant difference" still allows.

    Returns:
        ``{"diff", "lo", "hi"}``, or ``None`` where ``welch`` gives no test.
    """
    test = _welch_test(a, b)
    if test is None:
        return None
    ci = test.confidence_interval(level)
    return {"diff": statistics.fmean(a) - statistics.fmean(b), "lo": float(ci.low), "hi": float(ci.high)}


def verdict(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> str:
    """``"higher"``, ``"lower"`` or ``"no significant difference"`` for ``a`` against ``b`` (Welch, ``alpha``);
    ``"too few seeds"`` with fewer than 2 values on a side, ``"no spread to test"`` when neither side varies."""
    p = welch(a, b)
    if p is None:
        return "too few seeds" if min(len(a), len(b)) < 2 else "no spread to test"
    if p >= alpha:
        return "no significant difference"
    return "higher" if statistics.fmean(a) > statistics.fmean(b) else "lower"


def fmt_ci(s: dict[str, Any], digits: int = 3) -> str:
    """``0.512 ± 0.021`` (half-width of the interval), ``0.512`` for one value, ``0.512 (2 equal values, no
    interval)`` when the values do not vary, ``–`` for none."""
    if s["mean"] is None:
        return "–"
    if s["lo"] is None:
        if s["n"] >= 2:
            return f"{s['mean']:.{digits}f} ({s['n']} equal values, no interval)"
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {(s['hi'] - s['lo']) / 2:.{digits}f}"
