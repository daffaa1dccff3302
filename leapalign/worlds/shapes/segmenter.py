"""The scene segmenter: a small U-Net that labels every pixel of a 32x32 scene with a shape and a colour.

Trained on renders by :mod:`leapalign.worlds.shapes.annotator` (which turns its labels into objects and verdicts) and
used, frozen, as the perceptual backbone of the segmenter form of ShapesScore (:mod:`leapalign.worlds.shapes.score`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from leapalign.worlds.shapes.weights import WeightsDirectory


@dataclass
class SegmenterArch:
    """Sizes of the segmenter (a small U-Net)."""

    width: int = 16


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())


class SceneSegmenter(WeightsDirectory, nn.Module):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> per-pixel shape logits ``(B, 1 + S, H, W)`` (background first)
    and colour logits ``(B, C, H, W)``.

    A two-level U-Net: its receptive field (about 40 px) spans the largest object, so a pixel's shape is read
    from the whole object around it, while the skip connections keep the outline sharp.
    """

    arch_cls = SegmenterArch
    what = "annotator"
    how = "; train one with `python -m leapalign.worlds.shapes.annotator --out DIR`"

    def __init__(self, arch: SegmenterArch | None = None) -> None:
        super().__init__()
        self.arch = arch or SegmenterArch()
        w = self.arch.width
        self.enc1 = nn.Sequential(_block(3, w), _block(w, w))
        self.enc2 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w), _block(4 * w, 4 * w))
        self.dec2 = nn.Sequential(_block(6 * w, 2 * w), _block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_block(3 * w, w), _block(w, w))
        self.head = nn.Conv2d(w, 1 + len(SHAPES) + len(COLORS), 1)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        e1 = self.enc1(images * 2 - 1)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        out = self.head(d1)
        return out[:, : 1 + len(SHAPES)], out[:, 1 + len(SHAPES) :]
