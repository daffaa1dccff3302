"""Configuration of the model section (``model.*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass, field

from leapalign.models.registry import MODELS

FINETUNE_MODES = ("lora", "full")
DTYPES = ("fp32", "bf16", "fp16")


@dataclass
class ModelConfig:
    """Which flow model to fine-tune and how.

    Defaults: ``name="tiny-flux"``, ``finetune="lora"``, ``lora_rank=16``, ``lora_alpha=16``,
    ``guidance_scale=3.5``, ``weights_dtype="fp32"``, ``gradient_checkpointing=False``.

    Attributes:
        name: A registered model (``leapalign models`` lists them): ``tiny-flux``, ``tiny-sd3`` (random-init,
            built in-process, no download), ``flux`` (FLUX.1-dev layout), ``sd3`` (SD3 / SD3.5 layout), those of
            loaded plugins, or an import path ``my_pkg.models:build`` to a builder ``(ModelConfig) -> FlowModel``.
        path: Local directory or hub id of a diffusers pipeline folder (``flux``/``sd3``); models of plugins
            define their own use of it; ignored by tiny models.
        finetune: ``lora`` (peft adapters on the transformer) or ``full`` (every transformer weight).
        lora_rank: LoRA rank ``r``.
        lora_alpha: LoRA scaling numerator ``alpha`` (the update is scaled by ``alpha / r``).
        lora_targets: Module names that receive LoRA adapters.
        guidance_scale: Flux: embedded guidance value when the transformer has a guidance embedding, else true
            CFG when > 1. SD3: true CFG scale (1 disables CFG).
        gradient_checkpointing: Checkpoint every transformer block (trades compute for activation memory).
        weights_dtype: dtype of the frozen parts (VAE, text encoders; the base weights under LoRA).
        max_sequence_length: T5 token budget for Flux/SD3 prompts.
        seed: Initialisation seed of the tiny random models.
    """

    name: str = "tiny-flux"
    path: str | None = None
    finetune: str = "lora"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    guidance_scale: float = 3.5
    gradient_checkpointing: bool = False
    weights_dtype: str = "fp32"
    max_sequence_length: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        if not MODELS.is_known(self.name):
            raise ValueError(MODELS.unknown(self.name) + ".")
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"model.finetune={self.finetune!r} is invalid; allowed values: lora, full.")
        if self.weights_dtype not in DTYPES:
            raise ValueError(f"model.weights_dtype={self.weights_dtype!r} is invalid; allowed: {', '.join(DTYPES)}.")
        if self.lora_rank < 1:
            raise ValueError(f"model.lora_rank={self.lora_rank} must be >= 1.")
        if self.guidance_scale < 0:
            raise ValueError(f"model.guidance_scale={self.guidance_scale} must be >= 0.")
        if self.name in ("flux", "sd3") and not self.path:
            raise ValueError(
                f"model.name={self.name} needs model.path: a local diffusers pipeline directory or a hub id "
                f"(e.g. black-forest-labs/FLUX.1-dev or stabilityai/stable-diffusion-3.5-medium)."
            )
