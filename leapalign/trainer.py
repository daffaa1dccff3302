"""The method-agnostic trainer on accelerate: one code path for one process, DDP and FSDP.

Launch:
    leapalign train --config tiny/leapalign                                  # one process
    accelerate launch --config_file $(leapalign accelerate-config ddp) -m leapalign.cli train ...

Every rank builds the same model from the same seed, draws its own noise and prompts from ``seed + rank``
and shares the choice of trained steps (``step_generator``, seeded with ``seed``) with the others. Steps are
counted in optimiser steps; the effective batch is ``batch_size * grad_accum * world_size``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm

from leapalign import checkpoint as ckpt
from leapalign.batches import generators, make_batch
from leapalign.config import ExperimentConfig, save_config
from leapalign.data import PromptSampler, load_prompts
from leapalign.ema import EMA
from leapalign.eval.training import TrainingEvaluation
from leapalign.methods import build_method, check_differentiable, is_policy_gradient
from leapalign.metrics import MetricLogger, peak_memory_mb, plot_reward_curve
from leapalign.models import build_model
from leapalign.models.base import check_resolution
from leapalign.policy_updates import policy_gradient_step
from leapalign.regularizers import build_replay, flow_matching_loss
from leapalign.rewards import build_reward

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nan_steps`` consecutive steps with a non-finite loss or reward."""


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
        self.accelerator = accelerator or Accelerator(
            mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available()
        )
        acc = self.accelerator
        self.run_dir = Path(cfg.run.output_dir)
        # Validate everything cheap before building the model, so bad input fails fast and writes nothing.
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
        self.params = ckpt.named_trainable(self.transformer)
        if not self.params:
            raise ValueError("the model has no trainable parameter; check model.finetune and model.lora_targets.")
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay
        )
        self.model.transformer, self.optimizer = acc.prepare(self.transformer, self.optimizer)
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
        acc = self.accelerator
        tmp = ckpt.checkpoint_dir(self.run_dir, self.step).with_suffix(".tmp")
        if acc.is_main_process:
            ckpt.begin(self.run_dir, self.step)
        acc.wait_for_everyone()
        ckpt.generators_to_file(self.gens, tmp / f"rng_rank{acc.process_index}.safetensors")
        acc.wait_for_everyone()
        final = None
        if acc.is_main_process:
            ckpt.tensors_to_file(self.params, tmp / "trainable.safetensors")
            if self.ema is not None:
                ckpt.tensors_to_file(self.ema.named(), tmp / "ema.safetensors")
            ckpt.optimizer_to_files(self.optimizer, tmp)
            state = {"step": self.step, "nan_streak": self.nan_streak, "world_size": acc.num_processes}
            if self.reward.state_dict():  # running reward normalisation (reward.normalize=running)
                state["reward_state"] = self.reward.state_dict()
            if getattr(self.method, "state_dict", None) and self.method.state_dict():
                state["method_state"] = self.method.state_dict()
            final = ckpt.commit(tmp, state, self.cfg.run.keep_checkpoints)
            logger.info("saved checkpoint %s", final)
        acc.wait_for_everyone()
        return final

    def load_checkpoint(self, directory: Path) -> None:
        state = ckpt.read_state(directory)
        if state.get("world_size", 1) != self.accelerator.num_processes:
            raise ValueError(
                f"{directory} was written by {state.get('world_size')} process(es) but this run has "
                f"{self.accelerator.num_processes}; resume with the same number of processes."
            )
        ckpt.load_into(self.params, directory / "trainable.safetensors")
        if self.ema is not None:
            ckpt.load_into(self.ema.named(), directory / "ema.safetensors")
        ckpt.optimizer_from_files(self.optimizer, directory)
        ckpt.generators_from_file(self.gens, directory / f"rng_rank{self.accelerator.process_index}.safetensors")
        self.step, self.nan_streak = int(state["step"]), int(state["nan_streak"])
        if "reward_state" in state:
            self.reward.load_state_dict(state["reward_state"])
        if "method_state" in state:
            self.method.load_state_dict(state["method_state"])
        logger.info("resumed from %s at step %d", directory, self.step)

    # ------------------------------------------------------------------ one optimiser step
    def _replay_loss(self, micro: int) -> torch.Tensor:
        """The replay regulariser of this micro-batch; its draws are a function of (seed, rank, step, micro)."""
        assert self.replay is not None
        index = self.step * self.cfg.train.grad_accum + micro
        prompts, images = self.replay.batch(index)
        gen = torch.Generator().manual_seed(
            (self.cfg.run.seed * 1_000_003 + self.accelerator.process_index * 7919 + index) % 2**62
        )
        return flow_matching_loss(self.model, images, prompts, gen)

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
        """Clips and applies the accumulated gradients (skipped, and counted, when ``ok`` is false), updates the
        EMA and clears the gradients; returns ``grad_norm`` and ``skipped``."""
        t, out = self.cfg.train, {}
        if ok:
            norm = self.accelerator.clip_grad_norm_(
                list(self.params.values()), t.grad_clip if t.grad_clip > 0 else math.inf
            )
            out["grad_norm"] = float(norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            self.nan_streak = 0
        else:
            self.nan_streak += 1
            logger.warning(
                "step %d: non-finite loss or reward, update skipped (%d in a row)", self.step + 1, self.nan_streak
            )
        self.optimizer.zero_grad(set_to_none=True)
        out["skipped"] = float(not ok)
        return out

    def _finish_step(self, metrics: dict[str, Any], start: float) -> dict[str, Any]:
        acc, t = self.accelerator, self.cfg.train
        metrics["sec_per_iter"] = time.perf_counter() - start
        metrics["peak_mem_mb"], _ = peak_memory_mb(acc.device)
        self.step += 1
        if self.nan_streak >= t.max_nan_steps:
            raise NonFiniteLossError(
                f"{self.nan_streak} consecutive steps had a non-finite loss or reward (last at step {self.step}); "
                f"training stopped. Check the reward on these prompts, lower train.lr, or raise train.max_nan_steps."
            )
        return metrics

    # ------------------------------------------------------------------ the loop
    def train(self) -> TrainResult:
        acc, cfg = self.accelerator, self.cfg
        if acc.is_main_process:
            self._claim_run_dir()
            save_config(cfg, self.run_dir / "config.yaml")
        acc.wait_for_everyone()
        if cfg.run.resume:
            latest = ckpt.latest_checkpoint(self.run_dir)
            if latest is None:
                logger.warning("run.resume is set but %s has no checkpoint: starting from step 0", self.run_dir)
            else:
                self.load_checkpoint(latest)
        log = MetricLogger(self.run_dir, cfg.run.tensorboard, enabled=acc.is_main_process)
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

    RUN_OUTPUTS = (
        "metrics.jsonl",
        "checkpoints",
        "tensorboard",
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
    )

    def _claim_run_dir(self) -> None:
        """Creates the run directory; refuses to mix a fresh run into an earlier one unless told to."""
        run = self.run_dir
        earlier = (run / "metrics.jsonl").exists() or (run / "checkpoints").exists()
        if earlier and not self.cfg.run.resume:
            if not self.cfg.run.overwrite:
                raise ValueError(
                    f"run.output_dir={str(run)!r} already holds a run. Continue it with --resume "
                    f"(run.resume=true), replace it with run.overwrite=true, or choose another run.output_dir."
                )
            for name in self.RUN_OUTPUTS:
                path = run / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
            logger.info("run.overwrite: removed the earlier run in %s", run)
        run.mkdir(parents=True, exist_ok=True)

    def evaluate(self, tag: str, log: MetricLogger, use_ema: bool = False) -> dict[str, Any] | None:
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
