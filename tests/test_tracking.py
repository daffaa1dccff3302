"""Logging through accelerate's trackers (leapalign.tracking) and metrics.jsonl on resume (leapalign.metrics)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from accelerate import tracking as acc_tracking
from accelerate.state import AcceleratorState
from accelerate.utils import LoggerType
from PIL import Image

from leapalign.config import ConfigError, ExperimentConfig, RunConfig
from leapalign.metrics import read_metrics, truncate_metrics
from leapalign.tracking import AVAILABLE, RunLogger, accelerator_kwargs, selected_trackers


def _config(run_dir: Path, **run: Any) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.run = RunConfig(output_dir=str(run_dir), **run)
    return cfg


def _accelerator(cfg: ExperimentConfig) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=True, **accelerator_kwargs(cfg.run))


def _grid() -> Image.Image:
    image = Image.new("RGB", (24, 16), "white")
    image.paste((255, 0, 0), (0, 0, 12, 16))
    return image


def _events(run_dir: Path, project: str = "leapalign") -> Any:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run_dir / "tensorboard" / project), size_guidance={"images": 0})
    events.Reload()
    return events


def test_tensorboard_gets_scalars_and_a_captioned_image(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    acc = _accelerator(cfg)
    with RunLogger(tmp_path, acc, cfg) as log:
        log.log(1, {"loss": 0.5, "reward_mean": torch.tensor(0.25), "skipped": 0.0})
        log.log(2, {"loss": 0.25, "reward_mean": float("nan")})
        log.log_images(2, "eval/samples", _grid(), caption="after: EMA weights")
    events = _events(tmp_path)
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
    assert [e.step for e in events.Scalars("reward_mean")] == [1]  # the NaN is not plotted
    (image,) = events.Images("eval/samples")
    assert (image.step, image.width, image.height) == (2, 24, 16)
    (caption,) = events.Tensors("eval/samples/text_summary")  # TensorBoard's text plugin adds the suffix
    assert (caption.step, caption.tensor_proto.string_val) == (2, [b"after: EMA weights"])
    assert acc.trackers == []  # closed


def test_image_file_and_no_tracker(tmp_path: Path) -> None:
    path = tmp_path / "samples.png"
    _grid().save(path)
    cfg = _config(tmp_path, tensorboard=True)
    acc = _accelerator(cfg)
    with RunLogger(tmp_path, acc, cfg) as log:
        log.log_images(0, "eval/samples", path)
    assert _events(tmp_path).Images("eval/samples")[0].width == 24

    cfg = _config(tmp_path / "plain", trackers=["tensorboard"], tensorboard=False)
    assert accelerator_kwargs(cfg.run)["log_with"] is None
    (tmp_path / "plain").mkdir()
    acc = _accelerator(cfg)
    with RunLogger(tmp_path / "plain", acc, cfg) as log:
        log.log(1, {"loss": 1.0})
        log.log_images(1, "eval/samples", _grid())
    assert read_metrics(tmp_path / "plain" / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]
    assert not (tmp_path / "plain" / "tensorboard").exists()


def test_run_tensorboard_wins_over_trackers() -> None:
    assert selected_trackers(RunConfig()) == ["tensorboard"]
    assert selected_trackers(RunConfig(trackers=["wandb"])) == ["wandb"]
    assert selected_trackers(RunConfig(trackers=["wandb"], tensorboard=True)) == ["wandb", "tensorboard"]
    assert selected_trackers(RunConfig(trackers=["tensorboard", "wandb", "wandb"], tensorboard=False)) == ["wandb"]


def test_a_missing_tracker_package_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if importlib.util.find_spec("wandb") is None:  # the real check, when wandb is not installed
        with pytest.raises(ConfigError, match=r"`pip install wandb`"):
            accelerator_kwargs(RunConfig(output_dir=str(tmp_path), trackers=["wandb"]))
    monkeypatch.setitem(AVAILABLE, "comet_ml", lambda: False)
    with pytest.raises(ConfigError, match=r"'comet_ml' but its package is not installed: `pip install comet-ml`") as e:
        accelerator_kwargs(RunConfig(output_dir=str(tmp_path), trackers=["comet_ml"]))
    assert "\n" not in str(e.value)
    monkeypatch.setitem(AVAILABLE, "tensorboard", lambda: False)
    with pytest.raises(ConfigError, match="run.tensorboard=false"):
        accelerator_kwargs(RunConfig(output_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="unknown tracker 'tensorbord'; choose from"):
        accelerator_kwargs(RunConfig(output_dir=str(tmp_path), trackers=["tensorbord"]))
    with pytest.raises(ConfigError, match="run.tracker_kwargs.wandbb"):
        accelerator_kwargs(RunConfig(output_dir=str(tmp_path), trackers=[], tracker_kwargs={"wandbb": {}}))


class _FakeRun:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs, self.logged, self.finished = kwargs, [], False

    def log(self, values: dict[str, Any], step: int | None = None) -> None:
        self.logged.append((step, values))

    def finish(self) -> None:
        self.finished = True


class _FakeImage:
    def __init__(self, data: Image.Image, caption: str | None = None) -> None:
        self.data, self.caption = data, caption


def test_wandb_through_accelerate_with_a_fake_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runs: list[_FakeRun] = []
    configs: list[dict[str, Any]] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(_FakeRun(**kwargs)) or runs[-1]
    fake.config = types.SimpleNamespace(update=lambda values, allow_val_change=False: configs.append(values))
    fake.Image = _FakeImage
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setitem(AVAILABLE, "wandb", lambda: True)
    monkeypatch.setattr(acc_tracking, "_available_trackers", [*acc_tracking._available_trackers, LoggerType.WANDB])
    run_dir = tmp_path / "my-run"
    run_dir.mkdir()
    cfg = _config(run_dir, trackers=["wandb"], tracker_project="proj", tracker_kwargs={"wandb": {"tags": ["a"]}})
    acc = _accelerator(cfg)
    with RunLogger(run_dir, acc, cfg) as log:
        log.log(3, {"loss": 0.5, "grad_norm": float("inf")})
        log.log_images(3, "eval/samples", _grid(), caption="step 3")
    (run,) = runs
    assert run.kwargs == {"project": "proj", "tags": ["a"], "name": "my-run", "dir": str(run_dir)}
    assert configs[0]["run.tracker_project"] == "proj" and configs[0]["train.betas"] == "[0.9, 0.999]"
    assert run.logged[0] == (3, {"loss": 0.5})
    step, values = run.logged[1]
    assert step == 3 and values["eval/samples"].caption == "step 3" and values["eval/samples"].data.size == (24, 16)
    assert run.finished
    assert not (run_dir / "tensorboard").exists()


def _write(path: Path, steps: list[int]) -> None:
    path.write_text("".join(json.dumps({"step": s, "loss": float(s)}) + "\n" for s in steps))


def test_truncate_metrics_keeps_steps_up_to_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    _write(path, [0, 1, 2, 2, 3, 4])
    assert truncate_metrics(path, 2) == 2
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2, 2]
    assert truncate_metrics(path, 2) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # no temporary file left
    assert truncate_metrics(tmp_path / "missing.jsonl", 0) == 0 and not (tmp_path / "missing.jsonl").exists()


def test_a_resumed_run_holds_each_step_once(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    acc = _accelerator(cfg)
    with RunLogger(tmp_path, acc, cfg) as log:
        for step in range(1, 5):  # the checkpoint was at step 2; steps 3 and 4 were logged before a crash
            log.log(step, {"loss": float(step)})
    acc = _accelerator(cfg)
    with RunLogger(tmp_path, acc, cfg, resume_step=2) as log:
        assert acc.trackers[0].init_kwargs["purge_step"] == 3
        log.log(3, {"loss": 30.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path / "metrics.jsonl")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert [(e.step, e.value) for e in _events(tmp_path).Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]

    acc = _accelerator(cfg)  # resumed with no checkpoint: the run starts over
    with RunLogger(tmp_path, acc, cfg, resume_step=0) as log:
        log.log(0, {"eval/x": 1.0})
    assert read_metrics(tmp_path / "metrics.jsonl") == [{"step": 0, "eval/x": 1.0}]


def test_non_finite_values_are_null_in_metrics_jsonl(tmp_path: Path) -> None:
    cfg = _config(tmp_path, trackers=[])
    acc = _accelerator(cfg)
    with RunLogger(tmp_path, acc, cfg) as log:
        log.log(1, {"loss": float("nan"), "grad_norm": torch.tensor(float("inf")), "k": 3, "ok": True})
    line = (tmp_path / "metrics.jsonl").read_text()
    assert json.loads(line) == {"step": 1, "loss": None, "grad_norm": None, "k": 3, "ok": True}
    assert "NaN" not in line and "Infinity" not in line
