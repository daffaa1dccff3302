"""Differentiable image preprocessing for reward models: resize, crop or pad, normalise, all in torch.

Every reward model was trained with a non-differentiable preprocessing pipeline (PIL or torchvision on PIL
images). :func:`preprocess` reproduces each pipeline's geometry exactly (output sizes, crop offsets, padding)
and its resampling as closely as torch allows, so gradients reach the generated images.

Resampling: ``torch.nn.functional.interpolate(mode="bicubic", antialias=True)`` uses the same cubic kernel as
Pillow (``a = -0.5``) with the same support widening when downscaling. Two backends:

* ``pil`` emulates Pillow on 8-bit images: the input is rounded to 8 bits, then a horizontal pass, a clamp and
  an 8-bit rounding, then a vertical pass, a clamp and an 8-bit rounding, in Pillow's order. The roundings are
  straight-through (forward rounds, backward is the identity), so the forward matches Pillow to one 8-bit
  level at most and gradients still flow.
* ``tensor`` is torchvision's float-tensor resize (one ``interpolate`` call, no clamp, no rounding), which is
  what torchvision itself runs.

The measured deviations on real photos are in ``docs/rewards.md`` and asserted in
``tests/rewards/test_preprocess.py``.

The specs used by the shipped rewards:

* :data:`OPENAI_CLIP`: OpenAI CLIP's ``clip.load`` transform (torchvision ``Resize(224, BICUBIC)`` on the
  PIL image, ``CenterCrop(224)`` with round-half-to-even offsets, OpenAI mean/std). Used by the LAION aesthetic
  predictor and ImageReward.
* :func:`spec_from_hf_processor`: a Hugging Face ``CLIPImageProcessor`` (shortest-edge resize with Pillow,
  floor crop offsets). Used by PickScore and CLIP score.
* :data:`HPSV2`: HPSv2's scoring transform (``ToTensor`` first, then ``ResizeMaxSize(224)``: the longer side
  to 224 with torchvision's float-tensor bicubic resize, zero padding centred, then OpenAI mean/std).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
RESIZE_MODES = ("shortest", "longest", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
CROP_ROUNDING = ("floor", "round")
BACKENDS = ("pil", "tensor")


@dataclass(frozen=True)
class ImageSpec:
    """How one reward model wants its images.

    Attributes:
        size: Output side length in pixels (the model's input is ``size x size``).
        resize: ``shortest``: the shorter side becomes ``size`` (the longer one ``int(size * long / short)``),
            then a centre crop. ``longest``: the longer side becomes ``size`` (the shorter one
            ``round(short * size / long)``), then centred padding with ``fill``. ``squash``: straight to
            ``size x size``.
        interpolation: ``bicubic`` or ``bilinear`` (both antialiased when downscaling, as Pillow does).
        crop_rounding: Centre-crop offset: ``floor`` (Hugging Face image processors) or ``round``
            (torchvision ``CenterCrop``: Python's round half to even).
        backend: ``pil`` (emulate Pillow on 8-bit images, see the module docstring) or ``tensor`` (torchvision's
            float-tensor resize).
        fill: Padding value in ``[0, 1]`` units (``longest`` only), applied before normalisation.
        mean: Per-channel mean subtracted after resizing.
        std: Per-channel standard deviation divided by after resizing.
    """

    size: int = 224
    resize: str = "shortest"
    interpolation: str = "bicubic"
    crop_rounding: str = "floor"
    backend: str = "pil"
    fill: float = 0.0
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"ImageSpec.resize={self.resize!r} is invalid; allowed: {', '.join(RESIZE_MODES)}.")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"ImageSpec.interpolation={self.interpolation!r} is invalid; allowed: {', '.join(INTERPOLATIONS)}."
            )
        if self.crop_rounding not in CROP_ROUNDING:
            raise ValueError(
                f"ImageSpec.crop_rounding={self.crop_rounding!r} is invalid; allowed: {', '.join(CROP_ROUNDING)}."
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"ImageSpec.backend={self.backend!r} is invalid; allowed: {', '.join(BACKENDS)}.")
        if self.size < 1:
            raise ValueError(f"ImageSpec.size={self.size} must be >= 1.")


OPENAI_CLIP = ImageSpec(crop_rounding="round")
HPSV2 = ImageSpec(resize="longest", backend="tensor", fill=0.0)

# Pillow / Hugging Face resample codes -> torch modes.
_PIL_RESAMPLE = {3: "bicubic", 2: "bilinear"}


def resized_size(height: int, width: int, spec: ImageSpec) -> tuple[int, int]:
    """The ``(height, width)`` an image of ``height x width`` is resized to before cropping or padding."""
    s = spec.size
    if spec.resize == "squash":
        return s, s
    if spec.resize == "shortest":
        short, long = min(height, width), max(height, width)
        new_long = int(s * long / short)
        return (s, new_long) if height <= width else (new_long, s)
    scale = s / max(height, width)
    return round(height * scale), round(width * scale)


def _round8(x: Tensor) -> Tensor:
    """Rounds ``[0, 1]`` values to the 8-bit grid with a straight-through gradient."""
    return x + ((x * 255.0).round() / 255.0 - x).detach()


def _crop_offset(extra: int, rounding: str) -> int:
    return extra // 2 if rounding == "floor" else int(round(extra / 2.0))


def preprocess(images: Tensor, spec: ImageSpec) -> Tensor:
    """Resizes, crops or pads and normalises images for a reward model, differentiably.

    Args:
        images: RGB images in ``[0, 1]``, shape ``(B, 3, H, W)``, any float dtype.
        spec: The model's :class:`ImageSpec`.

    Returns:
        Normalised float32 pixels of shape ``(B, 3, spec.size, spec.size)``.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"preprocess takes images of shape (B, 3, H, W), got {tuple(images.shape)}.")
    x = images.float()
    h, w = x.shape[-2:]
    new_h, new_w = resized_size(h, w, spec)
    if spec.backend == "tensor":
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
    else:
        x = _round8(x.clamp(0.0, 1.0))
        if new_w != w:  # Pillow resamples horizontally first, then vertically, rounding to 8 bits after each pass
            x = F.interpolate(x, size=(h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
            x = _round8(x.clamp(0.0, 1.0))
        if new_h != h:
            x = F.interpolate(x, size=(new_h, new_w), mode=spec.interpolation, align_corners=False, antialias=True)
            x = _round8(x.clamp(0.0, 1.0))
    s = spec.size
    if spec.resize == "shortest":
        top, left = _crop_offset(new_h - s, spec.crop_rounding), _crop_offset(new_w - s, spec.crop_rounding)
        x = x[:, :, top : top + s, left : left + s]
    elif spec.resize == "longest":
        pad_h, pad_w = s - new_h, s - new_w
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=spec.fill)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def spec_from_hf_processor(processor: Any) -> ImageSpec:
    """The :class:`ImageSpec` equivalent to a Hugging Face CLIP image processor (or a processor holding one).

    Args:
        processor: A ``CLIPImageProcessor`` (any backend) or a ``CLIPProcessor`` with ``.image_processor``.

    Raises:
        ValueError: For settings this module cannot reproduce (no centre crop with a shortest-edge resize,
            non-square crops, other resampling filters).
    """
    proc = getattr(processor, "image_processor", processor)
    size = {k: v for k, v in dict(proc.size).items() if v is not None}
    crop = {k: v for k, v in dict(getattr(proc, "crop_size", None) or {}).items() if v is not None}
    resample = int(getattr(proc, "resample", 3))
    if resample not in _PIL_RESAMPLE:
        raise ValueError(f"image processor resample={resample} is not supported; only bicubic (3) and bilinear (2).")
    common = dict(
        interpolation=_PIL_RESAMPLE[resample],
        crop_rounding="floor",
        backend="pil",
        mean=tuple(float(m) for m in proc.image_mean),
        std=tuple(float(s) for s in proc.image_std),
    )
    if "shortest_edge" in size:
        if not getattr(proc, "do_center_crop", True) or crop.get("height") != crop.get("width"):
            raise ValueError(f"image processor crop {crop} is not a square centre crop; cannot reproduce it.")
        if crop["height"] > size["shortest_edge"]:
            raise ValueError(f"image processor crops {crop} after resizing to {size}; cannot reproduce it.")
        if crop["height"] != size["shortest_edge"]:
            raise ValueError(
                f"image processor resizes to {size['shortest_edge']} then crops {crop['height']}; only equal sizes "
                f"are supported."
            )
        return ImageSpec(size=int(size["shortest_edge"]), resize="shortest", **common)
    if size.get("height") is not None and size.get("height") == size.get("width"):
        return ImageSpec(size=int(size["height"]), resize="squash", **common)
    raise ValueError(f"image processor size {size} is not supported (need shortest_edge or a square height/width).")
