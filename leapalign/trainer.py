"""The method-agnostic trainer on accelerate: one code path for one process, DDP and FSDP.

Launch:
    leapalign train --config tiny/leapalign                                  # one process
    accelerate launch --config_file $(leapalign accelerate-config ddp) -m leapalign.cli train ...

Every rank builds the same model from the same seed, draws its own noise and prompts from ``seed + rank``
and shares the choice of trained steps (``step_generator``, seeded with ``seed``) with the others. Steps are
counted in optimiser steps; the effective batch is ``batch_size * grad_accum * world_size``.
"""

from __future__ import annotations

import datetime
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, InitProcessGroupKwargs
from tqdm.auto import tqdm

from leapalign import checkpoint as ckpt
from leapalign import run_dir as rundir
from leapalign import train_state
from leapalign.batches import generators, make_batch
from leapalign.config import ExperimentConfig, save_config
from leapalign.data import PromptSampler, load_prompts
from leapalign.ema import EMA
from leapalign.eval.training import TrainingEvaluation
from leapalign.methods import build_method, check_differentiable, is_policy_gradient
from leapalign.metrics import peak_memory_mb, plot_reward_curve
from leapalign.models import build_model
from leapalign.models.base import check_resolution
from leapalign.policy_updates import policy_gradient_step
from leapalign.preflight import check_inputs
from leapalign.regularizers import build_replay, flow_matching_loss
from leapalign.rewards import build_reward
from leapalign.stop import GracefulStop, TrainingStopped
from leapalign.tracking import RunLogger, accelerator_kwargs
from leapalign.train_state import NonFiniteLossError

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What :func:`train` returns: the final step, the run directory and the last logged metrics."""

    step: int
    run_dir: Path
    last_metrics: dict[str, Any]
    eval_before: dict[str, Any] | None = None
    eval_after: dict[str, Any] | None = None


class Trainer:
    """Builds everything from an :class:`ExperimentConfig` and runs the optimisation loop."""

    def __init__(self, cfg: ExperimentConfig, accelerator: Accelerator | None = None) -> None:
        self.cfg = cfg
        if accelerator is None:
            # accelerate keeps one global state per process; reset its precision settings so that several runs
            # with different train.mixed_precision can follow each other in one process (benchmarks, tests).
            AcceleratorState._reset_state(reset_partial_state=False)
        # cpu=True without CUDA makes accelerate use gloo when launched with several processes.
        timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=cfg.run.dist_timeout_s))
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.train.mixed_precision,
            cpu=not torch.cuda.is_available(),
            kwargs_handlers=[timeout],
            **accelerator_kwargs(cfg.run),
        )
        acc = self.accelerator
        self.run_dir = Path(cfg.run.output_dir)
        # Validate everything cheap before building the model, so bad input fails fast and writes nothing.
        check_inputs(cfg)
        if acc.distributed_type == DistributedType.FSDP and (cfg.evaluation.enabled or cfg.run.export):
            raise ValueError(
                "evaluation during training and the export run on the main process only, which FSDP's sharded "
                "weights do not support yet: set evaluation.enabled=false run.export=false, and evaluate the "
                "checkpoint afterwards with `leapalign eval --run <output_dir>` (checkpoints hold the full weights)."
            )
        self.prompts = load_prompts(cfg.data.prompts, balance_by=cfg.data.balance_by)
        self.reward = build_reward(cfg.reward)
        self.method = build_method(cfg.method)
        check_differentiable(self.method, self.reward)
        t = cfg.train
        self.replay = None
        if t.replay_weight > 0:
            size = t.replay_batch_size or cfg.data.batch_size
            seed = cfg.run.seed + acc.process_index
            self.replay = build_replay(t.replay_source, seed, size, cfg.sampler.height, cfg.sampler.width)
        self.evaluation = None
        if cfg.evaluation.enabled:
            self.evaluation = TrainingEvaluation(
                cfg.evaluation,
                cfg.reward.terms,
                self.reward,
                cfg.sampler.height,
                cfg.sampler.width,
                cfg.model.guidance_scale,
            )

        torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
        self.model = build_model(cfg.model, device=acc.device)
        check_resolution(self.model, cfg.sampler.height, cfg.sampler.width)
        self.transformer = self.model.transformer
        trainable = ckpt.named_trainable(self.transformer)
        if not trainable:
            raise ValueError("the model has no trainable parameter; check model.finetune and model.lora_targets.")
        self.optimizer = torch.optim.AdamW(
            list(trainable.values()), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
        )
        self.model.transformer, self.optimizer = acc.prepare(self.transformer, self.optimizer)
        # prepare may wrap (DDP, FSDP1) or replace and shard (FSDP2) the parameters: everything that reads them
        # (EMA, checkpoints, non-finite checks, gradient clipping) uses them as prepared, this rank's shards under FSDP.
        self.params = ckpt.named_trainable(acc.unwrap_model(self.model.transformer))
        if is_policy_gradient(self.method):
            self.method.prepare(self.model)  # the KL reference, from the initial weights (before any resume)
        self.ema = EMA(self.params, t.ema_decay) if t.ema_decay > 0 else None
        self.gens = generators(cfg.run.seed, acc.process_index, acc.device)
        group = getattr(cfg.method, "group_size", 1)
        self.sampler = PromptSampler(self.prompts, cfg.data.batch_size, self.gens["prompts"], group_size=group)
        self.step = 0
        self.nan_streak = 0

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Writes a checkpoint of the current step (see :func:`leapalign.train_state.save`)."""
        return train_state.save(self)

    def resume(self) -> Path | None:
        """Loads the newest checkpoint that verifies (see :func:`leapalign.train_state.resume`)."""
        return train_state.resume(self)

    # ------------------------------------------------------------------ one optimiser step
    def _replay_loss(self, micro: int, per_step: int | None = None) -> torch.Tensor:
        """The replay regulariser of micro-batch (or update) ``micro`` of this step, of ``per_step`` in all (default
        ``train.grad_accum``); its draws are a function of (seed, rank, step, micro)."""
        assert self.replay is not None
        index = self.step * (per_step or self.cfg.train.grad_accum) + micro
        prompts, images = self.replay.batch(index)
        gen = torch.Generator().manual_seed(
            (self.cfg.run.seed * 1_000_003 + self.accelerator.process_index * 7919 + index) % 2**62
        )
        return flow_matching_loss(self.model, images, prompts, gen)

    def update_regularizer(self) -> Callable[[int], torch.Tensor] | None:
        """The weighted replay loss of update ``u`` of a policy-gradient iteration (``None`` without replay)."""
        if self.replay is None:
            return None
        per_step = self.method.cfg.inner_epochs * self.method.cfg.updates_per_epoch
        weight = self.cfg.train.replay_weight
        return lambda u: weight * self._replay_loss(u, per_step)

    def _micro_step(self, scale: float, micro: int = 0) -> tuple[dict[str, float], torch.Tensor, bool]:
        acc = self.accelerator
        batch = make_batch(self.model, self.sampler.next(), self.cfg, self.gens)
        with acc.autocast():
            out = self.method.step(self.model, batch, self.reward)
            if self.replay is not None:
                replay = self._replay_loss(micro)
                out.metrics["replay_loss"] = replay.item()
                out.loss = out.loss + self.cfg.train.replay_weight * replay
        finite = torch.tensor(
            float(torch.isfinite(out.loss).item() and torch.isfinite(out.rewards).all().item()),
            device=acc.device,
        )
        finite = acc.reduce(finite, reduction="mean") if acc.num_processes > 1 else finite
        ok = bool(finite.item() == 1.0)
        if ok:
            acc.backward(out.loss * scale)
        metrics = dict(out.metrics)
        metrics["loss"] = out.loss.item()
        terms = getattr(self.reward, "last_terms", {})
        if len(terms) > 1:
            metrics.update({f"reward/{k}": v.float().mean().item() for k, v in terms.items()})
        return metrics, out.rewards, ok

    def train_step(self) -> dict[str, Any]:
        """One optimiser step over ``grad_accum`` micro-batches.

        Returns:
            The step's metrics: rewards gathered over all ranks, other diagnostics (loss, k, j, w_sim, ...)
            averaged over this rank's micro-batches.
        """
        acc, t = self.accelerator, self.cfg.train
        start = time.perf_counter()
        if is_policy_gradient(self.method):
            metrics = policy_gradient_step(self)
            return self._finish_step(metrics, start)
        all_metrics: list[dict[str, float]] = []
        rewards, ok = [], True
        for micro in range(t.grad_accum):
            sync = micro == t.grad_accum - 1
            ctx = acc.no_sync(self.model.transformer) if not sync else nullcontext()
            with ctx:
                m, r, finite = self._micro_step(1.0 / t.grad_accum, micro)
            ok &= finite
            all_metrics.append(m)
            rewards.append(r)
        metrics = {k: sum(m[k] for m in all_metrics if k in m) / len(all_metrics) for k in all_metrics[0]}
        metrics.update(self.apply_update(ok))
        all_r = acc.gather(torch.cat(rewards).float().to(acc.device))
        metrics["reward_mean"] = all_r.mean().item()
        metrics["reward_std"] = all_r.std().item() if all_r.numel() > 1 else 0.0
        return self._finish_step(metrics, start)

    def apply_update(self, ok: bool) -> dict[str, float]:
        """Clips and applies the accumulated gradients, updates the EMA and clears the gradients; returns
        ``grad_norm`` and ``skipped``.

        The update is skipped, and counted towards ``train.max_nan_steps``, when ``ok`` is false (a non-finite
        loss or reward) or the gradient norm (after unscaling, over all ranks) is not finite. Under fp16 the
        GradScaler still sees an overflowing step (it skips it and lowers its scale), and such a step is counted
        as skipped but not towards the limit: overflow is how the scaler finds its scale.
        """
        t, out = self.cfg.train, {}
        norm = math.nan
        if ok:
            max_norm = t.grad_clip if t.grad_clip > 0 else math.inf
            # all the module's parameters (frozen ones have no gradient): FSDP1 clips by the global norm only then
            norm = float(self.accelerator.clip_grad_norm_(self.model.transformer.parameters(), max_norm))
            out["grad_norm"] = norm
        if ok and math.isfinite(norm):
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            self.nan_streak = 0
        elif ok and self.accelerator.scaler is not None:
            self.optimizer.step()  # the scaler skips it and lowers the scale
            logger.info("step %d: fp16 gradient overflow, update skipped by the GradScaler", self.step + 1)
        else:
            self.nan_streak += 1
            what = "gradient" if ok else "loss or reward"
            logger.warning("step %d: non-finite %s, update skipped (%d in a row)", self.step + 1, what, self.nan_streak)
        self.optimizer.zero_grad(set_to_none=True)
        out["skipped"] = float(not (ok and math.isfinite(norm)))
        return out

    def _finish_step(self, metrics: dict[str, Any], start: float) -> dict[str, Any]:
        acc, t = self.accelerator, self.cfg.train
        metrics["sec_per_iter"] = time.perf_counter() - start
        metrics["peak_mem_mb"], _ = peak_memory_mb(acc.device)
        self.step += 1
        if self.nan_streak >= t.max_nan_steps:
            raise NonFiniteLossError(
                f"{self.nan_streak} consecutive steps had a non-finite loss, reward or gradient (last at step "
                f"{self.step}); "
                f"training stopped. Check the reward on these prompts, lower train.lr, or raise train.max_nan_steps."
            )
        return metrics

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        """Runs the loop to ``train.max_steps`` under the run directory's lock, stopping gracefully on a signal."""
        acc = self.accelerator
        lock = rundir.RunLock(self.run_dir) if acc.is_main_process else None
        if acc.is_main_process:
            rundir.claim(self.run_dir, self.cfg.run.resume, self.cfg.run.overwrite)
            lock.acquire()
        try:
            self._start()
            with GracefulStop() as stop:
                return self._loop(stop)
        finally:
            if lock is not None:
                lock.release()

    def _start(self) -> None:
        """Resumes (refusing a config that changes the run) or starts; then writes ``config.yaml`` atomically."""
        acc, cfg = self.accelerator, self.cfg
        changes = rundir.resume_changes(self.run_dir, cfg) if cfg.run.resume else {}
        loaded = self.resume() if cfg.run.resume else None
        if acc.is_main_process:
            save_config(cfg, self.run_dir / "config.yaml")
            if loaded is not None:
                rundir.record_resume(self.run_dir, self.step, loaded, changes)
        acc.wait_for_everyone()

    def _stop_requested(self, stop: GracefulStop) -> bool:
        """Whether any rank received a stop signal (every rank stops after the same step)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return stop.requested
        flag = torch.tensor(float(stop.signal or 0), device=acc.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)

    def _loop(self, stop: GracefulStop) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        log = RunLogger(self.run_dir, acc, cfg, resume_step=self.step if cfg.run.resume else None)
        before = self.evaluate("before", log) if self.evaluation is not None and self.step == 0 else None
        world, t = acc.num_processes, cfg.train
        logger.info(
            "method=%s model=%s effective batch=%d (%d x %d accum x %d processes), %d trainable params",
            cfg.method.name,
            cfg.model.name,
            cfg.data.batch_size * t.grad_accum * world,
            cfg.data.batch_size,
            t.grad_accum,
            world,
            sum(p.numel() for p in self.params.values()),
        )
        bar = tqdm(total=t.max_steps, initial=self.step, desc=f"{cfg.method.name}", disable=not acc.is_main_process)
        metrics: dict[str, Any] = {}
        try:
            while self.step < t.max_steps:
                metrics = self.train_step()
                if self.step % cfg.run.log_every == 0 or self.step == t.max_steps:
                    log.log(self.step, metrics)
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.4f}", loss=f"{metrics['loss']:.4f}")
                if self._stop_requested(stop):
                    raise TrainingStopped(stop.signal or 15, self.step, self.save_checkpoint())
                every = cfg.run.checkpoint_every
                if every and self.step % every == 0 and self.step < t.max_steps:
                    self.save_checkpoint()
                if self.evaluation is not None and self.evaluation.due(self.step, t.max_steps):
                    self.evaluate(f"step_{self.step:06d}", log, use_ema=True)
            self.save_checkpoint()
            if cfg.run.export:
                self.export(self.run_dir / "export")
            after = None
            if self.evaluation is not None:
                after = self.evaluate("after", log, use_ema=True)
                if acc.is_main_process:
                    plot_reward_curve(self.run_dir / "metrics.jsonl", self.run_dir / "reward_curve.png")
        finally:
            bar.close()
            log.close()
        return TrainResult(self.step, self.run_dir, metrics, before, after)

    def evaluate(self, tag: str, log: RunLogger, use_ema: bool = False) -> dict[str, Any] | None:
        """Evaluates on the main process (unwrapped model, EMA weights if asked and EMA is on) into
        ``<run>/eval/<tag>``, logs its scalars at the current step, and returns ``eval.json``."""
        acc, result = self.accelerator, None
        assert self.evaluation is not None
        if acc.is_main_process:
            wrapped = self.model.transformer
            self.model.transformer = acc.unwrap_model(wrapped)
            swap = use_ema and self.ema is not None
            if swap:
                self.ema.swap()
            try:
                weights = "ema" if swap else "live"
                identity = {"model": self.cfg.model.name, "step": self.step, "weights": weights}
                result = self.evaluation(self.model, self.run_dir, tag, identity)
            finally:
                if swap:
                    self.ema.swap()
                self.model.transformer = wrapped
            log.log(self.step, self.evaluation.scalars(result))
            grid = self.run_dir / "eval" / tag / "samples.png"
            if grid.is_file():
                log.log_images(self.step, "eval/samples", grid, caption=f"{tag}: {weights} weights, step {self.step}")
        acc.wait_for_everyone()
        return result

    def export(self, out_dir: Path) -> None:
        """Writes a diffusers-loadable export of the EMA weights (the live weights when EMA is off)."""
        from leapalign.models.finetune import export_for_diffusers

        acc = self.accelerator
        acc.wait_for_everyone()
        if acc.is_main_process:
            if self.ema is not None:
                self.ema.swap()
            try:
                export_for_diffusers(self.model, out_dir, self.cfg.model.finetune)
            finally:
                if self.ema is not None:
                    self.ema.swap()
            logger.info("exported %s weights to %s", "EMA" if self.ema else "trained", out_dir)
        acc.wait_for_everyone()


def train(cfg: ExperimentConfig) -> TrainResult:
    """Trains with ``cfg`` and returns the final step and metrics."""
    return Trainer(cfg).train()
