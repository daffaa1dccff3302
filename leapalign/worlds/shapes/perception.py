"""The perception front end of the layout reward (:mod:`leapalign.worlds.shapes.layout`): what is where in a
32x32 scene, differentiably, with no code in common with ShapesEval.

* **Shapes** are learned: a small U-Net (:class:`ScenePerception`) labels every pixel background, circle,
  square, triangle or ``other`` (any shape that is none of the three: hybrids, near misses such as rounded
  squares, polygons and ovals, blobs) and predicts at every pixel the *area* (in pixels) of the object it lies on,
  so that summing ``P(shape | pixel) / area(pixel)`` over the image counts the objects of that shape: each object
  adds one whatever its size. It is trained on renders with nuisances by :mod:`leapalign.worlds.shapes.layout_train`.
  (A first design regressed a per-shape density map, a bump of mass one at each centroid; its head collapsed to
  a constant, counts of 6 to 9 for every image. Counting is now split into *where*, the classes trained by
  cross-entropy, and *how big*, a log-area regression: two well-scaled losses.)
* **Colours** are analytic (:func:`colour_maps`): a pixel's soft membership of each palette colour from the
  direction of its RGB vector, gated by its chroma, so that no colour has to be learned.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from leapalign.worlds.shapes.weights import WeightsDirectory

CLASSES: tuple[str, ...] = ("background", *SHAPES, "other")
LOG_AREA_OFFSET = 4.0  # the area head predicts log(area) - 4: an output of 0 is an object of 55 px
_PALETTE = torch.tensor([COLORS[c] for c in COLORS], dtype=torch.float32)  # (C, 3)


@dataclass
class UNetArch:
    """Sizes of the per-pixel U-Net."""

    width: int = 24


def conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """A 3x3 convolution, group norm (8 groups) and SiLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class PixelUNet(WeightsDirectory, nn.Module, abc.ABC):
    """A two-level U-Net from ``(B, 3, H, W)`` images in ``[0, 1]`` to ``num_outputs()`` maps ``(B, K, H, W)``.

    Its receptive field (about 40 px) spans the largest object, so a pixel's label is read from the whole object
    around it, while the skip connections keep the outline sharp. Subclasses choose the head's channels
    (:meth:`num_outputs`) and what ``forward`` makes of them.
    """

    arch_cls = UNetArch
    what = "per-pixel U-Net"

    def __init__(self, arch: UNetArch | None = None) -> None:
        super().__init__()
        self.arch = arch or self.arch_cls()
        w = self.arch.width
        self.enc1 = nn.Sequential(conv_block(3, w), conv_block(w, w))
        self.enc2 = nn.Sequential(conv_block(w, 2 * w, 2), conv_block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(conv_block(2 * w, 4 * w, 2), conv_block(4 * w, 4 * w), conv_block(4 * w, 4 * w))
        self.dec2 = nn.Sequential(conv_block(6 * w, 2 * w), conv_block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(conv_block(3 * w, w), conv_block(w, w))
        self.head = nn.Conv2d(w, self.num_outputs(), 1)

    @abc.abstractmethod
    def num_outputs(self) -> int:
        """Channels of the head."""

    def maps(self, images: Tensor) -> Tensor:
        """The head's raw output ``(B, num_outputs, H, W)`` for images ``(B, 3, H, W)`` in ``[0, 1]``."""
        e1 = self.enc1(images * 2 - 1)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)


class ScenePerception(PixelUNet):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> per-pixel class logits ``(B, 5, H, W)`` (:data:`CLASSES`) and
    the area ``(B, H, W)`` in pixels (positive) of the object each pixel lies on."""

    what = "layout-reward perception network"
    how = "; train one with `python -m leapalign.worlds.shapes.layout_train --out DIR`"

    def num_outputs(self) -> int:
        return len(CLASSES) + 1

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.maps(images)
        return out[:, : len(CLASSES)], torch.exp(out[:, len(CLASSES)] + LOG_AREA_OFFSET)


def colour_maps(images: Tensor, sharpness: float = 30.0, min_chroma: float = 0.25) -> Tensor:
    """Soft colour membership ``(B, C, H, W)`` of each pixel, in ``[0, 1]``, summing to the pixel's chroma gate.

    The membership of colour ``k`` is a softmax over the palette of ``sharpness`` times the cosine between the
    pixel's RGB vector and colour ``k``'s; the gate is a sigmoid of the pixel's chroma (max minus min channel)
    around ``min_chroma``, so grey, white and black pixels belong to no colour.

    Args:
        images: ``(B, 3, H, W)`` in ``[0, 1]``.
        sharpness: Inverse temperature of the softmax.
        min_chroma: Chroma at which the gate is one half.
    """
    palette = _PALETTE.to(images)
    unit = F.normalize(images, dim=1, eps=1e-4)
    cos = torch.einsum("bchw,kc->bkhw", unit, F.normalize(palette, dim=1))
    chroma = images.amax(1, keepdim=True) - images.amin(1, keepdim=True)
    gate = torch.sigmoid((chroma - min_chroma) / 0.05)
    return (sharpness * cos).softmax(1) * gate
