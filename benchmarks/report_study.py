"""One study of the report (a protocol, its result files and the reward it trains on): the method comparison and the
ablations, as tables, curves and figures."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import plots
from benchmarks.common import ROOT, read_records
from benchmarks.protocol import BASE
from benchmarks.report_common import CATEGORIES, NOT_RUN, Section
from benchmarks.report_curves import peak_gold_lines
from benchmarks.report_sections import (
    category,
    cells,
    diversity,
    interpolate,
    overall,
    seeds,
    speed,
    vals,
    variants,
)
from benchmarks.report_sections import field as get_field
from leapalign.eval.stats import fmt_ci, mean_ci


@dataclass(frozen=True)
class Study:
    """A benchmark study: where its records are, the protocol that made them and the reward it trains on.

    Attributes:
        key: Short name, used for the figures' file names (``layout``, ``score``).
        title: The heading of the study's sections.
        results: Folder of ``methods.json`` and ``ablations.json``.
        protocol: The protocol file the sweep ran (the ``--protocol`` of its command).
        reward: The records' key of the training reward (also a curve field).
        reward_label: The reward's name in the tables.
        intro: Paragraphs that say what the study decides and its caveats.
    """

    key: str
    title: str
    results: Path
    protocol: Path
    reward: str
    reward_label: str
    intro: tuple[str, ...] = field(default_factory=tuple)

    def command(self, suite: str) -> str:
        """The sweep command of one suite of this study."""
        cmd = f"python -m benchmarks.sweep --suite {suite}"
        if self.protocol.name != "protocol.yaml":
            rel = self.protocol.relative_to(ROOT) if self.protocol.is_relative_to(ROOT) else self.protocol
            cmd += f" --protocol {rel} --results-dir benchmarks/results/{self.results.name}"
            cmd += f" --runs-dir benchmarks/runs/{self.results.name}"
        return cmd

    def load(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
        """The base record (or ``None``), the trained method records and the ablation records."""
        methods = read_records(self.results / "methods.json")
        base = next((r for r in methods if r.get("variant") == BASE), None)
        return base, [r for r in methods if r.get("variant") != BASE], read_records(self.results / "ablations.json")

    def get_reward(self, r: dict[str, Any]) -> float | None:
        """The record's held-out training reward."""
        return r.get(self.reward)


def fields(study: Study) -> tuple[tuple[Any, int], ...]:
    """The method table's columns after the seeds: (getter, digits)."""
    return (
        (study.get_reward, 3),
        (overall, 3),
        *((category(c), 3) for c in CATEGORIES),
        (diversity, 3),
        (get_field("train_reward_final"), 3),
        (speed, 2),
        (get_field("peak_mem_mb"), 0),
        (get_field("peak_live_mb"), 0),
    )


def methods_table(study: Study, trained: Sequence[dict[str, Any]], base: dict[str, Any] | None) -> list[str]:
    """Every method's held-out results, mean ± 95% t-interval over seeds; the base model first."""
    cols = fields(study)
    head = f"| method | seeds | {study.reward_label} | ShapesEval overall | " + " | ".join(CATEGORIES)
    head += " | diversity | train reward (last 10%) | s / iter | peak RSS MiB | peak live MiB |"
    lines = [head, "|" + "---|" * (2 + len(cols))]
    if base is not None:
        lines.append(f"| base | – | {cells([base], 'base', cols[:-4])} | – | – | – | – |")
    lines += [f"| {v} | {seeds(trained, v)} | {cells(trained, v, cols)} |" for v in variants(trained)]
    return lines


def equal_wallclock(
    study: Study, trained: Sequence[dict[str, Any]], base: dict[str, Any] | None
) -> tuple[float, list[str]]:
    """The budget (the fastest method's mean training time) and a table of every method at that budget."""
    means = {v: statistics.fmean(vals(trained, v, get_field("train_sec"))) for v in variants(trained)}
    budget = min(means.values())
    start = base["curve"][0] if base and base.get("curve") else None
    lines = [
        f"| method | seeds | train s (full run) | {study.reward_label} at budget | ShapesEval overall at budget |",
        "|---|---|---|---|---|",
    ]
    for v in variants(trained):
        recs = [r for r in trained if r["variant"] == v]
        reward = [interpolate(r["curve"], start, budget, study.reward) for r in recs]
        ev = [interpolate(r["curve"], start, budget, "shapes_eval_overall") for r in recs]
        lines.append(f"| {v} | {len(recs)} | {means[v]:.0f} | {fmt_ci(mean_ci(reward))} | {fmt_ci(mean_ci(ev))} |")
    return budget, lines


def _cores(record: dict[str, Any]) -> int:
    return int((record.get("machine") or {}).get("logical_cpus") or record.get("threads") or 1)


