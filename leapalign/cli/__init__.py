"""Command line: ``leapalign train | eval | sample | configs | rewards | list | accelerate-config``.

Errors in the input are reported in one line (exit code 2); set LEAPALIGN_DEBUG=1 for the traceback.

Examples:
    leapalign train --config tiny/leapalign train.max_steps=20 method.alpha=0.1
    leapalign train --config tiny/leapalign method=drtune run.output_dir=runs/drtune
    leapalign train                                  # the default: LeapAlign on ShapesWorld
    leapalign eval --run runs/demo                   # ShapesScore + ShapesEval on the held-out prompts
    leapalign eval --run runs/flux evaluation.prompts=hpdv2_test.json evaluation.rewards=hpsv2,pickscore --compare base
    leapalign list models                            # what is registered (built-ins and plugins)
    leapalign sample --run runs/drtune --prompt "a red circle" --num 4 --out grid.png
    accelerate launch --config_file "$(leapalign accelerate-config ddp_cpu)" -m leapalign.cli train ...
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from leapalign.config import ConfigError, list_configs, load_config

ACCELERATE_CONFIGS = ("single", "ddp", "ddp_cpu", "fsdp")
DEFAULT_CONFIG = "shapes/leapalign"  # the embedded default: LeapAlign on ShapesWorld


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cmd_train(args: argparse.Namespace) -> int:
    from leapalign.trainer import train

    cfg = load_config(args.config, args.overrides + (["run.resume=true"] if args.resume else []))
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        reward = result.last_metrics.get("reward_mean")
        tail = f", last reward_mean {reward:.4f}" if reward is not None else ""
        print(f"trained {result.step} steps; run directory {result.run_dir}{tail}")
        if result.eval_before and result.eval_after:
            from leapalign.eval.report import comparison_table

            print(f"\nEvaluation ({result.eval_after['num_images']} images, EMA weights after):")
            print(comparison_table(result.eval_before, result.eval_after))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from leapalign.data import load_prompts
    from leapalign.images import image_grid
    from leapalign.sampling import generate

    cfg, model = _load_run_or_config(args)
    prompts = args.prompt or load_prompts(cfg.data.prompts)[:2]
    prompts = [p for p in prompts for _ in range(args.num)]
    seeds = [args.seed + i for i in range(len(prompts))]
    images = generate(
        model,
        prompts,
        seeds=seeds,
        num_steps=args.steps or cfg.sampler.num_steps,
        height=cfg.sampler.height,
        width=cfg.sampler.width,
    )
    captions = prompts[:: args.num]
    image_grid(images, ncols=args.num, scale=max(1, 128 // cfg.sampler.width), captions=captions).save(args.out)
    print(f"wrote {args.out} ({len(prompts)} images)")
    return 0


def _load_run_or_config(args: argparse.Namespace):
    """The model described by ``--run`` (a run's latest checkpoint, or one checkpoint) or ``--config``."""
    from leapalign.cli.sources import build_source, resolve_source

    source = resolve_source(args.config, args.run, args.overrides, args.no_ema)
    if source.weights is not None:
        print(f"loaded {source.weights}")
    return source.cfg, build_source(source)


def _cmd_eval(args: argparse.Namespace) -> int:
    from leapalign.cli.eval import print_summary, run_eval_command

    print(print_summary(run_eval_command(args)))
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    for name in list_configs():
        print(name)
    return 0


def _registries() -> dict[str, object]:
    from leapalign.data import PROMPT_SETS
    from leapalign.eval import EVALUATORS
    from leapalign.models import MODELS
    from leapalign.regularizers import REPLAY_SOURCES
    from leapalign.rewards import REWARDS

    return {
        "models": MODELS,
        "rewards": REWARDS,
        "evaluators": EVALUATORS,
        "prompt-sets": PROMPT_SETS,
        "replay-sources": REPLAY_SOURCES,
    }


def _cmd_list(args: argparse.Namespace) -> int:
    registries = _registries()
    for kind in [args.kind] if args.kind else list(registries):
        print(f"{kind}:")
        for name, doc in registries[kind].describe().items():  # type: ignore[attr-defined]
            print(f"  {name:20s} {doc}")
    print("\nAnything else: an import path such as my_pkg.module:Object, or a plugin (docs/plugins.md).")
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    from leapalign.rewards import REWARDS

    for name, doc in REWARDS.describe().items():
        print(f"{name:20s} {doc}")
    print("\nModel-based rewards load their weights on first use; see docs/rewards.md for the files and where to")
    print("put them (reward args, or the folder named by $LEAPALIGN_REWARD_DIR).")
    print("\nAny other reward: reward=package.module:Object (a class or a function), or with arguments")
    print('"reward.terms=[{name: package.module:Object, args: {key: value}}]".')
    return 0


def _cmd_accelerate_config(args: argparse.Namespace) -> int:
    print(Path(__file__).parent / "accelerate" / f"{args.name}.yaml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a flow model with a reward")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="shipped config name (see `leapalign configs`) or YAML path"
    )
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in run.output_dir")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 method=refl")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate an image grid from a base model or a trained run")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the model (ignored with --run)")
    p.add_argument("--run", default=None, help="a training run directory: loads its latest checkpoint")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    p.add_argument("--prompt", action="append", help="prompt (repeatable)")
    p.add_argument("--num", type=int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: sampler.num_steps)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "eval", help="evaluate a base model or a checkpoint on a prompt set with rewards (resumable; --compare)"
    )
    from leapalign.cli.eval import add_eval_arguments

    add_eval_arguments(p, DEFAULT_CONFIG)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=_cmd_configs)
    p = sub.add_parser("rewards", help="list the available rewards")
    p.set_defaults(func=_cmd_rewards)
    p = sub.add_parser("list", help="list what is registered: models, rewards, evaluators, prompt sets, replay sources")
    p.add_argument("kind", nargs="?", choices=["models", "rewards", "evaluators", "prompt-sets", "replay-sources"])
    p.set_defaults(func=_cmd_list)
    p = sub.add_parser("accelerate-config", help="print the path of a shipped accelerate config")
    p.add_argument("name", choices=ACCELERATE_CONFIGS)
    p.set_defaults(func=_cmd_accelerate_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leapalign`` command."""
    _setup_logging()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after other options too (argparse takes one run of positionals only)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("LEAPALIGN_DEBUG"):
            raise
        print(f"leapalign: error: {err}", file=sys.stderr)
        return 2
