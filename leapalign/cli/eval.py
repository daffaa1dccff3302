"""``leapalign eval``: evaluate a base model or a checkpoint on a prompt set with a list of rewards, optionally
side by side with a second model (``--compare``). Resumable: rerunning the same command continues.

Outputs (``--out``, default ``<run>/eval`` or ``runs/eval``): ``eval.json``, ``images.csv``, ``samples.png``,
``report.md``, ``images/`` (GenEval's folder layout) and, with ``--compare``, the two evaluations in ``A/`` and
``B/`` plus ``compare.json``, ``compare.png`` and ``report.md`` at the top.

The command's options are declared in :mod:`leapalign.cli` (which imports this module only to run it).
"""

from __future__ import annotations

import argparse
import gc
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from leapalign.cli.sources import ModelSource, build_source, resolve_compare, resolve_source
from leapalign.config import ConfigError, ExperimentConfig
from leapalign.data.prompts import load_prompt_set
from leapalign.eval.evaluators import build_evaluator
from leapalign.eval.paired import change_cell
from leapalign.eval.report import headline_keys, summarize_run, write_comparison, write_outputs
from leapalign.eval.runner import SamplingSettings, run_evaluation
from leapalign.rewards import RewardTermConfig, build_reward_term

logger = logging.getLogger(__name__)


def reward_terms(cfg: ExperimentConfig) -> list[RewardTermConfig]:
    """The rewards to report: ``evaluation.rewards``, else the training reward's terms (weight 1 each). A reward
    named several times (the members of an ensemble) must be told apart by its arguments."""
    terms = [RewardTermConfig(t.name, 1.0, dict(t.args)) for t in (cfg.evaluation.rewards or cfg.reward.terms)]
    counts = Counter(t.name for t in terms)
    repeated = sorted(n for n, c in counts.items() if c > 1)
    if repeated:
        raise ConfigError(
            f"rewards {repeated} appear several times (an ensemble); evaluate one member at a time with "
            f"evaluation.rewards={repeated[0]} and evaluation.rewards.0.args.KEY=VALUE."
        )
    return terms


def _sampling(cfg: ExperimentConfig) -> SamplingSettings:
    ev = cfg.evaluation
    return SamplingSettings(
        images_per_prompt=ev.images_per_prompt,
        seed=ev.seed,
        num_steps=ev.num_steps,
        height=cfg.sampler.height,
        width=cfg.sampler.width,
        guidance=cfg.model.guidance_scale,
        batch_size=ev.batch_size,
    )


def _evaluate_one(source: ModelSource, out: Path, common: dict[str, Any], args: argparse.Namespace) -> tuple:
    logger.info("evaluating %s into %s", source.label, out)
    sampling = replace(common["sampling"], guidance=source.cfg.model.guidance_scale)
    model = build_source(source)
    try:
        run = run_evaluation(
            model,
            common["prompts"],
            common["rewards"],
            sampling,
            common["evaluators"],
            out,
            source.identity(),
            common["reward_identity"],
            overwrite=args.overwrite,
            progress=not args.no_progress,
        )
    finally:
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    metrics = summarize_run(run, common["embeds"])
    return run, write_outputs(run, metrics, source.label, grid_rows=source.cfg.evaluation.grid_prompts)


def run_eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``leapalign eval``; returns ``{"out": Path, "metrics": eval.json content, "compare": ... | None}``."""
    overrides, trust = list(args.overrides), args.trust_config
    main = resolve_source(args.config, args.run, overrides, args.no_ema, trust_config=trust)
    other = resolve_compare(args.compare, main, overrides, args.no_ema, trust_config=trust) if args.compare else None
    cfg = main.cfg
    ev = cfg.evaluation
    prompts = load_prompt_set(ev.prompts, limit=ev.limit, key="evaluation.prompts")
    terms = reward_terms(cfg)
    rewards = [build_reward_term(t) for t in terms]
    evaluators = [build_evaluator(e.name, e.args) for e in ev.evaluators]
    by_name = {r.name: r for r in rewards}
    missing = [n for n in args.diversity_reward if not hasattr(by_name.get(n), "embed")]
    if missing:
        raise ConfigError(f"--diversity-reward {missing}: not an evaluated reward with image features (embed).")
    common = {
        "prompts": prompts,
        "rewards": rewards,
        "evaluators": evaluators,
        "sampling": _sampling(cfg),
        "reward_identity": [{"name": t.name, "args": t.args} for t in terms],
        "embeds": {n: by_name[n].embed for n in args.diversity_reward},
    }
    out = Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else Path("runs/eval"))
    if other is None:
        run, metrics = _evaluate_one(main, out, common, args)
        return {"out": out, "metrics": metrics, "compare": None, "run": run}
    labels = (main.label, other.label if other.label != main.label else f"{other.label} (compare)")
    run_a, ma = _evaluate_one(main, out / "A", common, args)
    run_b, mb = _evaluate_one(other, out / "B", common, args)
    comp = write_comparison(run_a, run_b, ma, mb, labels, out)
    return {"out": out, "metrics": ma, "metrics_b": mb, "compare": comp, "run": run_a}


def print_summary(result: dict[str, Any]) -> str:
    """The lines ``leapalign eval`` prints."""
    ma, comp = result["metrics"], result["compare"]
    keys = headline_keys(ma)
    if comp is None:
        lines = [f"{k:32s} {ma[k]:.4f}" for k in keys]
        lines.append(f"wrote {result['out'] / 'eval.json'}, images.csv, samples.png and report.md")
        return "\n".join(lines)
    mb, (la, lb) = result["metrics_b"], comp["labels"]
    lines = [f"{'metric':32s} {la[:14]:>14s} {lb[:14]:>14s}  {'change [95% paired CI]':30s} win rate of {la}"]
    for k in keys:
        name = k.rsplit(".", 1)[0]
        w = comp.get(name)
        tail = f"  {w['win_rate']:.3f}" if isinstance(w, dict) and k.endswith((".mean", ".overall")) else ""
        change = change_cell(comp["paired"][k]) if k in comp["paired"] else ""
        lines.append(f"{k:32s} {ma[k]:14.4f} {mb.get(k, float('nan')):14.4f}  {change:30s}{tail}")
    lines.append(f"wrote {result['out'] / 'report.md'}, compare.json, compare.png and A/, B/")
    return "\n".join(lines)
