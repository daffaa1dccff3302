"""The model families leapalign adapts, as data: what each needs and which diffusers pipeline folder it loads.

This module imports neither torch nor diffusers (nor :mod:`leapalign.models`, whose import pulls them in), so the
configuration checks, the pre-flight check and ``leapalign models`` use it without building anything. The adapters
themselves live in one module per family (:mod:`leapalign.models.flux`, :mod:`~leapalign.models.sd3`,
:mod:`~leapalign.models.flux2`, :mod:`~leapalign.models.qwen_image`, :mod:`~leapalign.models.z_image`).

Memory figures are ESTIMATES of the weights, gradients, optimiser state and EMA that training keeps resident
(``benchmarks/estimate_memory.py`` explains the accounting), not measurements: activations come on top and depend on
the resolution, the batch, the method and gradient checkpointing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class Family:
    """One model family: its registered names, its diffusers pipeline and what a user must bring.

    Attributes:
        name: The ``model.name`` of the real model (``model.path`` names its weights).
        tiny: The ``model.name`` of its random-init twin built in-process (tests, CPU).
        title: Human name of the family and its variants.
        pipelines: The diffusers pipeline class names a pipeline folder of this family declares in its
            ``model_index.json`` (``_class_name``).
        folders: The subfolders the adapter reads from a pipeline folder.
        hub_ids: Published weights (the first is the example in error messages).
        text_encoder: The text encoder(s) the family conditions on.
        guidance: What ``model.guidance_scale`` means for this family, and its usual value.
        resolution_multiple: Height and width must be multiples of this many pixels.
        transformer_params: Approximate parameter count of the published transformer, in billions.
        text_encoder_params: Approximate parameter count of the frozen text encoder(s), in billions.
        hidden_size: Width of the transformer's token stream.
        num_blocks: Transformer blocks (double- and single-stream together).
        text_tokens: Text tokens per prompt the transformer attends to (the padded length, or a typical prompt's
            length for families that trim prompts to their real length).
    """

    name: str
    tiny: str
    title: str
    pipelines: tuple[str, ...]
    folders: tuple[str, ...]
    hub_ids: tuple[str, ...]
    text_encoder: str
    guidance: str
    resolution_multiple: int
    transformer_params: float
    text_encoder_params: float
    hidden_size: int
    num_blocks: int
    text_tokens: int


_FIVE = ("scheduler", "transformer", "vae", "text_encoder", "tokenizer")
_SEVEN = (*_FIVE, "text_encoder_2", "tokenizer_2")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            name="flux",
            tiny="tiny-flux",
            title="FLUX.1 [dev] (and FLUX.1 layouts)",
            pipelines=("FluxPipeline",),
            folders=_SEVEN,
            hub_ids=("black-forest-labs/FLUX.1-dev",),
            text_encoder="CLIP-L (pooled) + T5-XXL (tokens)",
            guidance="embedded guidance value (3.5); true CFG with the empty prompt when the model has none",
            resolution_multiple=16,
            transformer_params=11.9,
            text_encoder_params=4.9,
            hidden_size=3072,
            num_blocks=57,
            text_tokens=512,
        ),
        Family(
            name="sd3",
            tiny="tiny-sd3",
            title="Stable Diffusion 3 / 3.5 (Medium, Large)",
            pipelines=("StableDiffusion3Pipeline",),
            folders=_SEVEN,
            hub_ids=("stabilityai/stable-diffusion-3.5-medium", "stabilityai/stable-diffusion-3.5-large"),
            text_encoder="CLIP-L + OpenCLIP bigG (pooled and tokens) + T5-XXL (tokens, optional)",
            guidance="true CFG scale with the empty prompt (4.5; 1 disables it)",
            resolution_multiple=16,
            transformer_params=2.5,
            text_encoder_params=5.6,
            hidden_size=1536,
            num_blocks=24,
            text_tokens=333,
        ),
        Family(
            name="flux2",
            tiny="tiny-flux2",
            title="FLUX.2 [dev]",
            pipelines=("Flux2Pipeline",),
            folders=_FIVE,
            hub_ids=("black-forest-labs/FLUX.2-dev",),
            text_encoder="Mistral Small 3.1 (24B VLM, text path)",
            guidance="embedded guidance value (4.0)",
            resolution_multiple=16,
            transformer_params=32.0,
            text_encoder_params=24.0,
            hidden_size=6144,
            num_blocks=56,
            text_tokens=512,
        ),
        Family(
            name="flux2-klein",
            tiny="tiny-flux2-klein",
            title="FLUX.2 [klein] 4B / 9B (distilled and base)",
            pipelines=("Flux2KleinPipeline",),
            folders=_FIVE,
            hub_ids=(
                "black-forest-labs/FLUX.2-klein-base-9B",
                "black-forest-labs/FLUX.2-klein-9B",
                "black-forest-labs/FLUX.2-klein-base-4B",
                "black-forest-labs/FLUX.2-klein-4B",
            ),
            text_encoder="Qwen3 (8B for 9B, 4B for 4B)",
            guidance="true CFG scale with the empty prompt for the base models (4.0); the distilled ones take none (1)",
            resolution_multiple=16,
            transformer_params=9.0,
            text_encoder_params=8.0,
            hidden_size=4096,
            num_blocks=32,
            text_tokens=512,
        ),
        Family(
            name="qwen-image",
            tiny="tiny-qwen-image",
            title="Qwen-Image",
            pipelines=("QwenImagePipeline",),
            folders=_FIVE,
            hub_ids=("Qwen/Qwen-Image", "Qwen/Qwen-Image-2512"),
            text_encoder="Qwen2.5-VL 7B (text path, prompt template)",
            guidance="true CFG scale with a negative prompt (4.0; 1 disables it)",
            resolution_multiple=16,
            transformer_params=20.4,
            text_encoder_params=8.3,
            hidden_size=3072,
            num_blocks=60,
            text_tokens=256,
        ),
        Family(
            name="z-image",
            tiny="tiny-z-image",
            title="Z-Image (Turbo and base)",
            pipelines=("ZImagePipeline",),
            folders=_FIVE,
            hub_ids=("Tongyi-MAI/Z-Image-Turbo", "Tongyi-MAI/Z-Image"),
            text_encoder="Qwen3 4B (chat template)",
            guidance="ZImagePipeline's guidance_scale, CFG with the empty prompt (Turbo: 0, no CFG; base: about 4)",
            resolution_multiple=16,
            transformer_params=6.2,
            text_encoder_params=4.0,
            hidden_size=3840,
            num_blocks=34,
            text_tokens=256,
        ),
    )
}
"""Every family by the ``model.name`` of its real model."""

BY_TINY = {f.tiny: f for f in FAMILIES.values()}
"""Every family by the ``model.name`` of its tiny twin."""


def family_of(model_name: str) -> Family | None:
    """The family of a registered model name (real or tiny), or ``None`` for models of plugins and import paths."""
    return FAMILIES.get(model_name) or BY_TINY.get(model_name)


def pipeline_family(class_name: str) -> Family | None:
    """The family whose pipeline class is ``class_name`` (a ``model_index.json`` ``_class_name``), if any."""
    return next((f for f in FAMILIES.values() if class_name in f.pipelines), None)


def check_pretrained_path(path: str | Path | None, family: str) -> str:
    """Validates ``model.path`` for a family: an existing pipeline folder of that family, or a hub id.

    A local folder must have a ``transformer/`` subfolder, and its ``model_index.json`` (when present) must name one
    of the family's pipelines: a folder of another family is refused with the ``model.name`` that loads it.

    Args:
        path: The configured path.
        family: A key of :data:`FAMILIES` (``"flux"``, ``"sd3"``, ``"flux2"``, ``"flux2-klein"``, ``"qwen-image"``,
            ``"z-image"``).

    Returns:
        The path as a string (user directory expanded for local folders).
    """
    fam = FAMILIES[family]
    fix = (
        f"Set model.path to a local diffusers {fam.pipelines[0]} folder (with model_index.json and "
        f"{', '.join(d + '/' for d in fam.folders)} subfolders) or to a hub id such as {fam.hub_ids[0]}."
    )
    if not path:
        raise ValueError(f"model.path is not set for model.name={family}. {fix}")
    local = Path(path).expanduser()
    if local.is_dir():
        if not (local / "transformer").is_dir():
            raise ValueError(f"model.path={str(path)!r} has no transformer/ subfolder. {fix}")
        _check_pipeline_class(local, fam)
        return str(local)
    text = str(path)
    if local.exists() or text.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(text):
        raise ValueError(f"model.path={text!r} is not an existing directory and does not look like a hub id. {fix}")
    return text


def _check_pipeline_class(folder: Path, fam: Family) -> None:
    index = folder / "model_index.json"
    if not index.is_file():
        return
    try:
        class_name = str(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"model.path={str(folder)!r}: model_index.json does not parse ({err}).") from None
    if not class_name or class_name in fam.pipelines:
        return
    other = pipeline_family(class_name)
    hint = f"set model.name={other.name} to load it" if other else "it is not a pipeline leapalign adapts"
    raise ValueError(
        f"model.path={str(folder)!r} holds a {class_name} folder, not a {' or '.join(fam.pipelines)} one "
        f"(model.name={fam.name}): {hint}, or point model.path at a {fam.title} pipeline folder."
    )


GB = 1e9
FULL_BYTES_PER_PARAM = 20
"""Full fine-tuning keeps float32 weights, gradients, two AdamW moments and an EMA copy: 5 x 4 bytes."""
BLOCK_PEAK_FACTOR = 16
"""Rough size of one transformer block's recomputed activations, in multiples of its input (tokens x width)."""


