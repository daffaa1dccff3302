"""The measurement core of the cost benchmarks (CPU: :mod:`benchmarks.cost`, GPU: :mod:`benchmarks.cost_gpu`).

One *training iteration* is what every method pays per optimiser step: ``method.step`` (the on-policy rollout,
the gradient-carrying forwards, decode and reward), the backward pass, gradient clipping and the AdamW step.
Its floor is a plain no-grad sampling of the same batch (same prompts, noise and ``T``), timed in the same
process, interleaved with the training iterations so that load changes hit both alike.

Memory (``delta`` = what the iteration adds on top of weights, optimiser state and libraries; ``peak`` =
absolute):

* CPU with jemalloc preloaded: its exact live-byte counters. ``delta`` is the peak of bytes allocated minus
  bytes freed by the main thread during the iteration (``thread.peak``; every tensor is allocated by the
  main thread with one torch thread), ``peak`` adds the live bytes at the start (``stats.allocated``). The
  process's resident set (peak RSS after resetting the kernel's mark, ``/proc/self/clear_refs``) is recorded
  too; it also counts libraries and pages the allocator keeps.
* CPU without jemalloc: the resident-set numbers only (run with ``MALLOC_MMAP_THRESHOLD_=131072``).
* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (live tensors).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from benchmarks.common import Jemalloc, peak_rss_mb, reset_peak_rss, rss_mb

DRAWN_KEYS = ("k", "j", "l", "early_stop", "grad_steps")  # the random trained steps each method reports


@dataclass
class Measured:
    """Timings (seconds) and memory (MiB) of the timed repetitions of one cell."""

    iter_sec: list[float] = field(default_factory=list)
    sampling_sec: list[float] = field(default_factory=list)
    iter_mem: list[dict[str, float]] = field(default_factory=list)
    sampling_mem: list[dict[str, float]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        it, sa = statistics.median(self.iter_sec), statistics.median(self.sampling_sec)
        out: dict[str, Any] = {"sec_per_iter": it, "sampling_sec": sa, "iter_over_sampling": it / sa}
        for key in self.iter_mem[0]:
            out[f"{key}_mb"] = max(m[key] for m in self.iter_mem)
        out["sampling_peak_delta_mb"] = max(m["peak_mem_delta"] for m in self.sampling_mem)
        out.update({"iter_sec_all": self.iter_sec, "sampling_sec_all": self.sampling_sec})
        out["steps_drawn"] = [{k: m[k] for k in DRAWN_KEYS if k in m} for m in self.metrics]
        # Where an iteration's time goes (medians). Direct-gradient methods: the method's step (rollout,
        # gradient-carrying forwards, decode, reward), the backward pass, and clipping + AdamW. Policy-gradient
        # methods: the rollout without gradients (sampling, decode, reward, advantages), and the updates.
        parts = [k.removeprefix("_sec_") for k in self.metrics[0] if k.startswith("_sec_")]
        out["breakdown_sec"] = {part: statistics.median(m[f"_sec_{part}"] for m in self.metrics) for part in parts}
        return out


class MemoryProbe:
    """Memory of one region (see the module docstring): ``start()``, run, ``stop()`` -> a dict in MiB."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.jemalloc = Jemalloc.active() if device.type == "cpu" else None
        self.method = (
            "torch.cuda.max_memory_allocated"
            if device.type == "cuda"
            else "jemalloc live bytes (thread.peak, stats.allocated)"
            if self.jemalloc
            else "resident set (VmHWM after clear_refs)"
        )
        self._before = self._rss0 = 0.0

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._before = torch.cuda.memory_allocated(self.device) / 2**20
            return
        reset_peak_rss()
        self._rss0 = rss_mb()
        if self.jemalloc is not None:
            self._before = self.jemalloc.allocated_mb()
            self.jemalloc.reset_thread_peak()

    def stop(self) -> dict[str, float]:
        """``peak_mem`` / ``peak_mem_delta`` (live memory) and, on the CPU, ``peak_rss`` / ``peak_rss_delta``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
            return {"peak_mem": peak, "peak_mem_delta": peak - self._before}
        rss_peak = peak_rss_mb()
        out = {"peak_rss": rss_peak, "peak_rss_delta": rss_peak - self._rss0}
        if self.jemalloc is not None:
            delta = self.jemalloc.thread_peak_mb()
            out.update({"peak_mem": self._before + delta, "peak_mem_delta": delta})
        else:
            out.update({"peak_mem": rss_peak, "peak_mem_delta": rss_peak - self._rss0})
        return out


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


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
        train_iteration: One optimiser step; returns its method metrics (and ``_sec_*`` part timings).
        sampling: A plain no-grad sampling of the same batch.
        device: Where the work runs (selects the memory probe and synchronisation).
        repeats: Timed repetitions (medians of the times, maxima of the memory are reported).
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
        out.sampling_mem.append(probe.stop())
        probe.start()
        metrics, sec = timed(train_iteration, device)
        out.iter_mem.append(probe.stop())
        out.iter_sec.append(sec)
        out.metrics.append(metrics)
    return out


def make_train_iteration(
    model: Any, method: Any, batch: Any, reward: Any, optimizer: torch.optim.Optimizer, grad_clip: float
) -> Callable[[], dict[str, float]]:
    """One training iteration as the trainer does it (without EMA): step, backward, clip, AdamW.

    The trained steps are drawn from ``batch.step_generator``; seed it identically in every cell so that the
    repetitions draw the same sequence at every ``T`` and model size.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]

    device = batch.noise.device

    def iteration() -> dict[str, float]:
        t0 = _now(device)
        out = method.step(model, batch, reward)
        t1 = _now(device)
        out.loss.backward()
        t2 = _now(device)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        metrics = dict(out.metrics)
        metrics.update({"_sec_step": t1 - t0, "_sec_backward": t2 - t1, "_sec_optimizer": _now(device) - t2})
        return metrics

    return iteration


