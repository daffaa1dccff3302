"""``leapalign eval``: evaluate a base model or a checkpoint on a prompt set with a list of rewards, optionally
side by side with a second model (``--compare``). Resumable: rerunning the same command continues.

Outputs (``--out``, default ``<run>/eval`` or ``runs/eval``): ``eval.json``, ``images.csv``, ``samples.png``,
``report.md``, ``images/`` (GenEval's folder layout) and, with ``--compare``, the two evaluations in ``A/`` and
``B/`` plus ``compare.json``, ``compare.png`` and ``report.md`` at the top.
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
import yaml

from leapalign.config import ConfigError
from leapalign.eval.models import ModelSource, build_source, resolve_compare, resolve_source
from leapalign.eval.prompts import load_prompt_set
from leapalign.eval.report import summarize_run, write_comparison, write_outputs
from leapalign.eval.runner import SamplingSettings, run_evaluation
from leapalign.rewards import RewardTermConfig, build_reward_term

logger = logging.getLogger(__name__)


def add_eval_arguments(p: argparse.ArgumentParser, default_config: str) -> None:
    """Declares the ``leapalign eval`` options on ``p``."""
    p.add_argument("--config", default=default_config, help="config naming the base model (ignored with --run)")
    p.add_argument("--run", default=None, help="a training run folder (latest checkpoint) or a checkpoint folder")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    p.add_argument("--compare", default=None, help="a second model, side by side: a run, a checkpoint, or 'base'")
    p.add_argument(
        "--prompts", default=None, help=".txt / .jsonl / .json file or shapes:eval (default: evaluation.prompts)"
    )
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    p.add_argument("--images-per-prompt", type=int, default=None, help="default: evaluation.images_per_prompt")
    p.add_argument("--seed", type=int, default=None, help="base seed (default: evaluation.seed)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: evaluation.num_steps)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: model.guidance_scale)")
    p.add_argument("--resolution", type=int, default=None, help="square resolution (sets --height and --width)")
    p.add_argument("--height", type=int, default=None, help="default: sampler.height")
    p.add_argument("--width", type=int, default=None, help="default: sampler.width")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: evaluation.batch_size)")
    p.add_argument("--rewards", default=None, help="comma-separated rewards (default: the config's reward terms)")
    p.add_argument(
        "--reward-arg",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a reward argument, e.g. hpsv2.checkpoint=/w/HPS_v2.1_compressed.pt (repeatable)",
    )
    p.add_argument(
        "--diversity-reward",
        action="append",
        default=[],
        metavar="NAME",
        help="also measure diversity in this reward's image-feature space (CLIP-based rewards; repeatable)",
    )
    p.add_argument("--out", default=None, help="output folder (default: <run>/eval or runs/eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.path=/models/FLUX.1-dev")


def reward_terms(names: str | None, args: list[str], configured: list[RewardTermConfig]) -> list[RewardTermConfig]:
    """The rewards to evaluate: ``names`` (with the configured arguments of same-named terms) or the configured
    terms; ``NAME.KEY=VALUE`` arguments on top (values parsed as YAML scalars). A name configured several times
    (the members of an ensemble) is ambiguous: it starts from the reward's defaults, and a warning says so."""
    by_name = {t.name: t for t in configured}
    counts = Counter(t.name for t in configured)
    repeated = {n for n, c in counts.items() if c > 1}
    if names:
        for n in repeated & set(names.split(",")):
            logger.warning(
                "reward %r appears %d times in the run's config (an ensemble); evaluating it with its default "
                "arguments plus --reward-arg (e.g. --reward-arg %s.path=...)",
                n,
                counts[n],
                n,
            )
        terms = [
            RewardTermConfig(n, 1.0, dict(by_name[n].args) if n in by_name and n not in repeated else {})
            for n in names.split(",")
        ]
    else:
        terms = [RewardTermConfig(t.name, 1.0, dict(t.args)) for t in configured]
    for item in args:
        key, sep, value = item.partition("=")
        name, dot, arg = key.rpartition(".")
        match = [t for t in terms if t.name == name]
        if not sep or not dot or not match:
            raise ConfigError(
                f"--reward-arg {item!r}: expected NAME.KEY=VALUE with NAME one of {', '.join(t.name for t in terms)}."
            )
        match[0].args[arg] = yaml.safe_load(value)
    return terms


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _sampling(args: argparse.Namespace, source: ModelSource) -> SamplingSettings:
    cfg, pick = source.cfg, _pick
    return SamplingSettings(
        images_per_prompt=pick(args.images_per_prompt, cfg.evaluation.images_per_prompt),
        seed=pick(args.seed, cfg.evaluation.seed),
        num_steps=pick(args.steps, cfg.evaluation.num_steps),
        height=pick(args.height, pick(args.resolution, cfg.sampler.height)),
        width=pick(args.width, pick(args.resolution, cfg.sampler.width)),
        guidance=cfg.model.guidance_scale,
        batch_size=pick(args.batch_size, cfg.evaluation.batch_size),
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
    return run, write_outputs(run, metrics, source.label)


def run_eval_command(args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``leapalign eval``; returns ``{"out": Path, "metrics": eval.json content, "compare": ... | None}``."""
    overrides = list(args.overrides)
    if args.guidance is not None:
        overrides.append(f"model.guidance_scale={args.guidance}")
    main = resolve_source(args.config, args.run, overrides, args.no_ema)
    other = resolve_compare(args.compare, main, overrides, args.no_ema) if args.compare else None
    cfg = main.cfg
    prompts = load_prompt_set(args.prompts or cfg.evaluation.prompts, limit=args.limit)
    terms = reward_terms(args.rewards, args.reward_arg, cfg.reward.terms)
    rewards = [build_reward_term(t) for t in terms]
    by_name = {r.name: r for r in rewards}
    missing = [n for n in args.diversity_reward if not hasattr(by_name.get(n), "embed")]
    if missing:
        raise ConfigError(f"--diversity-reward {missing}: not an evaluated reward with image features (embed).")
    common = {
        "prompts": prompts,
        "rewards": rewards,
        "sampling": _sampling(args, main),
        "reward_identity": [{"name": t.name, "args": t.args} for t in terms],
        "embeds": {n: by_name[n].embed for n in args.diversity_reward},
    }
    out = Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else Path("runs/eval"))
    if other is None:
        run, metrics = _evaluate_one(main, out, common, args)
        return {"out": out, "metrics": metrics, "compare": None, "reward_names": run.reward_names}
    labels = (main.label, other.label if other.label != main.label else f"{other.label} (compare)")
    run_a, ma = _evaluate_one(main, out / "A", common, args)
    run_b, mb = _evaluate_one(other, out / "B", common, args)
    comp = write_comparison(run_a, run_b, ma, mb, labels, out)
    return {"out": out, "metrics": ma, "metrics_b": mb, "compare": comp, "reward_names": run_a.reward_names}


def print_summary(result: dict[str, Any]) -> str:
    """The lines ``leapalign eval`` prints."""
    names, ma, comp = result["reward_names"], result["metrics"], result["compare"]
    keys = [f"{n}.mean" for n in names] + [k for k in ma if k.startswith(("shapes_eval.", "diversity."))]
    if comp is None:
        lines = [f"{k:32s} {ma[k]:.4f}" for k in keys]
        lines.append(f"wrote {result['out'] / 'eval.json'}, images.csv, samples.png and report.md")
        return "\n".join(lines)
    mb, (la, lb) = result["metrics_b"], comp["labels"]
    lines = [f"{'metric':32s} {la[:14]:>14s} {lb[:14]:>14s}  win rate of {la}"]
    for k in keys:
        name = k.rsplit(".", 1)[0]
        w = comp.get("shapes_eval" if k == "shapes_eval.overall" else name)
        tail = f"  {w['win_rate']:.3f}" if isinstance(w, dict) and k.endswith((".mean", ".overall")) else ""
        lines.append(f"{k:32s} {ma[k]:14.4f} {mb.get(k, float('nan')):14.4f}{tail}")
    lines.append(f"wrote {result['out'] / 'report.md'}, compare.json, compare.png and A/, B/")
    return "\n".join(lines)
