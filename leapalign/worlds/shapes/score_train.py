"""Training and held-out measurement of ShapesScore.

Reproduce the shipped weights::

    python -m leapalign.worlds.shapes.score_train --out leapalign/worlds/shapes/assets/shapes_score

Each step renders a batch of training scenes (category-uniform prompts, random blur and noise so the reward
stays meaningful on imperfect generated images) and optimises a symmetric contrastive loss. Negatives are the
other prompts of the batch that the scene does *not* satisfy (exactly, by the GenEval rules applied to the
scene's ground-truth objects, so "a circle" is never a negative for a red circle) plus hard negatives that
differ in one colour, count, relation or shape (:func:`leapalign.worlds.shapes.negatives.mismatch`). On the image
side, a corrupted copy of each scene (:func:`corrupt`: an object washed out to white or grey, turned into a
blob, deleted or duplicated) must score below the true scene for the true prompt whenever the GenEval rules
on its ground-truth objects say it no longer satisfies it.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import Tensor
from tqdm.auto import tqdm

from leapalign.worlds.shapes.evaluator import Detection, check
from leapalign.worlds.shapes.negatives import KINDS, mismatch
from leapalign.worlds.shapes.preferences import Preferences
from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
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
from leapalign.worlds.shapes.segmenter import SceneSegmenter
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


class ScoreTrainer:
    """Contrastive training of :class:`ShapesScoreModel` on rendered scenes."""

    def __init__(
        self,
        seed: int = 0,
        batch: int = 64,
        lr: float = 1e-3,
        wrong_per_scene: int = 1,
        corruptions: tuple[str, ...] = DEFAULT_CORRUPTIONS,
        adv_eps: float = 0.0,
        adv_steps: int = 3,
        init: Path | None = None,
        preferences: Preferences | None = None,
        pref_pairs: int = 64,
        pref_weight: float = 1.0,
        segmenter: Path | None = None,
        category_weights: dict[str, float] | None = None,
    ) -> None:
        if adv_eps < 0 or adv_steps < 1:
            raise ValueError(f"adv_eps ({adv_eps}) must be >= 0 and adv_steps ({adv_steps}) >= 1.")
        self.seed, self.batch, self.lr, self.wrong_per_scene = seed, batch, lr, wrong_per_scene
        self.corruptions = tuple(corruptions)
        self.adv_eps, self.adv_steps = float(adv_eps), int(adv_steps)
        torch.manual_seed(seed)
        if init and segmenter:
            raise ValueError("give --init or --segmenter, not both: a model from --init keeps its own backbone.")
        if init:
            self.model = ShapesScoreModel.load(Path(init)).train()
        elif segmenter:
            seg = SceneSegmenter.load(Path(segmenter))
            self.model = ShapesScoreModel(ScoreArch(backbone="segmenter", segmenter_width=seg.arch.width))
            self.model.image.segmenter.load_state_dict(seg.state_dict())
        else:
            self.model = ShapesScoreModel(ScoreArch())
        self.encoder = MiniLMEncoder()
        self.reward = ShapesScore(encoder=self.encoder)  # used for its token cache
        self.records = {c: [m for m in load_metadata("train") if m["tag"] == c] for c in CATEGORIES}
        self.category_p = category_probabilities(category_weights)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # a segmenter backbone stays frozen
        self.opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
        self.preferences, self.pref_pairs, self.pref_weight = preferences, int(pref_pairs), float(pref_weight)
        if preferences is not None:
            self._pairs = preferences.pairs()
            if len(self._pairs[0]) == 0:
                raise ValueError("the preference files hold no prompt with both an accepted and a rejected image.")
            self._train_prompts = [m["prompt"] for m in load_metadata("train")]

    def _preference_loss(self, step: int) -> Tensor:
        """HPS-style pairwise loss on generated images: for the same prompt, the image the annotator accepts
        must outscore the one it rejects (a logistic loss at the model's temperature)."""
        prefs, (right, wrong) = self.preferences, self._pairs
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        pick = torch.randint(len(right), (self.pref_pairs,), generator=g)
        right, wrong = right[pick], wrong[pick]
        texts = self.model.text(self.reward.tokens([self._train_prompts[i] for i in prefs.prompt_index[right]]))
        s_right = (self.model.image(prefs.images[right]) * texts).sum(-1)
        s_wrong = (self.model.image(prefs.images[wrong]) * texts).sum(-1)
        scale = self.model.logit_scale.exp().clamp(max=100)
        return F.softplus(scale * (s_wrong - s_right)).mean()

    def _batch(self, step: int):
        rng = np.random.default_rng([self.seed, step])
        prng = random.Random(self.seed * 7919 + step)
        metas, scenes, images, negatives, wrong, wrong_ok = [], [], [], [], [], []
        for _ in range(self.batch):
            if self.category_p is None:  # uniform (the shipped reward's stream of random numbers)
                cat = CATEGORIES[rng.integers(len(CATEGORIES))]
            else:
                cat = CATEGORIES[rng.choice(len(CATEGORIES), p=self.category_p)]
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
        self._wrong = torch.from_numpy(np.stack(wrong)), torch.tensor(wrong_ok)
        return metas, scenes, torch.from_numpy(np.stack(images)), negatives

    def step(self, step: int, total: int) -> float:
        metas, dets, images, negatives = self._batch(step)
        prompts = [m["prompt"] for m in metas]
        hard = [p for negs in negatives for p in negs]
        owner = torch.tensor([i for i, negs in enumerate(negatives) for _ in negs], dtype=torch.long)
        texts = self.model.text(self.reward.tokens(prompts + hard))
        b = len(prompts)
        # satisfied[i, j]: scene i satisfies prompt j (then j is no negative for i); the diagonal is the target.
        satisfied = torch.tensor([[i != j and check(metas[j], dets[i]) for j in range(b)] for i in range(b)])
        wrong_images, usable = self._wrong

        def loss_of(right: Tensor, wrong: Tensor, texts: Tensor) -> Tensor:
            img = self.model.image(right)
            scale = self.model.logit_scale.exp().clamp(max=100)
            sims = scale * img @ texts.T  # (B, B + H)
            i2t = sims.clone()
            i2t[:, :b] = i2t[:, :b].masked_fill(satisfied, float("-inf"))
            i2t[:, b:] = i2t[:, b:].masked_fill(owner[None, :] != torch.arange(b)[:, None], float("-inf"))
            t2i = sims[:, :b].T.masked_fill(satisfied.T, float("-inf"))
            target = torch.arange(b)
            loss = 0.5 * (F.cross_entropy(i2t, target) + F.cross_entropy(t2i, target))
            # Wrong images (off-palette, blob, missing or extra object, ...) must score below the right image.
            if usable.any():
                owner_w = torch.arange(b).repeat_interleave(self.wrong_per_scene)
                s_wrong = (self.model.image(wrong) * texts[owner_w]).sum(-1)
                s_right = (img * texts[:b]).sum(-1)[owner_w]
                loss = loss + F.softplus(scale * (s_wrong - s_right))[usable].mean()
            return loss

        loss = loss_of(images, wrong_images, texts)
        if self.adv_eps > 0:  # Madry-style adversarial training, half clean and half adversarial
            adv_right, adv_wrong = pgd_l2(
                lambda r, w: loss_of(r, w, texts.detach()), (images, wrong_images), self.adv_eps, self.adv_steps
            )
            loss = 0.5 * (loss + loss_of(adv_right, adv_wrong, texts))
        if self.preferences is not None:
            loss = loss + self.pref_weight * self._preference_loss(step)
        for g in self.opt.param_groups:
            g["lr"] = self.lr * 0.5 * (1 + np.cos(np.pi * step / total))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def category_probabilities(weights: dict[str, float] | None) -> np.ndarray | None:
    """Sampling probabilities of the prompt categories from relative weights (unnamed categories weigh 1).

    Args:
        weights: ``{category: weight}``, e.g. ``{"position": 3.0}``; ``None`` or empty for uniform sampling.

    Returns:
        ``(len(CATEGORIES),)`` probabilities in :data:`CATEGORIES` order, or ``None`` for uniform sampling.

    Raises:
        ValueError: for an unknown category or a negative weight, naming the valid categories.
    """
    if not weights:
        return None
    unknown = sorted(set(weights) - set(CATEGORIES))
    if unknown:
        raise ValueError(f"unknown categories {unknown} in the category weights; use some of {list(CATEGORIES)}.")
    w = np.array([float(weights.get(c, 1.0)) for c in CATEGORIES])
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"category weights must be >= 0 with a positive sum, got {weights}.")
    return w / w.sum()


