"""Does the demo's configuration raise ShapesEval on the prompts it trains on, and on the held-out ones?

docs/shapesworld.md, "On the prompts it trains on". For a group of runs (the demo's configuration with several
training seeds, or its control without the reward) the per-image ShapesEval verdicts are averaged over the
group's runs and compared, image by image on the same noise, with the base model's. The standard error of the
group's change in ShapesEval overall (the mean of six category rates) is ``sqrt(sum_c se_c^2) / 6``, with
``se_c`` the standard error of the mean per-image change in category ``c``; the base model's images are shared
by every run of the group, so this is the error of the group's mean, not of one run.

Two evaluations per run, both on fresh noise:

* held-out prompts: ``leapalign eval --run runs/tN --images-per-prompt 12 --seed 7 --out runs/tN/eval_big``
  (1,152 images; base ``runs/evals/base_big``);
* training prompts: ``leapalign eval --run runs/tN --prompts shapes:train --images-per-prompt 2 --seed 11 --out
  runs/evals/train_tN`` (1,134 images; base: the same with ``--config shapes/leapalign``, ``runs/evals/train_base``).

``python docs/results/demo_tuning/training_prompts.py --measure`` reads those folders and writes
``training_prompts.json`` next to this file; without ``--measure`` it prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from statistics import fmean, variance

HERE = Path(__file__).parent
OUT = HERE / "training_prompts.json"
CATEGORIES = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
SHORT = ["single", "two", "counting", "colours", "position", "binding"]
GROUPS = {  # name -> trials (docs/shapesworld.md, "Trials 38-63")
    "demo configuration (v3 reward, replay 30, EMA 0.995)": [42, 45, 47, 53],
    "control: the same without the reward": [44, 46, 52],
}
SPLITS = {  # split -> (base folder, folder of trial N)
    "eval": ("runs/evals/base_big", "runs/t{n}/eval_big"),
    "train": ("runs/evals/train_base", "runs/evals/train_t{n}"),
}


def _verdicts(folder: Path) -> dict[tuple[str, int], tuple[float, float]]:
    """``(prompt, seed) -> (ShapesEval verdict, v3 ShapesScore)`` of one ``leapalign eval`` folder."""
    out = {}
    for record in map(json.loads, (folder / "records.jsonl").open()):
        out[(record["prompt"], record["seed"])] = (float(record["shapes_eval"]), record["scores"]["shapes_score"])
    return out


def group_change(base: Path, runs: list[Path], split: str) -> dict:
    """Paired change of the mean of ``runs`` against ``base`` on the prompts of ``split``."""
    from leapalign.shapes.prompts import load_metadata

    tag = {m["prompt"]: m["tag"] for m in load_metadata(split)}
    before = _verdicts(base)
    afters = [_verdicts(r) for r in runs]
    for run, after in zip(runs, afters, strict=True):
        if set(after) != set(before):
            raise ValueError(f"{base} and {run} hold different (prompt, seed) pairs: not a paired comparison.")
    diffs: dict[str, list[float]] = {c: [] for c in CATEGORIES}
    score_diffs = []
    for key, (verdict, score) in before.items():
        diffs[tag[key[0]]].append(fmean(a[key][0] for a in afters) - verdict)
        score_diffs.append(fmean(a[key][1] for a in afters) - score)
    change = {c: fmean(diffs[c]) for c in CATEGORIES}
    ses = [math.sqrt(variance(diffs[c]) / len(diffs[c])) for c in CATEGORIES]
    return {
        "runs": [str(r) for r in runs],
        "images_per_run": len(before),
        "base_shapes_eval": fmean(fmean(before[k][0] for k in before if tag[k[0]] == c) for c in CATEGORIES),
        "shapes_eval_change": fmean(change.values()),
        "shapes_eval_change_se": math.sqrt(sum(s * s for s in ses)) / len(ses),
        "category_change": change,
        "category_images": {c: len(diffs[c]) for c in CATEGORIES},
        "v3_score_change": fmean(score_diffs),
    }


def measure() -> None:
    result: dict[str, dict] = {}
    for name, trials in GROUPS.items():
        result[name] = {}
        for split, (base, pattern) in SPLITS.items():
            runs = [Path(pattern.format(n=n)) for n in trials]
            result[name][split] = group_change(Path(base), runs, split)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"wrote {OUT}\n")


def table() -> None:
    data = json.loads(OUT.read_text())
    lines = [
        "| runs | prompts | images per run | ShapesEval of the base | change (paired s.e.) | ShapesScore (v3) change "
        "| change: " + " / ".join(SHORT) + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, splits in data.items():
        trials = ", ".join(str(n) for n in GROUPS[name])
        for split, label in (("eval", "held-out"), ("train", "training")):
            r = splits[split]
            cats = " / ".join(f"{r['category_change'][c]:+.3f}" for c in CATEGORIES)
            lines.append(
                f"| {name} (trials {trials}) | {label} | {r['images_per_run']} | {r['base_shapes_eval']:.3f} | "
                f"{r['shapes_eval_change']:+.3f} ({r['shapes_eval_change_se']:.3f}) | {r['v3_score_change']:+.3f} "
                f"| {cats} |"
            )
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="read runs/ and write the JSON file")
    if parser.parse_args().measure:
        measure()
    table()


if __name__ == "__main__":
    main()
