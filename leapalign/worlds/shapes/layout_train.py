"""Trains the perception network of the layout reward (:mod:`leapalign.worlds.shapes.perception`) and measures
the reward on held-out renders.

Training data are scenes of the training prompts rendered on the fly, with what a generator gets wrong and what a
reward must see through: half the scenes corrupted (:func:`~leapalign.worlds.shapes.score_train.corrupt`: an
object off-palette, flattened, deleted, duplicated, given another shape or colour, exchanged, or drawn as a
hybrid), one object in four scenes replaced by a near miss of a valid shape (a rounded square, a pentagon, a
hexagon, an oval, a lumpy circle or square: what a generator drifts to when nothing asks for clean shapes,
labelled ``other``), objects turned by a random angle half of the time, and the nuisances of
:func:`~leapalign.worlds.shapes.score_train.augment` (blur, noise, tint, patch grid, brightness). Targets, from
each scene's own objects: the class of every pixel (a shape, ``other`` for a shape that is none of the three,
background), the area of the object each pixel lies on, and per image the number of objects of each shape. The
loss is the classes' cross-entropy, the squared error of the log-area on object pixels, and the squared error of
the counts the reward reads (:func:`counts`), each of order one.

    python -m leapalign.worlds.shapes.layout_train --out runs/layout
"""

from __future__ import annotations

import abc
import argparse
import dataclasses
import json
import logging
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.worlds.shapes.negatives import mismatch
from leapalign.worlds.shapes.perception import CLASSES, PixelUNet, ScenePerception
from leapalign.worlds.shapes.prompts import CATEGORIES, by_category, load_metadata
from leapalign.worlds.shapes.scenes import NEAR_MISS_SHAPES, SHAPES, SUPERSAMPLE, Scene, _mask, render, scene_for
from leapalign.worlds.shapes.score_train import CORRUPTIONS, augment, corrupt, fit, set_cosine_lr

logger = logging.getLogger(__name__)

AREA_WEIGHT = 1.0  # of the log-area loss on object pixels
COUNT_WEIGHT = 1.0  # of the loss on each image's per-shape counts
NEAR_MISS_RATE = 0.25  # of the scenes with one object drawn as a near miss
NEGATIVE_KINDS: tuple[str, ...] = ("color", "binding", "count", "relation", "shape")


def targets(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel class ``(H, W)`` (index into :data:`~leapalign.worlds.shapes.perception.CLASSES`), per-pixel area
    ``(H, W)`` (pixels of the object the pixel belongs to; 0 on the background) and per-shape counts ``(3,)`` of
    a scene. A pixel belongs to the object (or the background) that covers most of it, the last drawn on top;
    off-palette objects keep their shape (the colour maps exclude them); an object that owns no pixel is not
    counted."""
    n, s = scene.canvas, SUPERSAMPLE
    fine = (np.arange(n * s) + 0.5) / s
    xs, ys = np.meshgrid(fine, fine)
    owner = np.zeros((n * s, n * s), np.int64)  # 0: background, i + 1: object i
    for i, o in enumerate(scene.objects):
        owner[_mask(o, xs, ys)] = i + 1
    votes = np.stack([(owner == k).reshape(n, s, n, s).sum(axis=(1, 3)) for k in range(len(scene.objects) + 1)])
    owner = votes.argmax(0)
    cls, area = np.zeros((n, n), np.int64), np.zeros((n, n), np.float32)
    counts = np.zeros(len(SHAPES), np.float32)
    for i, o in enumerate(scene.objects):
        mine = owner == i + 1
        if not mine.any():
            continue
        cls[mine] = CLASSES.index(o.shape) if o.shape in SHAPES else CLASSES.index("other")
        area[mine] = mine.sum()
        if o.shape in SHAPES:
            counts[SHAPES.index(o.shape)] += 1
    return cls, area, counts


def counts(probs: Tensor, area: Tensor) -> Tensor:
    """Soft per-shape counts ``(B, 3)``: the sum over pixels of ``P(shape | pixel) / area(pixel)``.

    Args:
        probs: Class probabilities ``(B, 5, H, W)``.
        area: Per-pixel object areas ``(B, H, W)`` in pixels.
    """
    return (probs[:, 1 : 1 + len(SHAPES)] / area[:, None].clamp_min(1.0)).sum((2, 3))


def near_miss(scene: Scene, rng: np.random.Generator, rate: float = NEAR_MISS_RATE) -> Scene:
    """The scene with one object redrawn as a near miss of a valid shape (same place, size and colour), at
    ``rate``."""
    if rng.random() >= rate:
        return scene
    objects = list(scene.objects)
    i = int(rng.integers(len(objects)))
    objects[i] = dataclasses.replace(objects[i], shape=str(rng.choice(NEAR_MISS_SHAPES)))
    return Scene(tuple(objects), scene.canvas)


def turned(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with each object turned by a random angle about its centre, half of the time."""
    if rng.random() < 0.5:
        return scene
    objects = tuple(dataclasses.replace(o, angle=float(rng.uniform(0, 2 * np.pi))) for o in scene.objects)
    return Scene(objects, scene.canvas)


class PixelTrainer(abc.ABC):
    """Supervised training of a :class:`~leapalign.worlds.shapes.perception.PixelUNet` on scenes of the training
    prompts: AdamW with a cosine learning rate; subclasses give ``batch_at(step)`` (a deterministic function of
    the seed and the step) and ``loss(*batch)``.

    Args:
        seed: Seed of the weights and of every batch.
        batch: Scenes per step.
        lr: Peak learning rate.
        model_cls: The network to train.
    """

    def __init__(self, seed: int, batch: int, lr: float, model_cls: type[PixelUNet]) -> None:
        self.seed, self.batch, self.lr = seed, batch, lr
        torch.manual_seed(seed)
        self.model = model_cls()
        self.records = by_category(load_metadata("train"))
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)

    @abc.abstractmethod
    def batch_at(self, step: int) -> tuple[Tensor, ...]:
        """The tensors of step ``step``'s batch, a deterministic function of the seed and the step."""

    @abc.abstractmethod
    def loss(self, *batch: Tensor) -> Tensor:
        """The scalar loss of one batch (as :meth:`batch_at` returns it)."""

    def step(self, step: int, total: int) -> float:
        """One optimiser step (learning rate on the cosine schedule over ``total`` steps); returns the loss."""
        set_cosine_lr(self.opt, self.lr, step, total)
        loss = self.loss(*self.batch_at(step))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