def memory_estimate_gb(family: Family, finetune: str, resolution: int, text_encoder_on_gpu: bool = True) -> float:
    """ESTIMATED accelerator memory of LeapAlign training at ``resolution`` px, batch 1, in GB (1e9 bytes).

    The sum of: the frozen text encoder(s) in bf16 (when on the accelerator); the transformer, in bf16 under LoRA
    (the adapters are negligible) or at :data:`FULL_BYTES_PER_PARAM` bytes per parameter under full fine-tuning;
    and activations with per-block gradient checkpointing, two forward passes (LeapAlign's two leaps) each keeping
    every block's bf16 input, plus one block recomputed (:data:`BLOCK_PEAK_FACTOR`). The VAE (under 0.2 GB), the
    reward model and allocator overhead are left out. A measurement replaces this where a GPU was lent.

    Args:
        family: The model family.
        finetune: ``lora`` or ``full``.
        resolution: Square image side in pixels.
        text_encoder_on_gpu: False for ``model.text_encoder_device=cpu``.
    """
    # parameter counts are in billions and GB is 1e9 bytes: bytes per parameter x billions = GB
    text = 2 * family.text_encoder_params if text_encoder_on_gpu else 0.0
    per_param = 2 if finetune == "lora" else FULL_BYTES_PER_PARAM
    transformer = per_param * family.transformer_params
    tokens = (resolution // 16) ** 2 + family.text_tokens
    stream = tokens * family.hidden_size * 2  # bytes of one bf16 block input
    activations = 2 * family.num_blocks * stream + BLOCK_PEAK_FACTOR * stream
    return text + transformer + activations / GB


def memory_table(family: Family) -> list[str]:
    """``leapalign models``' memory lines for ``family``: LoRA and full at 512 and 1024 px (estimates)."""
    lines = []
    for mode in ("lora", "full"):
        cells = ", ".join(f"{res} px {memory_estimate_gb(family, mode, res):.0f} GB" for res in (512, 1024))
        lines.append(f"memory, {mode:4s}  {cells} (estimate)")
    saved = 2 * family.text_encoder_params
    lines.append(f"               model.text_encoder_device=cpu saves {saved:.0f} GB of those")
    return lines
