"""Do ShapesScore and the base model understand spatial relations, or only remember the training layouts?

docs/shapesworld.md, "On the prompts it trains on". Two measurements, on the position prompts of the training
set and of the held-out set (whose (shape, relation, shape) combinations never occur in training):

* **Reward.** For each ShapesScore weights directory given with ``--rewards``, the ranking accuracy of
  :func:`leapalign.shapes.score_train.measure` restricted to position prompts: the true prompt against the
  same prompt with another relation (``relation``), and the true scene against the scene with the two objects'
  places exchanged (``wrong_swap``), on clean renders.
* **Generator.** For each ``leapalign eval`` folder given with ``--generated``, over the images of its
  position prompts: how often both named objects are detected by ShapesEval, and among those, how often the
  relation holds, how often the opposite relation holds, and how often neither (centroids too close).

Run from the repository root (the evaluation folders are under ``runs/``, not in the repository)::

    python docs/results/demo_tuning/relation/relation_generalisation.py --measure \\
        --rewards v3=leapalign/shapes/assets/shapes_score v13=runs/rew/v13_pos \\
        --generated base_heldout=runs/evals/base_big base_train=runs/evals/train_base

writes ``relation_generalisation.json`` next to this file; without ``--measure`` it prints the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from leapalign.shapes.score import ShapesScore

HERE = Path(__file__).parent
OUT = HERE / "relation_generalisation.json"
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def _named(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise SystemExit(f"write NAME=PATH, got {item!r}")
        out[name] = Path(path)
    return out


def reward_relations(weights: Path, tokens: ShapesScore, seeds: int = 4) -> dict[str, dict[str, float]]:
    """Relation and swap ranking accuracy of one ShapesScore on training and held-out position prompts.

    ``tokens`` supplies the cached MiniLM token embeddings (its own weights are never loaded), shared by every
    reward measured.
    """
    import torch

    from leapalign.shapes.prompts import load_metadata
    from leapalign.shapes.score import ShapesScoreModel
    from leapalign.shapes.score_train import measure

    model = ShapesScoreModel.load(weights).eval()
    out = {}
    for split in ("train", "eval"):
        metas = [m for m in load_metadata(split) if m["tag"] == "position"]
        with torch.no_grad():
            acc = measure(model, tokens, seeds=seeds, corruptions=("swap",), metadata=metas)
        out[split] = {k: acc[k] for k in ("acc_vs_relation", "n_relation", "acc_vs_wrong_swap", "n_wrong_swap")}
    return out


def generated_relations(folder: Path) -> dict[str, int]:
    """Counts over the position-prompt images of one evaluation folder (ShapesEval's detections)."""
    from leapalign.shapes.evaluator import _matches, detect_batch, relation_holds
    from leapalign.shapes.score_audit import eval_folder_samples

    images, metadata = eval_folder_samples(folder)
    keep = [i for i, m in enumerate(metadata) if m["tag"] == "position"]
    counts: Counter[str] = Counter()
    for i, dets in zip(keep, detect_batch(images[keep]), strict=True):
        target, mover = metadata[i]["include"]  # "mover is <relation> target"
        relation = mover["position"][0]
        a = [d for d in dets if _matches(mover, d)]
        b = [d for d in dets if _matches(target, d)]
        counts["images"] += 1
        if a and b:
            counts["both_present"] += 1
            if relation_holds(a[0], b[0], relation):
                counts["relation_right"] += 1
            elif relation_holds(a[0], b[0], OPPOSITE[relation]):
                counts["relation_opposite"] += 1
            else:
                counts["relation_neither"] += 1
    return dict(counts)


def measure(rewards: dict[str, Path], generated: dict[str, Path]) -> None:
    from leapalign.shapes.score import ShapesScore

    tokens = ShapesScore()  # only its token cache is used
    result = {
        "rewards": {name: reward_relations(path, tokens) for name, path in rewards.items()},
        "generated": {name: generated_relations(path) for name, path in generated.items()},
    }
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"wrote {OUT}\n")


def table() -> None:
    data = json.loads(OUT.read_text())
    lines = [
        "| reward | relation, training prompts | relation, held-out | swapped places, training | swapped, held-out |",
        "|---|---|---|---|---|",
    ]
    for name, r in data["rewards"].items():
        cells = [f"{r[s]['acc_vs_relation']:.3f} ({r[s]['n_relation']})" for s in ("train", "eval")]
        cells += [f"{r[s]['acc_vs_wrong_swap']:.3f} ({r[s]['n_wrong_swap']})" for s in ("train", "eval")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "| images | position images | both objects found | relation right | opposite | neither |"]
    lines.append("|---|---|---|---|---|---|")
    for name, c in data["generated"].items():
        found = c.get("both_present", 0)
        cells = [str(c["images"]), str(found)]
        cells += [f"{c.get(k, 0)} ({c.get(k, 0) / max(found, 1):.2f})" for k in ("relation_right", "relation_opposite")]
        cells.append(str(c.get("relation_neither", 0)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sys.stdout.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure and write the JSON file")
    parser.add_argument("--rewards", nargs="*", default=[], help="NAME=WEIGHTS_DIR of ShapesScore models")
    parser.add_argument("--generated", nargs="*", default=[], help="NAME=EVAL_FOLDER of leapalign eval outputs")
    args = parser.parse_args()
    if args.measure:
        measure(_named(args.rewards), _named(args.generated))
    table()


if __name__ == "__main__":
    main()
