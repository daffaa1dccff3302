"""The ShapesWorld annotator: a learned scene segmenter that labels generated images for reward training.

HPS and PickScore are trained on human judgements of *generated* images, while GenEval checks images with a
detector of its own. ShapesWorld mirrors that split. ShapesEval (rule-based colour segmentation and moments)
stays the evaluator and is never used for training. The annotator plays the human: a small U-Net trained only on
rendered scenes and their ground-truth pixel labels, which gives every pixel a shape (or background) and a
colour. Its objects (connected components of one colour, with their majority shape) are checked against a
prompt by the same GenEval rules as a scene's ground truth (:func:`~leapalign.worlds.shapes.evaluator.check`), so it
can say whether a generated image shows its prompt. It errs differently from ShapesEval (it is learned;
ShapesEval decides shapes by geometric moments); how often the two agree on generated images is measured,
never optimised (:func:`agreement`).

Train it from the repository root (about 10 minutes on one core)::

    python -m research.shapesworld.annotator --out runs/annotator
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from leapalign.worlds.shapes.evaluator import Detection, check
from leapalign.worlds.shapes.layout_train import PixelTrainer
from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
from leapalign.worlds.shapes.scenes import COLORS, SHAPES, Scene, _mask, render, scene_for
from leapalign.worlds.shapes.score_train import CORRUPTIONS, augment, corrupt, fit, scene_detections
from research.shapesworld.segmenter import SceneSegmenter, SegmenterArch

logger = logging.getLogger(__name__)

ANNOTATOR_CORRUPTIONS = CORRUPTIONS[:7]  # those it was trained with (no hybrid shapes; see docs/shapesworld.md)
MIN_PIXELS = 8  # components smaller than this are no object
_COLORS = tuple(COLORS)
__all__ = ["SceneSegmenter", "SegmenterArch", "annotate", "parse", "agreement"]


def pixel_targets(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel ground truth of a scene: shape class ``(H, W)`` (0 background, ``1 + SHAPES.index``) and colour
    index ``(H, W)`` (-1 on background). A pixel belongs to the last object drawn over its centre; off-palette
    colours and invalid shapes are background (no object, as for ShapesEval and the prompt rules)."""
    n = scene.canvas
    xs, ys = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    shape = np.zeros((n, n), np.int64)
    color = np.full((n, n), -1, np.int64)
    for o in scene.objects:
        m = _mask(o, xs, ys)
        valid = o.color in COLORS and o.shape in SHAPES
        shape[m] = 1 + SHAPES.index(o.shape) if valid else 0
        color[m] = _COLORS.index(o.color) if valid else -1
    return shape, color


@torch.no_grad()
def parse(segmenter: SceneSegmenter, images: Tensor, batch_size: int = 256) -> list[list[Detection]]:
    """The annotator's reading of ``(N, 3, H, W)`` images as detections, for
    :func:`~leapalign.worlds.shapes.evaluator.check`: foreground pixels grouped by their predicted colour into
    8-connected components of at least :data:`MIN_PIXELS`, each with its pixels' majority shape, its pixel
    count as area and its pixel centroid."""
    out: list[list[Detection]] = []
    for i in range(0, len(images), batch_size):
        shape_logits, color_logits = segmenter(images[i : i + batch_size].float())
        shapes, colors = shape_logits.argmax(1).numpy(), color_logits.argmax(1).numpy()
        for sh, co in zip(shapes, colors, strict=True):
            dets = []
            for ci, name in enumerate(_COLORS):
                labels, num = ndimage.label((sh > 0) & (co == ci), structure=np.ones((3, 3)))
                for k in range(1, num + 1):
                    ys, xs = np.nonzero(labels == k)
                    if len(xs) < MIN_PIXELS:
                        continue
                    votes = np.bincount(sh[ys, xs], minlength=1 + len(SHAPES))[1:]
                    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
                    cx, cy = float(xs.mean() + 0.5), float(ys.mean() + 0.5)
                    dets.append(Detection(SHAPES[int(votes.argmax())], name, cx, cy, len(xs), box))
            out.append(sorted(dets, key=lambda d: -d.area))
    return out


def annotate(segmenter: SceneSegmenter, images: Tensor, metadata: Sequence[dict]) -> np.ndarray:
    """Whether the annotator judges each image to show its prompt: ``(N,)`` booleans."""
    return np.array([check(m, d) for m, d in zip(metadata, parse(segmenter, images), strict=True)])


