"""Convert an OpenCLIP ViT CLIP state dict (the format of the HPSv2 checkpoints) to ``transformers.CLIPModel``.

OpenCLIP cannot be installed beside a CPU-only torch (it needs torchvision), so HPSv2 runs on the
``transformers`` CLIP implementation, which computes the same function: pre-norm residual blocks with
``nn.MultiheadAttention``-style fused q/k/v, GELU MLPs, a class token and ``ln_post`` on the vision side, a causal
text transformer pooled at the end-of-text token. Every key of the source is mapped or explicitly ignored
(``attn_mask``, a constant causal-mask buffer that older OpenCLIP versions saved); anything else raises.

Supported: the standard OpenCLIP ``CLIP`` ViT towers (ViT-B/L/H/g/bigG) without layer scale, attentional
pooling, patch-norm, custom text towers or projection biases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

# OpenCLIP configs: vision width -> heads (width / head_width), text width -> heads.
VISION_HEADS = {768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}
TEXT_HEADS = {512: 8, 768: 12, 1024: 16, 1280: 20}
IGNORED_KEYS = ("attn_mask",)

_BLOCK = {
    "ln_1.weight": "layer_norm1.weight",
    "ln_1.bias": "layer_norm1.bias",
    "ln_2.weight": "layer_norm2.weight",
    "ln_2.bias": "layer_norm2.bias",
    "attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.out_proj.bias": "self_attn.out_proj.bias",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_fc.bias": "mlp.fc1.bias",
    "mlp.c_proj.weight": "mlp.fc2.weight",
    "mlp.c_proj.bias": "mlp.fc2.bias",
}
_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
}
_BLOCK_RE = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def load_openclip_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Reads an OpenCLIP checkpoint safely (``weights_only=True``) and returns its float32 state dict.

    Accepts ``{"state_dict": ...}`` (the HPSv2 and OpenCLIP training format) or a bare state dict, with or
    without the ``module.`` prefix that DDP training adds.
    """
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not an OpenCLIP checkpoint: expected a state dict or {{'state_dict': ...}}.")
    return {k.removeprefix("module."): v.float() if v.is_floating_point() else v for k, v in sd.items()}


def _count_blocks(sd: Mapping[str, Tensor], prefix: str) -> int:
    ids = {int(m.group(2)) for k in sd if (m := _BLOCK_RE.match(k)) and (m.group(1) or "") == prefix}
    if ids != set(range(len(ids))):
        raise ValueError(f"OpenCLIP state dict has non-contiguous {prefix or 'text '}transformer blocks {sorted(ids)}.")
    return len(ids)


