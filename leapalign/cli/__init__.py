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

``eval --run`` and ``sample --run`` refuse a run whose config.yaml names import paths or plugins (code that
loading it would run) unless ``--trust-config`` is given (docs/plugins.md).

Startup: this module imports the standard library only; each command imports what it needs, so ``--help``,
``configs``, ``rewards``, ``list`` and ``accelerate-config`` answer without torch (the registries declare their
entries by import path; ``benchmarks/startup.py`` times them).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = ("single", "ddp", "ddp_cpu", "fsdp")
DEFAULT_CONFIG = "shapes/leapalign"  # the embedded default: LeapAlign on ShapesWorld
TRUST_HELP = "load the run's config even if it names import paths or plugins (they run code; docs/plugins.md)"


class _TorchvisionFallbackFilter(logging.Filter):
    """Drops transformers' notice that an image processor falls back to its Pillow backend because torchvision is
    not installed. diffusers' pipelines import ``CLIPImageProcessor`` and ``SiglipImageProcessor`` when
    ``leapalign.models`` is imported; leapalign builds no such processor for the flow models and uses the Pillow
    processors by name for its rewards, so the notice has nothing for the user to act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


_TORCHVISION_FILTER = _TorchvisionFallbackFilter()
_TRANSFORMERS_IMPORT_LOGGER = "transformers.utils.import_utils"  # the logger that emits it


def _setup_logging() -> None:
    rank = os.environ.get("RANK", "0")
    level = logging.INFO if rank == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger(_TRANSFORMERS_IMPORT_LOGGER).addFilter(_TORCHVISION_FILTER)  # added once, however often called


def _cmd_train(args: argparse.Namespace) -> int:
    from leapalign.config import load_config
    from leapalign.stop import TrainingStopped
    from leapalign.trainer import train

    resume = ["run.resume=true"] if args.resume or args.resume_or_start else []
    resume += ["run.resume_or_start=true"] if args.resume_or_start else []
    cfg = load_config(args.config, args.overrides + resume)
    try:
        result = train(cfg)
    except TrainingStopped as stop:  # SIGTERM / SIGINT: a checkpoint was written
        print(f"leapalign: {stop}", file=sys.stderr)
        return stop.exit_code
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

    source = resolve_source(args.config, args.run, args.overrides, args.no_ema, trust_config=args.trust_config)
    if source.weights is not None:
        print(f"loaded {source.weights}")
    return source.cfg, build_source(source)


def _cmd_eval(args: argparse.Namespace) -> int:
    from leapalign.cli.eval import print_summary, run_eval_command

    print(print_summary(run_eval_command(args)))
    return 0


def shipped_configs() -> list[str]:
    """The names of the shipped configs, as :func:`leapalign.config.list_configs` gives them, read without
    importing :mod:`leapalign.config` (whose imports pull in torch and diffusers)."""
    root = PACKAGE / "configs"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def _cmd_configs(args: argparse.Namespace) -> int:
    for name in shipped_configs():
        print(name)
    return 0


def _registries() -> dict[str, object]:
    """The registries by the names ``leapalign list`` takes. :mod:`leapalign.registry` holds them with the built-in
    entries declared by import path, so listing them imports no torch (nor do plugins that declare theirs so)."""
    from leapalign.registry import EVALUATORS, MODELS, PROMPT_SETS, REPLAY_SOURCES, REWARDS

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


def _cmd_models(args: argparse.Namespace) -> int:
    from leapalign.families import FAMILIES, memory_table  # data only: no torch

    for family in FAMILIES.values():
        print(f"{family.name}  ({family.title}; tiny twin: {family.tiny})")
        hub = ", ".join(family.hub_ids)
        print(f"  weights        model.path: a {family.pipelines[0]} folder or a hub id ({hub})")
        print(f"  text encoder   {family.text_encoder}")
        print(f"  guidance       model.guidance_scale: {family.guidance}")
        print(f"  resolution     height and width multiples of {family.resolution_multiple} px")
        for line in memory_table(family):
            print(f"  {line}")
    print("\nMemory: ESTIMATES from parameter counts (bf16 frozen weights; float32 trained weights, gradients, AdamW")
    print("moments and EMA), plus activations of LeapAlign's two forward passes with gradient checkpointing, batch 1.")
    print("Full fine-tuning under FSDP divides the trained state by the number of GPUs. Measured figures, where a GPU")
    print("was lent: docs/models.md.")
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    from leapalign.registry import REWARDS  # the registry alone: no torch (leapalign.rewards imports it)

    for name, doc in REWARDS.describe().items():
        print(f"{name:20s} {doc}")
    print("\nModel-based rewards load their weights on first use; see docs/rewards.md for the files and where to")
    print("put them (reward args, or the folder named by $LEAPALIGN_REWARD_DIR).")
    print("\nAny other reward: reward=package.module:Object (a class or a function), or with arguments")
    print('"reward.terms=[{name: package.module:Object, args: {key: value}}]".')
    return 0


def _cmd_accelerate_config(args: argparse.Namespace) -> int:
    print(PACKAGE / "accelerate" / f"{args.name}.yaml")
    return 0


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """Declares the ``leapalign eval`` options on ``p``: what is not a config key. Everything that is a config key
    is a ``key=value`` override, as for ``leapalign train``: ``evaluation.prompts=FILE``, ``evaluation.limit=N``,
    ``evaluation.images_per_prompt=N``, ``evaluation.seed=S``, ``evaluation.num_steps=N``,
    ``evaluation.batch_size=N``, ``evaluation.rewards=hpsv2,pickscore``, ``evaluation.rewards.0.args.KEY=V``,
    ``evaluation.evaluators=NAME``, ``model.guidance_scale=G``, ``sampler.height=H``, ``sampler.width=W``."""
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the base model (ignored with --run)")
    p.add_argument("--run", default=None, help="a training run folder (latest checkpoint) or a checkpoint folder")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    p.add_argument("--compare", default=None, help="a second model, side by side: a run, a checkpoint, or 'base'")
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
    p.add_argument("--trust-config", action="store_true", help=TRUST_HELP)
    p.add_argument(
        "overrides",
        nargs="*",
        help="key=value config overrides, e.g. evaluation.prompts=prompts.txt evaluation.rewards=hpsv2,pickscore "
        "model.path=/models/FLUX.1-dev",
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leapalign", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="fine-tune a flow model with a reward")
    p.add_argument(
        "--config", default=DEFAULT_CONFIG, help="shipped config name (see `leapalign configs`) or YAML path"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in run.output_dir (an error when there is none); only logging, "
        "evaluation and train.max_steps may change",
    )
    p.add_argument(
        "--resume-or-start", action="store_true", help="like --resume, but start a new run when there is no checkpoint"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10 method=refl")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sample", help="generate an image grid from a base model or a trained run")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="config naming the model (ignored with --run)")
    p.add_argument("--run", default=None, help="a training run directory: loads its latest checkpoint")
    p.add_argument("--no-ema", action="store_true", help="use the live weights instead of the EMA weights")
    p.add_argument("--trust-config", action="store_true", help=TRUST_HELP)
    p.add_argument("--prompt", action="append", help="prompt (repeatable)")
    p.add_argument("--num", type=_positive_int, default=4, help="images per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default: sampler.num_steps)")
    p.add_argument("--out", default="samples.png")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_cmd_sample)

    p = sub.add_parser(
        "eval", help="evaluate a base model or a checkpoint on a prompt set with rewards (resumable; --compare)"
    )
    _add_eval_arguments(p)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("configs", help="list the shipped configs")
    p.set_defaults(func=_cmd_configs)
    p = sub.add_parser("models", help="list the supported model families: weights, text encoder, guidance, memory")
    p.set_defaults(func=_cmd_models)
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
    except (ValueError, OSError, RuntimeError) as err:  # ValueError: ConfigError and RegistryError too
        if os.environ.get("LEAPALIGN_DEBUG"):
            raise
        if isinstance(err, OSError) and not isinstance(err, FileNotFoundError):  # disk full, permissions, ...
            where = f" ({err.filename})" if err.filename else ""
            fix = "free space or fix the permissions, then run again (a training run with --resume: its last "
            fix += "checkpoint is intact)"
            print(f"leapalign: error: {err.strerror or err}{where}; {fix}.", file=sys.stderr)
            return 2
        print(f"leapalign: error: {err}", file=sys.stderr)
        return 2
