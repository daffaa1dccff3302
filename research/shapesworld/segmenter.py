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

from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from leapalign.worlds.shapes.score import ScoreArch, ShapesScoreModel, TextTower
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
    how = "; train one with `python -m research.shapesworld.annotator --out DIR`"

    def __init__(self, arch: SegmenterArch | None = None) -> None:
        super().__init__()
        self.arch = arch or SegmenterArch()
        w = self.arch.width
        self.enc1 = nn.Sequential(_block(3, w), _block(w, w))
        self.enc2 = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 2 * w))
        self.enc3 = nn.Sequential(_block(2 * w, 4 * w, 2), _block(4 * w, 4 * w), _block(4 * w, 4 * w))
        self.dec2 = nn.Sequential(_block(6 * w, 2 * w), _block(2 * w, 2 * w))
        self.dec1 = nn.Sequential(_block(3 * w, w), _block(w, w))
        self.head = nn.Conv2d(w, self.num_outputs(), 1)

    def num_outputs(self) -> int:
        """Channels of the head (subclasses with other heads override it)."""
        return 1 + len(SHAPES) + len(COLORS)

    def maps(self, images: Tensor) -> Tensor:
        """The head's raw output ``(B, num_outputs, H, W)``."""
        e1 = self.enc1(images * 2 - 1)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)

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
            _block(cin, w, 1),
            _block(w, w, 1),
            _block(w, 2 * w, 2),
            _block(2 * w, 2 * w, 1),
            _block(2 * w, 4 * w, 2),
            _block(4 * w, 4 * w, 2),
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
