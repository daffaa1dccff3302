"""A 2-process DDP run on CPU (gloo) through `accelerate launch` trains the tiny config and resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leapalign.metrics import read_metrics

pytestmark = pytest.mark.distributed  # launches two processes: `make test-slow`, not the default tier


def _launch(run: Path, *extra: str, config: str = "tiny/leapalign") -> subprocess.CompletedProcess:
    import leapalign

    cfg = Path(leapalign.__file__).parent / "accelerate" / "ddp_cpu.yaml"
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(cfg),
        "--num_processes",
        "2",
        "-m",
        "leapalign.cli",
        "train",
        "--config",
        config,
        f"run.output_dir={run}",
        "sampler.num_steps=4",
        "run.tensorboard=false",
        "run.export=false",
        *extra,
    ]
    # tests/ on the path: the stalled-rank test names a reward of tests/_rewards.py by import path
    pythonpath = os.pathsep.join(filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def test_two_process_ddp_trains_and_resumes(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    proc = _launch(run, "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch=4 (2 x 1 accum x 2 processes)" in proc.stderr
    ckpt = run / "checkpoints" / "step_000002"
    assert {p.name for p in ckpt.glob("rng_rank*")} == {"rng_rank0.safetensors", "rng_rank1.safetensors"}
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    proc = _launch(run, "train.max_steps=3", "run.resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_two_process_policy_gradient_run_keeps_groups_whole_and_resumes(tmp_path: Path) -> None:
    """DanceGRPO on 2 processes: each rank draws whole groups, the global std gathers every rank's rewards, the
    random trained steps are the same on both ranks (DDP would hang otherwise), and the run resumes."""
    run = tmp_path / "grpo"
    extra = ["data.batch_size=4", "method.group_size=2", "method.global_std=true", "method.updates_per_epoch=2"]
    proc = _launch(run, "train.max_steps=2", *extra, config="tiny/dance-grpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch=8 (4 x 1 accum x 2 processes)" in proc.stderr
    records = read_metrics(run / "metrics.jsonl")
    assert [r["updates"] for r in records] == [2.0, 2.0] and all(r["ratio_mean"] > 0.99 for r in records)
    proc = _launch(run, "train.max_steps=3", "run.resume=true", *extra, config="tiny/dance-grpo")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_a_stalled_rank_ends_the_job_with_an_error_within_the_timeout(tmp_path: Path) -> None:
    stall = "reward.terms=[{name: '_rewards:StallOnRank', args: {rank: 1, at: 2, seconds: 400}}]"
    start = time.monotonic()
    proc = _launch(tmp_path / "stall", "train.max_steps=3", "run.dist_timeout_s=20", stall)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0 and elapsed < 250, (elapsed, proc.stderr[-2000:])
    assert "timed out" in proc.stderr.lower() or "timeout" in proc.stderr.lower(), proc.stderr[-3000:]
