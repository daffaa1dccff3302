"""Experiment tracking through accelerate's trackers: ``metrics.jsonl`` always, plus TensorBoard (the default),
wandb or any other tracker accelerate supports, chosen by ``run.trackers``.

The trainer builds its :class:`~accelerate.Accelerator` with :func:`accelerator_kwargs`, which fails at once,
before any model is built, when a chosen tracker's package is missing, and logs through :class:`RunLogger`::

    accelerator = Accelerator(..., **accelerator_kwargs(cfg.run))
    log = RunLogger(run_dir, accelerator, cfg, resume_step=step if cfg.run.resume else None)
    log.log(step, {"loss": 0.1, "reward_mean": 0.5})
    log.log_images(step, "eval/samples", run_dir / "eval" / "after" / "samples.png", caption="after, EMA weights")
    log.close()

Trackers that keep local files write them under ``<run>/tensorboard``: TensorBoard's events go to
``<run>/tensorboard/<run.tracker_project>/`` (with the run config as hyperparameters), aim's repository to
``<run>/tensorboard`` itself. wandb's files go to the run directory unless ``run.tracker_kwargs.wandb.dir`` says
otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from accelerate import tracking as acc_tracking
from accelerate.utils import (
    ProjectConfiguration,
    is_aim_available,
    is_clearml_available,
    is_comet_ml_available,
    is_dvclive_available,
    is_mlflow_available,
    is_swanlab_available,
    is_tensorboard_available,
    is_trackio_available,
    is_wandb_available,
)
from PIL import Image

from leapalign.config import ConfigError
from leapalign.metrics import METRICS_FILE, append_record, scalars, truncate_metrics

if TYPE_CHECKING:
    from accelerate import Accelerator

    from leapalign.config import ExperimentConfig, RunConfig

logger = logging.getLogger(__name__)

LOGGING_SUBDIR = "tensorboard"
# accelerate's own availability checks, and what to install when one fails.
AVAILABLE: dict[str, Callable[[], bool]] = {
    "tensorboard": is_tensorboard_available,
    "wandb": is_wandb_available,
    "comet_ml": is_comet_ml_available,
    "mlflow": is_mlflow_available,
    "aim": is_aim_available,
    "clearml": is_clearml_available,
    "dvclive": is_dvclive_available,
    "swanlab": is_swanlab_available,
    "trackio": is_trackio_available,
}
PIP_NAMES = {"comet_ml": "comet-ml", "aim": "'aim<4'"}


def supported_trackers() -> list[str]:
    """The tracker names accelerate knows (its built-in ones and those registered with
    :func:`accelerate.tracking.register_tracker_class`)."""
    return sorted(acc_tracking.LOGGER_TYPE_TO_CLASS)


def selected_trackers(run: RunConfig) -> list[str]:
    """The trackers of a run: ``run.trackers`` (in order, once each), with ``run.tensorboard`` deciding
    TensorBoard when it is set (``true`` adds it, ``false`` removes it)."""
    names = list(dict.fromkeys(str(n) for n in run.trackers))
    if run.tensorboard is True and "tensorboard" not in names:
        names.append("tensorboard")
    if run.tensorboard is False:
        names = [n for n in names if n != "tensorboard"]
    return names


def check_trackers(run: RunConfig) -> list[str]:
    """Checks that every selected tracker is known and installed, and that ``run.tracker_kwargs`` names known
    trackers; returns the selected trackers.

    Raises:
        ConfigError: an unknown tracker name, a tracker whose package is not installed, or malformed
            ``run.tracker_kwargs``; the message names the fix.
    """
    known = supported_trackers()
    names = selected_trackers(run)
    for name in names:
        if name not in known:
            raise ConfigError(
                f"invalid value for run.trackers: unknown tracker {name!r}; choose from {', '.join(known)}."
            )
        available = AVAILABLE.get(name)
        if available is not None and not available():
            extra = " (or set run.tensorboard=false)" if name == "tensorboard" else ""
            raise ConfigError(
                f"run.trackers includes {name!r} but its package is not installed: `pip install "
                f"{PIP_NAMES.get(name, name)}`, or remove {name!r} from run.trackers{extra}."
            )
    for name, kwargs in run.tracker_kwargs.items():
        if name not in known or not isinstance(kwargs, dict):
            raise ConfigError(
                f"invalid value for run.tracker_kwargs.{name}: it must map a tracker ({', '.join(known)}) to its "
                f"keyword arguments, e.g. run.tracker_kwargs={{wandb: {{entity: me}}}}."
            )
    return names


def accelerator_kwargs(run: RunConfig) -> dict[str, Any]:
    """The tracking arguments of :class:`~accelerate.Accelerator` for a run: ``log_with`` (the selected trackers,
    ``None`` for none) and ``project_config`` (the run directory; local tracker files under ``<run>/tensorboard``).

    Raises:
        ConfigError: see :func:`check_trackers`.
    """
    names = check_trackers(run)
    root = Path(run.output_dir)
    project = ProjectConfiguration(project_dir=str(root), logging_dir=str(root / LOGGING_SUBDIR))
    return {"log_with": names or None, "project_config": project}


def flat_config(cfg: Any) -> dict[str, bool | int | float | str | None]:
    """A config as one level of dotted keys with scalar values (lists as JSON), as trackers take
    hyperparameters."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    out: dict[str, bool | int | float | str | None] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}{key}.", value)
        elif node is None or isinstance(node, (bool, int, float, str)):
            out[prefix[:-1]] = node
        else:
            out[prefix[:-1]] = json.dumps(node, default=str)

    walk("", data)
    return out


