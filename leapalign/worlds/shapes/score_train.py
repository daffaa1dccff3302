"""Training and held-out measurement of ShapesScore.

Reproduce the shipped weights (the command in their ``config.json``; about 10 minutes on two CPU cores)::

    python -m leapalign.worlds.shapes.score_train --out leapalign/worlds/shapes/assets/shapes_score \\
        --steps 2000 --batch 64 --seed 0

Each step renders a batch of training scenes (category-uniform prompts, random blur and noise so the reward
stays meaningful on imperfect generated images) and optimises a symmetric contrastive loss. Negatives are the
other prompts of the batch that the scene does *not* satisfy (exactly, by the GenEval rules applied to the
scene's ground-truth objects, so "a circle" is never a negative for a red circle) plus hard negatives that
differ in one colour, count, relation or shape (:func:`leapalign.worlds.shapes.negatives.mismatch`). On the image
side, a corrupted copy of each scene (:func:`corrupt`: an object washed out to white or grey, turned into a
blob, deleted or duplicated) must score below the true scene for the true prompt whenever the GenEval rules
on its ground-truth objects say it no longer satisfies it.

The research options (fine-tuning given weights, adversarial training, preference pairs judged by a learned
annotator, a frozen segmenter backbone, skewed prompt categories) extend :class:`ScoreTrainer` outside the
package: ``python -m research.shapesworld.score_research`` from a checkout of the repository.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor
from tqdm.auto import tqdm

from leapalign.worlds.shapes.evaluator import Detection, check
from leapalign.worlds.shapes.negatives import KINDS, mismatch
from leapalign.worlds.shapes.prompts import CATEGORIES, by_category, load_metadata
from leapalign.worlds.shapes.scenes import (
    COLORS,
    HYBRID_SHAPES,
    NUISANCE_COLORS,
    NUISANCE_SHAPES,
    SHAPES,
    Obj,
    Scene,
    place,
    render,
    scene_for,
)
from leapalign.worlds.shapes.score import ScoreArch, ShapesScore, ShapesScoreModel
from leapalign.worlds.shapes.text import MiniLMEncoder

logger = logging.getLogger(__name__)


def scene_detections(scene: Scene) -> list[Detection]:
    """The exact detections of a rendered scene (its ground-truth objects; off-palette or invalid ones are no
    objects, as for ShapesEval)."""
    out = []
    for o in scene.objects:
        if o.color not in COLORS or o.shape not in SHAPES:
            continue
        x0, y0, x1, y1 = (int(round(v)) for v in o.bbox())
        out.append(Detection(o.shape, o.color, o.cx, o.cy, int(o.size**2), (x0, y0, x1, y1)))
    return out


def augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nuisances the reward must ignore, each with probability 1/2: blur (sigma up to 0.8 px), pixel noise
    (std up to 0.06), a faint tint and a 4x4-patch grid texture (amplitude up to 0.12) like a pixel-space
    generator's patch artefacts, and a global brightness change (x0.85-1.15)."""
    if rng.random() < 0.5:
        image = np.stack([gaussian_filter(c, rng.uniform(0.2, 0.8)) for c in image])
    if rng.random() < 0.5:
        image = image + rng.normal(0.0, rng.uniform(0.01, 0.06), size=image.shape).astype(np.float32)
    if rng.random() < 0.5:
        tint = rng.uniform(0.0, 0.08, size=(3, 1, 1))
        patches = rng.uniform(-1.0, 1.0, size=(3, 8, 8)).repeat(4, axis=1).repeat(4, axis=2)
        image = image + tint + rng.uniform(0.0, 0.12) * patches * (rng.random((3, 1, 1)) < 0.7)
    if rng.random() < 0.5:
        image = image * rng.uniform(0.85, 1.15)
    return np.clip(image, 0.0, 1.0).astype(np.float32)


CORRUPTIONS: tuple[str, ...] = ("off_palette", "blob", "delete", "duplicate", "shape", "color", "swap", "hybrid")
# The corruptions of the shipped ShapesScore (v3); the binding ones (shape, colour, swap) and hybrid shapes
# (a trapezoid or a teardrop in place of an object) are opt-in.
DEFAULT_CORRUPTIONS: tuple[str, ...] = CORRUPTIONS[:4]


