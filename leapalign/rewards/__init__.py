"""Rewards: the registry, weighted sums and a dotted-import-path escape hatch for user rewards.

Example:
    >>> reward = build_reward(RewardConfig(terms=[RewardTermConfig("brightness", 1.0)]))
    >>> scores = reward(images, prompts)          # images (B, 3, H, W) in [0, 1] -> (B,)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from leapalign.rewards.base import RewardConfig, RewardFn, RewardTermConfig, WeightedReward
from leapalign.rewards.synthetic import Brightness, PngCompressibility, PromptColor, Saturation, TargetColor

REWARDS: dict[str, tuple[Callable[..., RewardFn], str]] = {
    "brightness": (Brightness, "mean pixel intensity; no weights needed"),
    "saturation": (Saturation, "mean colour saturation; no weights needed"),
    "target_color": (TargetColor, "closeness to one colour (args: color); no weights needed"),
    "prompt_color": (PromptColor, "closeness to the prompt's colour word; no weights needed"),
    "png_compressibility": (PngCompressibility, "negative PNG size in kB; NOT differentiable"),
    "shapes_score": (
        lambda **kw: _shapes_score(**kw),
        "ShapesWorld's learned CLIP-style reward (shipped weights; args: path); cosine similarity in [-1, 1]",
    ),
}


def _shapes_score(**kwargs: Any) -> RewardFn:
    from leapalign.shapes.score import ShapesScore

    return ShapesScore(**kwargs)


class _FunctionReward:
    """Adapts a plain function ``fn(images, prompts) -> Tensor[B]`` to :class:`RewardFn`."""

    def __init__(self, fn: Callable[[Tensor, Sequence[str]], Tensor], name: str) -> None:
        self.fn = fn
        self.name = getattr(fn, "name", name)
        self.differentiable = bool(getattr(fn, "differentiable", True))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.fn(images, prompts)


def _import_object(path: str) -> Any:
    module_name, _, attr = path.partition(":") if ":" in path else path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"cannot import reward {path!r} ({err}); give 'package.module:Object'.") from err


def build_reward_term(term: RewardTermConfig) -> RewardFn:
    """Builds one reward from a registry name or a dotted import path (class or function)."""
    if term.name in REWARDS:
        return REWARDS[term.name][0](**term.args)
    if "." not in term.name and ":" not in term.name:
        raise ValueError(
            f"unknown reward {term.name!r}; known rewards: {', '.join(sorted(REWARDS))}, "
            f"or a dotted import path such as 'my_pkg.rewards:MyReward'."
        )
    obj = _import_object(term.name)
    if isinstance(obj, type):
        return obj(**term.args)
    if callable(obj):
        if term.args:
            raise ValueError(f"reward {term.name!r} is a function; it takes no args (got {term.args}).")
        return _FunctionReward(obj, term.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    raise ValueError(f"reward {term.name!r} is neither a class nor a function.")


def build_reward(cfg: RewardConfig) -> WeightedReward:
    """Builds the (weighted) training reward described by ``cfg``."""
    return WeightedReward([(build_reward_term(t), t.weight) for t in cfg.terms])


__all__ = [
    "REWARDS",
    "RewardConfig",
    "RewardFn",
    "RewardTermConfig",
    "WeightedReward",
    "build_reward",
    "build_reward_term",
]
