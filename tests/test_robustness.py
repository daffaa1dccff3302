"""What a real run meets: non-finite gradients, resumes that would change the run, nothing to resume, corrupt
checkpoints, a second job on the same run, and preemption (SIGTERM)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leapalign import checkpoint as ckpt
from leapalign.cli import main
from leapalign.config import ConfigError, load_config
from leapalign.metrics import read_metrics
from leapalign.run_dir import RunLock

BASE = ["sampler.num_steps=4", "run.tensorboard=false", "run.export=false", "data.batch_size=2"]


def train(run: Path, *overrides: str, resume: bool = False) -> int:
    flags = ["--resume"] if resume else []
    return main(["train", "--config", "tiny/leapalign", *flags, f"run.output_dir={run}", *BASE, *overrides])


def same_checkpoints(a: Path, b: Path) -> None:
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        fa, fb = load_file(str(a / name)), load_file(str(b / name))
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), name


def test_a_nan_gradient_with_a_finite_loss_is_never_applied(tmp_path: Path, capsys, caplog) -> None:
    run = tmp_path / "run"
    nan_grad = "reward.terms=[{name: '_rewards:NaNGradAfter', args: {after: 3}}]"
    rc = train(run, nan_grad, "train.max_steps=6", "train.max_nan_steps=2", "run.checkpoint_every=1")
    assert rc == 2 and "non-finite loss, reward or gradient" in capsys.readouterr().err
    records = read_metrics(run / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0.0, 0.0, 1.0]
    assert records[0]["loss"] is not None and records[2]["loss"] is not None  # the loss itself stayed finite
    assert "non-finite gradient, update skipped" in caplog.text
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_000003"
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        assert all(torch.isfinite(t).all() for t in load_file(str(latest / name)).values()), name
    before, after = (load_file(str(run / f"checkpoints/step_00000{s}/trainable.safetensors")) for s in (2, 3))
    assert all(torch.equal(before[k], after[k]) for k in before)  # the skipped step changed nothing


@pytest.mark.parametrize("override", ["train.lr=inf", "train.weight_decay=nan", "method.tau=inf"])
def test_non_finite_float_options_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match=r"not a finite number|must"):
        load_config("tiny/leapalign", [override])


def test_no_checkpoint_is_written_from_non_finite_weights(tmp_path: Path) -> None:
    from leapalign.trainer import NonFiniteLossError, Trainer

    cfg = load_config("tiny/leapalign", [f"run.output_dir={tmp_path / 'run'}", *BASE, "train.max_steps=1"])
    trainer = Trainer(cfg)  # the pre-flight check has created the (empty) output directory
    with torch.no_grad():
        next(iter(trainer.params.values())).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="no checkpoint written"):
        trainer.save_checkpoint()
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())


def test_resume_refuses_a_config_that_changes_the_run_and_leaves_config_yaml_alone(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert train(run, "train.max_steps=2") == 0
    saved = (run / "config.yaml").read_bytes()
    capsys.readouterr()
    assert train(run, "train.max_steps=3", "method.alpha=0.7", "train.lr=2e-3", resume=True) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "method.alpha: 0.3 -> 0.7" in err and "train.lr" in err
    assert (run / "config.yaml").read_bytes() == saved
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]


def test_resume_may_extend_training_and_records_what_changed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "train.max_steps=2") == 0
    assert train(run, "train.max_steps=3", "run.log_every=1", resume=True) == 0
    (entry,) = [json.loads(line) for line in (run / "resumes.jsonl").read_text().splitlines()]
    assert entry["step"] == 2 and entry["checkpoint"] == "step_000002"
    assert entry["changes"]["train.max_steps"] == [2, 3]
    assert load_config(str(run / "config.yaml")).train.max_steps == 3


def test_resume_with_nothing_to_resume_is_an_error_unless_asked_to_start(tmp_path: Path, capsys) -> None:
    run = tmp_path / "typo"
    assert train(run, "train.max_steps=1", resume=True) == 2
    assert "nothing to resume from" in capsys.readouterr().err and not (run / "metrics.jsonl").exists()
    assert train(run, "train.max_steps=1", "run.resume_or_start=true", resume=True) == 0
    assert ckpt.latest_checkpoint(run).name == "step_000001"


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, caplog, damage: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    assert train(a, "train.max_steps=3") == 0
    assert train(b, "train.max_steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=3") == 0
    bad = b / "checkpoints/step_000003/trainable.safetensors"
    if damage == "truncate":
        bad.write_bytes(bad.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(bad.read_bytes())
        data[-5] ^= 0x01
        bad.write_bytes(bytes(data))
    else:
        bad.unlink()
    with caplog.at_level(logging.WARNING):
        assert train(b, "train.max_steps=3", "run.checkpoint_every=1", "run.keep_checkpoints=3", resume=True) == 0
    assert str(bad) in caplog.text and "trying the previous one" in caplog.text
    same_checkpoints(a / "checkpoints/step_000003", b / "checkpoints/step_000003")  # step 3 redone from step 2


def test_checkpoint_files_have_the_users_permissions_and_checksums(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "train.max_steps=1") == 0
    latest = ckpt.latest_checkpoint(run)
    mask = os.umask(0)
    os.umask(mask)
    for path in latest.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask, path.name
    files = ckpt.read_state(latest)["files"]
    assert set(files) == {p.name for p in latest.iterdir()} - {"state.json"}
    assert ckpt.verify(latest)["step"] == 1


def test_a_second_job_on_a_live_run_is_refused(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        assert train(run, "train.max_steps=1") == 2
        err = capsys.readouterr().err
        assert f"pid {os.getpid()}" in err and "in use" in err
    assert not (run / "metrics.jsonl").exists()
    assert train(run, "train.max_steps=1") == 0  # released


def test_sigterm_finishes_the_step_checkpoints_and_resume_matches_the_uninterrupted_run(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    (tmp_path / "never").write_text("the marker exists: this reward never signals")

    def stopper(marker: str) -> str:
        return f"reward.terms=[{{name: '_rewards:SignalAt', args: {{at: 2, marker: '{tmp_path / marker}'}}}}]"

    assert train(a, "train.max_steps=4", stopper("never")) == 0
    assert train(b, "train.max_steps=4", stopper("sent")) == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 2" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(b).name == "step_000002"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    assert train(b, "train.max_steps=4", stopper("sent"), resume=True) == 0
    same_checkpoints(a / "checkpoints/step_000004", b / "checkpoints/step_000004")
    assert [r["step"] for r in read_metrics(b / "metrics.jsonl")] == [1, 2, 3, 4]
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["reward_mean"] for r in ra] == [r["reward_mean"] for r in rb]


def test_after_a_crash_the_resumed_run_logs_each_step_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train(run, "train.max_steps=3", "run.checkpoint_every=2", "run.keep_checkpoints=3") == 0
    shutil.rmtree(run / "checkpoints/step_000003")  # as if the job died after logging step 3, before its checkpoint
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert train(run, "train.max_steps=4", "run.checkpoint_every=2", "run.keep_checkpoints=3", resume=True) == 0
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint(tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    run = tmp_path / "run"
    assert train(run, "train.max_steps=1") == 0
    real = ckpt.tensors_to_file

    def full(tensors, path):  # the disk fills while the next checkpoint is written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(ckpt, "tensors_to_file", full)
    capsys.readouterr()
    assert train(run, "train.max_steps=2", resume=True) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "--resume" in err and "Traceback" not in err
    monkeypatch.setattr(ckpt, "tensors_to_file", real)
    assert ckpt.latest_checkpoint(run).name == "step_000001" and ckpt.verify(ckpt.latest_checkpoint(run))


def test_sample_refuses_zero_images(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["sample", "--num", "0"])
    assert exc.value.code == 2 and "--num: must be an integer >= 1" in capsys.readouterr().err
