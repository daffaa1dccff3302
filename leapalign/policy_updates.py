"""The trainer's half of the policy-gradient methods: one iteration is one rollout of whole groups, collected
without gradients, then ``method.inner_epochs`` passes over it with ``method.updates_per_epoch`` optimiser steps
each. Within an update every trained step is one forward and one backward (gradients accumulate; the activations of
one step at a time are alive), so memory does not grow with the number of trained steps.

The minibatch order and every step choice come from generators that are identical on every rank, so every rank
runs the same number of backward passes (DDP stays in step) and a resumed run repeats them exactly.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from leapalign.batches import make_batch


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
        The iteration's metrics: the rollout's (rewards gathered over ranks, advantage statistics, zero-spread
        groups, trained steps) and the updates' (loss, ratio mean/min/max, clip fraction, approximate KL, KL to
        the reference, gradient norm), averaged over updates.
    """
    acc, cfg, method, model = trainer.accelerator, trainer.cfg, trainer.method, trainer.model
    batch = make_batch(model, trainer.sampler.next(), cfg, trainer.gens)
    with acc.autocast():
        exp = method.collect(model, batch, trainer.reward, gather=acc.gather, iteration=trainer.step)
    metrics: dict[str, Any] = dict(exp.metrics)
    finite = bool(torch.isfinite(exp.rewards).all())
    order = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + trainer.step)  # same on every rank
    updates, step_records, losses = [], [], []
    for _ in range(method.cfg.inner_epochs):
        for idx in exp.minibatches(method.cfg.updates_per_epoch, order):
            terms = [k for k in range(len(exp.steps)) if bool(exp.trained[:, k].any())]
            ok, total = finite, 0.0
            for n, k in enumerate(terms):
                sync = n == len(terms) - 1
                with acc.no_sync(model.transformer) if not sync and acc.num_processes > 1 else nullcontext():
                    with acc.autocast():
                        loss, record = method.step_loss(model, exp, idx, k)
                    if loss is None:  # no sample of this rank's minibatch trains on step k: a zero gradient
                        loss = sum(p.sum() * 0.0 for p in trainer.params.values())
                    ok &= bool(torch.isfinite(loss))
                    if ok:
                        acc.backward(loss / len(terms))
                    total += loss.detach().item() / len(terms)
                    if record:
                        step_records.append(record)
            flag = torch.tensor(float(ok), device=acc.device)
            ok = bool((acc.reduce(flag, reduction="mean") if acc.num_processes > 1 else flag).item() == 1.0)
            updates.append(trainer.apply_update(ok))
            losses.append(total)
    metrics.update(_merge(step_records))
    metrics.update(_merge(updates))
    metrics["loss"] = sum(losses) / max(1, len(losses))
    metrics["updates"] = float(len(updates))
    all_r = acc.gather(exp.rewards.to(acc.device))
    metrics["reward_mean"] = all_r.mean().item()
    metrics["reward_std"] = all_r.std().item() if all_r.numel() > 1 else 0.0
    return metrics
