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
from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from leapalign.registry import Registry
from leapalign.rewards.base import RewardConfig, RewardFn, RewardTermConfig, WeightedReward
from leapalign.rewards.synthetic import Brightness, PngCompressibility, PromptColor, Saturation, TargetColor

_BUILTIN: dict[str, tuple[Callable[..., RewardFn], str]] = {
    "brightness": (Brightness, "mean pixel intensity; no weights needed"),
    "saturation": (Saturation, "mean colour saturation; no weights needed"),
    "target_color": (TargetColor, "closeness to one colour (args: color); no weights needed"),
    "prompt_color": (PromptColor, "closeness to the prompt's colour word; no weights needed"),
    "png_compressibility": (PngCompressibility, "negative PNG size in kB; NOT differentiable"),
    "hpsv2": (
        lambda **kw: _lazy("hpsv2", "HPSv2", **kw),
        "HPSv2.1 (default) / HPSv2.0 human preference score, cosine ~0.2-0.4; needs HPS_v2.1_compressed.pt "
        "(hub xswu/HPSv2; args: checkpoint, version, tokenizer) and a CLIP tokenizer "
        "(laion/CLIP-ViT-H-14-laion2B-s32B-b79K); no OpenCLIP needed",
    ),
    "pickscore": (
        lambda **kw: _lazy("pickscore", "PickScore", **kw),
        "PickScore, logit_scale * cosine ~18-24; needs yuvalkirstain/PickScore_v1 and the processor "
        "laion/CLIP-ViT-H-14-laion2B-s32B-b79K (folders or hub ids; args: model, processor, scale)",
    ),
    "clip_score": (
        lambda **kw: _lazy("clip_score", "ClipScore", **kw),
        "CLIP image-prompt cosine; needs any transformers CLIP folder or hub id "
        "(default openai/clip-vit-large-patch14; args: model, scale)",
    ),
    "aesthetic": (
        lambda **kw: _lazy("aesthetic", "LaionAesthetic", **kw),
        "LAION aesthetic predictor v2, ~1-10, prompt ignored; needs sac+logos+ava1-l14-linearMSE.pth "
        "(args: head) and openai/clip-vit-large-patch14 (args: clip_model)",
    ),
    "image_reward": (
        lambda **kw: _lazy("image_reward", "ImageReward", **kw),
        "ImageReward (BLIP), ~-2..2; needs the `image-reward` package (pip install image-reward) and "
        "THUDM/ImageReward weights (args: model, med_config)",
    ),
    "hpsv3": (
        lambda **kw: _hpsv3(**kw),
        "NOT SUPPORTED: HPSv3 is a Qwen2-VL-7B reward model; wrap its `hpsv3` package as a dotted-path reward "
        "(see docs/rewards.md)",
    ),
}


REWARDS: Registry = Registry("reward", "reward.terms[].name")
"""Registered rewards: ``builder(**args) -> RewardFn``; plugins add theirs with ``REWARDS.register``."""
for _name, (_builder, _doc) in _BUILTIN.items():
    REWARDS.register(_name, _builder, _doc)


def _lazy(module: str, cls: str, **kwargs: Any) -> RewardFn:
    """Imports a model-based reward class only when it is used (keeps ``import leapalign.rewards`` light)."""
    return getattr(importlib.import_module(f"leapalign.rewards.{module}"), cls)(**kwargs)


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


def build_reward_term(term: RewardTermConfig) -> RewardFn:
    """Builds one reward from a registry name or a dotted import path (class or function)."""
    if term.name in REWARDS:
        return REWARDS.resolve(term.name)(**term.args)
    obj = REWARDS.resolve(term.name)  # an import path, or an error listing the registered rewards
    if isinstance(obj, type):
        return obj(**term.args)
    if callable(obj):
        if term.args:
            raise ValueError(f"reward {term.name!r} is a function; it takes no args (got {term.args}).")
        return _FunctionReward(obj, term.name.rsplit(":", 1)[-1].rsplit(".", 1)[-1])
    raise ValueError(f"reward {term.name!r} is neither a class nor a function.")


def build_reward(cfg: RewardConfig) -> WeightedReward:
    """Builds the (weighted) training reward described by ``cfg``."""
    return WeightedReward(
        [(build_reward_term(t), t.weight) for t in cfg.terms],
        normalize=cfg.normalize,
        momentum=cfg.momentum,
        combine=cfg.combine,
    )


__all__ = [
    "REWARDS",
    "RewardConfig",
    "RewardFn",
    "RewardTermConfig",
    "WeightedReward",
    "build_reward",
    "build_reward_term",
]
