"""The scene segmenter, a small U-Net that labels every pixel of a 32x32 scene with a shape and a colour, and the
ShapesScore whose image tower reads it.

The segmenter is trained on renders by :mod:`research.shapesworld.annotator` (which turns its labels into objects
and verdicts). Frozen, it is the perceptual backbone of :class:`SegmenterScoreModel`, the ``"segmenter"`` backbone
of ShapesScore (reward v11 in ``docs/shapesworld.md``): train one with
``python -m research.shapesworld.score_research --segmenter DIR``, load any ShapesScore weights folder with
:func:`load_score_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.worlds.shapes.perception import PixelUNet, UNetArch, conv_block
from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from leapalign.worlds.shapes.score import ScoreArch, ShapesScoreModel, TextTower


@dataclass
class SegmenterArch(UNetArch):
    """Sizes of the segmenter (the package's per-pixel U-Net)."""

    width: int = 16


class SceneSegmenter(PixelUNet):
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> per-pixel shape logits ``(B, 1 + S, H, W)`` (background first)
    and colour logits ``(B, C, H, W)``: the package's U-Net (:class:`~leapalign.worlds.shapes.perception.PixelUNet`)
    with this head."""

    arch_cls = SegmenterArch
    what = "annotator"
    how = "; train one with `python -m research.shapesworld.annotator --out DIR`"

    def num_outputs(self) -> int:
        return 1 + len(SHAPES) + len(COLORS)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.maps(images)
        return out[:, : 1 + len(SHAPES)], out[:, 1 + len(SHAPES) :]


@dataclass
class SegmenterScoreArch(ScoreArch):
    """:class:`~leapalign.worlds.shapes.score.ScoreArch` with a frozen segmenter of width ``segmenter_width`` as
    the image backbone (``blur_sigma`` is unused; ``backbone`` is written to ``config.json`` so that the package
    refuses these weights with a pointer here)."""

    backbone: str = "segmenter"
    segmenter_width: int = 16

    def __post_init__(self) -> None:
        if self.backbone != "segmenter":
            raise ValueError(f"SegmenterScoreArch.backbone={self.backbone!r}; it must be 'segmenter'.")


class SegmenterImageTower(nn.Module):
    """The image tower on ``1 + S + C + S * C`` maps of a frozen segmenter: the shape probabilities (background
    first), the colour probabilities and their products on the foreground ("this pixel belongs to a red
    circle"). The reward's gradient then reaches the image only through what the segmenter perceives, and a shape
    the segmenter calls background (e.g. a hybrid, for a segmenter trained with ``--corruptions ...,hybrid``)
    counts for no object."""

    def __init__(self, arch: SegmenterScoreArch) -> None:
        super().__init__()
        w = arch.width
        self.segmenter = SceneSegmenter(SegmenterArch(arch.segmenter_width)).requires_grad_(False)
        cin = 1 + len(SHAPES) + len(COLORS) + len(SHAPES) * len(COLORS)
        self.net = nn.Sequential(
            conv_block(cin, w, 1),
            conv_block(w, w, 1),
            conv_block(w, 2 * w, 2),
            conv_block(2 * w, 2 * w, 1),
            conv_block(2 * w, 4 * w, 2),
            conv_block(4 * w, 4 * w, 2),
        )  # 32 -> 32 -> 16 -> 8 -> 4, as the pixels tower
        self.proj = nn.Linear(4 * w * 16, arch.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        h = self.net(self.perceive(images))
        return F.normalize(self.proj(h.flatten(1)), dim=-1)

    def train(self, mode: bool = True) -> SegmenterImageTower:
        super().train(mode)
        self.segmenter.eval()  # a frozen backbone: never in training mode
        return self

    def perceive(self, images: Tensor) -> Tensor:
        """The segmenter's maps ``(B, 1 + S + C + S * C, 32, 32)``, all in ``[0, 1]``."""
        shape_logits, color_logits = self.segmenter(images)
        shape, color = shape_logits.softmax(1), color_logits.softmax(1)
        joint = (shape[:, 1:, None] * color[:, None]).flatten(1, 2)  # (B, S * C, H, W): foreground only
        return torch.cat([shape, color, joint], 1)


class SegmenterScoreModel(ShapesScoreModel):
    """The ShapesScore dual encoder with :class:`SegmenterImageTower` (the segmenter's weights are saved with
    the reward's)."""

    arch_cls = SegmenterScoreArch

    def __init__(self, arch: SegmenterScoreArch | None = None) -> None:
        nn.Module.__init__(self)  # the parent's towers are not built: the same draws as the former backbone option
        self.arch = arch or SegmenterScoreArch()
        self.image = SegmenterImageTower(self.arch)
        self.text = TextTower(self.arch)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))

    @classmethod
    def arch_from(cls, arch: dict[str, Any], directory: Path) -> SegmenterScoreArch:
        return SegmenterScoreArch(**arch)


def load_score_model(directory: Path) -> ShapesScoreModel:
    """A ShapesScore weights folder of either backbone (``config.json``'s ``arch.backbone``), in eval mode."""
    config = Path(directory) / "config.json"
    backbone = json.loads(config.read_text())["arch"].get("backbone", "pixels") if config.is_file() else "pixels"
    return (SegmenterScoreModel if backbone == "segmenter" else ShapesScoreModel).load(Path(directory))
