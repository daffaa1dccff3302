"""The reward contract: images in ``[0, 1]`` of shape ``(B, 3, H, W)`` plus prompts, to scores ``(B,)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class RewardFn(Protocol):
    """A reward model.

    Attributes:
        name: Short name used in logs (``reward/<name>``).
        differentiable: Whether gradients flow from the score to the input images. Direct-gradient methods
            refuse rewards where this is ``False``.
    """

    name: str
    differentiable: bool

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores a batch.

        Args:
            images: RGB images in ``[0, 1]``, shape ``(B, 3, H, W)``.
            prompts: ``B`` prompts.

        Returns:
            Scores of shape ``(B,)``, higher is better.
        """
        ...


@dataclass
class RewardTermConfig:
    """One reward in a (weighted) reward: ``name`` from the registry or a dotted import path.

    Attributes:
        name: Registry name (see ``leapalign rewards``) or ``package.module:Object`` / ``package.module.Object``.
        weight: Multiplier of this reward in the sum.
        args: Keyword arguments passed to the reward's constructor.
    """

    name: str = "brightness"
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class RewardConfig:
    """The training reward: a weighted sum of one or more terms (``reward.terms``)."""

    terms: list[RewardTermConfig] = field(default_factory=lambda: [RewardTermConfig()])

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("reward.terms is empty: name at least one reward, e.g. reward=brightness.")


class WeightedReward:
    """A weighted sum of rewards, :math:`r = \\sum_i w_i r_i`; it remembers each term of the last call.

    Attributes:
        last_terms: Detached per-term scores of the last call, ``{name: Tensor (B,)}``, for logging.
    """

    def __init__(self, terms: Sequence[tuple[RewardFn, float]]) -> None:
        if not terms:
            raise ValueError("a weighted reward needs at least one term.")
        self.terms = list(terms)
        self.name = "+".join(r.name for r, _ in self.terms)
        self.differentiable = all(r.differentiable for r, _ in self.terms)
        self.last_terms: dict[str, Tensor] = {}

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        total: Tensor | None = None
        self.last_terms = {}
        for reward, weight in self.terms:
            score = reward(images, prompts)
            if score.shape != (images.shape[0],):
                raise ValueError(
                    f"reward {reward.name!r} returned shape {tuple(score.shape)}; a reward must return one score "
                    f"per image, shape ({images.shape[0]},)."
                )
            self.last_terms[reward.name] = score.detach()
            total = weight * score if total is None else total + weight * score
        assert total is not None
        return total


def check_images(images: Tensor) -> None:
    """Raises a ``ValueError`` unless ``images`` is a float tensor of shape ``(B, 3, H, W)``."""
    if images.ndim != 4 or images.shape[1] != 3 or not torch.is_floating_point(images):
        raise ValueError(f"rewards take float images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}.")