def parse_category_weights(text: str) -> dict[str, float]:
    """``"position=3,counting=2"`` -> ``{"position": 3.0, "counting": 2.0}`` (``""`` -> ``{}``)."""
    out: dict[str, float] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:  # no "=" (value "") or not a number
            raise ValueError(f"bad category weight {item!r}; write category=weight, e.g. position=3.") from None
    return out


def pgd_l2(loss_fn: Callable[..., Tensor], inputs: tuple[Tensor, ...], eps: float, steps: int) -> tuple[Tensor, ...]:
    """Projected gradient ascent of ``loss_fn(*inputs)`` within an L2 ball of radius ``eps`` per image.

    The perturbed images stay in ``[0, 1]``; the model's parameters receive no gradient. A reward trained on
    such worst-case images has input gradients that follow the scene rather than pixel patterns (the
    "perceptually aligned gradients" of adversarially robust models), so a generator climbing it has to change
    what is drawn.

    Args:
        loss_fn: Maps the perturbed inputs to a scalar loss to maximise.
        inputs: Image batches ``(N_i, 3, H, W)`` in ``[0, 1]``.
        eps: L2 radius of each image's perturbation (pixel units, e.g. 0.5 for a 32x32x3 image).
        steps: Ascent steps, each of length ``2.5 * eps / steps``.

    Returns:
        The perturbed batches, detached, in the order of ``inputs``.
    """
    step_size = 2.5 * eps / steps

    def project(delta: Tensor, x: Tensor) -> Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        delta = delta * (eps / norm).clamp(max=1.0)
        return (x + delta).clamp(0.0, 1.0) - x

    deltas = [project(torch.randn_like(x) * eps / x[0].numel() ** 0.5, x) for x in inputs]
    for _ in range(steps):
        deltas = [d.detach().requires_grad_(True) for d in deltas]
        grads = torch.autograd.grad(loss_fn(*(x + d for x, d in zip(inputs, deltas, strict=True))), deltas)
        deltas = [
            project(d + step_size * g / g.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1), x)
            for d, g, x in zip(deltas, grads, inputs, strict=True)
        ]
    return tuple((x + d).detach() for x, d in zip(inputs, deltas, strict=True))


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


