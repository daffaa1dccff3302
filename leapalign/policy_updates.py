"""The trainer's half of the policy-gradient methods: one iteration is one rollout of whole groups, collected
without gradients, then ``method.inner_epochs`` passes over it with ``method.updates_per_epoch`` optimiser steps
each. Within an update every trained step is one forward and one backward (gradients accumulate; the activations of
one step at a time are alive), so memory does not grow with the number of trained steps.

The minibatch order and every step choice come from generators that are identical on every rank, so every rank
runs the same number of backward passes (DDP stays in step) and a resumed run repeats them exactly.

A regulariser (the trainer's replay of the pretraining loss, ``train.replay_weight``) adds its loss to every update,
one more backward after the trained steps, so that a comparison with the direct-gradient methods, which add it to
every step, differs only in the estimator.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from accelerate import Accelerator

from leapalign.batches import make_batch
from leapalign.methods import Batch, PolicyGradientMethod
from leapalign.models import FlowModel
from leapalign.rewards import RewardFn


def _merge(records: list[dict[str, float]]) -> dict[str, float]:
    """Means of the per-step diagnostics, with the extremes of the ratio kept as extremes."""
    out: dict[str, float] = {}
    for key in dict.fromkeys(k for r in records for k in r):
        values = [r[key] for r in records if key in r]
        if key == "ratio_min":
            out[key] = min(values)
        elif key == "ratio_max":
            out[key] = max(values)
        else:
            out[key] = sum(values) / len(values)
    return out


def policy_gradient_step(trainer: Any) -> dict[str, Any]:
    """One iteration of a policy-gradient method on ``trainer`` (a :class:`leapalign.trainer.Trainer`).

    Returns:
        The metrics of :func:`policy_gradient_iteration`.
    """
    cfg = trainer.cfg
    batch = make_batch(trainer.model, trainer.sampler.next(), cfg, trainer.gens)
    return policy_gradient_iteration(
        trainer.method,
        trainer.model,
        batch,
        trainer.reward,
        trainer.accelerator,
        trainer.apply_update,
        iteration=trainer.step,
        order_seed=cfg.run.seed * 1_000_003 + trainer.step,
        params=list(trainer.params.values()),
        regularizer=trainer.update_regularizer(),
    )


def policy_gradient_iteration(
    method: PolicyGradientMethod,
    model: FlowModel,
    batch: Batch,
    reward: RewardFn,
    accelerator: Accelerator,
    apply_update: Callable[[bool], dict[str, float]],
    iteration: int,
    order_seed: int,
    params: list[torch.Tensor],
    regularizer: Callable[[int], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Collects one rollout of ``batch`` (whole groups) and runs the method's updates over it.

    Args:
        method: The policy-gradient method (its ``cfg`` gives the inner epochs and updates per epoch).
        model: The model being trained.
        batch: The rollout's prompts (groups of ``method.group_size`` consecutive copies), noise and schedule.
        reward: Any reward (differentiable or not).
        accelerator: Autocast, backward, gradient synchronisation and gathers across ranks.
        apply_update: Clips and applies the accumulated gradients (skipping them when passed ``False``) and
            clears them; returns its metrics (``grad_norm``, ``skipped``).
        iteration: The iteration number (methods whose plan moves with it, e.g. MixGRPO's window).
        order_seed: Seed of the minibatch order; identical on every rank.
        params: The trainable parameters (a rank without a sample on a step still runs a zero backward).
        regularizer: Called with the update's index within the iteration, returns a weighted loss added to that
            update (its own backward, logged as ``regularizer_loss``); ``None``: none.

    Returns:
        The iteration's metrics: the rollout's (rewards gathered over ranks, advantage statistics, zero-spread
        groups, trained steps), the updates' (loss, ratio mean/min/max, clip fraction, approximate KL, KL to the
        reference, gradient norm) averaged over updates, and ``collect_sec`` / ``update_sec``.
    """
    acc = accelerator
    start = time.perf_counter()
    with acc.autocast():
        exp = method.collect(model, batch, reward, gather=acc.gather, iteration=iteration)
    metrics: dict[str, Any] = dict(exp.metrics)
    collected = time.perf_counter()
    finite = bool(torch.isfinite(exp.rewards).all())
    order = torch.Generator().manual_seed(order_seed)  # same on every rank
    updates, step_records, losses = [], [], []
    for _ in range(method.cfg.inner_epochs):
        for idx in exp.minibatches(method.cfg.updates_per_epoch, order):
            terms: list[int | None] = [k for k in range(len(exp.steps)) if bool(exp.trained[:, k].any())]
            n_steps = len(terms)
            if regularizer is not None:
                terms.append(None)  # the regulariser's backward, last: it carries the gradient synchronisation
            ok, total = finite, 0.0
            for n, k in enumerate(terms):
                sync = n == len(terms) - 1
                with acc.no_sync(model.transformer) if not sync and acc.num_processes > 1 else nullcontext():
                    if k is None:
                        with acc.autocast():
                            loss = regularizer(len(updates))  # type: ignore[misc]
                        ok &= bool(torch.isfinite(loss))
                        if ok:
                            acc.backward(loss)
                        step_records.append({"regularizer_loss": loss.detach().item()})
                        continue
                    with acc.autocast():
                        loss, record = method.step_loss(model, exp, idx, k)
                    if loss is None:  # no sample of this rank's minibatch trains on step k: a zero gradient
                        loss = sum(p.sum() * 0.0 for p in params)
                    ok &= bool(torch.isfinite(loss))
                    if ok:
                        acc.backward(loss / n_steps)
                    total += loss.detach().item() / n_steps
                    if record:
                        step_records.append(record)
            flag = torch.tensor(float(ok), device=acc.device)
            ok = bool((acc.reduce(flag, reduction="mean") if acc.num_processes > 1 else flag).item() == 1.0)
            updates.append(apply_update(ok))
            losses.append(total)
    metrics.update(_merge(step_records))
    metrics.update(_merge(updates))
    metrics["loss"] = sum(losses) / max(1, len(losses))
    metrics["updates"] = float(len(updates))
    all_r = acc.gather(exp.rewards.to(acc.device))
    metrics["reward_mean"] = all_r.mean().item()
    metrics["reward_std"] = all_r.std().item() if all_r.numel() > 1 else 0.0
    metrics["collect_sec"] = collected - start
    metrics["update_sec"] = time.perf_counter() - collected
    return metrics