def corrupt(scene: Scene, rng: np.random.Generator, kinds: tuple[str, ...] = DEFAULT_CORRUPTIONS) -> tuple[Scene, str]:
    """A wrong version of ``scene``, one of ``kinds`` (names from :data:`CORRUPTIONS`) drawn uniformly.

    The mistakes a generator makes: an object drawn off-palette (white / grey), as a flat ellipse, deleted or
    duplicated; and the binding mistakes a fine-tuned generator drifts into when the reward lets it: one object
    given another object's shape (or another valid shape), another object's colour (or another palette
    colour), or two objects' places exchanged; or an object drawn as a hybrid of two shapes (a trapezoid or a
    teardrop), the hack of a generator asked for two shapes at once. Whether the true prompt is still satisfied
    by the result is decided by the GenEval rules on its ground-truth objects (the caller checks).

    Returns:
        The corrupted scene and the name of the corruption applied.
    """
    objs = list(scene.objects)
    i = int(rng.integers(len(objs)))
    unknown = set(kinds) - set(CORRUPTIONS)
    if unknown or not kinds:
        raise ValueError(f"unknown corruptions {sorted(unknown)}; choose from {', '.join(CORRUPTIONS)}.")
    kind = kinds[int(rng.integers(len(kinds)))]
    o = objs[i]
    others = [p for k, p in enumerate(objs) if k != i]
    if kind == "off_palette":
        objs[i] = Obj(o.shape, str(rng.choice(list(NUISANCE_COLORS))), o.cx, o.cy, o.size)
    elif kind == "blob":
        objs[i] = Obj(NUISANCE_SHAPES[0], o.color, o.cx, o.cy, o.size)
    elif kind == "hybrid":
        objs[i] = Obj(str(rng.choice(HYBRID_SHAPES)), o.color, o.cx, o.cy, o.size)
    elif kind == "delete" and others:
        objs.pop(i)
    elif kind == "shape":
        copies = [p.shape for p in others if p.shape != o.shape]
        pool = copies if copies and rng.random() < 0.75 else [s for s in SHAPES if s != o.shape]
        objs[i] = Obj(str(rng.choice(pool)), o.color, o.cx, o.cy, o.size)
    elif kind == "color":
        copies = [p.color for p in others if p.color != o.color]
        pool = copies if copies and rng.random() < 0.75 else [c for c in COLORS if c != o.color]
        objs[i] = Obj(o.shape, str(rng.choice(pool)), o.cx, o.cy, o.size)
    elif kind == "swap" and others:
        j = int(rng.integers(len(objs) - 1))
        j += j >= i
        p = objs[j]
        objs[i], objs[j] = Obj(o.shape, o.color, p.cx, p.cy, o.size), Obj(p.shape, p.color, o.cx, o.cy, p.size)
    else:  # "duplicate" (or "delete" / "swap" of a lone object): an extra copy of the object somewhere free
        try:
            extra = place([(o.shape, o.color)] * (len(objs) + 1), rng).objects[-1]
            objs.append(extra)
        except RuntimeError:
            objs[i] = Obj(o.shape, "grey", o.cx, o.cy, o.size)
        kind = "duplicate"
    return Scene(tuple(objs), scene.canvas), kind


@dataclass
class TrainBatch:
    """One step's rendered batch, as :meth:`ScoreTrainer.contrastive_loss` reads it."""

    images: Tensor  # (B, 3, 32, 32): augmented renders of B training prompts
    wrong: Tensor  # (B * wrong_per_scene, 3, 32, 32): augmented renders of corrupted scenes
    usable: Tensor  # (B * wrong_per_scene,): the corrupted scene no longer satisfies its prompt
    texts: Tensor  # (B + H, D): text embeddings of the B prompts, then of the H hard negatives
    satisfied: Tensor  # (B, B): scene i satisfies prompt j != i (then j is no negative for i)
    owner: Tensor  # (H,): the scene each hard negative belongs to


