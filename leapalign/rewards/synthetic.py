"""Simple rewards that need no weights: useful for tests, smoke runs and as regularisers.

All are differentiable except :class:`PngCompressibility` (DDPO's compressibility reward).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from leapalign.rewards.base import check_images

COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 0.8, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "purple": (0.6, 0.0, 0.8),
    "orange": (1.0, 0.5, 0.0),
    "white": (1.0, 1.0, 1.0),
    "black": (0.0, 0.0, 0.0),
}


class Brightness:
    """Mean pixel intensity in ``[0, 1]``."""

    name = "brightness"
    differentiable = True

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        return images.mean(dim=(1, 2, 3))


class Saturation:
    """Mean per-pixel colour saturation ``max(rgb) - min(rgb)`` in ``[0, 1]``."""

    name = "saturation"
    differentiable = True

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        return (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2))


class TargetColor:
    """Closeness of every pixel to one colour: ``1 - mean squared RGB error`` in ``[0, 1]``.

    Args:
        color: A colour name (see ``COLORS``) or an RGB triple in ``[0, 1]``.
    """

    differentiable = True

    def __init__(self, color: str | Sequence[float] = "red") -> None:
        rgb = COLORS.get(color) if isinstance(color, str) else tuple(color)
        if rgb is None or len(rgb) != 3:
            raise ValueError(f"unknown colour {color!r}; use one of {', '.join(COLORS)} or an RGB triple.")
        self.rgb = torch.tensor(rgb, dtype=torch.float32)
        self.name = f"target_color[{color}]" if isinstance(color, str) else "target_color"

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        target = self.rgb.to(images).view(1, 3, 1, 1)
        return 1.0 - ((images - target) ** 2).mean(dim=(1, 2, 3))


class PromptColor:
    """A text-aware toy reward: closeness of the image to the first colour word of its prompt.

    Prompts without a colour word score ``1 - mean squared distance to mid grey``.
    """

    name = "prompt_color"
    differentiable = True

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        targets = torch.stack([torch.tensor(self._color_of(p)) for p in prompts]).to(images)
        return 1.0 - ((images - targets.view(-1, 3, 1, 1)) ** 2).mean(dim=(1, 2, 3))

    @staticmethod
    def _color_of(prompt: str) -> tuple[float, float, float]:
        for word in prompt.lower().replace(",", " ").split():
            if word in COLORS:
                return COLORS[word]
        return (0.5, 0.5, 0.5)


class PngCompressibility:
    """Negative PNG file size in kilobytes (DDPO's compressibility reward). Not differentiable."""

    name = "png_compressibility"
    differentiable = False

    @torch.no_grad()
    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        sizes = []
        for arr in arrays:
            buf = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
            sizes.append(-buf.tell() / 1024.0)
        return torch.tensor(sizes, dtype=torch.float32, device=images.device)
