"""Command line: ``leapalign train | eval | sample | configs | rewards | accelerate-config``.

Errors in the input are reported in one line (exit code 2); set LEAPALIGN_DEBUG=1 for the traceback.

Examples:
    leapalign train --config tiny/leapalign train.max_steps=20 method.alpha=0.1
    leapalign train --config tiny/leapalign method=drtune run.output_dir=runs/drtune
    leapalign train                                  # the default: LeapAlign on ShapesWorld
    leapalign eval --run runs/demo                   # ShapesScore + ShapesEval on the held-out prompts
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
            from leapalign.evaluation import comparison_table

            print(f"\nHeld-out evaluation ({result.eval_after['num_images']} images, EMA weights after):")
            print(comparison_table(result.eval_before, result.eval_after))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from leapalign.data import load_prompts
    from leapalign.sampling import generate, image_grid

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
    image_grid(images, ncols=args.num, scale=max(1, 128 // cfg.sampler.width)).save(args.out)
    print(f"wrote {args.out} ({len(prompts)} images)")
    return 0


def _load_run_or_config(args: argparse.Namespace):
    """The model described by ``--run`` (with its latest checkpoint) or ``--config``; returns (cfg, model)."""
    import torch

    from leapalign import checkpoint as ckpt
    from leapalign.models import build_model

    if args.run is not None:
        run = Path(args.run)
        if not (run / "config.yaml").is_file():
            raise ConfigError(f"--run {run}: no config.yaml there; give the output_dir of a `leapalign train` run.")
        cfg = load_config(str(run / "config.yaml"), args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    model = build_model(cfg.model, device="cuda" if torch.cuda.is_available() else "cpu")
    if args.run is not None:
        latest = ckpt.latest_checkpoint(Path(args.run))
        if latest is None:
            raise ConfigError(f"--run {args.run}: no complete checkpoint under checkpoints/.")
        use_ema = not args.no_ema and (latest / "ema.safetensors").is_file()
        weights = latest / ("ema.safetensors" if use_ema else "trainable.safetensors")
        ckpt.load_into(ckpt.named_trainable(model.transformer), weights)
        print(f"loaded {weights}")
    return cfg, model


def _cmd_eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from leapalign.evaluation import evaluate_model

    cfg, model = _load_run_or_config(args)
    ecfg = replace(
        cfg.evaluation,
        images_per_prompt=args.images_per_prompt or cfg.evaluation.images_per_prompt,
        prompts=args.prompts,
    )
    out = Path(args.out) if args.out else (Path(args.run) / "eval" if args.run else Path("runs/eval"))
    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_model(model, ecfg, cfg.sampler.height, cfg.sampler.width, out)
    for key, value in metrics.items():
        if key.startswith(("shapes_score", "shapes_eval")):
            print(f"{key:28s} {value:.4f}")
    print(f"wrote {out / 'eval.json'} and {out / 'samples.png'}")
    return 0


def _cmd_configs(args: argparse.Namespace) -> int:
    for name in list_configs():
        print(name)
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    from leapalign.rewards import REWARDS

    for name, (_, doc) in sorted(REWARDS.items()):
        print(f"{name:22s} {doc}")
    print("\nAny other reward: reward.terms.0.name=package.module:Object (a class or a function).")
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

    p = sub.add_parser("eval", help="evaluate a base model or a trained run on the held-out ShapesWorld prompts")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the model (ignored with --run)")
    p.add_argument("--run", default=None, help="a training run directory: loads its latest checkpoint")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    p.add_argument("--prompts", default="shapes:eval", choices=["shapes:eval", "shapes:train"])
    p.add_argument("--images-per-prompt", type=int, default=None)
    p.add_argument("--out", default=None, help="output directory (default: <run>/eval or runs/eval)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=_cmd_configs)
    p = sub.add_parser("rewards", help="list the available rewards")
    p.set_defaults(func=_cmd_rewards)
    p = sub.add_parser("accelerate-config", help="print the path of a shipped accelerate config")
    p.add_argument("name", choices=ACCELERATE_CONFIGS)
    p.set_defaults(func=_cmd_accelerate_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leapalign`` command."""
    _setup_logging()
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
        if os.environ.get("LEAPALIGN_DEBUG"):
            raise
        print(f"leapalign: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
