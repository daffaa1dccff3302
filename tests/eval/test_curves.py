"""Proxy-versus-gold curves: every evaluation during training adds a point measured on the same fixed subset of
held-out images; the summary finds the gold's peak; a resumed run replaces the points it recomputes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_plugins import TOY

from leapalign.cli import main
from leapalign.config import ConfigError, load_config
from leapalign.eval.curves import add_point, read_curve, summarize_curve


def test_every_evaluation_adds_a_point_on_the_same_images(tmp_path: Path) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    run = tmp_path / "run"
    args = ["train", "--config", str(config), f"run.output_dir={run}", "evaluation.curve_images_per_prompt=1"]
    assert main(args) == 0
    # the intermediate evaluation draws the subset only; before and after draw every image
    assert json.loads((run / "eval" / "step_000001" / "eval.json").read_text())["num_images"] == 4
    assert json.loads((run / "eval" / "after" / "eval.json").read_text())["num_images"] == 8
    curve = read_curve(run)
    assert curve["proxy"] == "toy_redness.mean" and curve["gold"] == "toy_color.overall"
    assert [p["step"] for p in curve["points"]] == [0, 1, 2]
    assert all(p["num_images"] == 4 and "brightness.mean" in p for p in curve["points"])
    # the before point is the mean over the first image of every prompt, read from the before evaluation
    records = [json.loads(x) for x in (run / "eval" / "before" / "records.jsonl").read_text().splitlines()]
    first = [r["scores"]["toy_redness"] for r in records if r["repeat"] == 0]
    assert curve["points"][0]["toy_redness.mean"] == pytest.approx(sum(first) / len(first))
    assert curve["summary"]["final_step"] == 2 and curve["summary"]["metric"] == "toy_color.overall"
    assert (run / "proxy_gold.png").stat().st_size > 0


def test_the_summary_finds_the_peak_and_a_resume_replaces_later_points(tmp_path: Path) -> None:
    points = [{"step": s, "num_images": 4, "gold.overall": g} for s, g in [(0, 0.4), (50, 0.6), (100, 0.6), (150, 0.5)]]
    summary = summarize_curve(points, "gold.overall")
    assert (summary["start"], summary["peak"], summary["peak_step"], summary["final"]) == (0.4, 0.6, 50, 0.5)
    for p in points:
        add_point(tmp_path, p, None, "gold.overall")
    add_point(tmp_path, {"step": 100, "num_images": 4, "gold.overall": 0.7}, None, "gold.overall")
    curve = read_curve(tmp_path)
    assert [p["step"] for p in curve["points"]] == [0, 50, 100] and curve["summary"]["peak"] == 0.7


def test_a_subset_larger_than_the_evaluation_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="curve_images_per_prompt: 5; it must be between 1 and"):
        load_config("shapes/leapalign", ["evaluation.curve_images_per_prompt=5"])
