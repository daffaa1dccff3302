"""Metric logging: ``metrics.jsonl`` (always) and TensorBoard (optional), on the main process only; peak memory;
the training-reward curve."""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


class MetricLogger:
    """Appends one JSON object per logged step to ``<run_dir>/metrics.jsonl`` and mirrors it to TensorBoard.

    Args:
        run_dir: Run directory.
        tensorboard: Also write event files to ``<run_dir>/tensorboard`` (skipped with a warning when the
            ``tensorboard`` package is missing).
        enabled: ``False`` on non-main processes: every call is a no-op.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True) -> None:
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except ImportError:
                logger.warning("tensorboard is not installed; logging to metrics.jsonl only.")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Writes ``{"step": step, **metrics}`` (non-finite floats become ``null``)."""
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def _clean(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
