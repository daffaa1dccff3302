"""Writes the Markdown table of trials 22-37 (docs/shapesworld.md) from the committed result files.

Run from the repository root: ``python docs/results/demo_tuning/table_trials22-37.py``.
"""

import json
import sys
from pathlib import Path

ROOT = Path("docs/results/demo_tuning")
CATEGORIES = ["single_object", "two_object", "counting", "colors", "position", "color_attr"]
TRIALS = {  # trial -> (training reward, hinge)
    22: ("v8 contrastive (8 near misses)", "0.9"),
    23: ("v8 contrastive + replay 1", "0.9"),
    24: ("as trial23, seed 1, 100 steps", "0.9"),
    25: ("v10 (hybrid-aware labels, on-policy preferences) contrastive + replay 1", "0.9"),
    26: ("v3 contrastive, colour and count near misses only", "0.9"),
    27: ("as trial26, seed 1", "0.9"),
    28: ("as trial26, seed 2", "0.9"),
    29: ("v11 (segmenter backbone) plain", "0.7"),
    30: ("as trial29, seed 1", "0.7"),
    31: ("as trial29, lr 1e-4", "0.7"),
    32: ("v11 contrastive (8 near misses)", "0.9"),
    33: ("v11 contrastive, no colour near misses", "0.9"),
    34: ("as trial33, seed 1", "0.9"),
    35: ("as trial33, seed 2", "0.9"),
    36: ("v12 (v11 + preferences of trial 25) plain", "0.7"),
    37: ("as trial36, seed 1", "0.7"),
}


def main() -> None:
    audit = json.loads((ROOT / "v3_plain_scores_trials22-37.json").read_text())
    plain = {key.split(":")[0]: value["overall"]["score_mean"] for key, value in audit.items()}
    lines = [
        "| run | training reward | hinge | ShapesScore (v3) after | ShapesEval after "
        "| single / two / counting / colours / position / binding |",
        "|---|---|---|---|---|---|",
    ]
    for trial, (reward, hinge) in TRIALS.items():
        for tag, name, folder in [
            ("", "eval_after.json", f"runs/t{trial}/eval"),
            (" (step 100)", "eval_step100.json", f"runs/t{trial}/eval100"),
        ]:
            path = ROOT / f"trial{trial}" / name
            if not path.is_file():
                continue
            ev = json.loads(path.read_text())
            score = f"{plain[folder]:.3f}" if folder in plain else "-"
            cats = " / ".join(f"{ev['shapes_eval.' + c]:.3f}" for c in CATEGORIES)
            lines.append(
                f"| trial{trial}{tag} | {'' if tag else reward} | {hinge} | {score} "
                f"| {ev['shapes_eval.overall']:.3f} | {cats} |"
            )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
