"""Gradient fidelity: how well LeapAlign's, ReFL's and DRTune's gradients point along the true reward gradient.

Usage (from the repository root; a few minutes at 1 thread on the project machine):

    python -m benchmarks.grad_fidelity            # -> benchmarks/results/grad_fidelity.json + the PNG

Setup: the shipped ShapesWorld base model (every transformer weight trainable, as the protocol's full
fine-tuning), ``T`` Euler steps with true CFG 3 (the protocol's sampler), a batch of ``--batch`` training
prompts, ``--seeds`` noise batches. Every gradient is that of the **raw reward objective** ``-mean_b r(x_b)``
with ShapesScore ``r``: no hinge (a hinge would zero the gradient of samples above the threshold) and no
trajectory-similarity weight (a per-sample positive scale that is not part of the reward gradient).

* True gradient: backprop through all ``T`` Euler steps (model inputs not detached), reward on the real x_0.
* LeapAlign, for **every** pair of step indices ``k < j``: leap 1 from ``x_k`` to ``sigma_j``, the straight-
  through connector, leap 2 from the connected ``x_j`` (input discounted by alpha) to 0, the second connector,
  reward on the real x_0. The gradient is linear in alpha, ``g(alpha) = g(0) + alpha * g_nested``, so each
  pair costs one rollout-free pass and gives every alpha. The rollout latents come from one no-grad sampling
  (the method's on-policy rollout is the same trajectory); a check recomputes a few pairs with the library's
  ``LeapAlign.step`` and records the agreement.
* ReFL at every step ``m``: the one-step estimate ``x_m - sigma_m v(x_m)``, reward on it (the method draws m
  from the last 11 of 25; every m is shown). Also checked against ``ReFL.step``.
* DRTune: the library's ``DRTune.step`` (K = 2 trained steps, stop-gradient at every input, early stop in the
  last 11 steps, reward on the one-step estimate) for ``--drtune-draws`` random draws per seed.

Reported per pair / step / draw and aggregated by the sigma gap (LeapAlign, DRTune: ``sigma_k - sigma_j`` of
the two trained steps; ReFL: ``sigma_m``, the length of its leap to 0): the cosine similarity with the true
gradient and the norm ratio ``|g| / |g_true|``. "expected" is the same comparison for the estimator's mean
over its random draws (all pairs uniformly for LeapAlign, the last 11 steps for ReFL, the draws for DRTune).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.common import RESULTS, ROOT, provenance, set_threads, write_json
from benchmarks.protocol import DEFAULT_PROTOCOL, load_protocol

OUT = RESULTS / "grad_fidelity.json"
PLOT = ROOT / "docs" / "assets" / "benchmarks" / "grad_fidelity.png"
ALPHAS = (0.0, 0.3, 1.0)
GAP_BINS = 10


class Problem:
    """The model, the reward, one batch and its no-grad rollout; gradients as flat vectors."""

    def __init__(self, cfg: Any, prompts: list[str], seed: int) -> None:
        from leapalign.flow import sample
        from leapalign.methods import Batch
        from leapalign.methods.base import velocity_fn
        from leapalign.models import build_model
        from leapalign.rewards import build_reward

        torch.manual_seed(0)
        self.model = build_model(cfg.model)
        self.reward = build_reward(cfg.reward)
        self.params = self.model.trainable_parameters()
        h, w = cfg.sampler.height, cfg.sampler.width
        noise = torch.randn(
            (len(prompts), *self.model.latent_shape(h, w)), generator=torch.Generator().manual_seed(seed)
        )
        self.batch = Batch(
            prompts=prompts,
            cond=self.model.encode_prompts(prompts),
            noise=noise,
            sigmas=self.model.sigmas(cfg.sampler.num_steps, h, w),
            height=h,
            width=w,
            generator=torch.Generator().manual_seed(seed + 1),
            step_generator=torch.Generator().manual_seed(seed + 2),
        )
        self.v = velocity_fn(self.model, self.batch.cond)
        ro = sample(self.v, noise, self.batch.sigmas)
        self.latents = ro.latents  # (T + 1) detached latents of the on-policy trajectory

    @property
    def sigmas(self) -> Tensor:
        return self.batch.sigmas

    def loss(self, x0: Tensor) -> Tensor:
        """``-mean r`` of the decoded latents ``(B, ...)``."""
        images = self.model.decode(x0, self.batch.height, self.batch.width)
        return -self.reward(images, self.batch.prompts).mean()

    def flat(self, grads: Sequence[Tensor | None]) -> Tensor:
        """Per-parameter gradients as one flat vector (``None``: zeros)."""
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, self.params, strict=True)]
        )

    def flat_grad(self, loss: Tensor) -> Tensor:
        return self.flat(torch.autograd.grad(loss, self.params, allow_unused=True))

    def true_grad(self, checkpointing: bool) -> Tensor:
        """Backprop through every Euler step (per-step checkpointing optional)."""
        from torch.utils.checkpoint import checkpoint

        from leapalign.flow import euler_step

        x = self.latents[0]
        s = self.sigmas
        for i in range(s.numel() - 1):
            v = checkpoint(self.v, x, s[i], use_reentrant=False) if checkpointing else self.v(x, s[i])
            x = euler_step(x, v, s[i], s[i + 1])
        return self.flat_grad(self.loss(x))

    def leapalign_grads(self, k: int, j: int) -> tuple[Tensor, Tensor]:
        """``(g(0), g_nested)`` of LeapAlign's two-leap estimator at steps ``k < j`` (``g(a) = g0 + a g_n``)."""
        from leapalign.flow import leap, straight_through

        s, xs = self.sigmas, self.latents
        with torch.enable_grad():
            v_k = self.v(xs[k], s[k])
            x_j = straight_through(leap(xs[k], v_k, s[k], s[j]), xs[j])  # Eq. 4 + 6
            u = x_j.detach().requires_grad_(True)  # leap 2's model input, as a leaf: its path is the nested term
            v_j = self.v(u, s[j])
            x0 = straight_through(leap(x_j, v_j, s[j], 0.0), xs[-1])  # Eq. 5 + 7
            loss = self.loss(x0)
            grads = torch.autograd.grad(loss, [*self.params, u], retain_graph=True, allow_unused=True)
            nested = torch.autograd.grad(x_j, self.params, grad_outputs=grads[-1], allow_unused=True)
        return self.flat(grads[:-1]), self.flat(nested)

    def refl_grad(self, m: int) -> Tensor:
        from leapalign.flow import predict_x0

        with torch.enable_grad():
            v = self.v(self.latents[m], self.sigmas[m])
            return self.flat_grad(self.loss(predict_x0(self.latents[m], v, self.sigmas[m])))

    def method_grad(self, method: Any, step_seed: int) -> tuple[Tensor, dict[str, float]]:
        """The gradient of the library method's own loss (one draw of its random steps)."""
        batch = replace(self.batch, step_generator=torch.Generator().manual_seed(step_seed))
        out = method.step(self.model, batch, self.reward)
        return self.flat_grad(out.loss), out.metrics