class ScoreTrainer:
    """Contrastive training of :class:`ShapesScoreModel` on rendered scenes.

    Subclasses may build another model (:meth:`build_model`), draw the prompt categories differently
    (:meth:`sample_category`) or add loss terms (:meth:`loss`), as ``research/shapesworld/score_research.py`` does.
    """

    def __init__(
        self,
        seed: int = 0,
        batch: int = 64,
        lr: float = 1e-3,
        wrong_per_scene: int = 1,
        corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS,
    ) -> None:
        self.seed, self.batch, self.lr, self.wrong_per_scene = seed, batch, lr, wrong_per_scene
        self.corruptions = tuple(corruptions)
        torch.manual_seed(seed)
        self.model = self.build_model()
        self.encoder = MiniLMEncoder()
        self.reward = ShapesScore(encoder=self.encoder)  # used for its token cache
        self.records = by_category(load_metadata("train"))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)

    def build_model(self) -> ShapesScoreModel:
        """The model to train, built right after ``torch.manual_seed(seed)``."""
        return ShapesScoreModel(ScoreArch())

    def sample_category(self, rng: np.random.Generator) -> str:
        """The prompt category of one scene (uniform)."""
        return CATEGORIES[rng.integers(len(CATEGORIES))]

    def _batch(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        prng = random.Random(self.seed * 7919 + step)
        metas, scenes, images, negatives, wrong, wrong_ok = [], [], [], [], [], []
        for _ in range(self.batch):
            cat = self.sample_category(rng)
            meta = self.records[cat][rng.integers(len(self.records[cat]))]
            scene = scene_for(meta, rng)
            dets = scene_detections(scene)
            negs = [n for n in (mismatch(meta, k, prng) for k in KINDS) if n is not None and not check(n, dets)]
            metas.append(meta)
            scenes.append(dets)
            images.append(augment(render(scene), rng))
            negatives.append([n["prompt"] for n in negs])
            for _ in range(self.wrong_per_scene):
                bad, _ = corrupt(scene, rng, self.corruptions)
                wrong.append(augment(render(bad), rng))
                wrong_ok.append(not check(meta, scene_detections(bad)))  # usable as a negative for this prompt
        wrong_images = torch.from_numpy(np.stack(wrong)), torch.tensor(wrong_ok)
        return metas, scenes, torch.from_numpy(np.stack(images)), negatives, wrong_images

    def prepare(self, step: int) -> TrainBatch:
        """Renders step ``step``'s batch (deterministic in ``seed`` and ``step``) and embeds its prompts."""
        metas, dets, images, negatives, (wrong, usable) = self._batch(step)
        prompts = [m["prompt"] for m in metas]
        hard = [p for negs in negatives for p in negs]
        owner = torch.tensor([i for i, negs in enumerate(negatives) for _ in negs], dtype=torch.long)
        texts = self.model.text(self.reward.tokens(prompts + hard))
        b = len(prompts)
        satisfied = torch.tensor([[i != j and check(metas[j], dets[i]) for j in range(b)] for i in range(b)])
        return TrainBatch(images, wrong, usable, texts, satisfied, owner)

    def contrastive_loss(self, batch: TrainBatch, right: Tensor, wrong: Tensor, texts: Tensor) -> Tensor:
        """The symmetric contrastive loss of the images ``right`` against ``texts`` (the true prompts on the
        diagonal, in-batch prompts the scene does not satisfy and its own hard negatives as negatives), plus a
        logistic loss asking each usable corrupted image of ``wrong`` to score below its scene's image."""
        b = len(batch.satisfied)
        img = self.model.image(right)
        scale = self.model.logit_scale.exp().clamp(max=100)
        sims = scale * img @ texts.T  # (B, B + H)
        i2t = sims.clone()
        i2t[:, :b] = i2t[:, :b].masked_fill(batch.satisfied, float("-inf"))
        i2t[:, b:] = i2t[:, b:].masked_fill(batch.owner[None, :] != torch.arange(b)[:, None], float("-inf"))
        t2i = sims[:, :b].T.masked_fill(batch.satisfied.T, float("-inf"))
        target = torch.arange(b)
        loss = 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))
        # Wrong images (off-palette, blob, missing or extra object, ...) must score below the right image.
        if batch.usable.any():
            owner_w = torch.arange(b).repeat_interleave(self.wrong_per_scene)
            s_wrong = (self.model.image(wrong) * texts[owner_w]).sum(-1)
            s_right = (img * texts[:b]).sum(-1)[owner_w]
            loss = loss + F.softplus(scale * (s_wrong - s_right))[batch.usable].mean()
        return loss

    def loss(self, step: int) -> Tensor:
        """The loss of step ``step``: :meth:`contrastive_loss` on its batch."""
        batch = self.prepare(step)
        return self.contrastive_loss(batch, batch.images, batch.wrong, batch.texts)

    def step(self, step: int, total: int) -> float:
        """One optimiser step (cosine learning-rate decay over ``total`` steps); returns the loss."""
        loss = self.loss(step)
        set_cosine_lr(self.opt, self.lr, step, total)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def set_cosine_lr(opt: torch.optim.Optimizer, peak: float, step: int, total: int) -> None:
    """Sets every parameter group's learning rate to ``peak`` decayed on a cosine from step 0 to ``total``."""
    for g in opt.param_groups:
        g["lr"] = peak * 0.5 * (1 + np.cos(np.pi * step / total))


def fit(step: Callable[[int, int], float], steps: int, desc: str) -> tuple[float, float]:
    """Runs ``step(i, steps)`` for ``i < steps`` with a progress bar showing the running loss.

    Returns:
        The seconds it took and the mean loss of the last 50 steps.
    """
    start, losses = time.perf_counter(), []
    bar = tqdm(range(steps), desc=desc)
    for i in bar:
        losses.append(step(i, steps))
        if i % 50 == 49:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
    return time.perf_counter() - start, float(np.mean(losses[-50:]))


