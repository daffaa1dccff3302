"""Evaluation during training, on the one evaluation path (:func:`~leapalign.eval.runner.run_evaluation`).

The trainer evaluates before the first step, every ``evaluation.every_n_steps`` steps and after the last one, on
the same prompts and noise each time. Each evaluation is a full evaluation folder ``<run>/eval/<tag>/`` (images,
``eval.json``, ``images.csv``, a captioned ``samples.png``, ``report.md``); its scalars also go to
``metrics.jsonl`` / TensorBoard as ``eval/<key>``. The before / after evaluations are copied to
``eval_before.json`` / ``eval_after.json`` and ``samples_before.png`` / ``samples_after.png`` at the run's top.
The evaluations every N steps may draw fewer images (``evaluation.curve_images_per_prompt``); every evaluation
adds a point on that fixed subset to the run's proxy-versus-gold curve (:mod:`leapalign.eval.curves`).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from leapalign.data.prompts import load_prompt_set
from leapalign.eval.config import EvalConfig
from leapalign.eval.curves import add_point, curve_point
from leapalign.eval.evaluators import build_evaluator
from leapalign.eval.report import summarize_run, write_outputs
from leapalign.eval.runner import SamplingSettings, run_evaluation
from leapalign.eval.store import write_json
from leapalign.models.base import FlowModel
from leapalign.rewards import build_reward_term
from leapalign.rewards.base import RewardFn, RewardTermConfig, WeightedReward

logger = logging.getLogger(__name__)

HEADLINE_TAGS = ("before", "after")
SCALAR_SUFFIXES = (".mean", ".ci95_low", ".ci95_high")


def _term_key(term: RewardTermConfig) -> str:
    return json.dumps({"name": term.name, "args": term.args}, sort_keys=True, default=str)


class TrainingEvaluation:
    """What the trainer evaluates, built and checked before the model exists.

    Args:
        cfg: The ``evaluation.*`` section.
        reward_terms: The training reward's terms (the default ``evaluation.rewards``).
        training_reward: The built training reward; members whose name and arguments match an evaluation
            reward are reused instead of loading a second copy of their weights.
        height: Image height (``sampler.height``).
        width: Image width (``sampler.width``).
        guidance: The model's guidance scale (recorded in the settings).

    Raises:
        ValueError: The prompt set, a reward or an evaluator is unknown, or the prompts lack the metadata an
            evaluator reads.
    """

    def __init__(
        self,
        cfg: EvalConfig,
        reward_terms: Sequence[RewardTermConfig],
        training_reward: WeightedReward | None,
        height: int,
        width: int,
        guidance: float | None,
    ) -> None:
        self.cfg = cfg
        self.prompt_set = load_prompt_set(cfg.prompts, limit=cfg.limit, key="evaluation.prompts")
        terms = [RewardTermConfig(t.name, 1.0, dict(t.args)) for t in (cfg.rewards or reward_terms)]
        names = [t.name for t in terms] + [e.name for e in cfg.evaluators]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(
                f"evaluation: {repeated} named several times (e.g. the members of a reward ensemble, which "
                f"evaluation.rewards defaults to); name the rewards to report, e.g. evaluation.rewards={repeated[0]}."
            )
        built: dict[str, RewardFn] = {}
        if training_reward is not None:
            for (reward, _), term in zip(training_reward.terms, reward_terms, strict=True):
                built.setdefault(_term_key(term), reward)
        self.rewards = [built.get(_term_key(t)) or build_reward_term(t) for t in terms]
        self.reward_identity = [{"name": t.name, "args": t.args} for t in terms]
        self.evaluators = [build_evaluator(e.name, e.args) for e in cfg.evaluators]
        for evaluator in self.evaluators:
            evaluator.check(self.prompt_set.entries)
        self.sampling = SamplingSettings(
            images_per_prompt=cfg.images_per_prompt,
            seed=cfg.seed,
            num_steps=cfg.num_steps,
            height=height,
            width=width,
            guidance=guidance,
            batch_size=cfg.batch_size,
        )

    def due(self, step: int, max_steps: int) -> bool:
        """Whether an intermediate evaluation follows optimiser step ``step`` (the last step has ``after``)."""
        every = self.cfg.every_n_steps
        return bool(self.cfg.enabled and every and step % every == 0 and step < max_steps)

    def __call__(self, model: FlowModel, run_dir: Path, tag: str, identity: dict[str, Any]) -> dict[str, Any]:
        """Evaluates ``model`` into ``<run_dir>/eval/<tag>/`` (replacing an earlier one) and returns ``eval.json``.

        Args:
            model: The model with the weights to evaluate already in place.
            run_dir: The run directory.
            tag: ``before``, ``step_000050``, ``after`` ...
            identity: What identifies the model and its weights (written to ``settings.json``).
        """
        logger.info("evaluating (%s) on %s", tag, self.cfg.prompts)
        k = self.cfg.curve_images_per_prompt or self.cfg.images_per_prompt
        sampling = self.sampling if tag in HEADLINE_TAGS else replace(self.sampling, images_per_prompt=k)
        run = run_evaluation(
            model,
            self.prompt_set,
            self.rewards,
            sampling,
            self.evaluators,
            run_dir / "eval" / tag,
            identity,
            self.reward_identity,
            overwrite=True,
            progress=False,
        )
        metrics = write_outputs(run, summarize_run(run), f"{tag} ({run_dir.name})", grid_rows=self.cfg.grid_prompts)
        if tag in HEADLINE_TAGS:
            write_json(run_dir / f"eval_{tag}.json", metrics)
            shutil.copyfile(run_dir / "eval" / tag / "samples.png", run_dir / f"samples_{tag}.png")
        proxy = f"{self.rewards[0].name}.mean" if self.rewards else None
        gold = f"{self.evaluators[0].name}.overall" if self.evaluators else None
        add_point(run_dir, curve_point(run, int(identity.get("step", 0)), k), proxy, gold)
        return metrics

    def scalars(self, metrics: dict[str, Any]) -> dict[str, float]:
        """The ``eval/<key>`` scalars logged to ``metrics.jsonl``: each reward's mean and interval, and every
        evaluator key."""
        names = [r.name for r in self.rewards]
        keys = [f"{n}{s}" for n in names for s in SCALAR_SUFFIXES]
        keys += [k for k in metrics if k.startswith(tuple(f"{e.name}." for e in self.evaluators))]
        return {f"eval/{k}": float(metrics[k]) for k in keys}
