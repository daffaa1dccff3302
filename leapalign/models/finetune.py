"""Trainable-weights glue: LoRA or full fine-tuning, checkpoint state dicts and diffusers exports.

Checkpoints (``trainable_state_dict``) hold only what training changes: the peft LoRA tensors (keys as
``get_peft_model_state_dict`` names them, e.g. ``transformer_blocks.0.attn.to_q.lora_A.weight``) or the
whole transformer state dict. Exports (``export_for_diffusers``) are loadable by plain diffusers:
``pipe.load_lora_weights(out_dir)`` for LoRA,
``<Transformer>.from_pretrained(out_dir, subfolder="transformer")`` for full fine-tuning.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from leapalign.models.config import ModelConfig

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LORA_MODE, FULL_MODE = "lora", "full"
ATTENTION_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
"""LoRA targets of an adapter that declares none (``default_lora_targets``): the attention projections."""


def lora_targets(model: Any, cfg: ModelConfig) -> list[str]:
    """The modules that receive LoRA adapters: ``cfg.lora_targets``, else the adapter's ``default_lora_targets``
    (the family's choice), else :data:`ATTENTION_TARGETS`."""
    if cfg.lora_targets is not None:
        return list(cfg.lora_targets)
    return list(getattr(model, "default_lora_targets", ATTENTION_TARGETS))


def unwrap_model(module: nn.Module) -> nn.Module:
    """The module inside an accelerate / DDP / ``torch.compile`` wrapper (the module itself otherwise)."""
    while True:
        inner = getattr(module, "module", None)
        if inner is None:
            inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return module
        module = inner


def weight_dtypes(cfg: ModelConfig) -> tuple[torch.dtype, torch.dtype]:
    """``(frozen_dtype, transformer_dtype)`` for ``cfg``.

    Frozen parts use ``cfg.weights_dtype``; so does the transformer's base under LoRA, while full fine-tuning
    keeps the transformer in float32 (mixed precision then comes from autocast).
    """
    frozen = _DTYPES[cfg.weights_dtype]
    return frozen, (frozen if cfg.finetune == LORA_MODE else torch.float32)


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module.to(dtype)`` only when some floating parameter differs (diffusers warns on every cast)."""
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def _frozen_modules(model: Any) -> list[nn.Module]:
    declared = getattr(model, "frozen_modules", None)
    if declared is not None:  # the adapter names its frozen parts (VAE, text encoders)
        return list(declared())
    modules: list[nn.Module] = []
    vae = getattr(model, "vae", None)
    if isinstance(vae, nn.Module):
        modules.append(vae)
    encoder = getattr(model, "text_encoder", None)
    for name in ("clip", "t5"):
        if isinstance(getattr(encoder, name, None), nn.Module):
            modules.append(getattr(encoder, name))
    for pair in getattr(encoder, "clips", []):
        modules.append(pair[0])
    return modules


def has_lora(transformer: nn.Module) -> bool:
    """Whether a peft adapter has been added to ``transformer``."""
    return bool(getattr(unwrap_model(transformer), "peft_config", None))


def prepare_for_training(model: Any, cfg: ModelConfig) -> Any:
    """Freezes everything, then makes the LoRA adapters (or the whole transformer) trainable.

    LoRA: ``transformer.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
    init_lora_weights="gaussian", target_modules=lora_targets(model, cfg), exclude_modules=model.unused_modules()))``,
    initialised from ``cfg.seed`` (the global RNG is left untouched) and upcast to float32. Full: every transformer
    parameter, in float32, except those of ``model.unused_modules()`` (when the adapter has it: modules whose outputs
    the transformer discards, such as Qwen-Image's last text stream), which would never get a gradient. A transformer
    on the meta device (ranks > 0 under FSDP's RAM-efficient loading) stays there, adapters included: the casts and
    the initialisation allocate nothing, and FSDP later fills every tensor from rank 0.

    Args:
        model: A flow-model adapter (:class:`~leapalign.models.base.FlowModel`).
        cfg: Model configuration (``finetune``, LoRA settings, ``gradient_checkpointing``).

    Returns:
        ``model``, modified in place (``model.finetune_mode`` is set).
    """
    transformer = unwrap_model(model.transformer)
    for module in _frozen_modules(model):
        module.requires_grad_(False).eval()
    transformer.requires_grad_(False)
    unused = list(getattr(model, "unused_modules", list)())  # outputs the transformer discards: never trained
    if cfg.finetune == LORA_MODE:
        if has_lora(transformer):
            raise ValueError("the transformer already has a LoRA adapter: prepare_for_training was called twice.")
        from peft import LoraConfig

        targets = lora_targets(model, cfg)
        lora = LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=targets,
            exclude_modules=unused or None,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            transformer.add_adapter(lora)
        for name, param in transformer.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
                param.data = param.data.float()
        n = sum(p.numel() for p in transformer.parameters() if p.requires_grad)
        logger.info(
            "LoRA r=%d alpha=%s on %s: %d trainable parameters",
            cfg.lora_rank,
            cfg.lora_alpha,
            targets,
            n,
        )
    else:
        transformer.float().requires_grad_(True)
        for name in unused:
            transformer.get_submodule(name).requires_grad_(False)
        logger.info("full fine-tuning: %d trainable parameters", sum(p.numel() for p in transformer.parameters()))
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    model.finetune_mode = cfg.finetune
    return model


def _check_mode(mode: str) -> None:
    if mode not in (LORA_MODE, FULL_MODE):
        raise ValueError(f"model.finetune={mode!r} is invalid; allowed values: lora, full.")


def trainable_state_dict(transformer: nn.Module, mode: str) -> dict[str, Tensor]:
    """The tensors training changes, detached and contiguous (ready for ``safetensors.torch.save_file``).

    Args:
        transformer: The (possibly wrapped) transformer.
        mode: ``"lora"`` (peft adapter tensors) or ``"full"`` (the whole state dict).
    """
    _check_mode(mode)
    transformer = unwrap_model(transformer)
    if mode == LORA_MODE:
        from peft.utils import get_peft_model_state_dict

        state = get_peft_model_state_dict(transformer)
    else:
        state = transformer.state_dict()
    return {k: v.detach().contiguous() for k, v in state.items()}


def load_trainable_state_dict(transformer: nn.Module, state_dict: dict[str, Tensor], mode: str) -> None:
    """Loads a :func:`trainable_state_dict` back (strict: unknown or missing keys raise).

    Args:
        transformer: The (possibly wrapped) transformer, already prepared with the same mode.
        state_dict: Tensors from :func:`trainable_state_dict`.
        mode: ``"lora"`` or ``"full"``.
    """
    _check_mode(mode)
    transformer = unwrap_model(transformer)
    if mode == FULL_MODE:
        transformer.load_state_dict(state_dict, strict=True)
        return
    if not has_lora(transformer):
        raise ValueError("cannot load LoRA weights: the transformer has no LoRA adapter (model.finetune=lora?).")
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    expected = set(get_peft_model_state_dict(transformer))
    missing, unexpected = expected - set(state_dict), set(state_dict) - expected
    if missing or unexpected:
        raise ValueError(
            f"LoRA checkpoint does not match the model (different model.lora_rank/lora_targets?): "
            f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}."
        )
    set_peft_model_state_dict(transformer, state_dict)


def export_for_diffusers(model: Any, out_dir: str | Path, mode: str) -> Path:
    """Writes the fine-tuned weights in a layout plain diffusers loads, atomically.

    LoRA: ``<Pipeline>.save_lora_weights(out_dir, transformer_lora_layers=...,
    transformer_lora_adapter_metadata=...)`` (``pytorch_lora_weights.safetensors``; the metadata keeps
    ``lora_alpha`` so the scale survives), loadable
    with ``pipe.load_lora_weights(out_dir)``. Full: ``transformer.save_pretrained(out_dir / "transformer")``.
    Everything is written to a temporary sibling directory that replaces ``out_dir`` only once complete.

    Args:
        model: An adapter with ``transformer`` and ``pipeline_class`` (``FluxPipeline`` or
            ``StableDiffusion3Pipeline``).
        out_dir: Destination directory (replaced if it exists).
        mode: ``"lora"`` or ``"full"``.

    Returns:
        ``out_dir`` as a :class:`Path`.
    """
    _check_mode(mode)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    transformer = unwrap_model(model.transformer)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        if mode == LORA_MODE:
            if not has_lora(transformer):
                raise ValueError("cannot export LoRA weights: the transformer has no LoRA adapter.")
            tmp.mkdir()
            metadata = transformer.peft_config["default"].to_dict()
            if metadata.get("exclude_modules"):  # name the adapted modules, so loaders wrap exactly those
                adapted = {n.rsplit(".lora_", 1)[0] for n, _ in transformer.named_parameters() if ".lora_" in n}
                metadata["target_modules"], metadata["exclude_modules"] = sorted(adapted), None
            model.pipeline_class.save_lora_weights(
                str(tmp),
                transformer_lora_layers=trainable_state_dict(transformer, LORA_MODE),
                transformer_lora_adapter_metadata=metadata,
                safe_serialization=True,
            )
        else:
            if has_lora(transformer):
                raise ValueError("a full export of a LoRA transformer is not supported: use mode='lora'.")
            transformer.save_pretrained(str(tmp / "transformer"), safe_serialization=True)
        _replace_dir(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("exported %s weights to %s", mode, out_dir)
    return out_dir


def _replace_dir(src: Path, dst: Path) -> None:
    """Renames ``src`` to ``dst``; an existing ``dst`` is moved aside first and deleted only afterwards."""
    if not dst.exists():
        src.rename(dst)
        return
    old = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:8]}"
    dst.rename(old)
    try:
        src.rename(dst)
    except OSError:
        old.rename(dst)
        raise
    shutil.rmtree(old, ignore_errors=True)
