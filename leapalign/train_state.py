"""A trainer's state on disk: writing a checkpoint of the current step, loading one, and resuming from the newest
checkpoint that verifies, falling back to older ones (:mod:`leapalign.checkpoint` holds the file format).

Saving and loading are collective: every rank calls :func:`save` and :func:`load` (the trainer's loop and resume
do), since the weights, the EMA and the optimiser state are gathered from, and scattered to, every rank's shards
under FSDP (:func:`leapalign.checkpoint.save_weights`). Every rank verifies the checksums and the parameter names
before any tensor is read, so a bad checkpoint fails on all ranks together and they fall back together.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from leapalign import checkpoint as ckpt

if TYPE_CHECKING:
    from leapalign.trainer import Trainer

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised after ``train.max_nan_steps`` consecutive steps with a non-finite loss, reward or gradient, or when
    the weights themselves are non-finite (no checkpoint is written from them)."""


def _check_finite(trainer: Trainer) -> None:
    """Raises :class:`NonFiniteLossError` on every rank when any rank's weights or EMA (its shards under FSDP)
    hold a NaN or an infinity."""
    acc = trainer.accelerator
    bad = ckpt.non_finite(trainer.params) + (ckpt.non_finite(trainer.ema.named()) if trainer.ema is not None else [])
    count = torch.tensor(float(len(bad)), device=acc.device)
    if acc.num_processes > 1:
        count = acc.reduce(count, reduction="sum")
    if count.item() > 0:
        last = ckpt.latest_checkpoint(trainer.run_dir)
        where = ", ".join(bad[:3]) if bad else "on another rank"
        raise NonFiniteLossError(
            f"step {trainer.step}: non-finite weights ({where}); no checkpoint written. The last good "
            f"one is {last}. Lower train.lr or check the reward; resume from it with --resume."
        )


def save(trainer: Trainer) -> Path | None:
    """Writes a checkpoint of the trainer's current step (never from non-finite weights); returns it on the main
    process. Every rank must call it."""
    acc = trainer.accelerator
    _check_finite(trainer)
    tmp = ckpt.checkpoint_dir(trainer.run_dir, trainer.step).with_suffix(".tmp")
    if acc.is_main_process:
        ckpt.begin(trainer.run_dir, trainer.step)
    acc.wait_for_everyone()
    ckpt.generators_to_file(trainer.gens, tmp / f"rng_rank{acc.process_index}.safetensors")
    model, names = trainer.model.transformer, list(trainer.params)
    ckpt.save_weights(model, names, tmp / "trainable.safetensors")
    if trainer.ema is not None:
        with trainer.ema.swapped():
            ckpt.save_weights(model, names, tmp / "ema.safetensors")
    ckpt.save_optimizer(model, trainer.optimizer, tmp)
    acc.wait_for_everyone()
    final = None
    if acc.is_main_process:
        state = {"step": trainer.step, "nan_streak": trainer.nan_streak, "world_size": acc.num_processes}
        if trainer.reward.state_dict():  # running reward normalisation (reward.normalize=running)
            state["reward_state"] = trainer.reward.state_dict()
        if getattr(trainer.method, "state_dict", None) and trainer.method.state_dict():
            state["method_state"] = trainer.method.state_dict()
        final = ckpt.commit(tmp, state, trainer.cfg.run.keep_checkpoints)
        logger.info("saved checkpoint %s", final)
    acc.wait_for_everyone()
    return final


def load(trainer: Trainer, directory: Path) -> None:
    """Loads one checkpoint into the trainer after verifying every file's checksum (:class:`ckpt.CheckpointError`
    if one fails). Every rank must call it."""
    state = ckpt.verify(directory)
    if state.get("world_size", 1) != trainer.accelerator.num_processes:
        raise ckpt.IncompatibleCheckpointError(
            f"{directory} was written by {state.get('world_size')} process(es) but this run has "
            f"{trainer.accelerator.num_processes}; resume with the same number of processes."
        )
    model, names = trainer.model.transformer, list(trainer.params)
    ckpt.load_weights(model, names, directory / "trainable.safetensors")
    if trainer.ema is not None:
        with trainer.ema.swapped():
            ckpt.load_weights(model, names, directory / "ema.safetensors")
    ckpt.load_optimizer(model, trainer.optimizer, names, directory)
    ckpt.generators_from_file(trainer.gens, directory / f"rng_rank{trainer.accelerator.process_index}.safetensors")
    trainer.step, trainer.nan_streak = int(state["step"]), int(state["nan_streak"])
    if "reward_state" in state:
        trainer.reward.load_state_dict(state["reward_state"])
    if "method_state" in state:
        trainer.method.load_state_dict(state["method_state"])
    logger.info("resumed from %s at step %d", directory, trainer.step)


def resume(trainer: Trainer) -> Path | None:
    """Loads the newest checkpoint that verifies, falling back to older ones with a warning naming the bad
    file; ``None`` (a fresh start) only with ``run.resume_or_start``.

    Raises:
        ValueError: nothing to resume from (without ``run.resume_or_start``), or no checkpoint loads.
    """
    found = ckpt.complete_checkpoints(trainer.run_dir)
    if not found:
        if trainer.cfg.run.resume_or_start:
            logger.info("nothing to resume in %s: starting a new run (--resume-or-start)", trainer.run_dir)
            return None
        raise ValueError(
            f"--resume: nothing to resume from ({ckpt.describe_checkpoints(trainer.run_dir)}). Check "
            f"run.output_dir, or use --resume-or-start to start a new run when there is no checkpoint."
        )
    failures = []
    for directory in found:
        try:
            load(trainer, directory)
            return directory
        except ckpt.IncompatibleCheckpointError:
            raise
        except (ckpt.CheckpointError, OSError, RuntimeError, KeyError, ValueError) as err:
            failures.append(f"{directory.name}: {err}")
            logger.warning("checkpoint %s cannot be loaded (%s); trying the previous one", directory, err)
    raise ValueError(f"--resume: no checkpoint of {trainer.run_dir} loads: " + "; ".join(failures))
