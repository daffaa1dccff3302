"""The perception front end of the layout reward under research (:mod:`research.shapesworld.layout_reward`): what
is where in a 32x32 scene, differentiably, with no code in common with ShapesEval.

* **Shapes** are learned: the segmenter's U-Net (:class:`~research.shapesworld.segmenter.SceneSegmenter`) with
  another head labels every pixel background, circle, square, triangle or ``other`` (any shape that is none of
  the three: hybrids, ellipses, blobs), and predicts per shape a *density* map whose sum over an object is 1 (a
  Gaussian bump at its centroid), so that the sum over the image counts the objects (:class:`ScenePerception`,
  trained by :mod:`research.shapesworld.layout_train`).
* **Colours** are analytic (:func:`colour_maps`): a pixel's soft membership of each palette colour from the
  direction of its RGB vector, gated by its chroma, so that no colour has to be learned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from research.shapesworld.segmenter import SceneSegmenter, SegmenterArch

CLASSES: tuple[str, ...] = ("background", *SHAPES, "other")
_PALETTE = torch.tensor([COLORS[c] for c in COLORS], dtype=torch.float32)  # (C, 3)


class ScenePerception(SceneSegmenter):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> per-pixel class logits ``(B, 5, H, W)`` (:data:`CLASSES`) and
    per-shape densities ``(B, 3, H, W)`` (non-negative; an object of shape ``s`` adds 1 to the sum of channel
    ``s``). The segmenter's U-Net (width 24 by default) with its own head."""

    what = "layout-reward perception network"
    how = "; train one with `python -m research.shapesworld.layout_train`"

    def __init__(self, arch: SegmenterArch | None = None) -> None:
        super().__init__(arch or SegmenterArch(width=24))

    def num_outputs(self) -> int:
        return len(CLASSES) + len(SHAPES)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.maps(images)
        return out[:, : len(CLASSES)], F.softplus(out[:, len(CLASSES) :])


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
