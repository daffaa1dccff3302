"""Best-of-n selection by ShapesScore on a ``leapalign eval`` folder: how much signal the reward holds.

For every held-out prompt, the images of the folder are split in order into disjoint groups of ``n``; the image
with the highest recorded ShapesScore is kept from each group, and ShapesEval is averaged over the kept images
(per category, then over the six categories, as ShapesEval does). n = 1 is the plain evaluation.

Run from the repository root, e.g. on the base model's 1,152-image evaluation
(``leapalign eval --config shapes/leapalign --images-per-prompt 12 --seed 7 --out runs/evals/base_big``)::

    python docs/results/demo_tuning/best_of_n.py runs/evals/base_big --out docs/results/demo_tuning/best_of_n_base.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leapalign.shapes.prompts import load_metadata


def best_of_n(folder: Path, sizes: list[int]) -> dict[str, dict]:
    """ShapesEval of the best-of-``n`` images of ``folder`` for each ``n`` in ``sizes``."""
    tag = {m["prompt"]: m["tag"] for m in load_metadata("eval")}
    by_prompt: dict[str, list[dict]] = {}
    for rec in map(json.loads, (folder / "records.jsonl").open()):
        by_prompt.setdefault(rec["prompt"], []).append(rec)
    out = {}
    for n in sizes:
        kept: dict[str, list[float]] = {}
        for prompt, recs in by_prompt.items():
            for g in range(len(recs) // n):
                group = recs[g * n : (g + 1) * n]
                best = max(group, key=lambda r: r["scores"]["shapes_score"])
                kept.setdefault(tag[prompt], []).append(float(best["shapes_eval"]))
        cats = {c: sum(v) / len(v) for c, v in sorted(kept.items())}
        out[str(n)] = {
            "overall": sum(cats.values()) / len(cats),
            "groups": sum(len(v) for v in kept.values()),
            **cats,
        }
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a leapalign eval folder (records.jsonl)")
    parser.add_argument("--sizes", default="1,2,4", help="comma-separated group sizes")
    parser.add_argument("--out", type=Path, help="JSON output (default: print only)")
    args = parser.parse_args()
    result = best_of_n(args.folder, [int(s) for s in args.sizes.split(",")])
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        args.out.write_text(text)
    sys.stdout.write(text)
