"""Which model an evaluation runs: a config's base model, a training run's latest checkpoint or one checkpoint,
with the EMA weights (default) or the live ones; LoRA or full fine-tuning as the run's config says."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from leapalign import checkpoint as ckpt
from leapalign.config import ConfigError, ExperimentConfig, load_config

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


def resolve_run(path: str | Path, overrides: Sequence[str] = (), no_ema: bool = False) -> ModelSource:
    """A training run folder (its latest complete checkpoint) or one checkpoint folder (``.../checkpoints/step_N``).

    Raises:
        ConfigError: Neither a run nor a checkpoint, or a run without a complete checkpoint.
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
    cfg = load_config(str(run_dir / "config.yaml"), overrides)
    label = run_dir.name if checkpoint_dir.parent.parent == path else f"{run_dir.name}/{checkpoint_dir.name}"
    return ModelSource(label, cfg, _weights_in(checkpoint_dir, no_ema))


def resolve_source(
    config: str | None, run: str | None, overrides: Sequence[str] = (), no_ema: bool = False
) -> ModelSource:
    """``run`` (a run or checkpoint folder) if given, else the base model of ``config``."""
    if run is not None:
        return resolve_run(run, overrides, no_ema)
    return ModelSource("base", load_config(config, overrides))


def resolve_compare(spec: str, main: ModelSource, overrides: Sequence[str] = (), no_ema: bool = False) -> ModelSource:
    """``--compare`` target: ``base`` (the main model's base weights) or a run / checkpoint folder."""
    if spec == "base":
        return ModelSource("base", main.cfg)
    return resolve_run(spec, overrides, no_ema)


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
