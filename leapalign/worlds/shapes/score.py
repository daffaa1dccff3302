"""ShapesScore: the learned, differentiable reward of ShapesWorld (its HPS / PickScore analogue).

A small CLIP-style dual encoder. The image tower is a CNN that keeps a 4x4 spatial map before its projection
(positions matter for relations); the text tower reads the MiniLM *token* embeddings through one transformer
layer (MiniLM's pooled vector barely separates "left of" from "right of"). The score of an (image, prompt) pair
is the cosine similarity of the two embeddings, in ``[-1, 1]``, as HPS returns. It is trained contrastively
on rendered scenes with hard negative prompts (:mod:`leapalign.worlds.shapes.score_train`).

The research variants of the reward (averaged over perturbed views, contrastive against near-miss prompts, an
image tower on a frozen segmenter) live outside the package, in ``research/shapesworld/score_variants.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.worlds.shapes.text import EMBED_DIM, MiniLMEncoder
from leapalign.worlds.shapes.weights import WeightsDirectory


@dataclass
class ScoreArch:
    """Sizes of the ShapesScore dual encoder."""

    width: int = 24
    embed_dim: int = 128
    text_heads: int = 4
    blur_sigma: float = 0.8


def gaussian_kernel(sigma: float, radius: int = 2) -> Tensor:
    """A normalised 2-D Gaussian kernel of shape ``(2r + 1, 2r + 1)``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class ImageTower(nn.Module):
    """``(B, 3, 32, 32)`` images in ``[0, 1]`` -> ``(B, D)`` unit embeddings.

    The input is first low-passed by a fixed Gaussian (``blur_sigma`` px), part of the reward's preprocessing:
    shapes survive it, while the high-frequency patterns a generator can most easily exploit (e.g. its own
    4x4-patch grid) are attenuated, which makes the reward harder to hack.
    """

    def __init__(self, arch: ScoreArch) -> None:
        super().__init__()
        w = arch.width
        blur = gaussian_kernel(arch.blur_sigma).expand(3, 1, 5, 5).clone()
        self.register_buffer("blur", blur, persistent=False)

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.net = nn.Sequential(
            block(3, w, 1),
            block(w, w, 1),
            block(w, 2 * w, 2),
            block(2 * w, 2 * w, 1),
            block(2 * w, 4 * w, 2),
            block(4 * w, 4 * w, 2),
        )  # 32 -> 32 -> 16 -> 8 -> 4
        self.proj = nn.Linear(4 * w * 16, arch.embed_dim)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        images = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), self.blur, groups=3)
        h = self.net(images * 2.0 - 1.0)
        return F.normalize(self.proj(h.flatten(1)), dim=-1)


class TextTower(nn.Module):
    """MiniLM token embeddings ``(B, L, 384)`` (zeros at padding) -> ``(B, D)`` unit embeddings."""

    def __init__(self, arch: ScoreArch) -> None:
        super().__init__()
        d = arch.embed_dim
        self.inp = nn.Linear(EMBED_DIM, d)
        self.pos = nn.Parameter(torch.zeros(1, 32, d))
        self.layer = nn.TransformerEncoderLayer(d, arch.text_heads, 2 * d, dropout=0.0, batch_first=True)
        self.out = nn.Linear(d, d)

    def forward(self, tokens: Tensor) -> Tensor:
        mask = tokens.abs().sum(-1) > 0  # (B, L) real tokens
        h = self.inp(tokens) + self.pos[:, : tokens.shape[1]]
        h = self.layer(h, src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return F.normalize(self.out((h * m).sum(1) / m.sum(1).clamp(min=1)), dim=-1)


class ShapesScoreModel(WeightsDirectory, nn.Module):
    """The dual encoder; ``forward(images, tokens)`` returns cosine similarities ``(B,)``."""

    arch_cls = ScoreArch
    what = "ShapesScore model"

    def __init__(self, arch: ScoreArch | None = None) -> None:
        super().__init__()
        self.arch = arch or ScoreArch()
        self.image = ImageTower(self.arch)
        self.text = TextTower(self.arch)
        self.logit_scale = nn.Parameter(torch.tensor(2.6593))  # log(1 / 0.07), as CLIP

    def forward(self, images: Tensor, tokens: Tensor) -> Tensor:
        return (self.image(images) * self.text(tokens)).sum(-1)

    @classmethod
    def arch_from(cls, arch: dict[str, Any], directory: Path) -> ScoreArch:
        """The architecture in a weights folder's ``config.json``. Folders written before the research backbones
        left the package carry ``backbone`` and ``segmenter_width``: ``"pixels"`` is this model, anything else is
        refused with a pointer to the research code that still builds it."""
        arch = dict(arch)
        backbone = arch.pop("backbone", "pixels")
        arch.pop("segmenter_width", None)
        if backbone != "pixels":
            raise ValueError(
                f"{directory} holds a ShapesScore with the {backbone!r} backbone, a research variant that leapalign "
                "does not ship; load it from a checkout of the repository with "
                "research.shapesworld.segmenter.load_score_model (see research/shapesworld/)."
            )
        return ScoreArch(**arch)


def default_weights() -> Path:
    """Directory of the shipped ShapesScore weights."""
    return Path(__file__).parent / "assets" / "shapes_score"


class ShapesScore:
    """ShapesScore as a :class:`leapalign.rewards.RewardFn`: differentiable, weights frozen, text cached.

    Args:
        path: Weights directory (default: the shipped ones). Loaded lazily on the first call.
        encoder: A MiniLM encoder to share (one is built on first use otherwise).
    """

    name = "shapes_score"
    differentiable = True

    def __init__(self, path: str | None = None, encoder: MiniLMEncoder | None = None) -> None:
        self.path = Path(path) if path else default_weights()
        self._encoder = encoder
        self._model: ShapesScoreModel | None = None
        self._tokens: dict[str, Tensor] = {}

    @property
    def model(self) -> ShapesScoreModel:
        if self._model is None:
            self._model = ShapesScoreModel.load(self.path).requires_grad_(False)
        return self._model

    def tokens(self, prompts: Sequence[str]) -> Tensor:
        """MiniLM token embeddings of ``prompts``, ``(B, L, 384)``, each prompt encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._tokens]
        if missing:
            if self._encoder is None:
                self._encoder = MiniLMEncoder()
            toks, _ = self._encoder(missing)
            self._tokens.update({p: toks[i] for i, p in enumerate(missing)})
        return torch.stack([self._tokens[p] for p in prompts])

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        model = self.model.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            return model(images.float(), self.tokens(prompts).to(images.device).float())
