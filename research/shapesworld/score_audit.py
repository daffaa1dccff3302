"""How well ShapesScore agrees with ShapesEval on *generated* images (a reward audit, never a training signal).

Ranking accuracy on clean renders (:func:`leapalign.worlds.shapes.score_train.measure`) says little about the images a
policy produces. This audit samples the base model on the held-out prompts and asks, per GenEval category,
whether the reward scores the images ShapesEval accepts above the ones it rejects: the ROC AUC of the reward
as a detector of correct images (0.5: the reward cannot tell them apart). A reward with a low AUC in a category
is one a fine-tuned policy can raise there without getting the image right.

Run from the repository root (``--out`` defaults to ``research/shapesworld/results/shapes_score_audit.json``)::

    python -m research.shapesworld.score_audit --weights leapalign/worlds/shapes/assets/shapes_score
    python -m research.shapesworld.score_audit --weights leapalign/worlds/shapes/assets/shapes_score --negatives 0 8 \\
        --out research/shapesworld/results/shapes_score_audit_contrastive.json
    python -m research.shapesworld.score_audit --weights W1 W2 --images runs/x/eval runs/y/eval --pool --out A.json

``--images`` reads the PNGs of finished ``leapalign eval`` folders on the ShapesWorld prompts instead of sampling
the base model, so a reward can be audited on the images a fine-tuned (possibly reward-hacking) policy draws.
``--pool`` adds the audit of all folders together: a reward that gives a hacking policy's wrong images more than
the base model's correct ones has a low pooled AUC even when each model's own AUC looks fine
(``research/shapesworld/results/shapes_score_audit_pooled.json``). ``--negatives K`` audits the contrastive form
with ``K`` near misses (:class:`research.shapesworld.score_variants.ResearchShapesScore`).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from leapalign.worlds.shapes.evaluator import check, detect_batch
from research.shapesworld.score_variants import ResearchShapesScore

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"


def rank_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``scores`` for the boolean labels ``positive`` (Mann-Whitney U); NaN if one class is empty."""
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def audit(reward, images: Tensor, metadata: Sequence[dict]) -> dict[str, Any]:
    """Agreement of ``reward`` with ShapesEval on ``images``.

    Args:
        reward: A reward ``(images (N, 3, H, W), prompts) -> (N,)``.
        images: Generated images ``(N, 3, H, W)`` in ``[0, 1]``.
        metadata: ``N`` GenEval-style records (the prompt each image was generated for).

    Returns:
        Per category and ``overall``: ``auc``, ShapesEval ``accuracy``, the mean score of accepted and of
        rejected images and of all (``score_mean``), and ``n``.
    """
    scores = (
        torch.cat(
            [
                reward(images[i : i + 256], [m["prompt"] for m in metadata[i : i + 256]])
                for i in range(0, len(metadata), 256)
            ]
        )
        .float()
        .numpy()
    )
    ok = np.array([check(m, d) for m, d in zip(metadata, detect_batch(images), strict=True)])
    tags = np.array([m["tag"] for m in metadata])
    out: dict[str, Any] = {}
    for tag in [*sorted(set(tags)), "overall"]:
        sel = np.ones(len(tags), bool) if tag == "overall" else tags == tag
        y, s = ok[sel], scores[sel]
        out[tag] = {
            "auc": rank_auc(s, y),
            "accuracy": float(y.mean()),
            "score_accepted": float(s[y].mean()) if y.any() else float("nan"),
            "score_rejected": float(s[~y].mean()) if (~y).any() else float("nan"),
            "score_mean": float(s.mean()),
            "n": int(sel.sum()),
        }
    return out


def base_samples(images_per_prompt: int = 4, num_steps: int = 25) -> tuple[Tensor, list[dict]]:
    """The shipped base model's images of the held-out prompts (true CFG 3), prompt-major, with the evaluation's
    fixed seeds (image ``r`` of prompt ``i``: seed ``1000 * r + i``)."""
    from leapalign.models import build_model
    from leapalign.models.config import ModelConfig
    from leapalign.sampling import generate
    from leapalign.worlds.shapes.prompts import load_metadata

    metadata = [m for m in load_metadata("eval") for _ in range(images_per_prompt)]
    seeds = [1000 * r + i for i in range(len(metadata) // images_per_prompt) for r in range(images_per_prompt)]
    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    prompts = [m["prompt"] for m in metadata]
    images = generate(model, prompts, seeds=seeds, num_steps=num_steps, height=32, width=32, batch_size=64)
    return images, metadata


def eval_folder_samples(folder: Path) -> tuple[Tensor, list[dict]]:
    """The images of a finished ``leapalign eval`` folder and the metadata of the prompt each was drawn for.

    Raises:
        FileNotFoundError: If ``folder`` holds no evaluation.
        ValueError: If an image's prompt has no GenEval-style metadata (not a ShapesWorld evaluation).
    """
    from leapalign.eval.store import EvalStore

    settings = folder / "settings.json"
    if not settings.is_file():
        raise FileNotFoundError(f"{folder} holds no evaluation (settings.json missing); run `leapalign eval` first.")
    store = EvalStore(folder, json.loads(settings.read_text()))  # the folder's own settings: read, never rewritten
    records = store.records()
    by_prompt: dict[int, dict] = {}
    for i in sorted({i for i, _ in records}):
        path = folder / "images" / f"{i:05d}" / "metadata.jsonl"
        meta = json.loads(path.read_text().splitlines()[0]) if path.is_file() else {}
        if "tag" not in meta:
            raise ValueError(
                f"{path}: no GenEval metadata; audit evaluations of ShapesWorld prompts only "
                "(--prompts shapes:eval or shapes:train)."
            )
        by_prompt[i] = meta
    keys = sorted(records)
    return torch.stack([store.load_image(records[k]) for k in keys]), [by_prompt[i] for i, _ in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description="Audit ShapesScore against ShapesEval on base-model samples")
    parser.add_argument("--weights", type=Path, nargs="+", required=True, help="ShapesScore weight directories")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument(
        "--negatives",
        type=int,
        nargs="+",
        default=[0],
        help="audit these forms of each reward: 0 = the plain score, K > 0 = contrastive with K near misses",
    )
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        default=None,
        help="leapalign eval folders whose images to audit (default: sample the base model)",
    )
    parser.add_argument(
        "--pool",
        action="store_true",
        help="also audit the union of the --images folders: a reward a policy cannot hack must rank one model's "
        "correct images above another model's wrong ones",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "shapes_score_audit.json", help="JSON output")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sources = (
        {str(f): eval_folder_samples(f) for f in args.images}
        if args.images
        else {"base": base_samples(args.images_per_prompt)}
    )
    if args.pool and len(sources) > 1:
        parts = list(sources.values())
        pooled = torch.cat([images for images, _ in parts]), [m for _, metadata in parts for m in metadata]
        sources["pooled(" + " + ".join(sources) + ")"] = pooled
    result = {
        (f"{src}: " if args.images else "") + str(w) + (f" negatives={k}" if k else ""): audit(
            ResearchShapesScore(path=w, negatives=k), images, metadata
        )
        for src, (images, metadata) in sources.items()
        for w in args.weights
        for k in args.negatives
    }
    for w, res in result.items():
        logger.info("%s: %s", w, {k: round(v["auc"], 3) for k, v in res.items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    logger.info("wrote %s", args.out)


if __name__ == "__main__":
    main()
