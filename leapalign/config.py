"""Experiment configuration: typed dataclasses, YAML files and ``key=value`` overrides, merged by OmegaConf.

Loading order: dataclass defaults <- YAML (a shipped name such as ``tiny/leapalign`` or a path) <- overrides
<- validation. Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming the key.

Shorthands: ``method=NAME`` switches the method (its options reset to that method's defaults),
``model=NAME`` sets ``model.name``, ``reward=NAME[,NAME...]`` sets the reward terms (weight 1 each), and
``evaluation.rewards=NAME[,NAME...]`` / ``evaluation.evaluators=NAME[,NAME...]`` set those lists by name.

The config's ``plugins:`` (and the installed ``leapalign.plugins`` entry points) are loaded before the sections
are validated, so a plugin's models, rewards, evaluators and prompt sets are known by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leapalign.config_checks import ConfigError, validate
from leapalign.eval.config import EvalConfig, EvaluatorConfig
from leapalign.methods import METHODS, method_config_class
from leapalign.models.config import ModelConfig
from leapalign.registry import RegistryError, load_plugins
from leapalign.rewards.base import RewardConfig, RewardTermConfig


@dataclass
class RunConfig:
    """Run bookkeeping.

    Attributes:
        output_dir: Run directory (metrics.jsonl, config.yaml, checkpoints/, export/).
        seed: Global seed; rank r draws its noise and prompts from ``seed + r``.
        resume: Continue from the latest complete checkpoint in ``output_dir/checkpoints`` (the CLI's
            ``--resume``). Nothing to resume from is an error, unless ``resume_or_start``. Only the keys of
            :data:`leapalign.run_dir.MUTABLE_ON_RESUME` may differ from the saved config.
        resume_or_start: With ``resume``, start a new run when there is no checkpoint (``--resume-or-start``).
        overwrite: Delete the outputs of an earlier run in ``output_dir`` first (without it, and without
            ``resume``, an existing run there is an error: runs are never mixed silently).
        log_every: Optimiser steps between log lines.
        checkpoint_every: Optimiser steps between checkpoints (0: only at the end).
        keep_checkpoints: How many recent checkpoints to keep.
        trackers: accelerate's experiment trackers to log scalars and sample grids to, besides ``metrics.jsonl``
            (always written): ``tensorboard`` (events in ``output_dir/tensorboard/<tracker_project>/``),
            ``wandb``, ``comet_ml``, ``mlflow``, ``aim``, ``clearml``, ``dvclive``, ``swanlab``, ``trackio``; ``[]``
            for none. A tracker whose package is missing is an error before training starts
            (:mod:`leapalign.tracking`).
        tracker_project: The project name given to the trackers (wandb's project, TensorBoard's subfolder).
        tracker_kwargs: Keyword arguments per tracker for its start, e.g. ``{wandb: {entity: me, tags: [a]}}``
            (``wandb.init``; its ``name`` and ``dir`` default to the run directory's name and the run directory) or
            ``{tensorboard: {flush_secs: 30}}`` (``SummaryWriter``).
        tensorboard: TensorBoard on or off; it wins over ``trackers`` for TensorBoard: ``true`` adds it, ``false``
            removes it, ``null`` (the default) leaves ``trackers`` as it is.
        export: Write a diffusers-loadable export (EMA weights) to ``output_dir/export`` at the end.
        dist_timeout_s: Seconds a collective may wait for the other processes before the job ends with an error
            (a stalled rank). It must cover the longest main-process-only work: evaluation, checkpointing.
    """

    output_dir: str = "runs/default"
    seed: int = 0
    resume: bool = False
    resume_or_start: bool = False
    overwrite: bool = False
    log_every: int = 1
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    tracker_project: str = "leapalign"
    tracker_kwargs: dict[str, Any] = field(default_factory=dict)
    tensorboard: bool | None = None
    export: bool = True
    dist_timeout_s: int = 1800


@dataclass
class SamplerConfig:
    """On-policy rollout settings.

    Attributes:
        num_steps: Euler steps T of the training rollout (25 in the paper).
        height: Image height in pixels.
        width: Image width in pixels.
    """

    num_steps: int = 25
    height: int = 128
    width: int = 128


@dataclass
class DataConfig:
    """Training prompts.

    Attributes:
        prompts: A prompt set (see :mod:`leapalign.data.prompts`): a registered name (``builtin:tiny``, those of
            plugins), a prompt file (read by content: a JSON list, JSON lines, a ``.csv`` / ``.tsv`` with a
            ``prompt`` column, or plain text one prompt a line), or an import path.
        balance_by: Give every value of this metadata key (e.g. GenEval's ``tag``) equal weight when sampling;
            ``None``: every prompt equal weight.
        batch_size: Prompts per process per micro-batch.
    """

    prompts: str = "builtin:tiny"
    balance_by: str | None = None
    batch_size: int = 2


@dataclass
class TrainConfig:
    """Optimisation (defaults: the paper's AdamW settings).

    Attributes:
        max_steps: Optimiser steps.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        grad_clip: Max global gradient norm (0 disables clipping).
        grad_accum: Micro-batches per optimiser step.
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (accelerate autocast).
        ema_decay: EMA decay of the trainable weights (0 disables EMA).
        max_nan_steps: Consecutive skipped (non-finite) steps before training stops with an error.
        replay_weight: Weight of the pretraining-loss replay regulariser (:mod:`leapalign.regularizers`, as
            ReFL), added to every step of a direct-gradient method and to every update of a policy-gradient one;
            0 disables it.
        replay_source: Its data: a folder of captioned images, a ``.jsonl`` list of image/prompt pairs, a
            registered source (a plugin's, e.g. a world's rendered scenes) or an import path.
        replay_batch_size: Real images per micro-batch for the replay loss (0: ``data.batch_size``).
    """

    max_steps: int = 300
    lr: float = 1e-5
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: str = "no"
    ema_decay: float = 0.995
    max_nan_steps: int = 3
    replay_weight: float = 0.0
    replay_source: str = ""
    replay_batch_size: int = 0


@dataclass
class ExperimentConfig:
    """A whole experiment. ``method`` holds the options of the method named by ``method.name``; ``plugins``
    lists modules (or ``module:function``) to load first, whose models, rewards, evaluators, prompt sets and
    replay sources the other sections may then name."""

    plugins: list[str] = field(default_factory=list)
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    method: Any = field(default_factory=lambda: {"name": "leapalign"})


def config_dir() -> Path:
    """Directory of the YAML configs shipped with the package."""
    return Path(__file__).parent / "configs"


def list_configs() -> list[str]:
    """Names of the shipped configs, e.g. ``tiny/leapalign``."""
    root = config_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """Maps a shipped config name or a YAML path to a file; raises :class:`ConfigError` if neither exists."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    shipped = config_dir() / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"config {name_or_path!r} is neither a YAML file nor a shipped config; shipped configs: "
        f"{', '.join(list_configs())} (see `leapalign configs`)."
    )


def _expand_shorthands(overrides: Sequence[str], base: DictConfig) -> list[str]:
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value.")
        key = key.strip()
        if key == "method":
            try:
                method_config_class(value)
            except ValueError as err:
                raise ConfigError(f"invalid value for method: {err}") from err
            base.method = OmegaConf.create({"name": value})
        elif key == "model":
            out.append(f"model.name={value}")
        elif key == "reward":
            base.reward = OmegaConf.structured(
                RewardConfig(terms=[RewardTermConfig(name=n.strip()) for n in value.split(",") if n.strip()])
            )
        elif key in ("evaluation.rewards", "evaluation.evaluators") and not value.strip().startswith("{"):
            names = [n.strip() for n in value.strip().strip("[]").split(",") if n.strip()]
            cls = RewardTermConfig if key == "evaluation.rewards" else EvaluatorConfig
            # built without __post_init__: names are checked after the plugins are loaded
            nodes = [OmegaConf.merge(OmegaConf.structured(cls), {"name": n}) for n in names]
            OmegaConf.update(base, key, nodes, merge=False)
        else:
            out.append(f"{key}={value}")
    return out


def load_config(config: str | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Builds a validated :class:`ExperimentConfig`.

    Args:
        config: Shipped config name (``tiny/leapalign``), YAML path, or ``None`` for the defaults.
        overrides: Dotted ``key=value`` overrides (``train.max_steps=10``, ``method=refl``, ...).

    Raises:
        ConfigError: Unknown key, wrong type or invalid value, naming the key.
    """
    try:
        schema = OmegaConf.structured(ExperimentConfig)
        merged = schema
        if config is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(resolve_config_path(config)))
        dotlist = _expand_shorthands(overrides, merged)
        # Keys through a list index (reward.terms.0.weight=2) are set in place; the rest merge as a dict.
        indexed = [d for d in dotlist if any(part.isdigit() for part in d.partition("=")[0].split("."))]
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist([d for d in dotlist if d not in indexed]))
        for item in indexed:
            key, _, value = item.partition("=")
            _check_index(merged, key)
            OmegaConf.update(merged, key, OmegaConf.from_dotlist([f"value={value}"])["value"], merge=True)
        method_section = OmegaConf.to_container(merged.method, resolve=True)
        plugins = [str(p) for p in OmegaConf.to_container(merged.plugins, resolve=True)]
    except ConfigError:
        raise
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err)) from err
    try:
        load_plugins(plugins)
    except RegistryError as err:
        raise ConfigError(f"invalid value for plugins: {err}") from err
    if not isinstance(method_section, dict) or "name" not in method_section:
        raise ConfigError(f"method must be a mapping with a name; allowed names: {', '.join(METHODS)}.")
    try:
        method_cls = method_config_class(str(method_section["name"]))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    try:
        method_node = OmegaConf.merge(OmegaConf.structured(method_cls), method_section)
        merged.method = None
        cfg: ExperimentConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
        cfg.method = OmegaConf.to_object(method_node)
    except OmegaConfBaseException as err:
        raise ConfigError(_explain(err, prefix="method.")) from err
    except ValueError as err:
        raise ConfigError(str(err)) from err
    validate(cfg)
    return cfg


def _check_index(cfg: DictConfig, key: str) -> None:
    """Raises a :class:`ConfigError` unless every list index on the path of ``key`` exists."""
    node: Any = cfg
    for i, part in enumerate(key.split(".")[:-1]):
        if part.isdigit():
            if not OmegaConf.is_list(node) or int(part) >= len(node):
                size = len(node) if OmegaConf.is_list(node) else 0
                path = ".".join(key.split(".")[:i])
                raise ConfigError(f"invalid config key {key}: {path} has {size} entries (indices 0..{size - 1}).")
            node = node[int(part)]
        else:
            node = node.get(part) if OmegaConf.is_dict(node) else None
            if node is None:
                return  # unknown keys are reported by OmegaConf below


def _explain(err: OmegaConfBaseException, prefix: str = "") -> str:
    key = getattr(err, "full_key", None)
    msg = str(err).splitlines()[0]
    return f"invalid config key {prefix}{key}: {msg}" if key else f"invalid config: {msg}"


def to_yaml(cfg: ExperimentConfig) -> str:
    """Serialises a resolved config to YAML (loadable again with :func:`load_config`)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: ExperimentConfig, path: Path) -> None:
    """Writes the resolved config to ``path`` atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(to_yaml(cfg))
    tmp.replace(path)
