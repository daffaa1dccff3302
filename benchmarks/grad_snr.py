"""Signal and noise of each method's update at the base model, on the layout study's reward.

A method's update is a random vector: a minibatch of prompts and noise gives one gradient ``g_i``. Its mean ``mu``
is what the method climbs; the spread around it is noise that Adam turns into full-size steps all the same. From
``K`` independent minibatch gradients at the same weights:

- ``S = mean_{i != j} g_i . g_j`` estimates ``|mu|^2`` (unbiased: independent draws),
- ``T = mean_i |g_i|^2`` estimates ``|mu|^2 + tr(Sigma) / n`` for minibatches of ``n`` samples,
- the signal fraction ``rho = S / T`` is about the expected cosine between two minibatch gradients, and the
  samples per update at which signal and noise are equal (SNR 1) are ``n (1 - rho) / rho``.

Each gradient is the library's own: a :class:`leapalign.trainer.Trainer` built from the study cell's config
(``benchmarks/protocol_layout.yaml``) runs ``train_step`` with its optimiser update replaced by a capture of the
raw gradient (before clipping), so the weights never move and every minibatch is a fresh draw of the training
sampler. Replay is switched off (``train.replay_weight=0``): this measures the estimators, not the regulariser.
The interval on ``rho`` is a jackknife over the minibatches. The row ``replay`` is the replay term the study
adds to the direct-gradient methods (``train.replay_weight`` times the flow-matching loss on a batch of rendered
training scenes), measured the same way: its gradient norm against each estimator's says which of the two an
update follows.

    python -m benchmarks.grad_snr            # about 10 minutes on 2 cores; writes results/layout/grad_snr.json
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import RESULTS, provenance, set_threads, write_json
from benchmarks.protocol import load_protocol

PROTOCOL = Path(__file__).with_name("protocol_layout.yaml")
OUT = RESULTS / "layout" / "grad_snr.json"
METHODS = ("leapalign", "refl", "draft-k", "drtune", "flow-grpo", "dance-grpo", "mix-grpo")
REPLAY = "replay"


def study_config(protocol: Any, variant: str, seed: int, extra: Sequence[str] = ()) -> Any:
    """The resolved config of the study's ``methods`` cell ``variant`` at ``seed``, with ``extra`` overrides."""
    cell = next(c for c in protocol.cells("methods") if c.variant == variant and c.seed == seed)
    return protocol.config_for(cell, Path("unused"), list(extra))


def flat(grads: list[Tensor | None], params: list[Tensor]) -> Tensor:
    """Per-parameter gradients as one flat float32 vector (``None``: zeros)."""
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params, strict=True)]
    ).float()


def minibatch_gradients(variant: str, num_batches: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """``(K, P)`` float32: the raw gradient of ``num_batches`` independent training minibatches at the base model."""
    from leapalign.trainer import Trainer

    protocol = load_protocol(PROTOCOL)
    cfg = study_config(protocol, variant, seed, ["train.replay_weight=0.0"])
    trainer = Trainer(cfg)
    params = list(trainer.params.values())
    grads: list[Tensor] = []

    def capture(ok: bool) -> dict[str, float]:
        if not ok:
            raise RuntimeError(f"{variant}: a non-finite loss or reward at the base model")
        grads.append(flat([p.grad for p in params], params).detach().clone())
        for p in params:
            p.grad = None
        return {"grad_norm": float(grads[-1].norm()), "skipped": 0.0}

    trainer.apply_update = capture  # the weights never move: every minibatch is drawn at the base model
    rollouts = _record_rollouts(trainer)
    start = time.perf_counter()
    for _ in range(num_batches):
        before = len(grads)
        trainer.train_step()  # also advances the step, so samplers and noise draw afresh
        if len(grads) != before + 1:
            raise RuntimeError(f"{variant}: expected one update per iteration, got {len(grads) - before}")
    info = {"batch_size": cfg.data.batch_size, "sec_per_batch": (time.perf_counter() - start) / num_batches}
    if rollouts:
        info.update(surrogate_units(rollouts, trainer, study_config(protocol, "leapalign", seed).train.replay_weight))
    return torch.stack(grads), info


def _record_rollouts(trainer: Any) -> list[Any]:
    """Records each rollout of a policy-gradient method (its rewards and trained steps); ``[]`` for the others."""
    method = trainer.method
    if not hasattr(method, "collect"):
        return []
    rollouts: list[Any] = []
    collect = method.collect

    def recording(*args: Any, **kwargs: Any) -> Any:
        exp = collect(*args, **kwargs)
        rollouts.append(exp)
        return exp

    method.collect = recording
    return rollouts


def surrogate_units(rollouts: list[Any], trainer: Any, replay_weight: float) -> dict[str, float]:
    """How the policy-gradient surrogate's gradient relates to a gradient of the expected reward.

    At ratio 1 the loss's gradient is ``-mean_b A_b (1/n) sum_k grad (1/D) log p_k``: the advantage divides by the
    group's reward std, the log-density is a mean over the ``D`` latent elements, the steps' losses a mean over the
    ``n`` trained steps. That is ``1 / (D n sigma_g)`` times REINFORCE's estimate of the gradient of E[r] with the
    group mean as baseline, the quantity the direct-gradient methods estimate with ``-r``. So the replay weight that
    gives the family the direct methods' objective, E[r] - w L_replay, is ``w / (D n sigma)``, with ``sigma`` the
    harmonic mean of the groups' stds, of the rewards capped at the method's threshold as in the advantages (groups
    of equal rewards, e.g. all past the threshold, get no gradient and are left out).
    """
    opts = trainer.method.cfg
    cap = math.inf if opts.threshold is None else opts.threshold  # the advantages' rewards (GRPOOptions.threshold)
    stds = torch.cat([exp.rewards.detach().float().clamp(max=cap).view(-1, opts.group_size).std(1) for exp in rollouts])
    stds = stds[stds > 0]
    sigma = float(len(stds) / (1.0 / stds).sum())
    steps = statistics.fmean(float(exp.trained.sum(1).float().mean()) for exp in rollouts)
    h, w = trainer.cfg.sampler.height, trainer.cfg.sampler.width
    dims = math.prod(trainer.model.latent_shape(h, w))
    scale = 1.0 / (dims * steps * sigma)
    return {
        "group_std_harmonic": sigma,
        "groups": len(stds),
        "trained_steps": steps,
        "latent_dims": dims,
        "surrogate_scale": scale,
        "same_objective_replay_weight": replay_weight * scale,
    }


def replay_gradients(num_batches: int, seed: int) -> tuple[Tensor, dict[str, Any]]:
    """``(K, P)``: the gradient of the weighted replay loss of the LeapAlign cell on ``num_batches`` replay batches."""
    from leapalign.models import build_model
    from leapalign.regularizers import build_replay, flow_matching_loss

    cfg = study_config(load_protocol(PROTOCOL), "leapalign", seed)
    t, h, w = cfg.train, cfg.sampler.height, cfg.sampler.width
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model)
    params = model.trainable_parameters()
    replay = build_replay(t.replay_source, cfg.run.seed, t.replay_batch_size or cfg.data.batch_size, h, w)
    grads, start = [], time.perf_counter()
    for i in range(num_batches):
        prompts, images = replay.batch(i)
        loss = t.replay_weight * flow_matching_loss(model, images, prompts, torch.Generator().manual_seed(i))
        grads.append(flat(list(torch.autograd.grad(loss, params, allow_unused=True)), params))
    info = {"batch_size": len(prompts), "sec_per_batch": (time.perf_counter() - start) / num_batches,
            "replay_weight": t.replay_weight}  # fmt: skip
    return torch.stack(grads), info