def make_policy_iteration(
    model: Any, method: Any, batch: Any, reward: Any, optimizer: torch.optim.Optimizer, grad_clip: float
) -> Callable[[], dict[str, float]]:
    """One iteration of a policy-gradient method as the trainer runs it (without EMA), on one process.

    It is :func:`leapalign.policy_updates.policy_gradient_iteration` itself: the rollout of ``batch`` (whole
    groups) without gradients, then ``inner_epochs x updates_per_epoch`` optimiser steps (clip, AdamW) with one
    forward and backward per trained step. Every repetition rolls out the same batch with a fresh SDE noise draw.
    """
    from accelerate import Accelerator

    from leapalign.policy_updates import policy_gradient_iteration

    params = [p for group in optimizer.param_groups for p in group["params"]]
    accelerator = Accelerator(cpu=batch.noise.device.type == "cpu")
    calls = [0]

    def apply_update(ok: bool) -> dict[str, float]:
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip)) if ok else float("nan")
        if ok:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return {"grad_norm": norm, "skipped": float(not ok)}

    def iteration() -> dict[str, float]:
        calls[0] += 1
        metrics = policy_gradient_iteration(
            method, model, batch, reward, accelerator, apply_update, calls[0], calls[0], params
        )
        metrics["_sec_collect"], metrics["_sec_update"] = metrics["collect_sec"], metrics["update_sec"]
        return metrics

    return iteration


def grouped_prompts(prompts: list[str], batch: int, group_size: int) -> list[str]:
    """``batch // group_size`` distinct prompts, each repeated ``group_size`` times in a row (whole groups)."""
    if batch % group_size:
        raise ValueError(f"a batch of {batch} is not a whole number of groups of {group_size}.")
    return [p for p in prompts[: batch // group_size] for _ in range(group_size)]


def make_sampling(model: Any, batch: Any) -> Callable[[], torch.Tensor]:
    """A plain no-grad Euler sampling of ``batch`` (its prompts, noise and schedule) and the decode."""
    from leapalign.flow import sample
    from leapalign.methods.base import velocity_fn

    @torch.no_grad()
    def sampling() -> torch.Tensor:
        ro = sample(velocity_fn(model, batch.cond), batch.noise, batch.sigmas)
        return model.decode(ro.latent, batch.height, batch.width)

    return sampling
