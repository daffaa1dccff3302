"""The model registry: ``model.name`` -> ``builder(cfg: ModelConfig) -> FlowModel``.

The registry itself and the built-in models' declarations live in :mod:`leapalign.registry` (listing them imports
nothing); the builders are in :mod:`leapalign.models`. Plugins add theirs with
``MODELS.register(name, builder, description)``. A builder returns the adapter before
:func:`~leapalign.models.finetune.prepare_for_training` (LoRA or full) and before it is moved to a device.
"""

from __future__ import annotations

from leapalign.registry import MODELS

__all__ = ["MODELS"]