def openclip_config(
    sd: Mapping[str, Tensor],
    *,
    vision_heads: int | None = None,
    text_heads: int | None = None,
    hidden_act: str = "gelu",
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
):
    """A ``transformers.CLIPConfig`` with the architecture of an OpenCLIP ViT state dict.

    Shapes give every size; the head counts come from the OpenCLIP configs by width (``VISION_HEADS``,
    ``TEXT_HEADS``) unless given.

    Args:
        sd: The OpenCLIP state dict.
        vision_heads: Attention heads of the image tower (``None``: from the width).
        text_heads: Attention heads of the text tower (``None``: from the width).
        hidden_act: ``gelu`` (OpenCLIP models, HPSv2) or ``quick_gelu`` (OpenAI-trained weights).
        bos_token_id: Start-of-text id (default: ``vocab_size - 2``, as in the CLIP BPE vocabulary).
        eos_token_id: End-of-text id, where the text tower pools (default: ``vocab_size - 1``).
        pad_token_id: Padding id (default: ``eos_token_id``; padding after the end of text has no effect).
    """
    from transformers import CLIPConfig

    for key in ("visual.conv1.weight", "visual.proj", "token_embedding.weight", "ln_final.weight"):
        if key not in sd:
            raise ValueError(f"OpenCLIP state dict has no {key!r}; only standard ViT CLIP checkpoints are supported.")
    v_width, _, patch, _ = sd["visual.conv1.weight"].shape
    grid = round((sd["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    t_width = sd["ln_final.weight"].shape[0]
    vocab = sd["token_embedding.weight"].shape[0]
    v_heads = vision_heads or VISION_HEADS.get(v_width)
    t_heads = text_heads or TEXT_HEADS.get(t_width)
    if v_heads is None or t_heads is None:
        raise ValueError(
            f"unknown OpenCLIP widths (vision {v_width}, text {t_width}): pass vision_heads and text_heads "
            f"(the model config's vision width / head_width and text heads)."
        )
    eos = vocab - 1 if eos_token_id is None else eos_token_id
    text_config = dict(
        vocab_size=vocab,
        hidden_size=t_width,
        intermediate_size=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, ""),
        num_attention_heads=t_heads,
        max_position_embeddings=sd["positional_embedding"].shape[0],
        hidden_act=hidden_act,
        bos_token_id=vocab - 2 if bos_token_id is None else bos_token_id,
        eos_token_id=eos,
        pad_token_id=eos if pad_token_id is None else pad_token_id,
    )
    vision_config = dict(
        hidden_size=v_width,
        intermediate_size=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
        num_hidden_layers=_count_blocks(sd, "visual."),
        num_attention_heads=v_heads,
        image_size=grid * patch,
        patch_size=patch,
        hidden_act=hidden_act,
    )
    return CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=sd["visual.proj"].shape[1])


def convert_openclip_state_dict(sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Maps every key of an OpenCLIP ViT CLIP state dict to ``transformers.CLIPModel`` names.

    Raises:
        ValueError: Listing every key that has no counterpart (unsupported architecture features).
    """
    out: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "text_projection":  # OpenCLIP: x @ P with P (width, embed); HF: Linear weight (embed, width)
            out["text_projection.weight"] = value.t().contiguous()
        elif key == "text_projection.weight":  # newer OpenCLIP keeps it as an nn.Linear
            out["text_projection.weight"] = value
        elif key == "visual.proj":
            out["visual_projection.weight"] = value.t().contiguous()
        elif key in IGNORED_KEYS:
            continue
        elif m := _BLOCK_RE.match(key):
            tower = "vision_model" if m.group(1) else "text_model"
            base = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest in _BLOCK:
                out[base + _BLOCK[rest]] = value
            elif rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[-1]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0), strict=True):
                    out[f"{base}self_attn.{name}_proj.{kind}"] = part.contiguous()
            else:
                unmapped.append(key)
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(
            f"OpenCLIP state dict has {len(unmapped)} key(s) with no transformers CLIP counterpart: "
            f"{', '.join(unmapped[:8])}{' ...' if len(unmapped) > 8 else ''}. Only standard ViT CLIP checkpoints "
            f"(no layer scale, attentional pooling or custom text tower) can be converted."
        )
    return out


def openclip_to_transformers(sd: Mapping[str, Tensor], **config_kwargs):
    """Builds a ``transformers.CLIPModel`` holding exactly the weights of an OpenCLIP ViT state dict.

    Args:
        sd: The OpenCLIP state dict (see :func:`load_openclip_state_dict`).
        **config_kwargs: Passed to :func:`openclip_config`.

    Returns:
        The model in eval mode, float32.

    Raises:
        ValueError: Unmapped source keys, or model weights the source does not provide.
    """
    from transformers import CLIPModel

    config = openclip_config(sd, **config_kwargs)
    converted = convert_openclip_state_dict(sd)
    model = CLIPModel(config)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(converted)), sorted(set(converted) - expected)
    if missing or extra:
        raise ValueError(f"converted OpenCLIP weights do not fit the model: missing {missing[:8]}, extra {extra[:8]}.")
    model.load_state_dict(converted, strict=True)
    return model.eval()
