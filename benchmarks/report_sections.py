"""The sections of ``docs/benchmarks.md``: tables, figures and claim verdicts computed from the result records."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.report_common import CATEGORIES, MEM_TARGET, NOT_RUN, TIME_TARGET, Section
from benchmarks.report_cost import leapalign_targets, row, time_verdict
from benchmarks.report_curves import peak_gold_lines
from leapalign.eval.stats import fmt_ci, mean_ci, verdict


def _variants(records: Sequence[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["variant"] for r in records))


def _vals(records: Sequence[dict[str, Any]], variant: str, get: Any) -> list[float]:
    return [float(get(r)) for r in records if r["variant"] == variant and get(r) is not None]


def _ci(records: Sequence[dict[str, Any]], variant: str, get: Any, digits: int = 3) -> str:
    return fmt_ci(mean_ci(_vals(records, variant, get)), digits)


def _seeds(records: Sequence[dict[str, Any]], variant: str) -> int:
    return sum(r["variant"] == variant for r in records)


def _score(r: dict[str, Any]) -> float:
    return r["shapes_score"]


def _overall(r: dict[str, Any]) -> float:
    return r["shapes_eval"]["overall"]


def _diversity(r: dict[str, Any]) -> float:
    return r["diversity"]


def _speed(r: dict[str, Any]) -> float:
    return r["sec_per_iter"]


HEADLINE = ((_score, 3), (_overall, 3), (_diversity, 3), (_speed, 2))


def _cells(records: Sequence[dict[str, Any]], variant: str, fields: Sequence[tuple[Any, int]]) -> str:
    """``mean ± ci`` cells of ``fields`` (getter, digits) for one variant, joined by `` | ``."""
    return " | ".join(_ci(records, variant, get, digits) for get, digits in fields)


# ------------------------------------------------------------------------------------------------- methods
def interpolate(curve: Sequence[dict[str, Any]], start: dict[str, Any] | None, budget: float, key: str) -> float:
    """``key`` at ``budget`` training seconds, linear between curve points (from the base point at 0 s)."""
    pts = ([(0.0, start[key])] if start else []) + [(p["train_sec"], p[key]) for p in curve]
    if budget >= pts[-1][0]:
        return pts[-1][1]
    for (t0, v0), (t1, v1) in zip(pts, pts[1:], strict=False):
        if t0 <= budget <= t1:
            return v0 + (v1 - v0) * (budget - t0) / (t1 - t0) if t1 > t0 else v1
    return pts[0][1]


def equal_wallclock(trained: Sequence[dict[str, Any]], base: dict[str, Any] | None) -> tuple[float, list[str]]:
    """The budget (the fastest method's mean training time) and a table of every method at that budget."""
    means = {v: statistics.fmean(_vals(trained, v, _field("train_sec"))) for v in _variants(trained)}
    budget = min(means.values())
    start = base["curve"][0] if base else None
    lines = [
        "| method | seeds | train s (full run) | ShapesScore at budget | ShapesEval overall at budget |",
        "|---|---|---|---|---|",
    ]
    for v in _variants(trained):
        recs = [r for r in trained if r["variant"] == v]
        score = [interpolate(r["curve"], start, budget, "shapes_score") for r in recs]
        ev = [interpolate(r["curve"], start, budget, "shapes_eval_overall") for r in recs]
        lines.append(f"| {v} | {len(recs)} | {means[v]:.0f} | {fmt_ci(mean_ci(score))} | {fmt_ci(mean_ci(ev))} |")
    return budget, lines


def _category(c: str) -> Any:
    def get(r: dict[str, Any]) -> float:
        return r["shapes_eval"][c]

    return get


def _field(key: str) -> Any:
    def get(r: dict[str, Any]) -> Any:
        return r.get(key)

    return get


METHOD_FIELDS = (
    (_score, 3),
    (_overall, 3),
    *((_category(c), 3) for c in CATEGORIES),
    (_diversity, 3),
    (_field("train_reward_final"), 3),
    (_speed, 2),
    (_field("peak_mem_mb"), 0),
    (_field("peak_live_mb"), 0),
)


def methods_table(trained: Sequence[dict[str, Any]], base: dict[str, Any] | None) -> list[str]:
    head = "| method | seeds | ShapesScore | ShapesEval overall | " + " | ".join(CATEGORIES)
    head += " | diversity | train reward (last 10%) | s / iter | peak RSS MiB | peak live MiB |"
    lines = [head, "|" + "---|" * (2 + len(METHOD_FIELDS))]
    if base is not None:
        lines.append(f"| base | – | {_cells([base], 'base', METHOD_FIELDS[:-4])} | – | – | – | – |")
    lines += [f"| {v} | {_seeds(trained, v)} | {_cells(trained, v, METHOD_FIELDS)} |" for v in _variants(trained)]
    return lines


def methods_section(trained: list[dict[str, Any]], base: dict[str, Any] | None, assets: Path) -> Section:
    s = Section("Method comparison")
    if not trained:
        s.lines += [f"{NOT_RUN} Run `make bench-methods` (`python -m benchmarks.sweep --suite methods`)."]
        if base is not None:
            s.lines += ["", "The base model's held-out evaluation is recorded already:", "", *methods_table([], base)]
        return s
    s.lines += [
        "Mean ± half-width of the 95% Student-t interval over seeds. ShapesScore (the training reward) and",
        "ShapesEval (exact, never trained on) are measured on the held-out prompts with the EMA weights;",
        "diversity is the mean pairwise RMS pixel distance between the images of one prompt",
        "(`leapalign.diversity.prompt_diversity`), which falls when a method collapses onto one image per prompt.",
        "The training reward is each method's own batch reward (ReFL and DRTune score one-step estimates, so",
        "theirs is not comparable with the others'). Seconds per iteration exclude evaluation.",
        "",
        *methods_table(trained, base),
        "",
    ]
    budget, table = equal_wallclock(trained, base)
    s.lines += [
        f"**Equal wall-clock.** Every method at the training time of the fastest full run ({budget:.0f} s), "
        "interpolated linearly between its evaluated checkpoints (held-out, first "
        "images of every prompt; see the protocol's `curve_every`):",
        "",
        *table,
        "",
    ]
    s.lines += [
        "**Proxy versus gold.** Held-out ShapesEval over each run's curve (its evaluated checkpoints, on the curve's "
        "images: the first of every prompt, the base model's included), and how far each run fell from its peak:",
        "",
    ]
    s.lines += [*peak_gold_lines(trained, base), ""]
    plots.plot_curves(trained, base, "shapes_score", assets / "methods_shapes_score.png", "Held-out ShapesScore")
    plots.plot_curves(trained, base, "shapes_eval_overall", assets / "methods_shapes_eval.png", "Held-out ShapesEval")
    plots.plot_categories(trained, base, assets / "methods_categories.png", "ShapesEval by category (95% t-interval)")
    s.lines += [
        "![ShapesScore curves](assets/benchmarks/methods_shapes_score.png)",
        "![ShapesEval curves](assets/benchmarks/methods_shapes_eval.png)",
        "![ShapesEval by category](assets/benchmarks/methods_categories.png)",
    ]
    return s


# ----------------------------------------------------------------------------------------------- ablations
def ablations_section(ablations: list[dict[str, Any]], trained: list[dict[str, Any]], assets: Path) -> Section:
    s = Section("Ablations (the paper's Figure 4)")
    if not ablations:
        s.lines.append(f"{NOT_RUN} Run `make bench-ablations` (`python -m benchmarks.sweep --suite ablations`).")
        return s
    s.lines += ["Mean ± half-width of the 95% t-interval over seeds; variants equal to the default LeapAlign reuse its"]
    s.lines += ["records (`reused_from`).", ""]
    own = [r for r in ablations if "reused_from" not in r]
    threads = sorted({r.get("threads") for r in own if r.get("threads") is not None})
    loaded = [r for r in own if r.get("load_avg") and r["load_avg"][1] > r["threads"] + 0.5]
    timed = [r for r in own if r.get("load_avg")]
    if threads:
        s.lines += [
            f"Timing: {len(own)} cells ran here with {', '.join(map(str, threads))} torch thread(s) each; "
            f"{len(loaded)} of the {len(timed)} that recorded the load average finished with other work sharing the",
            "CPU (5-minute load above the cell's threads + 0.5). Their s / iter are slower than the machine's; the",
            "method comparison's timings are the reference.",
            "",
        ]
    for group in dict.fromkeys(r["group"] for r in ablations):
        recs = [r for r in ablations if r["group"] == group]
        s.lines += [f"**{group}**", "", "| variant | seeds | ShapesScore | ShapesEval overall | diversity | s / iter |"]
        s.lines.append("|---|---|---|---|---|---|")
        for v in _variants(recs):
            s.lines.append(f"| {v} | {_seeds(recs, v)} | {_cells(recs, v, HEADLINE)} |")
        s.lines.append("")
    return s


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


# ------------------------------------------------------------------------------------------------- claims
def _compare(records: Sequence[dict[str, Any]], a: str, b: str, get: Any) -> str:
    va, vb = _vals(records, a, get), _vals(records, b, get)
    if not va or not vb:
        return "not yet run"
    return f"{a} {verdict(va, vb)} than {b} ({fmt_ci(mean_ci(va))} vs {fmt_ci(mean_ci(vb))})".replace(
        "no significant difference than", "not significantly different from"
    ).replace("too few seeds than", "too few seeds to compare with")


def claims_section(
    trained: list[dict[str, Any]],
    ablations: list[dict[str, Any]],
    cost: list[dict[str, Any]],
    fid: dict[str, Any] | None,
) -> Section:
    s = Section("Which claims hold here")
    s.lines += [
        "Verdicts are computed from the records: a difference counts when a two-sided Welch t-test over seeds gives",
        "p < 0.05 (values are mean ± half-width of the 95% t-interval). ShapesWorld is a small CPU world, so a",
        "verdict here is evidence about the mechanism, not about FLUX at 720 px.",
        "",
    ]
    for base in ("refl", "draft-lv", "drtune"):
        reward, geneval = _compare(trained, "leapalign", base, _score), _compare(trained, "leapalign", base, _overall)
        s.lines.append(f"- *LeapAlign reaches a higher reward than {base} (Table 2):* {reward}.")
        s.lines.append(f"- *LeapAlign improves GenEval (here ShapesEval) more than {base} (Table 2):* {geneval}.")
    abl = [
        ("α = 0.3 beats α = 0 (Fig. 4a)", "alpha_0.3", "alpha_0"),
        ("α = 0.3 beats α = 1 (Fig. 4a)", "alpha_0.3", "alpha_1"),
        ("two leaps beat one (Fig. 4b)", "leaps_2", "leaps_1"),
        ("three leaps gain nothing over two (Fig. 4b)", "leaps_3", "leaps_2"),
        ("reward on x_0 beats the one-step estimate, weighting d_j + d_0 (Fig. 4c)", "reward_x0", "reward_x0hat"),
        ("reward on x_0 beats the one-step estimate, weighting d_j (Fig. 4c)", "reward_x0_dj", "reward_x0hat_dj"),
        ("weighting d_j + d_0 beats no weighting (Fig. 4d)", "weight_both", "weight_none"),
        ("the full step range beats sigma ≤ 1/2 (Fig. 4e)", "range_full", "range_late"),
        ("random (k, j) beats a fixed gap of 1/2 (Fig. 4f)", "gap_random", "gap_fixed_0.5"),
    ]
    for text, a, b in abl:
        s.lines.append(f"- *{text}, on ShapesEval:* {_compare(ablations, a, b, _overall)}.")
    for size in dict.fromkeys(r["model_size"] for r in cost):
        t = leapalign_targets(cost, size)
        if t is not None:
            s.lines.append(
                f"- *LeapAlign's memory does not grow with T (§2.9) at {size}:* Δpeak T=50 / T=10 = "
                f"{t['delta_ratio']:.2f} ({'holds' if t['delta_ratio'] <= MEM_TARGET else 'does not hold'} at the "
                f"{MEM_TARGET}x target)."
            )
            s.lines.append(
                f"- *LeapAlign needs no extra forward passes, so an iteration costs about (T+4)/T samplings, at most "
                f"{TIME_TARGET}x, at {size}:* {time_verdict(t)}."
            )
            la, ap, nock = (row(cost, size, m, 50) for m in ("leapalign", "alignprop", "alignprop-no-ckpt"))
            if la and ap and nock:
                s.lines.append(
                    f"- *LeapAlign needs less memory than backprop through the whole chain, at {size}, T = 50:* "
                    f"{'holds' if la['peak_mem_delta_mb'] < nock['peak_mem_delta_mb'] else 'does not hold'} against "
                    f"keeping every graph ({la['peak_mem_delta_mb']:.0f} vs {nock['peak_mem_delta_mb']:.0f} MiB); "
                    f"{'holds' if la['peak_mem_delta_mb'] < ap['peak_mem_delta_mb'] else 'does not hold'} against "
                    f"per-step checkpointing ({ap['peak_mem_delta_mb']:.0f} MiB), which instead costs "
                    f"{ap['iter_over_sampling']:.2f}x the sampling time against LeapAlign's "
                    f"{la['iter_over_sampling']:.2f}x."
                )
    if not cost:
        s.lines.append("- *LeapAlign's memory does not grow with T:* not yet run.")
    if fid is not None:
        s.lines += fidelity_claims(fid)
    return s


def fidelity_claims(fid: dict[str, Any]) -> list[str]:
    """Verdicts on the gradient-path claims from the fidelity run (per-seed values, expected estimators)."""
    exp, alphas = fid["expected"], fid["settings"]["alphas"]
    cos = {a: [e[f"leapalign_cos_{a}"] for e in exp] for a in alphas}
    mean = {a: statistics.fmean(v) for a, v in cos.items()}
    rising = all(mean[a] < mean[b] for a, b in zip(alphas, alphas[1:], strict=False))
    pairs = fid["leapalign"]["per_pair"]
    ratio = {a: statistics.fmean(p[f"ratio_{a}"] for p in pairs) for a in (alphas[0], alphas[-1])}
    lines = [
        "- *The nested gradient carries signal that stopping the gradient at the model input (DRTune-like, α = 0) "
        "throws away (§2.4):* "
        + ("holds" if rising else "does not hold")
        + ": the expected LeapAlign gradient's cosine with the full-backprop gradient is "
        + ", ".join(f"{mean[a]:.3f} at α = {a}" for a in alphas)
        + f" (mean of {len(exp)} noise seeds; α = {alphas[-1]} is the closest to the true gradient, so the paper's "
        "preference for α = 0.3 must come from optimisation, not from direction; the α ablation measures that).",
        "- *The undiscounted nested term inflates the gradient norm (App. C, Fig. 6):* "
        + ("holds" if ratio[alphas[-1]] > ratio[alphas[0]] else "does not hold here")
        + f": over all pairs the mean norm ratio to the true gradient is {ratio[alphas[0]]:.3f} at α = {alphas[0]} "
        f"and {ratio[alphas[-1]]:.3f} at α = {alphas[-1]}.",
    ]
    a_def = 0.3 if 0.3 in alphas else alphas[0]
    for name, key in (("ReFL", "refl_cos"), ("DRTune", "drtune_cos")):
        wins = sum(e[f"leapalign_cos_{a_def}"] > e[key] for e in exp)
        lines.append(
            f"- *LeapAlign (α = {a_def}) follows the true gradient more closely than {name}:* expected-estimator "
            f"cosine {mean[a_def]:.3f} vs {statistics.fmean(e[key] for e in exp):.3f}, higher in {wins} of "
            f"{len(exp)} seeds."
        )
    return lines


# ----------------------------------------------------------------------------------------------- headline
def headline(trained: list[dict[str, Any]], base: dict[str, Any] | None, cost: list[dict[str, Any]]) -> str:
    """The README block: the method table when it exists, else the cost at the protocol's T."""
    lines = ["Full report: [docs/benchmarks.md](docs/benchmarks.md) (generated by `python -m benchmarks.report`).", ""]
    if trained:
        lines += [
            "| method | seeds | ShapesScore | ShapesEval overall | diversity | s / iter |",
            "|---|---|---|---|---|---|",
        ]
        if base is not None:
            lines.append(f"| base | – | {_cells([base], 'base', HEADLINE[:3])} | – |")
        lines += [f"| {v} | {_seeds(trained, v)} | {_cells(trained, v, HEADLINE)} |" for v in _variants(trained)]
        return "\n".join(lines)
    lines += [
        "The method comparison has not been run yet. Cost per training iteration on the CPU (ShapesWorld, T = 25;",
        "AlignProp backpropagates through the whole chain with per-step checkpointing; `-no-ckpt` keeps every graph,",
        "`-block-ckpt` adds per-block gradient checkpointing; Δpeak is the live memory an iteration adds):",
        "",
    ]
    rows = sorted((r for r in cost if r["model_size"] == "shapes" and r["T"] == 25), key=lambda r: r["sec_per_iter"])
    if not rows:
        return "\n".join([*lines[:2], "No benchmark results yet."])
    lines += ["| method | s / iter | iteration / no-grad sampling | Δpeak MiB |", "|---|---|---|---|"]
    lines += [
        f"| {r['method']} | {r['sec_per_iter']:.2f} | {r['iter_over_sampling']:.2f} | {r['peak_mem_delta_mb']:.1f} |"
        for r in rows
    ]
    return "\n".join(lines)
