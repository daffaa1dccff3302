"""Builds ``docs/benchmarks.md`` and its PNGs from the result files, and the headline table in the README.

Usage (from the repository root): ``python -m benchmarks.report``. Every number in the report is read from
``benchmarks/results/*.json``; a section whose results are missing says "not yet run" and gives the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, read_records
from benchmarks.protocol import DEFAULT_PROTOCOL, load_protocol
from benchmarks.report_claims import claims_section, headline
from benchmarks.report_common import Section
from benchmarks.report_cost import cost_gpu_section, cost_section
from benchmarks.report_sections import fidelity_section, snr_section
from benchmarks.report_study import Study, ablations_section, methods_section

DOC = ROOT / "docs" / "benchmarks.md"
ASSETS = ROOT / "docs" / "assets" / "benchmarks"
README = ROOT / "README.md"
LAYOUT_PROTOCOL = ROOT / "benchmarks" / "protocol_layout.yaml"
LAYOUT_INTRO = (
    "Training on ShapesLayout, the reward that reads layout (GenEval's rules, softened, on a learned perception",
    "that shares no code with ShapesEval; its card: `leapalign/worlds/shapes/assets/shapes_layout/README.md`).",
    "This is the analogue of Flow-GRPO's training on GenEval's rules, and the study that decides whether reward",
    "gradients reaching early steps fix layout. Held-out ShapesEval v2 on the split whose relations are held out",
    "with their word-swapped twins ([docs/shapesworld.md](shapesworld.md)).",
)
SCORE_INTRO = (
    "Training on ShapesScore, a learned preference (the HPS analogue): which methods hack it fastest and how much",
    "held-out gold (ShapesEval) each reaches before it does. **Evaluator version:** these records were measured",
    "with ShapesEval v1 (the evaluator up to commit 99c5633, which named shapes from moments along the image axes",
    "and accepted blobs and hybrids as shapes), with the previous base model and prompt split, so their ShapesEval",
    "columns are not comparable with the layout study's. On v2 the previous base model scores 0.099 overall",
    "(v1: 0.454); the shipped base model scores 0.422 on the new split.",
)
MARK_START, MARK_END = "<!-- benchmarks:headline:start -->", "<!-- benchmarks:headline:end -->"


def load_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


def machines(sources: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per results file and machine / threads / allocator, with the git commits that wrote it."""
    lines: dict[str, list[str]] = {}
    for name, group in sources.items():
        for rec in group:
            m = rec.get("machine") or {}
            line = f"`{name}`: {m.get('cpu')}, {m.get('logical_cpus')} logical CPUs, {m.get('platform')}, "
            line += f"torch {m.get('torch')}" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
            line += f"; {rec.get('threads')} torch thread(s); allocator: {rec.get('allocator')}"
            commit = str((rec.get("git") or {}).get("commit"))[:10]
            if commit not in lines.setdefault(line, []):
                lines[line].append(commit)
    return [f"{line}; git {', '.join(commits)}" for line, commits in lines.items()]


def cell_hours(records: Sequence[dict[str, Any]]) -> str:
    """``"11.8 h of cells here"``: the summed wall-clock of the cells that ran (reused records not counted)."""
    own = [r["wall_clock_sec"] for r in records if "reused_from" not in r and "wall_clock_sec" in r]
    return f"{sum(own) / 3600:.1f} h of cells here" if own else "not yet run"


def protocol_summary(path: Path) -> list[str]:
    p = load_protocol(path)
    e = p.evaluation
    return [
        f"- Base config `{p.base_config}` with, for every cell: `{' '.join(p.common)}`.",
        f"- Seeds {p.seeds}"
        + (f" (the ablations: {p.ablation_seeds})" if p.ablation_seeds else "")
        + f". Held-out evaluation of the EMA weights: `{e.prompts}`, {e.images_per_prompt} images "
        f"per prompt, {e.num_steps} steps, fixed seeds; curves every {e.curve_every} steps on the first "
        f"{e.curve_images_per_prompt} images of every prompt.",
        "- Methods (suite `methods`): "
        + "; ".join(f"`{n}`: `{' '.join(c.overrides) or '(base config)'}`" for n, c in _method_cells(p).items())
        + ".",
    ]


def _method_cells(p: Any) -> dict[str, Any]:
    return {c.variant: c for c in p.cells("methods") if not c.is_base and c.seed == p.seeds[0]}


def studies(results: Path, protocol: Path, layout_protocol: Path) -> tuple[Study, Study]:
    """The layout study (issue 16: decides the layout claims) and the learned-preference (ShapesScore) study."""
    layout = Study("layout", "Layout study", results / "layout", layout_protocol, "shapes_layout", "ShapesLayout",
                   LAYOUT_INTRO)  # fmt: skip
    score = Study("score", "Learned-preference study", results, protocol, "shapes_score", "ShapesScore", SCORE_INTRO)
    return layout, score


