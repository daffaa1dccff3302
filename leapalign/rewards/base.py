"""The reward contract: images in ``[0, 1]`` of shape ``(B, 3, H, W)`` plus prompts, to scores ``(B,)``.

Every score a reward returns goes through :func:`check_scores` (in :class:`WeightedReward`, the training reward, and
in the evaluation runner), so a reward that breaks the contract fails at its first call with a message that names
it and what it returned. Non-finite scores are not an error here: the trainer skips such steps and counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from leapalign.rewards.normalize import RunningNormalizer


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

    # Optional hook, not part of the protocol's required members: a reward class (or registered builder) may define
    # ``required_weights(**args) -> list[leapalign.rewards.weights.WeightFile]``, called with the constructor's
    # arguments, so that ``leapalign.preflight.check_inputs`` finds missing weight files before the model is built.

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


NORMALIZE_MODES = ("raw", "running")
COMBINE_MODES = ("sum", "min")


@dataclass
class RewardConfig:
    """The training reward: a weighted sum of one or more terms (``reward.terms``).

    Attributes:
        terms: The rewards and their weights.
        normalize: ``raw`` (default): ``sum_i w_i r_i`` on each reward's own scale. ``running``: each term is
            first standardised by a running mean and standard deviation of its training scores
            (:mod:`leapalign.rewards.normalize`), so the weights set the balance whatever the scales. Hinge
            thresholds (``method.threshold``) then apply to the normalised sum.
        momentum: EMA decay of the running statistics (``normalize: running``).
        combine: ``sum`` (default): the weighted sum. ``min``: the smallest weighted term of each sample, the
            worst-case optimisation of a reward ensemble (Coste et al., 2023): an image must please every member,
            so a direction that fools one member but not the others earns nothing.
    """

    terms: list[RewardTermConfig] = field(default_factory=lambda: [RewardTermConfig()])
    normalize: str = "raw"
    momentum: float = 0.99
    combine: str = "sum"

    def __post_init__(self) -> None:
        if not self.terms:
            raise ValueError("reward.terms is empty: name at least one reward, e.g. reward=brightness.")
        if self.normalize not in NORMALIZE_MODES:
            raise ValueError(f"reward.normalize={self.normalize!r} is invalid; allowed: {', '.join(NORMALIZE_MODES)}.")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"reward.momentum={self.momentum} must be in [0, 1).")
        if self.combine not in COMBINE_MODES:
            raise ValueError(f"reward.combine={self.combine!r} is invalid; allowed: {', '.join(COMBINE_MODES)}.")


class RewardContractError(ValueError):
    """A reward returned something other than one floating-point score per image (with a gradient when it claims
    to be differentiable and the images carry one)."""


def check_scores(reward: RewardFn, scores: object, images: Tensor) -> Tensor:
    """Checks what ``reward`` returned for ``images`` against the contract and returns it.

    Checked: a ``torch.Tensor``, of shape ``(B,)``, floating point, and, when gradients are on, the images carry
    one and the reward says ``differentiable = True``, attached to the graph. Values are not checked: a NaN score
    is left to the trainer, which skips the step and counts it (``train.max_nan_steps``).

    Raises:
        RewardContractError: Naming the reward, what it returned and what it must return.
    """
    name = getattr(reward, "name", type(reward).__name__)
    batch = images.shape[0]
    if not isinstance(scores, Tensor):
        raise RewardContractError(
            f"reward {name!r} returned a {type(scores).__name__} ({str(scores)[:60]}); a reward must return a "
            f"torch.Tensor of shape ({batch},), one float score per image."
        )
    if scores.shape != (batch,):
        raise RewardContractError(
            f"reward {name!r} returned shape {tuple(scores.shape)}; a reward must return one score per image, "
            f"shape ({batch},) (e.g. scores.reshape({batch}) or .mean over the other dimensions)."
        )
    if not torch.is_floating_point(scores):
        raise RewardContractError(
            f"reward {name!r} returned a {scores.dtype} tensor; a reward must return floating-point scores "
            f"(e.g. scores.float())."
        )
    needs_grad = torch.is_grad_enabled() and images.requires_grad and bool(getattr(reward, "differentiable", False))
    if needs_grad and not scores.requires_grad:
        raise RewardContractError(
            f"reward {name!r} says differentiable=True but returned scores without a gradient (detached, computed "
            f"under torch.no_grad or through numpy/PIL); keep the computation in torch on the input images, or set "
            f"differentiable = False (then only the policy-gradient methods can train on it)."
        )
    return scores


class WeightedReward:
    """A weighted sum of rewards, :math:`r = \\sum_i w_i n_i(r_i)`, or their minimum :math:`\\min_i w_i n_i(r_i)`
    (``combine="min"``); it remembers each term of the last call.

    Every term's scores are checked by :func:`check_scores` (type, shape, dtype, gradient); non-finite scores pass
    through to the trainer, which skips the step.

    ``n_i`` is the identity (``normalize="raw"``) or a :class:`~leapalign.rewards.normalize.RunningNormalizer`
    updated by every call (``normalize="running"``).

    Attributes:
        last_terms: Detached raw per-term scores of the last call, ``{name: Tensor (B,)}``, for logging (a name
            that repeats gets ``_2``, ``_3``, ... in order, e.g. the members of an ensemble of one reward).
        normalizers: One running normaliser per term (``normalize="running"``), else empty.
    """

    def __init__(
        self,
        terms: Sequence[tuple[RewardFn, float]],
        normalize: str = "raw",
        momentum: float = 0.99,
        combine: str = "sum",
    ) -> None:
        if not terms:
            raise ValueError("a weighted reward needs at least one term.")
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize={normalize!r} is invalid; allowed: {', '.join(NORMALIZE_MODES)}.")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine={combine!r} is invalid; allowed: {', '.join(COMBINE_MODES)}.")
        self.terms = list(terms)
        names = [r.name for r, _ in self.terms]
        if normalize == "running" and len(set(names)) != len(names):
            raise ValueError(f"reward terms must have distinct names to be logged separately, got {names}.")
        self.keys = [n if names[:i].count(n) == 0 else f"{n}_{names[:i].count(n) + 1}" for i, n in enumerate(names)]
        self.combine = combine
        self.name = "+".join(names) if combine == "sum" or len(names) == 1 else f"min({','.join(names)})"
        self.differentiable = all(r.differentiable for r, _ in self.terms)
        self.normalize = normalize
        self.normalizers = [RunningNormalizer(momentum) for _ in self.terms] if normalize == "running" else []
        self.last_terms: dict[str, Tensor] = {}

    def state_dict(self) -> dict[str, dict[str, float]]:
        """The running statistics by term name (empty for ``raw``), for checkpoints."""
        if not self.normalizers:
            return {}
        return {r.name: n.state_dict() for (r, _), n in zip(self.terms, self.normalizers, strict=True)}

    def load_state_dict(self, state: dict[str, dict[str, float]]) -> None:
        """Restores :meth:`state_dict`; every term must be present."""
        if not self.normalizers:
            return
        for (reward, _), norm in zip(self.terms, self.normalizers, strict=True):
            if reward.name not in state:
                raise ValueError(f"reward state has no statistics for {reward.name!r} (has {sorted(state)}).")
            norm.load_state_dict(state[reward.name])

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        weighted: list[Tensor] = []
        self.last_terms = {}
        for i, (reward, weight) in enumerate(self.terms):
            score = check_scores(reward, reward(images, prompts), images)
            self.last_terms[self.keys[i]] = score.detach()
            if self.normalizers:
                score = self.normalizers[i](score)
            weighted.append(weight * score)
        stacked = torch.stack(weighted)  # (terms, B)
        return stacked.sum(0) if self.combine == "sum" else stacked.min(0).values


def check_images(images: Tensor) -> None:
    """Raises a ``ValueError`` unless ``images`` is a float tensor of shape ``(B, 3, H, W)``."""
    if images.ndim != 4 or images.shape[1] != 3 or not torch.is_floating_point(images):
        raise ValueError(f"rewards take float images of shape (B, 3, H, W) in [0, 1], got {tuple(images.shape)}.")
