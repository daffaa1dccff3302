"""The paired change between two evaluations: exact on identical or shifted runs, stratified by category, and an
interval that covers a known effect and excludes zero when the effect is large against the noise."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from leapalign.eval.paired import paired_changes
from leapalign.eval.runner import EvalRun
from leapalign.eval.stats import category_accuracy


class _Judge:
    name = "judge"

    def summarize(self, values, entries):
        return category_accuracy(values, [e["tag"] for e in entries], ("a", "b"))


def _run(values: np.ndarray, scores: np.ndarray, tags: list[str]) -> EvalRun:
    """``values[i, r]`` (the judge's 0/1) and ``scores[i, r]`` (a reward) of image ``r`` of prompt ``i``."""
    records = [
        {
            "prompt_index": i,
            "repeat": r,
            "scores": {"reward": float(scores[i, r])},
            "evals": {"judge": float(values[i, r])},
        }
        for i in range(values.shape[0])
        for r in range(values.shape[1])
    ]
    prompts = SimpleNamespace(entries=[{"prompt": f"p{i}", "tag": t} for i, t in enumerate(tags)])
    return EvalRun(None, prompts, ["reward"], records, [_Judge()], values.shape[1])


def test_identical_runs_change_by_zero_and_a_shift_is_exact() -> None:
    rng = np.random.default_rng(0)
    tags = ["a"] * 4 + ["b"] * 20
    values, scores = (rng.random((24, 3)) < 0.5).astype(float), rng.random((24, 3))
    same = paired_changes(_run(values, scores, tags), _run(values, scores, tags), samples=200)
    assert all(c["change"] == 0 and c["ci_low"] == 0 == c["ci_high"] for c in same.values())
    better = values.copy()
    better[:4] = 1.0  # every image of category a right in the first run
    shifted = paired_changes(_run(better, scores + 0.25, tags), _run(values, scores, tags), samples=200)
    assert shifted["reward.mean"]["change"] == pytest.approx(0.25)
    assert shifted["reward.mean"]["ci_low"] == pytest.approx(0.25) == pytest.approx(shifted["reward.mean"]["ci_high"])
    gain = 1.0 - values[:4].mean()  # the stratified resamples always keep category b's 20 prompts unchanged
    assert shifted["judge.a"]["change"] == pytest.approx(gain) and shifted["judge.b"]["change"] == 0
    assert shifted["judge.overall"]["change"] == pytest.approx(gain / 2)


def test_the_interval_covers_a_known_effect() -> None:
    rng = np.random.default_rng(1)
    tags = ["a"] * 40 + ["b"] * 40
    base = rng.random((80, 4))
    after = base + 0.1 + rng.normal(0, 0.2, size=(80, 4))
    zeros = np.zeros((80, 4))
    c = paired_changes(_run(zeros, after, tags), _run(zeros, base, tags), samples=500)["reward.mean"]
    assert c["ci_low"] < 0.1 < c["ci_high"] and c["ci_low"] > 0


def test_different_images_cannot_be_paired() -> None:
    tags = ["a", "b"]
    with pytest.raises(ValueError, match="same prompts and images per prompt"):
        paired_changes(_run(np.zeros((2, 2)), np.zeros((2, 2)), tags), _run(np.zeros((2, 3)), np.zeros((2, 3)), tags))
