"""The paper's claims on the layout study (issue 16, item 6), decided from the cells that have finished.

Reads ``benchmarks/results/layout/methods.json`` (written by the sweep over ``benchmarks/protocol_layout.yaml``)
and, for LeapAlign against each late-step method (ReFL, DRaFT-LV, DRaFT-K) and DRTune, on held-out position and
counting (and overall), states the Welch t-test over training seeds with its p-value; every method's per-category
mean with its 95% t-interval; and the change of each against the base model on the same images. Writes
``benchmarks/results/layout/claims.json`` and prints a markdown summary. A claim needs at least 2 seeds a side;
the record says how many each side had.

    python -m benchmarks.layout_claims
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, write_json
from benchmarks.report_common import CATEGORIES
from leapalign.eval.stats import fmt_ci, mean_ci, verdict, welch, welch_diff_ci

LAYOUT_RESULTS = RESULTS / "layout"
RIVALS = ("refl", "draft-lv", "draft-k", "drtune")
CLAIM_KEYS = ("position", "counting", "overall")


def _values(records: list[dict[str, Any]], variant: str, key: str) -> list[float]:
    return [float(r["shapes_eval"][key]) for r in records if r["variant"] == variant]


def claims(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-method summaries and the LeapAlign-versus-rival tests (see the module docstring)."""
    trained = [r for r in records if r["variant"] != "base"]
    base = next((r for r in records if r["variant"] == "base"), None)
    variants = list(dict.fromkeys(r["variant"] for r in trained))
    keys = ("overall", *CATEGORIES)
    summary = {
        v: {
            "seeds": sum(r["variant"] == v for r in trained),
            **{k: mean_ci(_values(trained, v, k)) for k in keys},
            "shapes_layout": mean_ci(
                [r["shapes_layout"] for r in trained if r["variant"] == v and "shapes_layout" in r]
            ),
        }
        for v in variants
    }
    tests = []
    for rival in RIVALS:
        for key in CLAIM_KEYS:
            a, b = _values(trained, "leapalign", key), _values(trained, rival, key)
            tests.append(
                {
                    "claim": f"leapalign beats {rival} on {key}",
                    "key": key,
                    "rival": rival,
                    "seeds": [len(a), len(b)],
                    "leapalign": statistics.fmean(a) if a else None,
                    "rival_mean": statistics.fmean(b) if b else None,
                    "p_value": welch(a, b),
                    "difference": welch_diff_ci(a, b),
                    "verdict": verdict(a, b),
                }
            )
    return {
        "base": base["shapes_eval"] if base else None,
        "methods": summary,
        "tests": tests,
        "test": "two-sided Welch t-test over training seeds, alpha 0.05",
    }


def markdown(result: dict[str, Any]) -> str:
    """The summary table and the claims as markdown."""
    keys = ("overall", *CATEGORIES)
    lines = ["| method | seeds | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    if result["base"]:
        lines.append("| base | – | " + " | ".join(f"{result['base'][k]:.3f}" for k in keys) + " |")
    for v, s in result["methods"].items():
        lines.append(f"| {v} | {s['seeds']} | " + " | ".join(fmt_ci(s[k]) for k in keys) + " |")
    lines += ["", "| claim | seeds (leapalign, rival) | leapalign | rival | p | verdict |", "|---|---|---|---|---|---|"]
    for t in result["tests"]:
        p = "–" if t["p_value"] is None else f"{t['p_value']:.3f}"
        means = [("–" if m is None else f"{m:.3f}") for m in (t["leapalign"], t["rival_mean"])]
        lines.append(
            f"| {t['claim']} | {t['seeds'][0]}, {t['seeds'][1]} | {means[0]} | {means[1]} | {p} | {t['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-dir", type=Path, default=LAYOUT_RESULTS)
    args = p.parse_args(argv)
    path = args.results_dir / "methods.json"
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist yet: run the layout sweep first (see benchmarks/protocol_layout.yaml)."
        )
    result = claims(json.loads(path.read_text()))
    write_json(args.results_dir / "claims.json", result)
    print(markdown(result))  # a script's report
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
