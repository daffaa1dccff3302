"""The run directory: claiming it for a fresh run, locking it against a second job, and resuming it only with the
config that defines the run.

A run directory holds one run. :func:`claim` refuses to mix a fresh run into an earlier one (unless told to
overwrite it); :class:`RunLock` refuses a second job while one is live (the lock is an OS file lock, released by
the kernel when the holder dies, plus a note of the holder's pid and host for the error message);
:func:`resume_changes` compares a resumed config with the saved one and refuses any change to what defines the
run, allowing only the keys of :data:`MUTABLE_ON_RESUME`, which it records in ``resumes.jsonl``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import OmegaConf

from leapalign.config import ConfigError, ExperimentConfig, to_yaml
from leapalign.eval.store import remove_outputs

logger = logging.getLogger(__name__)

RUN_OUTPUTS = (
    "metrics.jsonl",
    "checkpoints",
    "tensorboard",
    "trackers",
    "export",
    "eval",
    "eval_before.json",
    "eval_after.json",
    "samples_before.png",
    "samples_after.png",
    "reward_curve.png",
    "curve.json",
    "proxy_gold.png",
    "config.yaml",
    "resumes.jsonl",
)
# What a resume may change: how long to train, what to log and evaluate, and the bookkeeping of the run itself.
# Everything else (model, method, data, reward, optimiser, sampler, seed, EMA, plugins) defines the run.
MUTABLE_ON_RESUME = (
    "train.max_steps",
    "train.max_nan_steps",
    "run.output_dir",
    "run.resume",
    "run.resume_or_start",
    "run.overwrite",
    "run.log_every",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.tensorboard",
    "run.trackers",
    "run.tracker_project",
    "run.tracker_kwargs",
    "run.export",
    "run.dist_timeout_s",
    "evaluation",
)
LOCK_NAME, HOLDER_NAME = ".lock", ".lock.json"


class RunLockedError(RuntimeError):
    """Another live job holds the run directory."""


def claim(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Creates ``run_dir`` for a run; refuses to mix a fresh run into an earlier one unless ``overwrite``.

    Raises:
        ValueError: ``run_dir`` is a file, or holds an earlier run and neither ``resume`` nor ``overwrite`` is set.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"run.output_dir={str(run_dir)!r} is a file; choose a directory.")
    earlier = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if earlier and not resume:
        if not overwrite:
            raise ValueError(
                f"run.output_dir={str(run_dir)!r} already holds a run. Continue it with --resume "
                f"(run.resume=true), replace it with run.overwrite=true, or choose another run.output_dir."
            )
        remove_outputs(run_dir, RUN_OUTPUTS)
        logger.info("run.overwrite: removed the earlier run in %s", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


class RunLock:
    """An exclusive lock on a run directory, held by one job (its main process) from start to end.

    Args:
        run_dir: The run directory (must exist).
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self._lock = FileLock(str(run_dir / LOCK_NAME))
        self._holder = run_dir / HOLDER_NAME

    def acquire(self) -> None:
        """Takes the lock at once or raises :class:`RunLockedError` naming the holder."""
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            holder = self._read_holder()
            who = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" if holder else "a job"
            raise RunLockedError(
                f"{self.run_dir} is in use by {who}: two jobs would write the same checkpoints and logs. Wait for it "
                f"to finish (or stop it), or choose another run.output_dir."
            ) from None
        note = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        tmp = self._holder.with_suffix(".tmp")
        tmp.write_text(json.dumps(note))
        tmp.replace(self._holder)

    def _read_holder(self) -> dict[str, Any]:
        try:
            return json.loads(self._holder.read_text())
        except (OSError, ValueError):
            return {}

    def release(self) -> None:
        """Releases the lock (a no-op when not held)."""
        if self._lock.is_locked:
            self._holder.unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: cfg}


def _mutable(key: str) -> bool:
    return any(key == m or key.startswith(m + ".") for m in MUTABLE_ON_RESUME)


def resume_changes(run_dir: Path, cfg: ExperimentConfig) -> dict[str, list[Any]]:
    """Compares ``cfg`` with the run's saved ``config.yaml``.

    Returns:
        The allowed changes, ``{dotted key: [saved, new]}`` (empty when the configs agree or nothing is saved).

    Raises:
        ConfigError: when a key outside :data:`MUTABLE_ON_RESUME` differs, listing every such key.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        logger.warning("%s has no config.yaml to compare the resumed config with", run_dir)
        return {}
    saved = _flat(OmegaConf.to_container(OmegaConf.load(path), resolve=True))
    new = _flat(OmegaConf.to_container(OmegaConf.create(to_yaml(cfg)), resolve=True))
    missing = object()
    diffs = {
        k: [saved.get(k, missing), new.get(k, missing)]
        for k in sorted(set(saved) | set(new))
        if saved.get(k, missing) != new.get(k, missing)
    }
    refused = {k: v for k, v in diffs.items() if not _mutable(k)}
    if refused:
        shown = "; ".join(
            f"{k}: {_show(old, missing)} -> {_show(now, missing)}" for k, (old, now) in list(refused.items())[:12]
        )
        raise ConfigError(
            f"cannot resume {run_dir}: the config changes what defines the run ({shown}). Resume with the saved "
            f"values (see {path}), or start a new run in another run.output_dir. A resume may change only "
            f"{', '.join(MUTABLE_ON_RESUME)}."
        )
    return {k: [None if old is missing else old, None if now is missing else now] for k, (old, now) in diffs.items()}


def _show(value: Any, missing: object) -> str:
    return "(absent)" if value is missing else repr(value)


def record_resume(run_dir: Path, step: int, checkpoint: Path, changes: dict[str, list[Any]]) -> None:
    """Appends one line to ``resumes.jsonl``: when, from which checkpoint, and what the resume changed."""
    entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step, "checkpoint": checkpoint.name}
    entry["changes"] = changes
    with (run_dir / "resumes.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry) + "\n")
    if changes:
        logger.info("resume changes %s", ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()))
