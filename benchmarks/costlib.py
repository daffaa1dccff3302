"""The measurement core of the cost benchmarks (CPU: :mod:`benchmarks.cost`, GPU: :mod:`benchmarks.cost_gpu`).

One *training iteration* is what every method pays per optimiser step: ``method.step`` (the on-policy rollout,
the gradient-carrying forwards, decode and reward), the backward pass, gradient clipping and the AdamW step.
Its floor is a plain no-grad sampling of the same batch (same prompts, noise and ``T``), timed in the same
process, interleaved with the training iterations so that load changes hit both alike.

Memory:

* CPU: the process's resident set. Before every timed iteration the kernel's peak mark is reset
  (``/proc/self/clear_refs``) and the current RSS read; the iteration's ``delta`` is the new peak minus that
  RSS (what the iteration adds on top of weights, optimiser state and libraries) and ``peak`` the absolute
  peak. With jemalloc returning freed pages at once (``dirty_decay_ms:0``) RSS tracks live tensors.
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (live tensors), both absolute
  and as the increase over the allocation before the iteration.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.common import peak_rss_mb, reset_peak_rss, rss_mb

DRAWN_KEYS = ("k", "j", "l", "early_stop", "grad_steps")  # the random trained steps each method reports


@dataclass
class Measured:
    """Timings (seconds) and memory (MiB) of the timed repetitions of one cell."""

    iter_sec: list[float] = field(default_factory=list)
    sampling_sec: list[float] = field(default_factory=list)
    iter_peak_mb: list[float] = field(default_factory=list)
    iter_delta_mb: list[float] = field(default_factory=list)
    sampling_delta_mb: list[float] = field(default_factory=list)
    before_mb: list[float] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        it, sa = statistics.median(self.iter_sec), statistics.median(self.sampling_sec)
        return {
            "sec_per_iter": it,
            "sampling_sec": sa,
            "iter_over_sampling": it / sa,
            "peak_mem_mb": max(self.iter_peak_mb),
            "peak_mem_delta_mb": max(self.iter_delta_mb),
            "sampling_peak_delta_mb": max(self.sampling_delta_mb),
            "mem_before_iter_mb": statistics.median(self.before_mb),
            "iter_sec_all": self.iter_sec,
            "sampling_sec_all": self.sampling_sec,
            "steps_drawn": [{k: m[k] for k in DRAWN_KEYS if k in m} for m in self.metrics],
        }


class MemoryProbe:
    """Peak-memory probe of one region: CPU resident set or CUDA allocator (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.before = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            reset_peak_rss()
            self.before = rss_mb()

    def stop(self) -> tuple[float, float]:
        """``(absolute peak, peak minus the memory at start)`` in MiB."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = peak_rss_mb()
        return peak, peak - self.before


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """Runs ``fn`` and returns its result and wall time (CUDA synchronised)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def measure(
    train_iteration: Callable[[], dict[str, float]],
    sampling: Callable[[], Any],
    device: torch.device,
    repeats: int,
    warmup: int = 1,
) -> Measured:
    """Warms up, then alternates ``repeats`` timed samplings and training iterations with memory probes.

    Args:
        train_iteration: One optimiser step; returns its method metrics.
        sampling: A plain no-grad sampling of the same batch.
        device: Where the work runs (selects the memory probe and synchronisation).
        repeats: Timed repetitions (medians are reported).
        warmup: Untimed repetitions first (allocates optimiser state, loads the reward, warms caches).
    """
    for _ in range(warmup):
        sampling()
        train_iteration()
    out = Measured()
    probe = MemoryProbe(device)
    for _ in range(repeats):
        probe.start()
        _, sec = timed(sampling, device)
        out.sampling_sec.append(sec)
        out.sampling_delta_mb.append(probe.stop()[1])
        probe.start()
        out.before_mb.append(probe.before)
        metrics, sec = timed(train_iteration, device)
        peak, delta = probe.stop()
        out.iter_sec.append(sec)
        out.iter_peak_mb.append(peak)
        out.iter_delta_mb.append(delta)
        out.metrics.append(metrics)
    return out


def make_train_iteration(
    model: Any, method: Any, batch: Any, reward: Any, params: list[torch.nn.Parameter], lr: float, grad_clip: float
) -> Callable[[], dict[str, float]]:
    """One training iteration as the trainer does it (without EMA): step, backward, clip, AdamW.

    The trained steps are drawn from ``batch.step_generator``; seed it identically in every cell so that the
    repetitions draw the same sequence at every ``T`` and model size.
    """
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)

    def iteration() -> dict[str, float]:
        out = method.step(model, batch, reward)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return dict(out.metrics)

    return iteration


def make_sampling(model: Any, batch: Any) -> Callable[[], torch.Tensor]:
    """A plain no-grad Euler sampling of ``batch`` (its prompts, noise and schedule) and the decode."""
    from leapalign.flow import sample
    from leapalign.methods.base import velocity_fn

    @torch.no_grad()
    def sampling() -> torch.Tensor:
        ro = sample(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
        return model.decode(ro.latent, batch.height, batch.width)

    return sampling
