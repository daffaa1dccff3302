"""The ``evaluation.*`` configuration: what the trainer evaluates (before, every N steps, after) and what
``leapalign eval`` evaluates by default."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leapalign.eval.evaluators import EVALUATORS
from leapalign.rewards.base import RewardTermConfig


@dataclass
class EvaluatorConfig:
    """One evaluator (``evaluation.evaluators`` entry).

    Attributes:
        name: A registered evaluator (``leapalign list evaluators``) or an import path ``my_pkg.evals:MyEval``.
        args: Keyword arguments of its builder.
    """

    name: str = ""
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not EVALUATORS.is_known(self.name):
            raise ValueError(EVALUATORS.unknown(self.name) + ".")


@dataclass
class EvalConfig:
    """Evaluation during training and the defaults of ``leapalign eval`` (``evaluation.*`` keys).

    Image ``r`` of prompt ``i`` uses the seed ``seed + max(1000, P) * r + i`` (``P`` prompts), so every evaluation
    of a run (before, every N steps, after, and ``leapalign eval``) draws the same noise for the same image.

    Attributes:
        enabled: Evaluate during training: before the first step, every ``every_n_steps`` steps and after the last
            (EMA weights when EMA is on); each evaluation goes to ``<run>/eval/<tag>/`` and its scalars to
            ``metrics.jsonl`` (``eval/<reward>.mean``, ``.ci95_low``, ``.ci95_high``, ``eval/<evaluator>.<key>``).
        every_n_steps: Optimiser steps between evaluations during training (0: only before and after).
        curve_images_per_prompt: Images per prompt of the evaluations every ``every_n_steps`` steps (``None``: all
            ``images_per_prompt``): the first ones of each prompt, so their noise is the before and after
            evaluations' too. Every evaluation adds a point on this subset to the run's proxy-versus-gold curve
            (``curve.json``, ``proxy_gold.png``; :mod:`leapalign.eval.curves`).
        prompts: A prompt set: a registered name (``builtin:eval32``, those of plugins), a prompt file (JSON list,
            JSON lines, ``.csv`` / ``.tsv`` with a ``prompt`` column, or text) or an import path (see
            :mod:`leapalign.data.prompts`).
        limit: Only the first ``limit`` prompts (``None``: all).
        rewards: Rewards to report; empty: the training reward's terms. Add held-out rewards beside the training
            reward to see reward hacking as it happens.
        evaluators: Evaluators that judge each image against its prompt's metadata (e.g. a world's exact
            GenEval-style evaluator).
        images_per_prompt: Images per prompt.
        seed: Base seed of the evaluation noise (fixed, independent of the training seed).
        num_steps: Euler steps of the evaluation sampler.
        batch_size: Images per sampling batch (does not change the results).
        grid_prompts: How many prompts the sample grids show (one row each, captioned).
    """

    enabled: bool = False
    every_n_steps: int = 0
    curve_images_per_prompt: int | None = None
    prompts: str = "builtin:eval32"
    limit: int | None = None
    rewards: list[RewardTermConfig] = field(default_factory=list)
    evaluators: list[EvaluatorConfig] = field(default_factory=list)
    images_per_prompt: int = 2
    seed: int = 0
    num_steps: int = 25
    batch_size: int = 64
    grid_prompts: int = 12

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("evaluation.prompts is empty; name a prompt file or set, e.g. builtin:eval32.")
        for key in ("images_per_prompt", "num_steps", "batch_size", "grid_prompts"):
            if getattr(self, key) < 1:
                raise ValueError(f"invalid value for evaluation.{key}: it must be an integer >= 1.")
        if self.every_n_steps < 0:
            raise ValueError("invalid value for evaluation.every_n_steps: it must be an integer >= 0 (0: off).")
        k = self.curve_images_per_prompt
        if k is not None and not 1 <= k <= self.images_per_prompt:
            raise ValueError(
                f"invalid value for evaluation.curve_images_per_prompt: {k}; it must be between 1 and "
                f"evaluation.images_per_prompt ({self.images_per_prompt}), or null for all of them."
            )
        if self.limit is not None and self.limit < 1:
            raise ValueError("invalid value for evaluation.limit: it must be an integer >= 1, or null for all.")