def load_note(own: Sequence[dict[str, Any]]) -> list[str]:
    """A paragraph on how many cells ran with other work sharing the CPU (their timings are slower)."""
    threads = sorted({r.get("threads") for r in own if r.get("threads") is not None})
    loaded = [r for r in own if r.get("load_avg") and r["load_avg"][1] > _cores(r) + 0.5]
    timed = [r for r in own if r.get("load_avg")]
    if not threads:
        return []
    return [
        f"Timing: {len(own)} cells ran here with {', '.join(map(str, threads))} torch thread(s) each; "
        f"{len(loaded)} of the {len(timed)} that recorded the load average finished on an oversubscribed CPU",
        "(5-minute load above the machine's cores + 0.5: more work than cores): their s / iter and training seconds",
        "are slower than the machine's, which blurs the equal-wall-clock comparison; iteration counts are exact.",
        "",
    ]


def methods_section(study: Study, assets: Path) -> Section:
    """The method comparison of one study: table, equal wall-clock, proxy versus gold and figures."""
    base, trained, _ = study.load()
    s = Section(f"{study.title}: method comparison")
    s.lines += [*study.intro, ""] if study.intro else []
    if not trained:
        s.lines += [f"{NOT_RUN} Run `{study.command('methods')}`."]
        if base is not None:
            s.lines += ["", "The base model's held-out evaluation is recorded already:", ""]
            s.lines += methods_table(study, [], base)
        return s
    s.lines += [
        f"Mean ± half-width of the 95% Student-t interval over seeds. {study.reward_label} (the training reward) and",
        "ShapesEval (exact, never trained on) are measured on the held-out prompts with the EMA weights;",
        "diversity is the mean pairwise RMS pixel distance between the images of one prompt",
        "(`leapalign.diversity.prompt_diversity`), which falls when a method collapses onto one image per prompt.",
        "The training reward is each method's own batch reward (ReFL and DRTune score one-step estimates, so",
        "theirs is not comparable with the others'). Seconds per iteration exclude evaluation.",
        "",
        *load_note(trained),
        *methods_table(study, trained, base),
        "",
    ]
    budget, table = equal_wallclock(study, trained, base)
    s.lines += [
        f"**Equal wall-clock.** Every method at the training time of the fastest full run ({budget:.0f} s), "
        "interpolated linearly between its evaluated checkpoints (held-out, first "
        "images of every prompt; see the protocol's `curve_every`):",
        "",
        *table,
        "",
        "**Proxy versus gold.** Held-out ShapesEval over each run's curve (its evaluated checkpoints, on the curve's "
        "images: the first of every prompt, the base model's included), and how far each run fell from its peak:",
        "",
        *peak_gold_lines(trained, base),
        "",
    ]
    figures = {
        f"{study.key}_reward.png": (study.reward, f"Held-out {study.reward_label}"),
        f"{study.key}_shapes_eval.png": ("shapes_eval_overall", "Held-out ShapesEval"),
    }
    for name, (key, title) in figures.items():
        plots.plot_curves(trained, base, key, assets / name, f"{study.title}: {title}")
    cat_png = f"{study.key}_categories.png"
    plots.plot_categories(trained, base, assets / cat_png, f"{study.title}: ShapesEval by category (95% t-interval)")
    s.lines += [f"![{title}](assets/benchmarks/{name})" for name, (_, title) in figures.items()]
    s.lines.append(f"![ShapesEval by category](assets/benchmarks/{cat_png})")
    return s


def ablations_section(study: Study) -> Section:
    """The paper's Figure 4 ablations of one study, one table per group."""
    _, _, ablations = study.load()
    s = Section(f"{study.title}: ablations (the paper's Figure 4)")
    if not ablations:
        s.lines.append(f"{NOT_RUN} Run `{study.command('ablations')}`.")
        return s
    s.lines += ["Mean ± half-width of the 95% t-interval over seeds; variants equal to the default LeapAlign reuse its"]
    s.lines += ["records (`reused_from`).", ""]
    s.lines += load_note([r for r in ablations if "reused_from" not in r])
    cols = ((study.get_reward, 3), (overall, 3), (category("position"), 3), (category("counting"), 3))
    cols += ((diversity, 3), (speed, 2))
    for group in dict.fromkeys(r["group"] for r in ablations):
        recs = [r for r in ablations if r["group"] == group]
        s.lines += [
            f"**{group}**",
            "",
            f"| variant | seeds | {study.reward_label} | ShapesEval overall | position | counting | diversity "
            "| s / iter |",
            "|---|---|---|---|---|---|---|---|",
        ]
        s.lines += [f"| {v} | {seeds(recs, v)} | {cells(recs, v, cols)} |" for v in variants(recs)]
        s.lines.append("")
    return s
