"""A graceful stop on SIGTERM (a cluster's preemption) and SIGINT (Ctrl-C).

The first signal only sets :attr:`GracefulStop.signal`; the trainer finishes the current step, writes a checkpoint
and raises :class:`TrainingStopped`. A second signal ends the process at once (exit status 128 + signal number):
checkpoints are written into a temporary folder and renamed when complete, so the previous one is never damaged.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(RuntimeError):
    """Training stopped on a signal after writing a checkpoint.

    Attributes:
        signum: The signal number.
        step: The step the checkpoint holds.
        checkpoint: The checkpoint written (``None`` on non-main processes).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        where = f"checkpoint {checkpoint}" if checkpoint else "a checkpoint"
        super().__init__(f"stopped by {name} after step {step}; {where} written. Continue with --resume.")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    """Context manager that turns the first SIGTERM/SIGINT into a request to stop after the current step.

    Handlers are installed only in the main thread (Python delivers signals there); elsewhere it does nothing.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is not None:
            logger.warning("second %s: exiting now without a checkpoint", signal.Signals(signum).name)
            os._exit(128 + signum)
        self.signal = signum
        logger.warning(
            "%s received: finishing the current step, then writing a checkpoint (send it again to stop at once)",
            signal.Signals(signum).name,
        )

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
