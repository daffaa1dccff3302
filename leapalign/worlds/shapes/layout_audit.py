"""How well the layout reward agrees with ShapesEval on a generator's own samples: its ROC AUC against
ShapesEval's verdicts, overall and per category, on an evaluation folder written by ``leapalign eval`` (images,
``records.jsonl`` with the ``shapes_eval`` verdict of every image). For the model card of the shipped weights:

    leapalign eval --config shapes/leapalign evaluation.images_per_prompt=12 --out runs/base-eval12
    python -m leapalign.worlds.shapes.layout_audit --eval runs/base-eval12 --write-card

The AUC is the probability that an image ShapesEval accepts scores above one it rejects (ties count half; the
Mann-Whitney statistic), so 0.5 is chance; a category whose images are all accepted or all rejected has none.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
from scipy.stats import mannwhitneyu

from leapalign.eval.store import load_png
from leapalign.worlds.shapes.prompts import metadata_by_prompt

logger = logging.getLogger(__name__)


def auc(scores: np.ndarray, accepted: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the binary labels ``accepted`` (NaN when one class is empty)."""
    pos, neg = scores[accepted], scores[~accepted]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    return float(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)))


@torch.no_grad()
def score_folder(reward, folder: Path, batch: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The reward's score, ShapesEval's verdict and the category of every image of an evaluation folder."""
    records = [json.loads(line) for line in (folder / "records.jsonl").read_text().splitlines() if line.strip()]
    tags = {p: m["tag"] for p, m in metadata_by_prompt().items()}
    scores = []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        images = torch.stack([load_png(folder / r["file"]) for r in chunk])
        scores.append(reward(images, [r["prompt"] for r in chunk]).numpy())
    verdicts = np.array([r["evals"]["shapes_eval"] >= 0.5 for r in records])
    return np.concatenate(scores), verdicts, [tags[r["prompt"]] for r in records]


def audit(reward, folder: Path) -> dict[str, dict[str, float]]:
    """``{"overall": {...}, <category>: {...}}`` with ``auc``, ``n`` and ``accepted`` (ShapesEval's rate)."""
    scores, verdicts, cats = score_folder(reward, folder)
    out = {}
    for name in ["overall", *sorted(set(cats))]:
        keep = np.ones(len(cats), bool) if name == "overall" else np.array([c == name for c in cats])
        out[name] = {
            "auc": auc(scores[keep], verdicts[keep]),
            "n": int(keep.sum()),
            "accepted": float(verdicts[keep].mean()),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    from leapalign.worlds.shapes.layout import ShapesLayout, default_weights

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reward", type=Path, default=None, help="a perception weights folder (default: the shipped)")
    p.add_argument("--eval", type=Path, required=True, help="an evaluation folder with shapes_eval verdicts")
    p.add_argument("--write-card", action="store_true", help="record the result in the weights' config.json card")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    weights = args.reward or default_weights()
    result = audit(ShapesLayout(str(weights)), args.eval)
    for name, row in result.items():
        logger.info("%-14s AUC %.3f  (n=%d, ShapesEval accepts %.3f)", name, row["auc"], row["n"], row["accepted"])
    if args.write_card:
        config = json.loads((weights / "config.json").read_text())
        settings = json.loads((args.eval / "settings.json").read_text())
        config["agreement"] = {"eval": str(args.eval), "settings": settings, "by_category": result}
        tmp = weights / "config.json.tmp"
        tmp.write_text(json.dumps(config, indent=1))
        tmp.replace(weights / "config.json")
        logger.info("recorded the agreement in %s", weights / "config.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
