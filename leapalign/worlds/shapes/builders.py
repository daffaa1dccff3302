"""The objects ShapesWorld registers (:mod:`leapalign.worlds.shapes.plugin` declares them by import path, with
their descriptions, so that listing the registries imports none of this): its evaluator, replay source and
ShapesEval reward behind the library's protocols, and the builders of its model and learned rewards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from leapalign.eval.stats import category_accuracy
from leapalign.models import ModelConfig
from leapalign.rewards.base import RewardFn
from leapalign.worlds.shapes.prompts import CATEGORIES, by_category, load_metadata, metadata_by_prompt
from leapalign.worlds.shapes.scenes import SHAPES


class ShapesEvaluator:
    """ShapesEval behind the library's :class:`~leapalign.eval.evaluators.Evaluator` protocol.

    Each image gets 1.0 when every object of its prompt's metadata is found with the right shape, colour, count
    and relation (and nothing it excludes), else 0.0; the summary is the accuracy per GenEval category and
    ``overall``, their mean.
    """

    name = "shapes_eval"

    def check(self, entries: Sequence[dict]) -> None:
        for i, entry in enumerate(entries):
            objects = entry.get("include", []) + entry.get("exclude", [])
            if entry.get("tag") not in CATEGORIES or not objects or any(o.get("class") not in SHAPES for o in objects):
                raise ValueError(
                    f"shapes_eval judges ShapesWorld prompts only, and prompt {i} ({entry['prompt'][:50]!r}) carries "
                    f"no ShapesWorld metadata (a tag in {', '.join(CATEGORIES)} and include/exclude objects among "
                    f"{', '.join(SHAPES)}); evaluate on shapes:eval or shapes:train, or drop evaluation.evaluators."
                )

    def __call__(self, images: Tensor, entries: Sequence[dict]) -> list[float]:
        from leapalign.worlds.shapes.evaluator import evaluate

        return [float(ok) for ok in evaluate(images, list(entries)).correct]

    def summarize(self, values: Sequence[float], entries: Sequence[dict]) -> dict[str, float]:
        return category_accuracy(values, [str(e.get("tag")) for e in entries], CATEGORIES)


class ShapesReplay:
    """Rendered ShapesWorld training scenes, category-balanced, a deterministic function of ``(seed, index)``.

    Args:
        seed: Seed of the scenes (offset from the pretraining seeds so the draws are new).
        batch_size: Scenes per call.
        height: Must be the world's resolution (32).
        width: Likewise.
    """

    def __init__(self, seed: int, batch_size: int, height: int = 32, width: int = 32) -> None:
        from leapalign.worlds.shapes.model import RESOLUTION

        if (height, width) != (RESOLUTION, RESOLUTION):
            raise ValueError(
                f"train.replay_source=shapes:train renders {RESOLUTION}x{RESOLUTION} scenes, but the sampler is "
                f"{height}x{width}; set sampler.height=sampler.width={RESOLUTION}."
            )
        self.seed, self.batch_size = 10_000 + seed, batch_size
        self.records = by_category(load_metadata("train"))

    def batch(self, index: int) -> tuple[list[str], Tensor]:
        """Prompts and images ``(B, 3, 32, 32)`` in ``[0, 1]`` of draw ``index``."""
        from leapalign.worlds.shapes.pretrain import make_batch

        return make_batch(self.records, self.seed, index, self.batch_size)


class ShapesEvalReward:
    """ShapesEval as a (non-differentiable) training reward: 1.0 for an image the exact evaluator accepts, else
    0.0, the analogue of Flow-GRPO's GenEval reward. A prompt is judged by its ShapesWorld metadata, looked up by
    its text among the training and held-out prompts; the policy-gradient methods can train on it."""

    name = "shapes_eval"
    differentiable = False

    def __init__(self) -> None:
        self.metadata = metadata_by_prompt()

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        from leapalign.worlds.shapes.evaluator import evaluate

        unknown = [p for p in prompts if p not in self.metadata]
        if unknown:
            raise ValueError(f"reward shapes_eval judges ShapesWorld prompts only; unknown prompt {unknown[0]!r}.")
        correct = evaluate(images.detach().float().cpu(), [self.metadata[p] for p in prompts]).correct
        return torch.tensor([float(ok) for ok in correct], device=images.device)


def shapes_model(cfg: ModelConfig):  # -> FluxAdapter
    """The shipped base model (``model.name=shapes``); its module is imported when it is built."""
    from leapalign.worlds.shapes.model import build_shapes_model

    return build_shapes_model(cfg)


def shapes_score(**kwargs) -> RewardFn:
    """:class:`~leapalign.worlds.shapes.score.ShapesScore` with ``kwargs``, imported when it is built."""
    from leapalign.worlds.shapes.score import ShapesScore

    return ShapesScore(**kwargs)


def shapes_layout(**kwargs) -> RewardFn:
    """:class:`~leapalign.worlds.shapes.layout.ShapesLayout` with ``kwargs``, imported when it is built."""
    from leapalign.worlds.shapes.layout import ShapesLayout

    return ShapesLayout(**kwargs)


def train_prompts() -> list[dict]:
    """The training prompts with their GenEval-style metadata (prompt set ``shapes:train``)."""
    return load_metadata("train")


def eval_prompts() -> list[dict]:
    """The held-out prompts with their GenEval-style metadata (prompt set ``shapes:eval``)."""
    return load_metadata("eval")