@torch.no_grad()
def measure(
    model: ShapesScoreModel,
    reward: ShapesScore,
    seeds: int = 4,
    seed: int = 1234,
    corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS,
    metadata: Sequence[dict] | None = None,
) -> dict[str, float]:
    """Held-out ranking accuracy: how often the true prompt outscores each kind of hard negative.

    Renders every held-out prompt ``seeds`` times (clean) and compares its score with the score of each
    applicable mismatch (colour, count, relation, shape) and of a random other held-out prompt the scene does
    not satisfy; and, on the image side, how often a corrupted scene (:func:`corrupt`) that no longer satisfies
    the prompt scores below the true scene. ``metadata`` replaces the held-out prompts (e.g. the training
    prompts of one category, to see what the reward learned but does not generalise).
    """
    rng, prng = np.random.default_rng(seed), random.Random(seed)
    metas = list(metadata) if metadata is not None else load_metadata("eval")
    wins: dict[str, list[bool]] = {k: [] for k in (*KINDS, "random", "wrong_image")}
    wins |= {f"wrong_{k}": [] for k in corruptions}
    for _ in range(seeds):
        for meta in metas:
            scene = scene_for(meta, rng)
            dets = scene_detections(scene)
            image = torch.from_numpy(render(scene))[None]
            cands = {k: mismatch(meta, k, prng) for k in KINDS}
            other = metas[prng.randrange(len(metas))]
            cands["random"] = other if not check(other, dets) else None
            texts = [meta["prompt"]] + [c["prompt"] for c in cands.values() if c is not None and not check(c, dets)]
            kinds = [k for k, c in cands.items() if c is not None and not check(c, dets)]
            img = model.image(image)
            scores = (img * model.text(reward.tokens(texts))).sum(-1)
            for k, s in zip(kinds, scores[1:], strict=True):
                wins[k].append(bool(s < scores[0]))
            bad, kind = corrupt(scene, rng, corruptions)
            if not check(meta, scene_detections(bad)):
                s_bad = (model.image(torch.from_numpy(render(bad))[None]) * model.text(reward.tokens(texts[:1]))).sum()
                wins["wrong_image"].append(bool(s_bad < scores[0]))
                wins[f"wrong_{kind}"].append(bool(s_bad < scores[0]))
    return {f"acc_vs_{k}": float(np.mean(v)) for k, v in wins.items() if v} | {
        f"n_{k}": len(v) for k, v in wins.items()
    }


def build_parser(description: str = "Train ShapesScore") -> argparse.ArgumentParser:
    """The options of the shipped reward's training (extended by ``research/shapesworld/score_research.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=Path("leapalign/worlds/shapes/assets/shapes_score"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wrong-per-scene", type=int, default=1, help="corrupted images per scene and step")
    parser.add_argument(
        "--corruptions",
        type=lambda text: tuple(c for c in text.split(",") if c),
        default=",".join(DEFAULT_CORRUPTIONS),
        help=f"comma-separated image-side negatives, from {','.join(CORRUPTIONS)} (default: the shipped reward's)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    return parser


def command_line(args: argparse.Namespace, module: str = "leapalign.worlds.shapes.score_train") -> str:
    """The command line of the options of :func:`build_parser`, as recorded in the weights' card."""
    return (
        f"python -m {module} --out {args.out} --steps {args.steps} --batch {args.batch} --seed {args.seed} "
        f"--wrong-per-scene {args.wrong_per_scene} --corruptions {','.join(args.corruptions)} --lr {args.lr}"
    )


def train(trainer: ScoreTrainer, args: argparse.Namespace, command: str, card: dict | None = None) -> dict:
    """Runs ``args.steps`` steps of ``trainer``, measures the model on the held-out prompts (:func:`measure`) and
    saves it to ``args.out`` with a card: the ``command`` line, the entries of ``card``, the settings and the
    held-out metrics."""
    elapsed, final_loss = fit(trainer.step, args.steps, "shapes_score")
    trainer.model.eval()
    metrics = measure(trainer.model, trainer.reward, corruptions=trainer.corruptions)
    card = {
        "command": command,
        **(card or {}),
        "corruptions": list(trainer.corruptions),
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds": round(elapsed, 1),
        "final_loss": final_loss,
        "heldout": metrics,
    }
    trainer.model.save(args.out, card)
    logger.info("saved ShapesScore to %s: %s", args.out, json.dumps(metrics))
    return card


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = ScoreTrainer(args.seed, args.batch, args.lr, args.wrong_per_scene, args.corruptions)
    train(trainer, args, command_line(args))


if __name__ == "__main__":
    main()
