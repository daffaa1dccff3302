"""Rewards: the registry :data:`REWARDS`, weighted sums and a dotted-import-path fallback for user rewards.

The model-based rewards (``hpsv2``, ``pickscore``, ``clip_score``, ``aesthetic``, ``image_reward``) load their
weights lazily on the first call; see ``docs/rewards.md`` for what each needs and where to put it.

Example:
    >>> reward = build_reward(RewardConfig(terms=[RewardTermConfig("brightness", 1.0)]))
    >>> scores = reward(images, prompts)          # images (B, 3, H, W) in [0, 1] -> (B,)
    >>> hps = build_reward_term(RewardTermConfig("hpsv2", args={"checkpoint": "/weights/HPS_v2.1_compressed.pt"}))
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from leapalign.registry import REWARDS
from leapalign.rewards.base import (
    RewardConfig,
    RewardContractError,
    RewardFn,
    RewardTermConfig,
    WeightedReward,
    check_scores,
)
from leapalign.rewards.weights import WeightFile

OVERRIDE_SYNTAX = '"reward.terms=[{name: pkg.mod:Obj, args: {key: value}}]"'


class _Lazy:
    """Builder of a model-based reward whose module is imported only when it is built (keeps ``import
    leapalign.rewards`` light); it reports the class's signature and the weights the class needs."""

    def __init__(self, module: str, cls: str, weights: Callable[[dict[str, Any]], list[WeightFile]]) -> None:
        self.module, self.cls, self.weights = module, cls, weights

    def target(self) -> type:
        return getattr(importlib.import_module(f"leapalign.rewards.{self.module}"), self.cls)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.target())

    def __call__(self, **kwargs: Any) -> RewardFn:
        return self.target()(**kwargs)

    def required_weights(self, **kwargs: Any) -> list[WeightFile]:
        hook = getattr(self.target(), "required_weights", None)  # the class's own hook wins
        if callable(hook):
            return list(hook(**kwargs))
        bound = inspect.signature(self.target()).bind(**kwargs)
        bound.apply_defaults()
        return self.weights(dict(bound.arguments))


def _hpsv2_weights(a: dict[str, Any]) -> list[WeightFile]:
    from leapalign.rewards.hpsv2 import HPS_FILES, HPS_REPO

    version = a["version"]
    return [
        WeightFile("checkpoint", a["checkpoint"], f"HPS{version}", HPS_FILES.get(version), HPS_REPO),
        WeightFile("tokenizer", a["tokenizer"], "HPSv2 tokenizer"),
    ]


def _aesthetic_weights(a: dict[str, Any]) -> list[WeightFile]:
    from leapalign.rewards.aesthetic import AESTHETIC_FILE, AESTHETIC_URL

    head = WeightFile("head", a["head"], "LAION aesthetic predictor v2", AESTHETIC_FILE, url=AESTHETIC_URL)
    return [head, WeightFile("clip_model", a["clip_model"], "aesthetic CLIP ViT-L/14")]


def _image_reward_weights(a: dict[str, Any]) -> list[WeightFile]:
    from leapalign.rewards.image_reward import INSTALL_HINT

    if importlib.util.find_spec("ImageReward") is None:
        raise ValueError(INSTALL_HINT)
    out = []  # the package downloads its named models itself; only local paths can be checked
    for arg, what in (("model", "ImageReward checkpoint"), ("med_config", "ImageReward med_config.json")):
        spec = a[arg]
        if spec is not None and spec.endswith((".pt", ".pth", ".json")):
            out.append(WeightFile(arg, spec, what, spec.replace("\\", "/").rsplit("/", 1)[-1]))
    return out


def _pickscore_weights(a: dict[str, Any]) -> list[WeightFile]:
    return [
        WeightFile("model", a["model"], "PickScore model"),
        WeightFile("processor", a["processor"], "PickScore processor"),
    ]


# The builders of the model-based rewards; :mod:`leapalign.registry` declares them in :data:`REWARDS` by import
# path, with their descriptions, so listing the rewards imports nothing.
_HPSV2 = _Lazy("hpsv2", "HPSv2", _hpsv2_weights)
_PICKSCORE = _Lazy("pickscore", "PickScore", _pickscore_weights)
_CLIP_SCORE = _Lazy("clip_score", "ClipScore", lambda a: [WeightFile("model", a["model"], "CLIP score model")])
_AESTHETIC = _Lazy("aesthetic", "LaionAesthetic", _aesthetic_weights)
_IMAGE_REWARD = _Lazy("image_reward", "ImageReward", _image_reward_weights)


