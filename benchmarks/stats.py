"""Statistics over seeds: means with Student-t 95% intervals, and an interval-based comparison."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from scipy import stats as scipy_stats


def mean_ci(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and two-sided Student-t interval of ``values``.

    Returns:
        ``{"mean", "lo", "hi", "n", "sd"}``; ``lo``, ``hi`` and ``sd`` are ``None`` with fewer than 2 values.
    """
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0, "sd": None}
    mean = statistics.fmean(vals)
    if n < 2:
        return {"mean": mean, "lo": None, "hi": None, "n": 1, "sd": None}
    sd = statistics.stdev(vals)
    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "sd": sd}


def welch(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value of ``mean(a) != mean(b)`` (``None`` with fewer than 2 values each)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.stdev(a) == 0 and statistics.stdev(b) == 0:
        return 0.0 if statistics.fmean(a) != statistics.fmean(b) else 1.0
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(a: Sequence[float], b: Sequence[float], alpha: float = 0.05) -> str:
    """``"higher"``, ``"lower"`` or ``"no significant difference"`` for ``a`` against ``b`` (Welch, ``alpha``);
    ``"too few seeds"`` with fewer than 2 values on a side."""
    p = welch(a, b)
    if p is None:
        return "too few seeds"
    if p >= alpha:
        return "no significant difference"
    return "higher" if statistics.fmean(a) > statistics.fmean(b) else "lower"


def fmt_ci(s: dict[str, Any], digits: int = 3) -> str:
    """``0.512 ± 0.021`` (half-width of the interval), ``0.512`` for one value, ``–`` for none."""
    if s["mean"] is None:
        return "–"
    if s["lo"] is None:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {(s['hi'] - s['lo']) / 2:.{digits}f}"
