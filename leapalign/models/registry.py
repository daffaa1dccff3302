"""The model registry: ``model.name`` -> ``builder(cfg: ModelConfig) -> FlowModel``.

The built-in models are registered by :mod:`leapalign.models`; plugins add theirs with
``MODELS.register(name, builder, description)``. A builder returns the adapter before
:func:`~leapalign.models.finetune.prepare_for_training` (LoRA or full) and before it is moved to a device.
"""

from __future__ import annotations

from leapalign.registry import Registry

MODELS: Registry = Registry("model", "model.name")
