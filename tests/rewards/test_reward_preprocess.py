"""Differentiable preprocessing against the official non-differentiable paths, on real photos (scikit-image).

Measured on the project machine (deviation in 8-bit levels, i.e. units of 1/255 of the [0, 1] pixel range,
over astronaut 512x512, chelsea 300x451, coffee 400x600, rocket 427x640 and a 60x45 thumbnail upscaled):

* vs ``transformers.CLIPImageProcessor`` (Pillow path; PickScore, CLIP score): max 1 level, mean <= 0.0003.
* vs torchvision ``Resize(224, BICUBIC)`` + ``CenterCrop(224)`` on PIL images, written here with Pillow
  (OpenAI CLIP: aesthetic predictor, ImageReward): max 1 level, mean <= 0.0003.
* vs HPSv2's scoring transform (``ToTensor``, ``ResizeMaxSize(224)``, normalise; torchvision's float-tensor resize
  is one ``interpolate(bicubic, antialias=True)`` call): 0 (bit-identical); the test checks the geometry.

The asserted tolerances: max <= 1 level (+1e-5) and mean <= 0.002 levels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor

from leapalign.rewards.preprocess import (
    HPSV2,
    OPENAI_CLIP,
    OPENAI_MEAN,
    OPENAI_STD,
    ImageSpec,
    preprocess,
    resized_size,
    spec_from_hf_processor,
)

skimage_data = pytest.importorskip("skimage.data")
MEAN = torch.tensor(OPENAI_MEAN).view(3, 1, 1)
STD = torch.tensor(OPENAI_STD).view(3, 1, 1)
LEVEL = 1 / 255


def photos() -> dict[str, Image.Image]:
    out = {name: Image.fromarray(getattr(skimage_data, name)()).convert("RGB") for name in ("astronaut", "chelsea")}
    out.update({name: Image.fromarray(getattr(skimage_data, name)()) for name in ("coffee", "rocket")})
    out["thumbnail_upscaled"] = out["chelsea"].resize((60, 45), Image.BICUBIC)
    return out


def to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255)[None]


def deviation(ours: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max and mean absolute difference in [0, 1] pixel units (normalised values times std)."""
    diff = (ours.reshape(ref.shape) - ref).abs() * STD
    return diff.max().item(), diff.mean().item()


def torchvision_pil_reference(img: Image.Image, size: int = 224) -> torch.Tensor:
    """torchvision ``Resize(size, BICUBIC)`` + ``CenterCrop(size)`` on a PIL image, ``ToTensor``, ``Normalize``."""
    w, h = img.size
    short, long = min(w, h), max(w, h)
    new_long = int(size * long / short)
    new_w, new_h = (size, new_long) if w <= h else (new_long, size)
    resized = img.resize((new_w, new_h), Image.BICUBIC)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    crop = resized.crop((left, top, left + size, top + size))
    return (to_tensor(crop)[0] - MEAN) / STD


def hpsv2_reference(img: Image.Image, size: int = 224) -> torch.Tensor:
    """HPSv2's ``preprocess_val``: ToTensor, ResizeMaxSize(size) (round, torchvision float resize, centred zero pad)."""
    x = to_tensor(img)
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    new_h, new_w = round(h * scale), round(w * scale)
    x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    pad_h, pad_w = size - new_h, size - new_w
    x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2], value=0.0)
    return (x[0] - MEAN) / STD


@pytest.mark.parametrize("name", list(photos()))
def test_clip_image_processor_equivalence(name: str) -> None:
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    img = photos()[name]
    ref = processor(images=img, return_tensors="pt")["pixel_values"][0]
    ours = preprocess(to_tensor(img), spec_from_hf_processor(processor))
    max_dev, mean_dev = deviation(ours, ref)
    assert ours.shape == (1, 3, 224, 224)
    assert max_dev <= LEVEL + 1e-5 and mean_dev <= 0.002 * LEVEL, (name, max_dev / LEVEL, mean_dev / LEVEL)


@pytest.mark.parametrize("name", list(photos()))
def test_openai_clip_transform_equivalence(name: str) -> None:
    img = photos()[name]
    max_dev, mean_dev = deviation(preprocess(to_tensor(img), OPENAI_CLIP), torchvision_pil_reference(img))
    assert max_dev <= LEVEL + 1e-5 and mean_dev <= 0.002 * LEVEL, (name, max_dev / LEVEL, mean_dev / LEVEL)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "thumbnail_upscaled"])
def test_hpsv2_transform_is_reproduced_exactly(name: str) -> None:
    img = photos()[name]
    ours = preprocess(to_tensor(img), HPSV2)[0]
    ref = hpsv2_reference(img)
    assert torch.equal(ours, ref)
    if name == "coffee":  # 400x600 -> 149x224 with 37 / 38 rows of zero padding (black after normalisation)
        assert resized_size(400, 600, HPSV2) == (149, 224)
        black = ((0 - MEAN) / STD).view(3)
        assert torch.allclose(ours[:, :37, :].mean(dim=(1, 2)), black)
        assert not torch.allclose(ours[:, 37, :].mean(dim=1), black)
        assert torch.allclose(ours[:, -38:, :].mean(dim=(1, 2)), black)


def test_crop_offsets_follow_each_convention() -> None:
    """An odd margin (227 - 224 = 3) crops at 1 (floor, Hugging Face) or 2 (round half to even, torchvision)."""
    img = torch.rand(1, 3, 224, 227)
    floor, rnd = ImageSpec(crop_rounding="floor"), ImageSpec(crop_rounding="round")
    norm = (img - MEAN) / STD
    q = (img * 255).round() / 255
    qnorm = (q - MEAN) / STD
    assert torch.allclose(preprocess(img, floor), qnorm[..., 1:225], atol=1e-6)
    assert torch.allclose(preprocess(img, rnd), qnorm[..., 2:226], atol=1e-6)
    assert not torch.allclose(preprocess(img, floor), norm[..., 2:226], atol=1e-3)


@pytest.mark.parametrize("spec", [OPENAI_CLIP, HPSV2, ImageSpec(size=32, resize="squash", interpolation="bilinear")])
def test_gradients_reach_the_images(spec: ImageSpec) -> None:
    images = torch.rand(2, 3, 96, 80, requires_grad=True)
    weights = torch.randn(1, 3, spec.size, spec.size)
    (preprocess(images, spec) * weights).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert torch.isfinite(images.grad).all()


def test_processor_settings_that_cannot_be_reproduced_are_rejected() -> None:
    with pytest.raises(ValueError, match="resample"):
        spec_from_hf_processor(CLIPImageProcessor(resample=1))
    with pytest.raises(ValueError, match="only equal sizes"):
        spec_from_hf_processor(CLIPImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}))
    with pytest.raises(ValueError, match="backend"):
        ImageSpec(backend="cv2")