def agreement(segmenter: SceneSegmenter, images: Tensor, metadata: Sequence[dict]) -> dict[str, dict[str, float]]:
    """How often the annotator and ShapesEval give an image the same verdict, per category and overall
    (a measurement of the annotator, never a training signal)."""
    from leapalign.worlds.shapes.evaluator import detect_batch

    ours = annotate(segmenter, images, metadata)
    truth = np.array([check(m, d) for m, d in zip(metadata, detect_batch(images), strict=True)])
    tags = np.array([m["tag"] for m in metadata])
    out = {}
    for tag in [*sorted(set(tags)), "overall"]:
        sel = np.ones(len(tags), bool) if tag == "overall" else tags == tag
        out[tag] = {
            "agreement": float((ours[sel] == truth[sel]).mean()),
            "annotator_accepts": float(ours[sel].mean()),
            "shapes_eval_accepts": float(truth[sel].mean()),
            "n": int(sel.sum()),
        }
    return out


class AnnotatorTrainer(PixelTrainer):
    """Supervised training of :class:`SceneSegmenter` on rendered training-prompt scenes, half of them corrupted
    (wrong shape or colour, off-palette, blob, missing, extra or swapped objects), with the reward's nuisances
    (blur, noise, tint, patch grid, brightness) so that it reads imperfect images; the package's loop
    (:class:`~leapalign.worlds.shapes.layout_train.PixelTrainer`)."""

    def __init__(
        self, seed: int = 0, batch: int = 64, lr: float = 3e-3, corruptions: tuple[str, ...] = ANNOTATOR_CORRUPTIONS
    ) -> None:
        super().__init__(seed, batch, lr, SceneSegmenter)
        self.corruptions = tuple(corruptions)

    def batch_at(self, step: int, rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Images ``(B, 3, 32, 32)``, shape targets and colour targets ``(B, 32, 32)``."""
        rng = rng or np.random.default_rng([self.seed, step])
        images, shapes, colors = [], [], []
        for _ in range(self.batch):
            cat = CATEGORIES[rng.integers(len(CATEGORIES))]
            scene = scene_for(self.records[cat][rng.integers(len(self.records[cat]))], rng)
            if rng.random() < 0.5:
                scene, _ = corrupt(scene, rng, self.corruptions)
            sh, co = pixel_targets(scene)
            images.append(augment(render(scene), rng))
            shapes.append(sh)
            colors.append(co)
        return tuple(torch.from_numpy(np.stack(x)) for x in (images, shapes, colors))

    def loss(self, images: Tensor, shapes: Tensor, colors: Tensor) -> Tensor:
        shape_logits, color_logits = self.model(images)
        return F.cross_entropy(shape_logits, shapes) + F.cross_entropy(color_logits, colors, ignore_index=-1)


@torch.no_grad()
def heldout_accuracy(segmenter: SceneSegmenter, seeds: int = 4, seed: int = 4321) -> dict[str, float]:
    """On renders of the held-out prompts, half corrupted: how often the annotator reads the scene's valid objects
    exactly (shape and colour multiset) and how often its verdict on the prompt is the ground truth's."""
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    metas = load_metadata("eval")
    images, targets, verdicts, chosen = [], [], [], []  # targets: the scene's sorted (shape, colour) list
    for _ in range(seeds):
        for meta in metas:
            scene = scene_for(meta, rng)
            if prng.random() < 0.5:
                scene, _ = corrupt(scene, rng, ANNOTATOR_CORRUPTIONS)
            dets = scene_detections(scene)
            images.append(render(scene))
            targets.append(sorted((d.shape, d.color) for d in dets))
            verdicts.append(check(meta, dets))
            chosen.append(meta)
    x = torch.from_numpy(np.stack(images))
    readings = parse(segmenter, x)
    exact = np.array([sorted((d.shape, d.color) for d in r) == t for r, t in zip(readings, targets, strict=True)])
    ours = np.array([check(m, r) for m, r in zip(chosen, readings, strict=True)])
    return {
        "exact_reading": float(exact.mean()),
        "verdict_accuracy": float((ours == np.array(verdicts)).mean()),
        "n": len(chosen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the ShapesWorld annotator (a learned scene segmenter)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--corruptions",
        default=",".join(ANNOTATOR_CORRUPTIONS),
        help=f"comma-separated corruptions of the training scenes, from {','.join(CORRUPTIONS)}",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    corruptions = tuple(c for c in args.corruptions.split(",") if c)
    trainer = AnnotatorTrainer(seed=args.seed, batch=args.batch, lr=args.lr, corruptions=corruptions)
    elapsed, final_loss = fit(trainer.step, args.steps, "annotator")
    trainer.model.eval()
    metrics = heldout_accuracy(trainer.model)
    card = {
        "command": f"python -m research.shapesworld.annotator --out {args.out} --steps {args.steps} "
        f"--batch {args.batch} --lr {args.lr} --seed {args.seed} --corruptions {','.join(corruptions)}",
        "train_seconds": round(elapsed, 1),
        "final_loss": final_loss,
        "heldout_renders": metrics,
    }
    trainer.model.save(args.out, card)
    logger.info("saved the annotator to %s: %s", args.out, json.dumps(metrics))


if __name__ == "__main__":
    main()