def build(
    results: Path, protocol: Path, assets: Path = ASSETS, layout_protocol: Path = LAYOUT_PROTOCOL
) -> tuple[str, str]:
    """Returns the Markdown of docs/benchmarks.md and of the README headline block; writes the PNGs."""
    layout, score = studies(results, protocol, layout_protocol)
    _, trained, ablations = layout.load()
    cost = read_records(results / "cost.json")
    cost_gpu = read_records(results / "cost_gpu.json")
    fidelity = load_json(results / "grad_fidelity.json")
    sections: list[Section] = [
        methods_section(layout, assets),
        ablations_section(layout),
        methods_section(score, assets),
        ablations_section(score),
        cost_section(cost, assets),
        cost_gpu_section(cost_gpu),
        fidelity_section(fidelity),
        snr_section(load_json(results / "layout" / "grad_snr.json")),
    ]
    claims = claims_section(layout, score, cost, fidelity)
    sources = {"cost.json": cost, "cost_gpu.json": cost_gpu, "grad_fidelity.json": [fidelity] if fidelity else []}
    for study in (layout, score):
        for suite in ("methods", "ablations"):
            path = study.results / f"{suite}.json"
            sources[str(path.relative_to(results))] = read_records(path)
    lines = [
        "# Benchmarks: the paper's claims measured on ShapesWorld, and the cost of every method",
        "",
        "Generated by `python -m benchmarks.report` from `benchmarks/results/`; do not edit by hand. Every",
        "number below comes from a script run recorded in those files (with its machine, thread count and git",
        "commit). Sections whose results do not exist yet say so.",
        "",
        "## Contents",
        "",
        *[f"- [{s.title}](#{s.anchor})" for s in [claims, *sections]],
        "",
        "## How to reproduce",
        "",
        "```bash",
        f"make bench-layout-methods    # the layout study: every method (resumable; {cell_hours(trained)})",
        f"make bench-layout-ablations  # its Figure 4 ablations (resumable; {cell_hours(ablations)})",
        f"{layout.command('ablations')} --only leaps_3 --seed 1   # one cell of it",
        "make bench-methods     # python -m benchmarks.sweep --suite methods     (the learned-preference study)",
        "make bench-ablations   # python -m benchmarks.sweep --suite ablations",
        "make bench-cost        # python -m benchmarks.cost                      (CPU cost table)",
        "make bench-fidelity    # python -m benchmarks.grad_fidelity             (gradient fidelity)",
        "make bench-snr         # python -m benchmarks.grad_snr                  (signal and noise of each update)",
        "make bench-cost-gpu    # python -m benchmarks.cost_gpu                  (one H100/H200)",
        "make bench-report      # python -m benchmarks.report                    (this page)",
        "python -m benchmarks.sweep --suite methods --only drtune --seed 1 --force   # one cell again",
        "```",
        "",
    ]
    for study in (layout, score):
        lines += [f"The {study.title.lower()}'s protocol (`{study.protocol.name}`, read by the runner):", ""]
        lines += [*protocol_summary(study.protocol), ""]
    lines += [
        "Each cell runs in its own process with `--threads` torch threads (default 1) and jemalloc preloaded when",
        "installed. Machines of the recorded results:",
        "",
        *[f"- {m}" for m in machines(sources)],
        "",
    ]
    for s in [claims, *sections]:
        lines += [f"## {s.title}", "", *s.lines, ""]
    return "\n".join(lines).rstrip() + "\n", headline(layout, cost)


def update_readme(block: str) -> bool:
    """Replaces the text between the headline markers of the README (only if both markers exist)."""
    text = README.read_text()
    if MARK_START not in text or MARK_END not in text:
        return False
    head, rest = text.split(MARK_START, 1)
    _, tail = rest.split(MARK_END, 1)
    new = f"{head}{MARK_START}\n{block.rstrip()}\n{MARK_END}{tail}"
    if new != text:
        tmp = README.with_name(README.name + ".tmp")
        tmp.write_text(new)
        tmp.replace(README)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL, help="the learned-preference study's protocol")
    p.add_argument("--layout-protocol", type=Path, default=LAYOUT_PROTOCOL, help="the layout study's protocol")
    p.add_argument("--out", type=Path, default=DOC)
    p.add_argument("--assets", type=Path, default=ASSETS, help="where the PNGs go (default: %(default)s)")
    p.add_argument("--no-readme", action="store_true", help="do not update the README headline block")
    args = p.parse_args(argv)
    doc, block = build(args.results_dir, args.protocol, args.assets, args.layout_protocol)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(doc)
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    if not args.no_readme:
        print("README headline updated" if update_readme(block) else "README has no headline markers; skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