def main() -> None:
    parser = argparse.ArgumentParser(description="Train ShapesScore")
    parser.add_argument("--out", type=Path, default=Path("leapalign/worlds/shapes/assets/shapes_score"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wrong-per-scene", type=int, default=1, help="corrupted images per scene and step")
    parser.add_argument(
        "--corruptions",
        default=",".join(DEFAULT_CORRUPTIONS),
        help=f"comma-separated image-side negatives, from {','.join(CORRUPTIONS)} (default: the shipped reward's)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    parser.add_argument("--init", type=Path, help="start from these ShapesScore weights (default: random init)")
    parser.add_argument(
        "--adv-eps", type=float, default=0.0, help="L2 radius of adversarial training (0: off; e.g. 0.5)"
    )
    parser.add_argument("--adv-steps", type=int, default=3, help="PGD steps per batch when --adv-eps > 0")
    parser.add_argument(
        "--preferences",
        type=Path,
        nargs="+",
        default=None,
        help="preference files of generated images judged by the annotator (python -m leapalign.worlds.shapes.preferences)",
    )
    parser.add_argument("--pref-pairs", type=int, default=64, help="(accepted, rejected) pairs per step")
    parser.add_argument("--pref-weight", type=float, default=1.0, help="weight of the pairwise preference loss")
    parser.add_argument(
        "--segmenter", type=Path, help="annotator weights to use, frozen, as the image backbone (default: pixels)"
    )
    parser.add_argument(
        "--category-weights",
        default="",
        help="relative sampling weights of prompt categories, e.g. position=3 (default: uniform)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    corruptions = tuple(c for c in args.corruptions.split(",") if c)
    category_weights = parse_category_weights(args.category_weights)
    trainer = ScoreTrainer(
        seed=args.seed,
        batch=args.batch,
        lr=args.lr,
        wrong_per_scene=args.wrong_per_scene,
        corruptions=corruptions,
        adv_eps=args.adv_eps,
        adv_steps=args.adv_steps,
        init=args.init,
        preferences=Preferences.load(args.preferences) if args.preferences else None,
        pref_pairs=args.pref_pairs,
        pref_weight=args.pref_weight,
        segmenter=args.segmenter,
        category_weights=category_weights,
    )
    elapsed, final_loss = fit(trainer.step, args.steps, "shapes_score")
    trainer.model.eval()
    metrics = measure(trainer.model, trainer.reward, corruptions=corruptions)
    card = {
        "command": f"python -m leapalign.worlds.shapes.score_train --out {args.out} --steps {args.steps} "
        f"--batch {args.batch} --seed {args.seed} --wrong-per-scene {args.wrong_per_scene} "
        f"--corruptions {','.join(corruptions)} --lr {args.lr}"
        + (f" --init {args.init}" if args.init else "")
        + (f" --segmenter {args.segmenter}" if args.segmenter else "")
        + (f" --category-weights {args.category_weights}" if args.category_weights else "")
        + (f" --adv-eps {args.adv_eps} --adv-steps {args.adv_steps}" if args.adv_eps > 0 else "")
        + (
            f" --preferences {' '.join(map(str, args.preferences))} --pref-pairs {args.pref_pairs} "
            f"--pref-weight {args.pref_weight}"
            if args.preferences
            else ""
        ),
        "init": str(args.init) if args.init else None,
        "segmenter": str(args.segmenter) if args.segmenter else None,
        "category_weights": category_weights or None,
        "adv_eps": args.adv_eps,
        "corruptions": list(corruptions),
        "seed": args.seed,
        "steps": args.steps,
        "batch": args.batch,
        "train_seconds": round(elapsed, 1),
        "final_loss": final_loss,
        "heldout": metrics,
    }
    trainer.model.save(args.out, card)
    logger.info("saved ShapesScore to %s: %s", args.out, json.dumps(metrics))


if __name__ == "__main__":
    main()