def _tracker_name(tracker: Any) -> str:
    return tracker.name if isinstance(tracker, acc_tracking.GeneralTracker) else str(tracker)


class RunLogger:
    """Logs a run's metrics to ``<run_dir>/metrics.jsonl`` and to the accelerator's trackers, on the main
    process only (every call is a no-op elsewhere).

    Starts the trackers the accelerator was built with (see :func:`accelerator_kwargs`) under
    ``run.tracker_project``, with the flattened config as hyperparameters and ``run.tracker_kwargs``.

    Args:
        run_dir: The run directory (created already).
        accelerator: The run's accelerator, built with :func:`accelerator_kwargs` of ``cfg.run``.
        cfg: The experiment config.
        resume_step: ``None`` for a new run. For a resumed run, the step it continues from: the records of later
            steps (written after that checkpoint by an attempt that stopped) are dropped from ``metrics.jsonl``
            and hidden in TensorBoard (``purge_step``), so that each step is held once. ``0`` (resumed with no
            checkpoint: the run starts over and logs its step-0 evaluation again) drops every record.
    """

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, cfg: ExperimentConfig, resume_step: int | None = None
    ) -> None:
        self.accelerator = accelerator
        self.enabled = accelerator.is_main_process
        self.path = Path(run_dir) / METRICS_FILE
        self._skipped_images: set[str] = set()
        names = [_tracker_name(t) for t in accelerator.log_with]
        missing = [n for n in selected_trackers(cfg.run) if n not in names]
        if missing and self.enabled:
            logger.warning(
                "run.trackers %s not attached: build the Accelerator with leapalign.tracking.accelerator_kwargs.",
                missing,
            )
        first_kept = None
        if resume_step is not None:
            first_kept = resume_step + 1 if resume_step > 0 else 0
            if self.enabled:
                truncate_metrics(self.path, first_kept - 1)
        if names and self.enabled:  # only the main process logs; wandb would open a run per process
            init_kwargs = {k: dict(v) for k, v in cfg.run.tracker_kwargs.items()}
            if first_kept is not None:
                init_kwargs.setdefault("tensorboard", {}).setdefault("purge_step", first_kept)
            if "wandb" in names:
                wandb = init_kwargs.setdefault("wandb", {})
                wandb.setdefault("name", Path(run_dir).name)
                wandb.setdefault("dir", str(run_dir))
            accelerator.init_trackers(cfg.run.tracker_project, config=flat_config(cfg), init_kwargs=init_kwargs)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Writes ``{"step": step, **metrics}`` to ``metrics.jsonl`` (non-finite floats become ``null``) and its
        finite numbers to the trackers."""
        if not self.enabled:
            return
        values = scalars(append_record(self.path, step, metrics))
        if values and self.accelerator.trackers:
            self.accelerator.log(values, step=step)

    def log_images(self, step: int, name: str, image: Image.Image | str | Path, caption: str | None = None) -> None:
        """Logs one image (e.g. a captioned sample grid, or its file) to the trackers that take images.

        TensorBoard: an image and the caption as text, both under ``name``; wandb: a
        ``wandb.Image`` with the caption. Other trackers skip it (one debug line each).
        """
        if not self.enabled or not self.accelerator.trackers:
            return
        if not isinstance(image, Image.Image):
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        pixels = np.asarray(image.convert("RGB"))
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                writer = tracker.tracker
                writer.add_image(name, pixels, global_step=step, dataformats="HWC")
                if caption:
                    writer.add_text(name, caption, global_step=step)
                writer.flush()
            elif tracker.name == "wandb":
                import wandb

                tracker.log({name: wandb.Image(image, caption=caption)}, step=step)
            elif tracker.name not in self._skipped_images:
                self._skipped_images.add(tracker.name)
                logger.debug("tracker %s: images are not logged (TensorBoard and wandb only)", tracker.name)

    def close(self) -> None:
        """Finishes the trackers (idempotent). Unlike ``Accelerator.end_training`` it leaves the process group,
        which the caller may still need."""
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