def _hpsv3(**kwargs: Any) -> RewardFn:
    raise ValueError(
        "reward hpsv3 is not supported: HPSv3 is a Qwen2-VL-7B-Instruct model with its own reward head, prompt "
        "template and dynamic-resolution image processor, and no faithful, tested implementation of it ships with "
        "leapalign. If the official `hpsv3` package is installed, wrap it as a reward class and name it by import "
        "path (reward.terms=[{name: my_pkg.rewards:HPSv3Reward}]); docs/rewards.md shows how."
    )


class _FunctionReward:
    """Adapts a plain function ``fn(images, prompts) -> Tensor[B]`` to :class:`RewardFn`."""

    def __init__(self, fn: Callable[[Tensor, Sequence[str]], Tensor], name: str) -> None:
        self.fn = fn
        self.name = getattr(fn, "name", name)
        self.differentiable = bool(getattr(fn, "differentiable", True))

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.fn(images, prompts)


def _is_function_reward(term: RewardTermConfig, obj: object) -> bool:
    return term.name not in REWARDS and not isinstance(obj, type) and callable(obj)


def _accepted(sig: inspect.Signature) -> str:
    names = [
        f"{p.name} (required)" if p.default is p.empty else p.name
        for p in sig.parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    return ", ".join(names) or "none"


def check_reward_args(term: RewardTermConfig, key: str | None = None) -> None:
    """Checks ``term.args`` against the reward's constructor without building it.

    Args:
        term: The reward term.
        key: Its config entry (``reward.terms.0``) for the message; ``None``: the general override syntax.

    Raises:
        ValueError: An unknown or missing argument; one line naming the reward, the arguments it accepts and
            the override that sets them.
    """
    obj = REWARDS.resolve(term.name)  # an unknown name raises, listing the registered rewards
    if _is_function_reward(term, obj):
        if term.args:
            raise ValueError(f"reward {term.name!r} is a function; it takes no args (got {term.args}).")
        return
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):  # no introspectable signature: the constructor checks its own arguments
        return
    try:
        sig.bind(**term.args)
    except TypeError as err:
        listed = OVERRIDE_SYNTAX.replace("pkg.mod:Obj", term.name)
        how = f"{key}.args.KEY=VALUE or {listed.replace('reward.terms', key.rsplit('.', 1)[0])}" if key else listed
        raise ValueError(
            f"reward {term.name!r}: {err} (got args {dict(term.args)}); it accepts: {_accepted(sig)}. Set them "
            f"with {how}."
        ) from None


def required_weights(term: RewardTermConfig) -> list[WeightFile]:
    """The weight files and folders reward ``term`` will load, from its (or its builder's) ``required_weights``
    hook called with ``term.args``; empty for rewards without the hook (they need no files, or do not say)."""
    obj = REWARDS.resolve(term.name)
    hook = getattr(obj, "required_weights", None)
    return list(hook(**term.args)) if callable(hook) else []


def build_reward_term(term: RewardTermConfig, key: str | None = None) -> RewardFn:
    """Builds one reward from a registry name or a dotted import path (class or function).

    Args:
        term: The reward term.
        key: Its config entry (``reward.terms.0``), for error messages.

    Raises:
        ValueError: Unknown reward or arguments (:func:`check_reward_args`).
    """
    check_reward_args(term, key)
    obj = REWARDS.resolve(term.name)  # an import path, or an error listing the registered rewards
    if term.name in REWARDS or isinstance(obj, type):
        return obj(**term.args)
    if callable(obj):
        return _FunctionReward(obj, term.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    raise ValueError(f"reward {term.name!r} is neither a class nor a function.")


def build_reward(cfg: RewardConfig) -> WeightedReward:
    """Builds the (weighted) training reward described by ``cfg``; its calls check every term's scores
    (:func:`~leapalign.rewards.base.check_scores`)."""
    return WeightedReward(
        [(build_reward_term(t, f"reward.terms.{i}"), t.weight) for i, t in enumerate(cfg.terms)],
        normalize=cfg.normalize,
        momentum=cfg.momentum,
        combine=cfg.combine,
    )


__all__ = [
    "OVERRIDE_SYNTAX",
    "REWARDS",
    "RewardConfig",
    "RewardContractError",
    "RewardFn",
    "RewardTermConfig",
    "WeightFile",
    "WeightedReward",
    "build_reward",
    "build_reward_term",
    "check_reward_args",
    "check_scores",
    "required_weights",
]
