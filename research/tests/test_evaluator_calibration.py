"""The calibration of ShapesEval's tolerances: the script runs, and the shipped tolerances are the ones its committed
results propose (``research/shapesworld/results/shapes_eval_calibration.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from leapalign.worlds.shapes import moments
from research.shapesworld.evaluator_calibration import RESULTS, main


def test_the_shipped_tolerances_are_the_calibrated_ones() -> None:
    calibrated = json.loads((RESULTS / "shapes_eval_calibration.json").read_text())["tolerance"]
    shipped = {shape: {n: list(v) for n, v in tol.items()} for shape, tol in moments.TOLERANCE.items()}
    assert shipped == calibrated


def test_the_calibration_runs_and_reports_every_shape(tmp_path: Path) -> None:
    out = tmp_path / "calibration.json"
    assert main(["--num", "6", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["shapes"]) == set(moments.CLASSES) == set(report["tolerance"])
    for shape in moments.CLASSES:
        assert set(report["shapes"][shape]["proposed_abs"]) == set(moments.NAMES)
        assert len(report["shapes"][shape]["by_condition"]) == 9
