"""The reward audit: ROC AUC against ShapesEval, on the images of a finished ``leapalign eval`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from leapalign.cli import main
from research.shapesworld.score_audit import audit, eval_folder_samples, rank_auc
from research.shapesworld.score_variants import ResearchShapesScore


def test_rank_auc_is_the_probability_that_a_positive_outranks_a_negative() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.5, 0.3])
    positive = np.array([True, False, True, False, False])
    # positives 0.9 and 0.5 against negatives 0.1, 0.5, 0.3: 5 wins and one tie of 6 pairs
    assert rank_auc(scores, positive) == pytest.approx(5.5 / 6)
    assert np.isnan(rank_auc(scores, np.zeros(5, bool)))


def test_audit_reads_an_eval_folder_and_agrees_with_its_shapes_eval(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    overrides = ["evaluation.images_per_prompt=1", "evaluation.num_steps=4"]
    assert main(["eval", "--config", "shapes/leapalign", "--out", str(out), *overrides]) == 0
    metrics = json.loads((out / "eval.json").read_text())
    images, metadata = eval_folder_samples(out)
    assert images.shape == (96, 3, 32, 32) and len(metadata) == 96
    result = audit(ResearchShapesScore(), images, metadata)
    assert result["overall"]["n"] == 96
    for tag, row in result.items():  # the audit's acceptance is ShapesEval's, category by category
        if tag != "overall":
            assert abs(row["accuracy"] - metrics[f"shapes_eval.{tag}"]) < 1e-9, tag
            assert 0.0 <= row["auc"] <= 1.0 or np.isnan(row["auc"])
    with pytest.raises(FileNotFoundError, match="leapalign eval"):
        eval_folder_samples(tmp_path)