class PerceptionTrainer(PixelTrainer):
    """Supervised training of :class:`ScenePerception` (see the module docstring)."""

    def __init__(self, seed: int = 0, batch: int = 64, lr: float = 3e-3) -> None:
        super().__init__(seed, batch, lr, ScenePerception)

    def batch_at(self, step: int) -> tuple[Tensor, ...]:
        """Images ``(B, 3, 32, 32)``, class targets and areas ``(B, 32, 32)``, counts ``(B, 3)``."""
        rng = np.random.default_rng([self.seed, step])
        images, classes, areas, numbers = [], [], [], []
        for _ in range(self.batch):
            cat = CATEGORIES[rng.integers(len(CATEGORIES))]
            scene = scene_for(self.records[cat][rng.integers(len(self.records[cat]))], rng)
            if rng.random() < 0.5:
                scene, _ = corrupt(scene, rng, CORRUPTIONS)
            scene = turned(near_miss(scene, rng), rng)
            cls, area, number = targets(scene)
            images.append(np.clip(augment(render(scene), rng), 0.0, 1.0))
            classes.append(cls)
            areas.append(area)
            numbers.append(number)
        return tuple(torch.from_numpy(np.stack(x)) for x in (images, classes, areas, numbers))

    def loss(self, images: Tensor, classes: Tensor, areas: Tensor, numbers: Tensor) -> Tensor:
        logits, area = self.model(images.float())
        on = areas > 0
        log_area = F.mse_loss(area.log()[on], areas[on].log()) if on.any() else area.sum() * 0
        return (
            F.cross_entropy(logits, classes)
            + AREA_WEIGHT * log_area
            + COUNT_WEIGHT * F.mse_loss(counts(logits.softmax(1), area), numbers)
        )


def _kind_of(meta: dict, negative: dict, kind: str) -> str:
    """``binding`` for a colour negative that keeps the prompt's colours but swaps them between objects."""
    colours = [e.get("color") for e in meta["include"]]
    changed = [e.get("color") for e in negative["include"]]
    return "binding" if kind == "color" and sorted(map(str, colours)) == sorted(map(str, changed)) else kind


@torch.no_grad()
def ranking_accuracy(reward, seeds: int = 4, seed: int = 4321) -> dict[str, float]:
    """On renders of the held-out prompts: how often the reward scores the true scene above a scene that differs
    in one colour, count, relation or shape, or swaps the colours of two objects (``binding``), under the true
    prompt. Ties count as half.

    Returns:
        ``{kind: accuracy, "n_" + kind: pairs}`` for each kind of :data:`NEGATIVE_KINDS`.
    """
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    wins: dict[str, list[float]] = {k: [] for k in NEGATIVE_KINDS}
    for kind in ("color", "count", "relation", "shape"):
        for _ in range(seeds):
            for meta in load_metadata("eval"):
                negative = mismatch(meta, kind, prng)
                if negative is None:
                    continue
                pair = torch.from_numpy(np.stack([render(scene_for(meta, rng)), render(scene_for(negative, rng))]))
                true, wrong = reward(pair, [meta["prompt"]] * 2).tolist()
                wins[_kind_of(meta, negative, kind)].append(1.0 if true > wrong else 0.5 if true == wrong else 0.0)
    out: dict[str, float] = {}
    for kind, w in wins.items():
        out[kind] = float(np.mean(w)) if w else float("nan")
        out[f"n_{kind}"] = len(w)
    return out


def main(argv: list[str] | None = None) -> int:
    from leapalign.worlds.shapes.layout import ShapesLayout

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the weights folder to write (replaced when done)")
    p.add_argument("--steps", type=int, default=3000)
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
        "command": f"python -m leapalign.worlds.shapes.layout_train --out {args.out} --steps {args.steps} "
        f"--batch {args.batch} --lr {args.lr} --seed {args.seed}",
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds": round(elapsed, 1),
        "final_loss": final_loss,
        "heldout_ranking": ranking,
    }
    trainer.model.save(tmp, card)
    if args.out.exists():
        shutil.rmtree(args.out)
    tmp.rename(args.out)
    logger.info("saved the perception network to %s: %s", args.out, json.dumps(ranking))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
