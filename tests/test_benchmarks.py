"""The benchmark runner: protocol parsing, one tiny cell end to end, resume and record reuse."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of scripts at the repo root, not an installed package

from benchmarks.protocol import (  # noqa: E402
    DEFAULT_PROTOCOL,
    ProtocolError,
    format_override,
    load_protocol,
)

CATEGORIES = {"overall", "single_object", "two_object", "counting", "colors", "position", "color_attr"}


def tiny_protocol(tmp_path: Path) -> Path:
    """The shipped protocol, shrunk: 2 steps of 4-step rollouts, one prompt per category, one seed."""
    raw = yaml.safe_load(DEFAULT_PROTOCOL.read_text())
    raw["common"].update({"train.max_steps": 2, "sampler.num_steps": 4, "data.batch_size": 2})
    raw["evaluation"].update({"num_steps": 4, "prompts_per_category": 1, "curve_every": 1})
    raw["seeds"] = [0]
    raw["methods"] = {"leapalign": {}, "drtune": raw["methods"]["drtune"]}
    raw["ablations"] = {"alpha": {"alpha_0.3": {"method.alpha": 0.3}}}
    path = tmp_path / "protocol.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def sweep(tmp_path: Path, protocol: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.sweep", "--protocol", str(protocol)]
    cmd += ["--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results"), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)


def test_shipped_protocol_cells() -> None:
    protocol = load_protocol()
    methods = protocol.cells("methods")
    assert methods[0].is_base and methods[0].seed is None
    assert {c.variant for c in methods[1:]} >= {"leapalign", "refl", "draft-k", "draft-lv", "alignprop", "drtune"}
    assert len(protocol.seeds) >= 3 and protocol.evaluation.images_per_prompt >= 2
    # ReFL and DRTune train with LeapAlign's hinge threshold (inherited from the base config).
    lam = protocol.load([]).method.threshold
    drtune = next(c for c in methods if c.variant == "drtune")
    assert f"method.threshold={lam!r}" in drtune.overrides
    assert protocol.config_for(drtune, Path("x")).method.name == "drtune"
    # Variants that resolve to the same config share a hash (so the runner reuses one record).
    ablations = {c.variant: c for c in protocol.cells("ablations") if c.seed == 0}
    assert protocol.config_hash(ablations["alpha_0.3"]) == protocol.config_hash(ablations["weight_both"])
    assert protocol.config_hash(ablations["alpha_0"]) != protocol.config_hash(ablations["alpha_1"])
    # An option added later, at the default that reproduces the recorded cells, leaves their hash alone.
    cell = ablations["alpha_0"]
    same = dataclasses.replace(cell, overrides=[*cell.overrides, "reward.combine=sum"])
    other = dataclasses.replace(cell, overrides=[*cell.overrides, "reward.combine=min"])
    assert protocol.config_hash(same) == protocol.config_hash(cell) != protocol.config_hash(other)


def test_format_override_and_errors(tmp_path: Path) -> None:
    assert format_override("method", "refl") == "method=refl"
    assert format_override("train.mixed_precision", "no") == 'train.mixed_precision="no"'
    assert format_override("method.fixed_gap", None) == "method.fixed_gap=null"
    assert format_override("train.betas", [0.9, 0.999]) == "train.betas=[0.9,0.999]"
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_config: shapes/leapalign\nseeds: [0]\nmethods: {}\ntypo: 1\n")
    with pytest.raises(ProtocolError, match="unknown section"):
        load_protocol(bad)
    with pytest.raises(ProtocolError, match="does not exist"):
        load_protocol(tmp_path / "missing.yaml")
    for bad_seeds in ("[]", "[0, 0]", "[a]"):
        bad.write_text(f"base_config: shapes/leapalign\nseeds: [0]\nablation_seeds: {bad_seeds}\nmethods: {{}}\n")
        with pytest.raises(ProtocolError, match="ablation_seeds"):
            load_protocol(bad)


def test_ablations_may_have_their_own_seeds() -> None:
    layout = load_protocol(ROOT / "benchmarks" / "protocol_layout.yaml")
    assert {c.seed for c in layout.cells("methods") if not c.is_base} == {0, 1, 2, 3, 4}
    assert {c.seed for c in layout.cells("ablations")} == {0, 1, 2}  # Figure 4 at 3 seeds
    shipped = load_protocol()  # no ablation_seeds: the ablations use `seeds`
    assert shipped.ablation_seeds is None
    assert {c.seed for c in shipped.cells("ablations")} == set(shipped.seeds)


def test_one_cell_end_to_end_then_resume_skips_it(tmp_path: Path) -> None:
    protocol = tiny_protocol(tmp_path)
    out = sweep(tmp_path, protocol, "--suite", "methods", "--only", "base,leapalign")
    assert out.returncode == 0, out.stdout + out.stderr
    results = tmp_path / "results" / "methods.json"
    records = json.loads(results.read_text())
    assert [(r["method"], r["seed"]) for r in records] == [("base", None), ("leapalign", 0)]
    rec = records[1]
    for key in ("iterations", "shapes_score", "train_reward_final", "diversity", "sec_per_iter", "peak_mem_mb"):
        assert isinstance(rec[key], (int, float)), key
    assert rec["iterations"] == 2 and set(rec["shapes_eval"]) == CATEGORIES
    assert rec["threads"] == 1 and rec["machine"]["cpu"] and rec["git"]["commit"]
    assert [p["step"] for p in rec["curve"]] == [1, 2] and len(rec["train_reward_curve"]) == 2
    assert rec["num_eval_images"] == 6 * 4 and "--only leapalign --seed 0" in rec["command"]
    run_dir = tmp_path / "runs" / "methods" / "leapalign" / "seed0"
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step_000002"]  # intermediate ones pruned

    again = sweep(tmp_path, protocol, "--suite", "methods", "--only", "base,leapalign")
    assert again.returncode == 0 and again.stdout.count("done, skipped") == 2, again.stdout
    assert json.loads(results.read_text()) == records

    # The ablation alpha_0.3 is the default LeapAlign: it got a copy of the record as soon as that cell ended,
    # and an ablation sweep trains nothing for it.
    assert "record reused by ablations/alpha_0.3/seed0" in out.stdout, out.stdout
    (reused,) = json.loads((tmp_path / "results" / "ablations.json").read_text())
    assert reused["variant"] == "alpha_0.3" and reused["reused_from"] == "methods/leapalign/seed0"
    assert reused["shapes_score"] == rec["shapes_score"]
    abl = sweep(tmp_path, protocol, "--suite", "ablations")
    assert abl.returncode == 0 and "done, skipped" in abl.stdout, abl.stdout
    assert json.loads((tmp_path / "results" / "ablations.json").read_text()) == [reused]
    # A sweep that finds the copy missing (an older results file) still makes it from the methods record.
    (tmp_path / "results" / "ablations.json").unlink()
    abl = sweep(tmp_path, protocol, "--suite", "ablations")
    assert abl.returncode == 0 and "record reused" in abl.stdout, abl.stdout
    assert json.loads((tmp_path / "results" / "ablations.json").read_text()) == [reused]

    # The report reads these records: the method table, the equal-wall-clock table and the figures.
    doc = tmp_path / "benchmarks.md"
    cmd = [sys.executable, "-m", "benchmarks.report", "--results-dir", str(tmp_path / "results"), "--out", str(doc)]
    cmd += ["--assets", str(tmp_path / "assets"), "--no-readme"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    text = doc.read_text()
    assert "| leapalign | 1 |" in text and "**Equal wall-clock.**" in text and "| alpha_0.3 | 1 |" in text
    assert (tmp_path / "assets" / "score_categories.png").is_file()
