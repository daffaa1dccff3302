"""What the report's sections share (record getters, interval cells, curve interpolation) and the gradient-fidelity
section."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.report_common import NOT_RUN, Section
from leapalign.eval.stats import fmt_ci, mean_ci


def variants(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records))


def vals(records: Sequence[dict[str, Any]], variant: str, get: Any) -> list[float]:
    return [float(get(r)) for r in records if r["variant"] == variant and get(r) is not None]


def ci(records: Sequence[dict[str, Any]], variant: str, get: Any, digits: int = 3) -> str:
    return fmt_ci(mean_ci(vals(records, variant, get)), digits)


def seeds(records: Sequence[dict[str, Any]], variant: str) -> int:
    return sum(r["variant"] == variant for r in records)


def score(r: dict[str, Any]) -> float:
    return r["shapes_score"]


def overall(r: dict[str, Any]) -> float:
    return r["shapes_eval"]["overall"]


def diversity(r: dict[str, Any]) -> float:
    return r["diversity"]


def speed(r: dict[str, Any]) -> float:
    return r["sec_per_iter"]


def cells(records: Sequence[dict[str, Any]], variant: str, fields: Sequence[tuple[Any, int]]) -> str:
    """``mean ± ci`` cells of ``fields`` (getter, digits) for one variant, joined by `` | ``."""
    return " | ".join(ci(records, variant, get, digits) for get, digits in fields)


def category(c: str) -> Any:
    def get(r: dict[str, Any]) -> float:
        return r["shapes_eval"][c]

    return get


def field(key: str) -> Any:
    def get(r: dict[str, Any]) -> Any:
        return r.get(key)

    return get


def interpolate(curve: Sequence[dict[str, Any]], start: dict[str, Any] | None, budget: float, key: str) -> float:
    """``key`` at ``budget`` training seconds, linear between curve points (from the base point at 0 s)."""
    pts = ([(0.0, start[key])] if start else []) + [(p["train_sec"], p[key]) for p in curve]
    if budget >= pts[-1][0]:
        return pts[-1][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t0 <= budget <= t1:
            return v0 + (v1 - v0) * (budget - t0) / (t1 - t0) if t1 > t0 else v1
    return pts[0][1]


def fidelity_section(fid: dict[str, Any] | None) -> Section:
    s = Section("Gradient fidelity")
    if fid is None:
        s.lines.append(f"{NOT_RUN} Run `make bench-fidelity` (`python -m benchmarks.grad_fidelity`).")
        return s
    st = fid["settings"]
    alphas = st["alphas"]
    s.lines += [
        f"ShapesWorld base model ({st['trainable_params'] / 1e6:.2f}M trainable weights), T = {st['T']}, batch "
        f"{st['batch']} training prompts, noise seeds {st['noise_seeds']}, CFG {st['guidance_scale']}. Objective:",
        f"{st['objective']}. True gradient: {st['true_gradient']}; its norm per seed: "
        + ", ".join(f"{n:.3g}" for n in fid["true_grad_norm"])
        + " (full backprop is erratic in scale from one noise batch to the next). Cosine with the true gradient",
        "and norm ratio: per pair (step, draw) the mean over seeds, then the mean (± standard deviation across",
        "pairs) in each sigma-gap bin; DRTune's draws are binned individually. Norm ratios mix seeds whose true",
        "norms differ widely, so read them as orders of magnitude.",
        "LeapAlign: every pair k < j; ReFL: every step m (gap = sigma_m, its leap to 0); DRTune:",
        f"{st['drtune']}, gap between its two trained steps.",
        "",
        "| sigma gap | LeapAlign pairs | " + " | ".join(f"cos α={a}" for a in alphas) + " | "
        + " | ".join(f"ratio α={a}" for a in alphas) + " | ReFL cos | ReFL ratio | DRTune cos (draws) |",
        "|" + "---|" * (2 + 2 * len(alphas) + 3),
    ]  # fmt: skip
    refl = {r["gap_lo"]: r for r in fid["refl"]["by_gap"]}
    dr = {r["gap_lo"]: r for r in fid["drtune"]["by_gap"]}
    for r in fid["leapalign"]["by_gap"]:
        cos = " | ".join(f"{r[f'cos_{a}']:.3f} ± {r[f'cos_{a}_std']:.3f}" for a in alphas)
        ratio = " | ".join(f"{r[f'ratio_{a}']:.3f}" for a in alphas)
        rf, d = refl.get(r["gap_lo"]), dr.get(r["gap_lo"])
        rf_txt = f"{rf['cos']:.3f} | {rf['ratio']:.3f}" if rf else "– | –"
        d_txt = f"{d['cos']:.3f} ({d['n']})" if d else "–"
        s.lines.append(f"| {r['gap_lo']:.1f}–{r['gap_hi']:.1f} | {r['n']} | {cos} | {ratio} | {rf_txt} | {d_txt} |")
    exp = fid["expected"]
    s.lines += [
        "",
        "**Expected estimator** (the mean of the estimator over its random draws, against the true gradient; mean",
        "over seeds): how much of the true gradient the method follows on average, beyond the per-draw noise.",
        "",
        "| estimator | cosine | norm ratio |",
        "|---|---|---|",
    ]
    for a in alphas:
        s.lines.append(
            f"| LeapAlign α={a} (all pairs) | {statistics.fmean(e[f'leapalign_cos_{a}'] for e in exp):.3f} | "
            f"{statistics.fmean(e[f'leapalign_ratio_{a}'] for e in exp):.3f} |"
        )
    s.lines.append(f"| ReFL, over {st['refl_expected_over']} | {statistics.fmean(e['refl_cos'] for e in exp):.3f} | "
                   f"{statistics.fmean(e['refl_ratio'] for e in exp):.3f} |")  # fmt: skip
    s.lines.append(f"| DRTune (its draws) | {statistics.fmean(e['drtune_cos'] for e in exp):.3f} | "
                   f"{statistics.fmean(e['drtune_ratio'] for e in exp):.3f} |")  # fmt: skip
    checks = fid["library_checks"]
    worst = min(c["cos"] for c in checks)
    s.lines += [
        "",
        f"Check: {len(checks)} gradients recomputed with the library's own `LeapAlign.step` / `ReFL.step` agree with",
        f"this script's (lowest cosine {worst:.6f}, norm ratios "
        f"{min(c['ratio'] for c in checks):.6f}–{max(c['ratio'] for c in checks):.6f}).",
        "",
        "![gradient fidelity](assets/benchmarks/grad_fidelity.png)",
    ]
    return s


def snr_section(snr: dict[str, Any] | None) -> Section:
    """Signal and noise of each method's update at the base model (``benchmarks/grad_snr.py``)."""
    s = Section("Signal and noise of each update (layout study, at the base model)")
    if snr is None:
        s.lines.append(f"{NOT_RUN} Run `python -m benchmarks.grad_snr`.")
        return s
    rows = snr["methods"]
    estimators = {k: r for k, r in rows.items() if k != "replay"}
    s.lines += [
        f"`make bench-snr` (`python -m benchmarks.grad_snr`): {snr['batches']} independent training minibatches per",
        "method, each method's own update (the trainer's gradient, before clipping) at the base model with the layout",
        f"study's settings (`{snr['protocol']}`, seed {snr['seed']}). The signal fraction",
        "rho = mean g_i.g_j (i != j) / mean |g_i|^2 is about the expected cosine between two minibatch gradients;",
        "the samples per update at which the mean gradient and the noise have equal size follow from it. The",
        "`replay` row is the term the study adds to every direct-gradient method (its weight times the flow-matching",
        "loss on rendered training scenes).",
        "",
        *snr_table(rows),
        "",
    ]
    resolved = [k for k, r in estimators.items() if r["rho_ci"][0] > 0]
    s.lines.append(
        "- The interval on rho excludes 0 for "
        + (", ".join(resolved) if resolved else "no estimator")
        + f"; at {next(iter(rows.values()))['batch_size']} samples a minibatch, every update is mostly noise, and"
        " only the steps' accumulation (Adam's momentum, 200 iterations) carries a direction."
    )
    units = {k: r for k, r in estimators.items() if "surrogate_scale" in r}
    if "replay" in rows:
        replay = rows["replay"]["minibatch_grad_norm"]
        side: dict[bool, list[str]] = {True: [], False: []}  # True: the estimator's gradient is the larger
        for k, r in estimators.items():
            side[r["minibatch_grad_norm"] >= replay].append(f"{k} ({r['minibatch_grad_norm']:.3g})")
        s.lines.append(
            f"- The replay term's gradient has norm {replay:.3g} at weight {rows['replay'].get('replay_weight')}. "
            f"Larger: {', '.join(side[True]) or 'none'}. Smaller: {', '.join(side[False]) or 'none'}. With one "
            "replay weight for every method (the direct methods' 30), the smaller an estimator's gradient, the more "
            "its updates follow replay instead."
        )
        if units:
            ratios = [replay / r["minibatch_grad_norm"] for r in units.values()]
            s.lines.append(
                f"- At that weight the replay term is {min(ratios):,.0f} to {max(ratios):,.0f} times the "
                "policy-gradient family's gradient, so with it the family's updates followed replay alone."
            )
    if units:
        s.lines += [
            "",
            "The policy-gradient surrogate's gradient is 1 / (D n sigma) times REINFORCE's estimate of the gradient of",
            "E[r] (D latent elements averaged in the log-density, n trained steps averaged, advantages divided by the",
            "group's reward std sigma: the harmonic mean over the groups drawn, of the rewards capped at the threshold",
            "as in the advantages; groups that pass it whole have no gradient), so the replay weight that puts the",
            "family on the direct methods' objective, E[min(r, threshold)] - w L_replay, is w / (D n sigma). The study",
            "uses these weights, rounded to two digits:",
            "",
            "| method | groups | sigma (harmonic mean) | n | D | 1 / (D n sigma) | same-objective replay weight |",
            "|---|---|---|---|---|---|---|",
            *[
                f"| {k} | {r['groups']} | {r['group_std_harmonic']:.4f} | {r['trained_steps']:.1f} | "
                f"{r['latent_dims']} | {r['surrogate_scale']:.3g} | {r['same_objective_replay_weight']:.3g} |"
                for k, r in units.items()
            ],
        ]
    return s


def snr_table(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The table of :func:`snr_section`."""

    def cosine(r: dict[str, Any]) -> str:
        zero = r["zero_gradient_minibatches"]
        mean = "–" if r["mean_pairwise_cosine"] is None else f"{r['mean_pairwise_cosine']:.3f}"
        return mean + (f" ({zero} minibatches without gradient)" if zero else "")

    def n(x: float | None) -> str:
        return "no signal" if x is None else f"{x:,.0f}"

    out = [
        "| method | signal fraction rho [95% CI] | mean cosine of two minibatch gradients | norm of the mean / of a "
        "minibatch's | samples per update for SNR 1 [95% CI] | s / minibatch |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lo, hi = r["rho_ci"]
        ratio = r["signal_norm"] / r["minibatch_grad_norm"]
        snr = r["samples_for_snr1_ci"]
        out.append(
            f"| {name} | {r['rho']:.3f} [{lo:.3f}, {hi:.3f}] | {cosine(r)} | {ratio:.3f} | "
            f"{n(r['samples_for_snr1'])} [{n(snr[0])}, {n(snr[1])}] | {r['sec_per_batch']:.1f} |"
        )
    return out
