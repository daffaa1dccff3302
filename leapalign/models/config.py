"""Configuration of the model section (``model.*`` keys)."""

from __future__ import annotations

from dataclasses import dataclass

from leapalign.families import FAMILIES
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
        lora_targets: Module names that receive LoRA adapters; ``None`` (the default) takes the family's own
            (``default_lora_targets`` of its adapter: the attention projections for FLUX.1 and SD3, and the fused
            projections of the single-stream blocks too where a family has them).
        guidance_scale: The family's one guidance knob, with the meaning of its diffusers pipeline's argument
            (``leapalign models`` lists them): FLUX.1 and FLUX.2 [dev] embed it (FLUX.1 without a guidance
            embedding: true CFG when > 1); SD3, Qwen-Image (``true_cfg_scale``) and FLUX.2 [klein] base run true CFG
            with the empty prompt when > 1, and distilled klein takes 1; Z-Image takes ``ZImagePipeline``'s
            ``guidance_scale`` (0: no CFG, as Z-Image-Turbo).
        gradient_checkpointing: Checkpoint every transformer block (trades compute for activation memory).
        weights_dtype: dtype of the frozen parts (VAE, text encoders; the base weights under LoRA).
        max_sequence_length: Text-token budget of a prompt (T5 tokens for FLUX.1 and SD3; the padded length for
            FLUX.2; the most tokens kept for Qwen-Image and Z-Image, which trim each prompt to its real length).
        text_encoder_device: ``cpu`` keeps the frozen text encoder(s) in host memory while the rest of the model
            is on the accelerator; each prompt is encoded once and its embeddings cached on the accelerator
            (``None``: the encoder moves with the model). For text encoders too large to sit beside the
            transformer (FLUX.2-dev's 24B Mistral, Qwen-Image's 7B Qwen2.5-VL on one GPU).
        seed: Initialisation seed of the tiny random models.
    """

    name: str = "tiny-flux"
    path: str | None = None
    finetune: str = "lora"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    lora_targets: list[str] | None = None
    guidance_scale: float = 3.5
    gradient_checkpointing: bool = False
    weights_dtype: str = "fp32"
    max_sequence_length: int = 512
    text_encoder_device: str | None = None
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
        if self.text_encoder_device not in (None, "cpu"):
            raise ValueError(
                f"model.text_encoder_device={self.text_encoder_device!r} is invalid: use cpu (keep the text encoder "
                f"in host memory) or null (move it with the model)."
            )
        if self.lora_targets is not None and not self.lora_targets:
            raise ValueError(
                "model.lora_targets is empty: name the modules to adapt, or set it to null for the "
                "family's default targets."
            )
        family = FAMILIES.get(self.name)
        if family is not None and not self.path:
            raise ValueError(
                f"model.name={self.name} needs model.path: a local diffusers pipeline directory or a hub id "
                f"(e.g. {family.hub_ids[0]})."
            )
