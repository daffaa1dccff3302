"""Metric records: ``metrics.jsonl`` (one JSON object per logged step, written on the main process only), its
truncation on resume, peak memory and the training-reward curve. Logging to experiment trackers (TensorBoard,
wandb, ...) goes through :class:`leapalign.tracking.RunLogger`, which writes ``metrics.jsonl`` with
:func:`append_record`."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def append_record(path: Path, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
    """Appends ``{"step": step, **metrics}`` to the ``metrics.jsonl`` file ``path`` and returns the record.

    One-element tensors become numbers; non-finite floats become ``null``.
    """
    record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
    with Path(path).open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
    return record


def scalars(record: dict[str, Any]) -> dict[str, int | float]:
    """The numeric values of a record (not ``step``, booleans, ``null`` or strings): what trackers plot."""
    return {
        k: v
        for k, v in record.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def truncate_metrics(path: Path, step: int) -> int:
    """Keeps the records of ``metrics.jsonl`` up to ``step`` and drops the later ones, atomically.

    A run that resumes from the checkpoint of step ``step`` logs the later steps again; their records from the
    attempt that stopped after that checkpoint must go, so that each step is held once. The file is rewritten
    to a temporary file in the same folder and moved over the original, so a crash leaves the old file or the
    new one, never a partial one. A missing file is left missing.

    Args:
        path: The ``metrics.jsonl`` file.
        step: The last step to keep (``-1`` drops every record).

    Returns:
        How many records were dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    with path.open(encoding="utf-8") as fh:
        lines = [line for line in fh if line.strip()]
    kept = [line if line.endswith("\n") else line + "\n" for line in lines if json.loads(line)["step"] <= step]
    dropped = len(lines) - len(kept)
    if dropped:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.writelines(kept)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        logger.info("%s: dropped %d record(s) after step %d (logged again on resume)", path, dropped, step)
    return dropped


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Reads a ``metrics.jsonl`` file back as a list of records."""
    with Path(path).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process in MiB and what it measures.

    CUDA: ``torch.cuda.max_memory_allocated`` (live tensors). CPU: the process's peak resident set size
    (``ru_maxrss``), which includes the interpreter and libraries and, with glibc malloc, freed memory not
    returned to the OS.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / 2**20 if sys.platform == "darwin" else rss / 1024), "cpu_max_rss"


def plot_reward_curve(metrics_path: Path, out: Path) -> None:
    """Plots the training reward (mean per step, with a moving average) from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_metrics(metrics_path) if r.get("reward_mean") is not None]
    if not records:
        return
    steps = [r["step"] for r in records]
    rewards = [r["reward_mean"] for r in records]
    k = max(1, len(rewards) // 20)
    smooth = [
        sum(rewards[max(0, i - k + 1) : i + 1]) / len(rewards[max(0, i - k + 1) : i + 1]) for i in range(len(rewards))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, rewards, alpha=0.35, label="batch mean")
    ax.plot(steps, smooth, label=f"moving average ({k})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
