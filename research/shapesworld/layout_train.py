"""Trains the perception network of the layout reward under research (:mod:`research.shapesworld.perception`)
and measures the reward on held-out renders.

Training data are scenes of the training prompts rendered on the fly, with what a generator gets wrong and what a
reward must see through: half the scenes corrupted (:func:`~leapalign.worlds.shapes.score_train.corrupt`: an
object off-palette, flattened, deleted, duplicated, given another shape or colour, exchanged, or drawn as a
hybrid), objects turned by a random angle half of the time, and the nuisances of
:func:`~leapalign.worlds.shapes.score_train.augment` (blur, noise, tint, patch grid, brightness). Targets, from
each scene's own objects: the class of every pixel (a shape, ``other`` for a shape that is none of the three,
background) and per shape a density, a Gaussian bump of mass 1 at each object's centroid.

    python -m research.shapesworld.layout_train --out runs/layout
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.worlds.shapes.negatives import mismatch
from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
from leapalign.worlds.shapes.scenes import SHAPES, SUPERSAMPLE, Scene, _mask, render, scene_for
from leapalign.worlds.shapes.score_train import CORRUPTIONS, augment, corrupt, fit
from research.shapesworld.annotator import AnnotatorTrainer
from research.shapesworld.perception import CLASSES, ScenePerception

logger = logging.getLogger(__name__)

DENSITY_SIGMA = 1.0  # pixels: the bump of each object's density
DENSITY_WEIGHT = 200.0  # of the per-pixel density loss (the densities peak near 0.16)
COUNT_WEIGHT = 1.0  # of the loss on each image's per-shape density sums (the counts)
NEGATIVE_KINDS: tuple[str, ...] = ("color", "count", "relation", "shape")


def targets(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class ``(H, W)`` (index into :data:`~research.shapesworld.perception.CLASSES`) and per-shape
    density ``(3, H, W)`` of a scene. A pixel takes the class of the last object drawn over most of it; off-palette
    objects keep their shape (the colour maps exclude them)."""
    n, s = scene.canvas, SUPERSAMPLE
    fine = (np.arange(n * s) + 0.5) / s
    xs, ys = np.meshgrid(fine, fine)
    cls = np.zeros((n * s, n * s), np.int64)
    density = np.zeros((len(SHAPES), n, n), np.float32)
    px, py = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    for o in scene.objects:
        m = _mask(o, xs, ys)
        cls[m] = CLASSES.index(o.shape) if o.shape in SHAPES else CLASSES.index("other")
        if o.shape in SHAPES and m.any():
            cx, cy = xs[m].mean(), ys[m].mean()
            bump = np.exp(-((px - cx) ** 2 + (py - cy) ** 2) / (2 * DENSITY_SIGMA**2))
            density[SHAPES.index(o.shape)] += bump / bump.sum()
    votes = np.stack([(cls == k).reshape(n, s, n, s).sum(axis=(1, 3)) for k in range(len(CLASSES))])
    return votes.argmax(0), density


def turned(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with each object turned by a random angle about its centre, half of the time."""
    if rng.random() < 0.5:
        return scene
    objects = tuple(dataclasses.replace(o, angle=float(rng.uniform(0, 2 * np.pi))) for o in scene.objects)
    return Scene(objects, scene.canvas)


class PerceptionTrainer(AnnotatorTrainer):
    """Supervised training of :class:`ScenePerception` (see the module docstring); the annotator's loop (cosine
    learning rate, AdamW) with this module's batches and loss."""

    def __init__(self, seed: int = 0, batch: int = 64, lr: float = 3e-3) -> None:
        super().__init__(seed, batch, lr, CORRUPTIONS, model_cls=ScenePerception)

    def batch_at(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """Images ``(B, 3, 32, 32)``, class targets ``(B, 32, 32)`` and densities ``(B, 3, 32, 32)``."""
        rng = np.random.default_rng([self.seed, step])
        images, classes, densities = [], [], []
        for _ in range(self.batch):
            cat = CATEGORIES[rng.integers(len(CATEGORIES))]
            scene = scene_for(self.records[cat][rng.integers(len(self.records[cat]))], rng)
            if rng.random() < 0.5:
                scene, _ = corrupt(scene, rng, self.corruptions)
            scene = turned(scene, rng)
            cls, dens = targets(scene)
            images.append(np.clip(augment(render(scene), rng), 0.0, 1.0))
            classes.append(cls)
            densities.append(dens)
        return tuple(torch.from_numpy(np.stack(x)) for x in (images, classes, densities))

    def loss(self, images: Tensor, classes: Tensor, densities: Tensor) -> Tensor:
        logits, density = self.model(images.float())
        counts = F.mse_loss(density.sum((2, 3)), densities.float().sum((2, 3)))
        return (
            F.cross_entropy(logits, classes)
            + DENSITY_WEIGHT * F.mse_loss(density, densities.float())
            + COUNT_WEIGHT * counts
        )


@torch.no_grad()
def ranking_accuracy(reward, seeds: int = 4, seed: int = 4321) -> dict[str, float]:
    """On renders of the held-out prompts: how often the reward scores the true scene above a scene that differs
    in one colour (for two coloured objects: the swapped binding), count, relation or shape, under the true
    prompt. Ties count as half."""
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    out: dict[str, float] = {}
    for kind in NEGATIVE_KINDS:
        wins = []
        for _ in range(seeds):
            for meta in load_metadata("eval"):
                negative = mismatch(meta, kind, prng)
                if negative is None:
                    continue
                pair = torch.from_numpy(np.stack([render(scene_for(meta, rng)), render(scene_for(negative, rng))]))
                true, wrong = reward(pair, [meta["prompt"]] * 2).tolist()
                wins.append(1.0 if true > wrong else 0.5 if true == wrong else 0.0)
        out[kind] = float(np.mean(wins)) if wins else float("nan")
        out[f"n_{kind}"] = len(wins)
    return out


def main(argv: list[str] | None = None) -> int:
    from research.shapesworld.layout_reward import ShapesLayout

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = PerceptionTrainer(seed=args.seed, batch=args.batch, lr=args.lr)
    elapsed, final_loss = fit(trainer.step, args.steps, "perception")
    trainer.model.eval()
    tmp = args.out.with_name(args.out.name + ".tmp")
    trainer.model.save(tmp)
    ranking = ranking_accuracy(ShapesLayout(str(tmp)))
    card = {
        "command": f"python -m research.shapesworld.layout_train --out {args.out} --steps {args.steps} "
        f"--batch {args.batch} --lr {args.lr} --seed {args.seed}",
        "train_seconds": round(elapsed, 1),
        "final_loss": final_loss,
        "heldout_ranking": ranking,
    }
    trainer.model.save(tmp, card)
    if args.out.exists():
        for f in args.out.iterdir():
            f.unlink()
        args.out.rmdir()
    tmp.rename(args.out)
    logger.info("saved the perception network to %s: %s", args.out, json.dumps(ranking))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
