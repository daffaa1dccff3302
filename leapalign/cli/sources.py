"""Which model an evaluation runs: a config's base model, a training run's latest checkpoint or one checkpoint,
with the EMA weights (default) or the live ones; LoRA or full fine-tuning as the run's config says.

A run's ``config.yaml`` may come from someone else, and the import paths and plugins it names run code when it is
loaded: :func:`check_trusted` refuses such a config before anything of it is imported, unless the caller trusts
it (``--trust-config``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from leapalign import checkpoint as ckpt
from leapalign.config import ConfigError, ExperimentConfig, load_config
from leapalign.registry import ENTRY_POINT_GROUP

logger = logging.getLogger(__name__)


@dataclass
class ModelSource:
    """A model to evaluate.

    Attributes:
        label: Short name for reports (``base``, the run's folder name, or the checkpoint's).
        cfg: The experiment config (its ``model`` section builds the model).
        weights: Trained weights to load into the transformer (``None``: the base model).
    """

    label: str
    cfg: ExperimentConfig
    weights: Path | None = None

    def identity(self) -> dict[str, Any]:
        """What identifies this model in ``settings.json``."""
        return {**asdict(self.cfg.model), "weights": str(self.weights) if self.weights else None}


def _weights_in(checkpoint_dir: Path, no_ema: bool) -> Path:
    ema = checkpoint_dir / "ema.safetensors"
    if not no_ema and ema.is_file():
        return ema
    if not no_ema:
        logger.warning("%s has no EMA weights (train.ema_decay=0?); evaluating the live weights", checkpoint_dir)
    return checkpoint_dir / "trainable.safetensors"


# The config keys whose values name a registry entry: one name, or a list of terms ({name: ...} or strings)
_NAME_KEYS = (("model.name", "model"), ("data.prompts", "prompt set"), ("evaluation.prompts", "prompt set"))
_NAME_KEYS += (("train.replay_source", "replay source"),)
_LIST_KEYS = (("reward.terms", "reward"), ("evaluation.rewards", "reward"), ("evaluation.evaluators", "evaluator"))


def _listed(node: Any) -> list[str]:
    """The names in a list of terms (``{name: ...}`` mappings or strings), or a string with and without splitting
    it at commas (the ``reward=a,b`` shorthand)."""
    items = [node, *node.split(",")] if isinstance(node, str) else node if isinstance(node, list) else [node]
    names = [item.get("name") if isinstance(item, Mapping) else item for item in items]
    return list(dict.fromkeys(n.strip() for n in names if isinstance(n, str) and n.strip()))


def _named(raw: Mapping[str, Any]) -> Iterator[tuple[str, str, str]]:
    """``(key, registry kind, name)`` for every name that a raw config resolves through a registry."""

    def at(dotted: str) -> Any:
        node: Any = raw
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        return node

    for key, kind in _NAME_KEYS:
        if isinstance(at(key), str):
            yield key, kind, at(key)
    for key, kind in _LIST_KEYS:
        yield from ((f"{key}.{i}.name", kind, name) for i, name in enumerate(_listed(at(key))))


def _read_as_data(kind: str, name: str) -> bool:
    """A prompt set that names an existing file, or replay data in a folder or a ``.jsonl`` list, is read as data
    and never imported (the rules of :func:`leapalign.data.load_prompt_set` and ``regularizers.build_replay``)."""
    path = Path(name)
    if kind == "prompt set":
        return path.exists()
    return kind == "replay source" and (path.is_dir() or (path.is_file() and path.suffix == ".jsonl"))


def config_import_paths(raw: Mapping[str, Any]) -> list[str]:
    """``key=value`` for every import path that loading or building a config would import, running its code: the
    ``plugins`` (but those of installed entry points, which load anyway) and every model, reward, evaluator, prompt
    set or replay source that is neither registered (built-ins and installed plugins) nor a data file or folder.
    Nothing that the config names is imported to tell.

    Args:
        raw: The config as plain YAML data (``OmegaConf.to_container`` of the file).
    """
    from leapalign.data import PROMPT_SETS
    from leapalign.eval import EVALUATORS
    from leapalign.models import MODELS
    from leapalign.regularizers import REPLAY_SOURCES
    from leapalign.rewards import REWARDS

    registries = {
        "model": MODELS,
        "reward": REWARDS,
        "evaluator": EVALUATORS,
        "prompt set": PROMPT_SETS,
        "replay source": REPLAY_SOURCES,
    }
    installed = {ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    found = [f"plugins={spec}" for spec in _listed(raw.get("plugins")) if spec not in installed]
    for key, kind, name in _named(raw):
        if registries[kind].imports(name) and not _read_as_data(kind, name):
            found.append(f"{key}={name}")
    return found


def check_trusted(config_file: Path, trust_config: bool = False) -> None:
    """Refuses a run's config that names code to import (:func:`config_import_paths`) unless ``trust_config``.

    Raises:
        ConfigError: The config names import paths or plugins and ``trust_config`` is false, or it is not YAML.
    """
    if trust_config:
        return
    try:
        raw = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
    except (OmegaConfBaseException, OSError, ValueError) as err:
        raise ConfigError(f"{config_file}: cannot be read ({str(err).splitlines()[0]}); fix or remove it.") from err
    found = config_import_paths(raw if isinstance(raw, Mapping) else {})
    if found:
        raise ConfigError(
            f"{config_file} names code to import ({', '.join(found)}), which runs when the config is loaded; "
            f"if you trust whoever wrote it, pass --trust-config (docs/plugins.md)."
        )


def resolve_run(
    path: str | Path, overrides: Sequence[str] = (), no_ema: bool = False, *, trust_config: bool = False
) -> ModelSource:
    """A training run folder (its latest complete checkpoint) or one checkpoint folder (``.../checkpoints/step_N``).

    Args:
        path: The run or checkpoint folder.
        overrides: ``key=value`` overrides of the run's config.
        no_ema: The live weights instead of the EMA weights.
        trust_config: Load the run's config even if it names import paths or plugins (see :func:`check_trusted`).

    Raises:
        ConfigError: Neither a run nor a checkpoint, a run without a complete checkpoint, or an untrusted config
            that names code to import.
    """
    path = Path(path)
    if (path / ckpt.STATE_FILE).is_file() and path.parent.name == "checkpoints":
        run_dir, checkpoint_dir = path.parent.parent, path
    elif (path / "config.yaml").is_file():
        run_dir, checkpoint_dir = path, ckpt.latest_checkpoint(path)
        if checkpoint_dir is None:
            raise ConfigError(f"{path}: no complete checkpoint under checkpoints/; train first or pass --config.")
    else:
        raise ConfigError(
            f"{path} is neither a training run (with config.yaml) nor a checkpoint (run/checkpoints/step_N with "
            f"{ckpt.STATE_FILE})."
        )
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir}: no config.yaml; the checkpoint's run folder is needed to rebuild the model.")
    check_trusted(run_dir / "config.yaml", trust_config)
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    label = run_dir.name if checkpoint_dir.parent.parent == path else f"{run_dir.name}/{checkpoint_dir.name}"
    return ModelSource(label, cfg, _weights_in(checkpoint_dir, no_ema))


def resolve_source(
    config: str | None,
    run: str | None,
    overrides: Sequence[str] = (),
    no_ema: bool = False,
    *,
    trust_config: bool = False,
) -> ModelSource:
    """``run`` (a run or checkpoint folder, see :func:`resolve_run`) if given, else the base model of ``config``."""
    if run is not None:
        return resolve_run(run, overrides, no_ema, trust_config=trust_config)
    return ModelSource("base", load_config(config, overrides))


def resolve_compare(
    spec: str, main: ModelSource, overrides: Sequence[str] = (), no_ema: bool = False, *, trust_config: bool = False
) -> ModelSource:
    """``--compare`` target: ``base`` (the main model's base weights) or a run / checkpoint folder."""
    if spec == "base":
        return ModelSource("base", main.cfg)
    return resolve_run(spec, overrides, no_ema, trust_config=trust_config)


def build_source(source: ModelSource, device: torch.device | str | None = None):
    """Builds the model and loads the source's weights; returns the :class:`~leapalign.models.FlowModel`."""
    from leapalign.models import build_model

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(source.cfg.model, device=device)
    if source.weights is not None:
        ckpt.load_into(ckpt.named_trainable(model.transformer), source.weights)
        logger.info("loaded %s", source.weights)
    model.transformer.eval()
    return model
