"""ShapesScore training with the research options of ``docs/shapesworld.md``, on top of the shipped reward's trainer
(:class:`leapalign.worlds.shapes.score_train.ScoreTrainer`).

- ``--init DIR``: fine-tune given weights instead of training from scratch;
- ``--adv-eps R --adv-steps K``: Madry-style adversarial training, half clean and half on PGD images (:func:`pgd_l2`);
- ``--preferences FILE ...``: an HPS-style pairwise loss on generated images judged by the annotator
  (:mod:`research.shapesworld.preferences`);
- ``--segmenter DIR``: a frozen annotator segmenter as the image backbone
  (:class:`research.shapesworld.segmenter.SegmenterScoreModel`);
- ``--category-weights position=3``: skewed sampling of the prompt categories.

With none of them it trains exactly as ``python -m leapalign.worlds.shapes.score_train``. Examples (from the
repository root)::

    python -m research.shapesworld.score_research --out runs/rew/v7_adv --adv-eps 0.5 \\
        --init leapalign/worlds/shapes/assets/shapes_score --steps 600 --lr 3e-4
    python -m research.shapesworld.score_research --out runs/rew/v8 --preferences runs/prefs/base.safetensors \\
        --init leapalign/worlds/shapes/assets/shapes_score --steps 600 --lr 3e-4
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.worlds.shapes.prompts import CATEGORIES, load_metadata
from leapalign.worlds.shapes.score import ShapesScoreModel
from leapalign.worlds.shapes.score_train import DEFAULT_CORRUPTIONS, ScoreTrainer, build_parser, command_line, train
from research.shapesworld.preferences import Preferences
from research.shapesworld.segmenter import SceneSegmenter, SegmenterScoreArch, SegmenterScoreModel, load_score_model


class ResearchScoreTrainer(ScoreTrainer):
    """:class:`~leapalign.worlds.shapes.score_train.ScoreTrainer` with the research options (see the module
    docstring); the first five arguments are the trainer's."""

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
        if init and segmenter:
            raise ValueError("give --init or --segmenter, not both: a model from --init keeps its own backbone.")
        self.adv_eps, self.adv_steps = float(adv_eps), int(adv_steps)
        self.init, self.segmenter = init, segmenter
        self.category_p = category_probabilities(category_weights)
        super().__init__(seed, batch, lr, wrong_per_scene, corruptions)
        self.preferences, self.pref_pairs, self.pref_weight = preferences, int(pref_pairs), float(pref_weight)
        if preferences is not None:
            self._pairs = preferences.pairs()
            if len(self._pairs[0]) == 0:
                raise ValueError("the preference files hold no prompt with both an accepted and a rejected image.")
            self._train_prompts = [m["prompt"] for m in load_metadata("train")]

    def build_model(self) -> ShapesScoreModel:
        if self.init:
            return load_score_model(Path(self.init)).train()
        if self.segmenter:
            seg = SceneSegmenter.load(Path(self.segmenter))
            model = SegmenterScoreModel(SegmenterScoreArch(segmenter_width=seg.arch.width))
            model.image.segmenter.load_state_dict(seg.state_dict())
            return model
        return super().build_model()

    def sample_category(self, rng: np.random.Generator) -> str:
        if self.category_p is None:  # uniform (the shipped reward's stream of random numbers)
            return super().sample_category(rng)
        return CATEGORIES[rng.choice(len(CATEGORIES), p=self.category_p)]

    def loss(self, step: int) -> Tensor:
        batch = self.prepare(step)
        loss = self.contrastive_loss(batch, batch.images, batch.wrong, batch.texts)
        if self.adv_eps > 0:  # Madry-style adversarial training, half clean and half adversarial
            adv_right, adv_wrong = pgd_l2(
                lambda r, w: self.contrastive_loss(batch, r, w, batch.texts.detach()),
                (batch.images, batch.wrong),
                self.adv_eps,
                self.adv_steps,
            )
            loss = 0.5 * (loss + self.contrastive_loss(batch, adv_right, adv_wrong, batch.texts))
        if self.preferences is not None:
            loss = loss + self.pref_weight * self._preference_loss(step)
        return loss

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser("Train ShapesScore with the research options")
    parser.set_defaults(out=None)  # never the shipped weights' folder by default
    parser.add_argument("--init", type=Path, help="start from these ShapesScore weights (default: random init)")
    parser.add_argument("--adv-eps", type=float, default=0.0, help="L2 radius of adversarial training (0: off)")
    parser.add_argument("--adv-steps", type=int, default=3, help="PGD steps per batch when --adv-eps > 0")
    parser.add_argument(
        "--preferences",
        type=Path,
        nargs="+",
        default=None,
        help="preference files of generated images judged by the annotator (research.shapesworld.preferences)",
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
    args = parser.parse_args(argv)
    if args.out is None:
        parser.error("give --out DIR (a research run never writes the shipped weights by default)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    category_weights = parse_category_weights(args.category_weights)
    trainer = ResearchScoreTrainer(
        args.seed,
        args.batch,
        args.lr,
        args.wrong_per_scene,
        args.corruptions,
        adv_eps=args.adv_eps,
        adv_steps=args.adv_steps,
        init=args.init,
        preferences=Preferences.load(args.preferences) if args.preferences else None,
        pref_pairs=args.pref_pairs,
        pref_weight=args.pref_weight,
        segmenter=args.segmenter,
        category_weights=category_weights,
    )
    command = (
        command_line(args, "research.shapesworld.score_research")
        + (f" --init {args.init}" if args.init else "")
        + (f" --segmenter {args.segmenter}" if args.segmenter else "")
        + (f" --category-weights {args.category_weights}" if args.category_weights else "")
        + (f" --adv-eps {args.adv_eps} --adv-steps {args.adv_steps}" if args.adv_eps > 0 else "")
        + (
            f" --preferences {' '.join(map(str, args.preferences))} --pref-pairs {args.pref_pairs} "
            f"--pref-weight {args.pref_weight}"
            if args.preferences
            else ""
        )
    )
    card = {
        "init": str(args.init) if args.init else None,
        "segmenter": str(args.segmenter) if args.segmenter else None,
        "category_weights": category_weights or None,
        "adv_eps": args.adv_eps,
    }
    train(trainer, args, command, card)


if __name__ == "__main__":
    main()