def signal_and_noise(g: Tensor, batch_size: int) -> dict[str, Any]:
    """The statistics of the module docstring from ``g`` (``(K, P)``), with a jackknife interval on ``rho``."""
    gram = (g.double() @ g.double().T).numpy()
    k = gram.shape[0]

    def rho(keep: list[int]) -> tuple[float, float, float]:
        sub = gram[keep][:, keep]
        n = len(keep)
        total = float(sub.trace()) / n
        signal = (float(sub.sum()) - float(sub.trace())) / (n * (n - 1))
        return signal / total, signal, total

    r, signal, total = rho(list(range(k)))
    leave = [rho([i for i in range(k) if i != out])[0] for out in range(k)]
    mean_leave = sum(leave) / k
    se = math.sqrt((k - 1) / k * sum((x - mean_leave) ** 2 for x in leave))
    norms = [math.sqrt(gram[i, i]) for i in range(k)]
    # a minibatch can have no gradient at all (a policy-gradient batch whose groups all pass the threshold): it
    # counts in rho as the draw it is, but has no direction to compare
    cos = [gram[i, j] / (norms[i] * norms[j]) for i in range(k) for j in range(i + 1, k) if norms[i] * norms[j] > 0]
    lo, hi = r - 1.96 * se, r + 1.96 * se

    def samples(x: float) -> float | None:
        return batch_size * (1 - x) / x if x > 0 else None

    return {
        "minibatches": k,
        "rho": r,
        "rho_ci": [lo, hi],
        "mean_pairwise_cosine": sum(cos) / len(cos) if cos else None,
        "zero_gradient_minibatches": sum(n == 0 for n in norms),
        "signal_norm": math.sqrt(signal) if signal > 0 else 0.0,
        "minibatch_grad_norm": math.sqrt(total),
        "samples_for_snr1": samples(r),
        "samples_for_snr1_ci": [samples(hi), samples(lo)],  # None: the signal is not distinguishable from 0
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default=",".join((*METHODS, REPLAY)),
                   help=f"comma-separated variants of the layout protocol, and {REPLAY!r}")  # fmt: skip
    p.add_argument("--batches", type=int, default=16, help="independent minibatches per method (default: 16)")
    p.add_argument("--seed", type=int, default=0, help="the cells' run.seed (default: 0)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.batches < 3:
        p.error("--batches must be at least 3 (the jackknife leaves one out of the pairs)")
    logging.basicConfig(level=logging.WARNING)
    set_threads(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    for name in args.methods.split(","):
        if name == REPLAY:
            g, info = replay_gradients(args.batches, args.seed)
        else:
            g, info = minibatch_gradients(name, args.batches, args.seed)
        rows[name] = {**signal_and_noise(g, info["batch_size"]), **info}
        r = rows[name]
        logging.getLogger(__name__).warning("%s: rho %.3f %s, minibatch gradient norm %.3g", name, r["rho"],
                                            r["rho_ci"], r["minibatch_grad_norm"])  # fmt: skip
    result = {
        "protocol": str(PROTOCOL.relative_to(PROTOCOL.parents[1])),
        "batches": args.batches,
        "seed": args.seed,
        "methods": rows,
        "provenance": provenance(args.threads),
    }
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