def compare(g: Tensor, ref: Tensor) -> tuple[float, float]:
    """``(cosine similarity, |g| / |ref|)``."""
    g, ref = g.double(), ref.double()
    return float(g @ ref / (g.norm() * ref.norm())), float(g.norm() / ref.norm())


def by_gap(rows: list[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Means and standard deviations of ``keys`` over ``GAP_BINS`` equal sigma-gap bins."""
    out = []
    for b in range(GAP_BINS):
        lo, hi = b / GAP_BINS, (b + 1) / GAP_BINS
        sel = [r for r in rows if lo <= r["gap"] < hi or (b == GAP_BINS - 1 and r["gap"] == 1.0)]
        if not sel:
            continue
        entry: dict[str, Any] = {"gap_lo": lo, "gap_hi": hi, "n": len(sel)}
        for key in keys:
            vals = [r[key] for r in sel]
            entry[key] = statistics.fmean(vals)
            entry[key + "_std"] = statistics.pstdev(vals)
        out.append(entry)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    from leapalign.data import load_prompts
    from leapalign.methods import build_method
    from leapalign.methods.drtune import DRTuneConfig

    start = time.perf_counter()
    protocol = load_protocol(args.protocol)
    cfg = protocol.load([f"sampler.num_steps={args.steps}"])
    pool = load_prompts(cfg.data.prompts)
    pick = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[: args.batch]
    prompts = [pool[int(i)] for i in pick]
    T = args.steps
    pairs = [(k, j) for k in range(T) for j in range(k + 1, T)]
    la_rows: dict[tuple[int, int], list[dict[str, float]]] = {p: [] for p in pairs}
    refl_rows: dict[int, list[dict[str, float]]] = {m: [] for m in range(T)}
    drtune_rows, expected, checks, true_norms = [], [], [], []
    late = list(range(max(0, T - 11), T))
    for seed in args.seeds:
        prob = Problem(cfg, prompts, seed)
        g_true = prob.true_grad(args.checkpointing)
        true_norms.append(float(g_true.norm()))
        sums = {a: torch.zeros_like(g_true) for a in ALPHAS}
        for k, j in pairs:
            g0, gn = prob.leapalign_grads(k, j)
            row: dict[str, float] = {}
            for a in ALPHAS:
                g = g0 + a * gn
                sums[a] += g
                row[f"cos_{a}"], row[f"ratio_{a}"] = compare(g, g_true)
            la_rows[(k, j)].append(row)
        refl_sum = torch.zeros_like(g_true)
        for m in range(T):
            g = prob.refl_grad(m)
            if m in late:
                refl_sum += g
            cos, ratio = compare(g, g_true)
            refl_rows[m].append({"cos": cos, "ratio": ratio})
        drtune = build_method(DRTuneConfig(threshold=None))
        dr_sum = torch.zeros_like(g_true)
        for d in range(args.drtune_draws):
            g, metrics = prob.method_grad(drtune, 1000 * seed + d)
            dr_sum += g
            cos, ratio = compare(g, g_true)
            k, j, stop = int(metrics["k"]), int(metrics["j"]), int(metrics["early_stop"])
            gap = float(prob.sigmas[k] - prob.sigmas[j])
            drtune_rows.append(
                {"seed": seed, "k": k, "j": j, "early_stop": stop, "gap": gap, "cos": cos, "ratio": ratio}
            )
        exp = {"seed": seed}
        for a in ALPHAS:
            exp[f"leapalign_cos_{a}"], exp[f"leapalign_ratio_{a}"] = compare(sums[a] / len(pairs), g_true)
        exp["refl_cos"], exp["refl_ratio"] = compare(refl_sum / len(late), g_true)
        exp["drtune_cos"], exp["drtune_ratio"] = compare(dr_sum / args.drtune_draws, g_true)
        expected.append(exp)
        checks += library_checks(prob, seed)
        print(f"seed {seed}: done at {time.perf_counter() - start:.0f} s", flush=True)
    return {
        "settings": {
            "model": "shapes base (shipped), full fine-tuning, every transformer weight",
            "trainable_params": sum(p.numel() for p in prob.params),
            "T": T,
            "batch": args.batch,
            "prompts": prompts,
            "noise_seeds": list(args.seeds),
            "guidance_scale": cfg.model.guidance_scale,
            "objective": "-mean_b ShapesScore (no hinge, no similarity weight)",
            "alphas": list(ALPHAS),
            "drtune": "library DRTune.step, K=2, early stop in the last 11 steps, threshold None",
            "refl_expected_over": "the last 11 steps, the method's range",
            "true_gradient": "backprop through every Euler step"
            + (", per-step checkpointing" if args.checkpointing else ""),
        },
        "sigmas": [float(s) for s in prob.sigmas],
        "true_grad_norm": true_norms,
        "leapalign": leapalign_summary(la_rows, prob.sigmas),
        "refl": refl_summary(refl_rows, prob.sigmas),
        "drtune": {"draws": drtune_rows, "by_gap": by_gap(drtune_rows, ["cos", "ratio"])},
        "expected": expected,
        "library_checks": checks,
        "wall_clock_sec": time.perf_counter() - start,
        **provenance(args.threads),
    }


def leapalign_summary(rows: dict[tuple[int, int], list[dict[str, float]]], sigmas: Tensor) -> dict[str, Any]:
    per_pair = []
    for (k, j), vals in rows.items():
        entry: dict[str, Any] = {"k": k, "j": j, "gap": float(sigmas[k] - sigmas[j])}
        for key in vals[0]:
            entry[key] = statistics.fmean(v[key] for v in vals)
        per_pair.append(entry)
    keys = [f"{m}_{a}" for a in ALPHAS for m in ("cos", "ratio")]
    return {"per_pair": per_pair, "by_gap": by_gap(per_pair, keys)}


def refl_summary(rows: dict[int, list[dict[str, float]]], sigmas: Tensor) -> dict[str, Any]:
    per_step = []
    for m, vals in rows.items():
        per_step.append(
            {
                "m": m,
                "gap": float(sigmas[m]),
                "cos": statistics.fmean(v["cos"] for v in vals),
                "ratio": statistics.fmean(v["ratio"] for v in vals),
            }
        )
    return {"per_step": per_step, "by_gap": by_gap(per_step, ["cos", "ratio"])}


def library_checks(prob: Problem, seed: int, draws: int = 2) -> list[dict[str, Any]]:
    """Recomputes a few LeapAlign / ReFL gradients with the library's own ``step`` and compares."""
    from leapalign.methods import build_method
    from leapalign.methods.leapalign import LeapAlignConfig
    from leapalign.methods.refl import ReFLConfig

    out = []
    T = prob.sigmas.numel() - 1
    for d in range(draws):
        alpha = ALPHAS[(d + 1) % len(ALPHAS)]
        method = build_method(LeapAlignConfig(alpha=alpha, threshold=None, weighting="none"))
        g_lib, metrics = prob.method_grad(method, 77 + 1000 * seed + d)
        k, j = int(metrics["k"]), int(metrics["j"])
        g0, gn = prob.leapalign_grads(k, j)
        cos, ratio = compare(g0 + alpha * gn, g_lib)
        out.append({"method": "leapalign", "seed": seed, "k": k, "j": j, "alpha": alpha, "cos": cos, "ratio": ratio})
        refl = build_method(ReFLConfig(late_steps=T, threshold=None))
        g_lib, metrics = prob.method_grad(refl, 99 + 1000 * seed + d)
        m = int(metrics["k"])
        cos, ratio = compare(prob.refl_grad(m), g_lib)
        out.append({"method": "refl", "seed": seed, "m": m, "cos": cos, "ratio": ratio})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=25, help="Euler steps T (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="prompts per batch (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="noise seeds (default: 0 1 2)")
    p.add_argument("--drtune-draws", type=int, default=30, help="DRTune draws per seed (default: %(default)s)")
    p.add_argument("--checkpointing", action="store_true", help="checkpoint every step of the true gradient")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--plot", type=Path, default=PLOT)
    args = p.parse_args(argv)
    set_threads(args.threads)
    result = run(args)
    write_json(args.out, result)
    from benchmarks.plots import plot_grad_fidelity

    plot_grad_fidelity(result, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
