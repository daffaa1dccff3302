"""Validation of a merged :class:`~leapalign.config.ExperimentConfig`: ranges, finite floats and known names, each
failure a :class:`ConfigError` that names the key and the allowed values."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leapalign.config import ExperimentConfig

PRECISIONS = ("no", "bf16", "fp16")


class ConfigError(ValueError):
    """Invalid configuration: the message names the key and the allowed values."""


def validate(cfg: ExperimentConfig) -> None:
    """Raises :class:`ConfigError` for the first option out of range, non-finite or naming an unknown reward."""
    _validate_ranges(cfg)
    _validate_names(cfg)


def _validate_ranges(cfg: ExperimentConfig) -> None:
    """Every option within its range, every float finite."""
    checks = [
        (cfg.sampler.num_steps >= 1, "sampler.num_steps", "an integer >= 1"),
        (
            cfg.sampler.height > 0 and cfg.sampler.width > 0,
            "sampler.height/sampler.width",
            "positive integers",
        ),
        (cfg.data.batch_size >= 1, "data.batch_size", "an integer >= 1"),
        (cfg.train.max_steps >= 1, "train.max_steps", "an integer >= 1"),
        (cfg.train.lr > 0, "train.lr", "a positive number"),
        (cfg.train.weight_decay >= 0, "train.weight_decay", "a number >= 0"),
        (
            len(cfg.train.betas) == 2 and all(0 <= b < 1 for b in cfg.train.betas),
            "train.betas",
            "two numbers in [0, 1)",
        ),
        (cfg.train.grad_clip >= 0, "train.grad_clip", "a number >= 0 (0 disables clipping)"),
        (cfg.train.grad_accum >= 1, "train.grad_accum", "an integer >= 1"),
        (cfg.train.mixed_precision in PRECISIONS, "train.mixed_precision", "one of " + ", ".join(PRECISIONS)),
        (0 <= cfg.train.ema_decay < 1, "train.ema_decay", "a number in [0, 1) (0 disables EMA)"),
        (cfg.train.replay_weight >= 0, "train.replay_weight", "a number >= 0 (0 disables replay)"),
        (cfg.train.replay_batch_size >= 0, "train.replay_batch_size", "an integer >= 0 (0: data.batch_size)"),
        (
            cfg.train.replay_weight == 0 or bool(cfg.train.replay_source),
            "train.replay_source",
            "a folder of captioned images, a .jsonl list or a registered source when train.replay_weight > 0",
        ),
        (cfg.train.max_nan_steps >= 1, "train.max_nan_steps", "an integer >= 1"),
        (cfg.run.log_every >= 1, "run.log_every", "an integer >= 1"),
        (cfg.run.checkpoint_every >= 0, "run.checkpoint_every", "an integer >= 0"),
        (cfg.run.keep_checkpoints >= 1, "run.keep_checkpoints", "an integer >= 1"),
        (cfg.run.dist_timeout_s >= 1, "run.dist_timeout_s", "an integer >= 1 (seconds)"),
    ]
    for key, value in _floats(cfg):
        if not math.isfinite(value):
            raise ConfigError(f"invalid value for {key}: {value} is not a finite number.")
    group = getattr(cfg.method, "group_size", None)
    if group is not None:  # the policy-gradient methods
        checks += [
            (
                cfg.data.batch_size % group == 0,
                "data.batch_size",
                f"a multiple of method.group_size={group} (a micro-batch holds whole groups)",
            ),
            (
                cfg.train.grad_accum == 1,
                "train.grad_accum",
                "1 for a policy-gradient method (use method.group_size, data.batch_size and method.updates_per_epoch)",
            ),
        ]
        window = getattr(cfg.method, "window_size", None)
        if window is not None and (cfg.method.name == "mix-grpo" or getattr(cfg.method, "fast", False)):
            checks.append(
                (
                    window <= cfg.sampler.num_steps,
                    "method.window_size",
                    f"at most sampler.num_steps={cfg.sampler.num_steps}",
                )
            )
    for ok, key, allowed in checks:
        if not ok:
            raise ConfigError(f"invalid value for {key}: it must be {allowed}.")


def _floats(node: Any, prefix: str = "") -> list[tuple[str, float]]:
    """Every float option of a config (dataclasses, dicts and lists, walked recursively) with its dotted key."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        node = {f.name: getattr(node, f.name) for f in dataclasses.fields(node)}
    if isinstance(node, list):
        node = dict(enumerate(node))
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if isinstance(value, float):
            found.append((f"{prefix}{key}", value))
        else:
            found += _floats(value, f"{prefix}{key}.")
    return found


def _validate_names(cfg: ExperimentConfig) -> None:
    """Every reward named by the config is registered or an import path (checked before anything is built)."""
    from leapalign.rewards import REWARDS

    for key, terms in (("reward.terms", cfg.reward.terms), ("evaluation.rewards", cfg.evaluation.rewards)):
        for i, term in enumerate(terms):
            if not REWARDS.is_known(term.name):
                raise ConfigError(REWARDS.unknown(term.name).replace(REWARDS.key, f"{key}.{i}.name", 1) + ".")
