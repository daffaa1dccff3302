"""Paired before/after comparison of trials 38-63 with the base model (docs/shapesworld.md, "Trials 38-63").

Every trial's evaluation draws image ``r`` of prompt ``i`` from the same noise as the base model's, so the
change of each image's ShapesEval verdict and v3 ShapesScore can be compared pair by pair. The standard error
of the change in ShapesEval overall (the mean of six category rates) is
``sqrt(sum_c se_c^2) / 6``, with ``se_c`` the standard error of the mean per-image change in category ``c``.

Two modes, run from the repository root:

* ``python docs/results/demo_tuning/paired_trials38-63.py --measure`` reads the evaluation folders under
  ``runs/`` (``leapalign eval --run runs/tN --out runs/tN/eval``, and ``--images-per-prompt 12 --seed 7
  --out runs/tN/eval_big`` for the larger evaluation) and writes ``paired_trials38-63.json`` next to this file.
  Images whose record holds no plain v3 score (trials trained on another reward) are scored with the shipped
  ShapesScore.
* ``python docs/results/demo_tuning/paired_trials38-63.py`` prints the Markdown tables from that JSON file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import cache
from pathlib import Path
from statistics import fmean, variance

HERE = Path(__file__).parent
OUT = HERE / "paired_trials38-63.json"
CATEGORIES = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
SHORT = ["single", "two", "counting", "colours", "position", "binding"]
TRIALS = {  # trial -> (training reward and settings, seed); every trial uses the demo's lr, steps and batch
    38: ("min(v3 contrastive, v11 contrastive without colour edits), EMA 0.9", 0),
    39: ("as trial38", 1),
    40: ("v3 plain, replay 30, EMA 0.9", 0),
    41: ("control: no reward (weight 0), replay 30, EMA 0.9", 0),
    42: ("v3 plain, replay 30, EMA 0.995 (the new demo)", 0),
    43: ("v3 plain, no replay, EMA 0.995", 0),
    44: ("control: no reward, replay 30, EMA 0.995", 0),
    45: ("as trial42", 1),
    46: ("as trial44", 1),
    47: ("as trial42", 2),
    48: ("v3 plain, EMA 0.9, prompts naming one kind of shape (single, counting, colours)", 0),
    49: ("as trial48", 1),
    50: ("v3 plain, replay 10, EMA 0.995", 0),
    51: ("v3 plain, replay 30, EMA 0.995, lr 6e-5", 0),
    52: ("as trial44", 2),
    53: ("as trial42", 3),
    54: ("as trial42, replay on the best of 4 base-model images per training prompt by v3", 0),
    55: ("control: as trial54 without the reward", 0),
    56: ("as trial42, 400 steps", 0),
    57: ("as trial42, 400 steps", 1),
    58: ("as trial42, LoRA (rank 16, lr 3e-4) on the text stream only: context projections and embedder", 0),
    59: ("as trial58, lr 1e-3", 0),
    60: ("as trial42, reward min(v3 plain, v11 plain)", 0),
    61: ("as trial60", 1),
    62: ("control: as trial55 (best-of-4 replay, no reward), lr 3e-4, no EMA", 0),
    63: ("as trial62, lr 1e-4", 0),
}


def _records(folder: Path) -> dict[tuple[str, int], dict]:
    return {(r["prompt"], r["seed"]): r for r in map(json.loads, (folder / "records.jsonl").open())}


def _plain_scores(folder: Path, records: dict[tuple[str, int], dict]) -> dict[tuple[str, int], float]:
    if all("shapes_score" in r["scores"] for r in records.values()):
        return {k: r["scores"]["shapes_score"] for k, r in records.items()}
    import torch

    from leapalign.shapes.score import ShapesScore
    from leapalign.shapes.score_audit import eval_folder_samples

    images, metadata = eval_folder_samples(folder)  # ordered by (prompt index, repeat)
    keys = [k for _, k in sorted(((r["prompt_index"], r["repeat"]), k) for k, r in records.items())]
    with torch.no_grad():
        scores = ShapesScore()(images, [m["prompt"] for m in metadata])
    return dict(zip(keys, scores.tolist(), strict=True))


@cache
def _load(folder: Path) -> tuple[dict[tuple[str, int], dict], dict[tuple[str, int], float]]:
    """The per-image records of an evaluation folder and their plain v3 scores (read once per folder)."""
    records = _records(folder)
    return records, _plain_scores(folder, records)


def compare(base: Path, run: Path, split: str = "eval") -> dict:
    """Paired changes of ``run`` against ``base`` (two ``leapalign eval`` folders on the same noise) on the
    prompts of ``split`` (``eval``: held-out, ``train``: training)."""
    from leapalign.shapes.prompts import load_metadata

    tag = {m["prompt"]: m["tag"] for m in load_metadata(split)}
    (rb, sb), (rr, sr) = _load(base), _load(run)
    if set(rb) != set(rr):
        raise ValueError(f"{base} and {run} hold different (prompt, seed) pairs: not a paired comparison.")
    after: dict[str, list[float]] = {}
    diffs: dict[str, list[float]] = {}
    for key, rec in rr.items():
        after.setdefault(tag[key[0]], []).append(float(rec["shapes_eval"]))
        diffs.setdefault(tag[key[0]], []).append(float(rec["shapes_eval"]) - float(rb[key]["shapes_eval"]))
    category_after = {c: fmean(after[c]) for c in CATEGORIES}
    delta = {c: fmean(diffs[c]) for c in CATEGORIES}
    ses = [math.sqrt(variance(diffs[c]) / len(diffs[c])) for c in CATEGORIES]
    return {
        "images": len(rr),
        "shapes_eval_after": fmean(category_after.values()),
        "shapes_eval_change": fmean(delta.values()),
        "shapes_eval_change_se": math.sqrt(sum(s * s for s in ses)) / len(ses),
        "category_after": category_after,
        "category_change": delta,
        "v3_score_after": fmean(sr.values()),
        "v3_score_change": fmean(sr[k] - sb[k] for k in sr),
    }


def measure() -> None:
    result: dict[str, dict] = {}
    for trial in TRIALS:
        for name, base in (("eval", Path("runs/evals/base")), ("eval_big", Path("runs/evals/base_big"))):
            folder = Path(f"runs/t{trial}/{name}")
            if (folder / "eval.json").is_file():  # a finished evaluation
                result[f"trial{trial}/{name}"] = compare(base, folder)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"wrote {OUT} ({len(result)} comparisons)\n")


def table() -> None:
    data = json.loads(OUT.read_text())
    for name, title in (("eval", "384 images (seed 0)"), ("eval_big", "1,152 images on fresh noise (seed 7)")):
        rows = [(t, data[f"trial{t}/{name}"]) for t in TRIALS if f"trial{t}/{name}" in data]
        if not rows:
            continue
        lines = [
            f"Evaluation: {title}.",
            "",
            "| run | seed | configuration | ShapesScore (v3) change | ShapesEval after | change (paired s.e.) "
            f"| change: {' / '.join(SHORT)} |",
            "|---|---|---|---|---|---|---|",
        ]
        for trial, row in rows:
            what, seed = TRIALS[trial]
            cats = " / ".join(f"{row['category_change'][c]:+.3f}" for c in CATEGORIES)
            lines.append(
                f"| trial{trial} | {seed} | {what} | {row['v3_score_change']:+.3f} | {row['shapes_eval_after']:.3f} "
                f"| {row['shapes_eval_change']:+.3f} ({row['shapes_eval_change_se']:.3f}) | {cats} |"
            )
        sys.stdout.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="read runs/ and write the JSON file")
    (measure if parser.parse_args().measure else table)()
