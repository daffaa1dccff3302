"""ShapesScore: the learned, differentiable reward of ShapesWorld (its HPS / PickScore analogue).

A small CLIP-style dual encoder. The image tower is a CNN that keeps a 4x4 spatial map before its projection
(positions matter for relations); the text tower reads the MiniLM *token* embeddings through one transformer
layer (MiniLM's pooled vector barely separates "left of" from "right of"). The score of an (image, prompt) pair
is the cosine similarity of the two embeddings, in ``[-1, 1]``, as HPS returns. It is trained contrastively
on rendered scenes with hard negative prompts (:mod:`leapalign.worlds.shapes.score_train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.worlds.shapes.contrast import NEAR_MISS_KINDS, near_misses, parse_kinds
from leapalign.worlds.shapes.scenes import COLORS, SHAPES
from leapalign.worlds.shapes.segmenter import SceneSegmenter, SegmenterArch
from leapalign.worlds.shapes.text import EMBED_DIM, MiniLMEncoder
from leapalign.worlds.shapes.weights import WeightsDirectory


@dataclass
class ScoreArch:
    """Sizes of the ShapesScore dual encoder.

    ``backbone`` is what the image tower's CNN reads: ``"pixels"`` (low-passed RGB) or ``"segmenter"`` (the
    per-pixel shape and colour probabilities of a frozen :class:`~leapalign.worlds.shapes.segmenter.SceneSegmenter` of
    width ``segmenter_width``, as real rewards build on a pretrained vision backbone).
    """

    width: int = 24
    embed_dim: int = 128
    text_heads: int = 4
    blur_sigma: float = 0.8
    backbone: str = "pixels"
    segmenter_width: int = 16

    def __post_init__(self) -> None:
        if self.backbone not in ("pixels", "segmenter"):
            raise ValueError(f"ScoreArch.backbone={self.backbone!r}; use 'pixels' or 'segmenter'.")


def gaussian_kernel(sigma: float, radius: int = 2) -> Tensor:
    """A normalised 2-D Gaussian kernel of shape ``(2r + 1, 2r + 1)``."""
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    k = g[:, None] * g[None, :]
    return k / k.sum()


class ImageTower(nn.Module):
    """``(B, 3, 32, 32)`` images in ``[0, 1]`` -> ``(B, D)`` unit embeddings.

    With the ``pixels`` backbone the input is first low-passed by a fixed Gaussian (``blur_sigma`` px), part of
    the reward's preprocessing: shapes survive it, while the high-frequency patterns a generator can most easily
    exploit (e.g. its own 4x4-patch grid) are attenuated, which makes the reward harder to hack.

    With the ``segmenter`` backbone the CNN reads ``1 + S + C + S * C`` maps of a frozen segmenter: the shape
    probabilities (background first), the colour probabilities and their products on the foreground ("this
    pixel belongs to a red circle"). The reward's gradient then reaches the image only through what the
    segmenter perceives, and a shape the segmenter calls background (e.g. a hybrid, for a segmenter trained
    with ``--corruptions ...,hybrid``) counts for no object.
    """

    def __init__(self, arch: ScoreArch) -> None:
        super().__init__()
        w = arch.width
        self.segmenter: SceneSegmenter | None = None
        cin = 3
        if arch.backbone == "pixels":
            blur = gaussian_kernel(arch.blur_sigma).expand(3, 1, 5, 5).clone()
            self.register_buffer("blur", blur, persistent=False)
        else:
            self.segmenter = SceneSegmenter(SegmenterArch(arch.segmenter_width)).requires_grad_(False)
            cin = 1 + len(SHAPES) + len(COLORS) + len(SHAPES) * len(COLORS)

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(8, cout), nn.SiLU())

        self.net = nn.Sequential(
            block(cin, w, 1),
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
        if self.segmenter is not None:
            h = self.net(self.perceive(images))
        else:
            images = F.conv2d(F.pad(images, (2, 2, 2, 2), mode="replicate"), self.blur, groups=3)
            h = self.net(images * 2.0 - 1.0)
        return F.normalize(self.proj(h.flatten(1)), dim=-1)

    def train(self, mode: bool = True) -> ImageTower:
        super().train(mode)
        if self.segmenter is not None:  # a frozen backbone: never in training mode
            self.segmenter.eval()
        return self

    def perceive(self, images: Tensor) -> Tensor:
        """The segmenter's maps ``(B, 1 + S + C + S * C, 32, 32)``, all in ``[0, 1]``."""
        assert self.segmenter is not None
        shape_logits, color_logits = self.segmenter(images)
        shape, color = shape_logits.softmax(1), color_logits.softmax(1)
        joint = (shape[:, 1:, None] * color[:, None]).flatten(1, 2)  # (B, S * C, H, W): foreground only
        return torch.cat([shape, color, joint], 1)


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


def default_weights() -> Path:
    """Directory of the shipped ShapesScore weights."""
    return Path(__file__).parent / "assets" / "shapes_score"


class ShapesScore:
    """ShapesScore as a :class:`leapalign.rewards.RewardFn`: differentiable, weights frozen, text cached.

    With ``views > 0`` the score is averaged over that many randomly perturbed copies of each image (a shift of
    up to ``max_shift`` pixels, a brightness change of up to 10 % and pixel noise of std 0.03), drawn from
    torch's global generator. This is the expectation-over-transformations trick of CLIP-guided generation
    (random cutouts): the gradient of a small CNN with respect to its input pixels is dominated by
    non-semantic directions a generator can follow (patch textures, tints) to raise the score without
    changing the scene; averaging over perturbations that keep the scene's meaning cancels most of them. Use
    it for training (``reward.terms.0.args.views=4``); evaluation uses the plain score (``views=0``).

    With ``negatives > 0`` the reward is *contrastive*: the probability, under the model's own temperature,
    of the prompt among itself and up to ``negatives`` near misses (:func:`leapalign.worlds.shapes.contrast.near_misses`:
    one attribute changed, or two named objects collapsed into one shape or colour), in ``(0, 1)``. An image
    that pleases the plain score by resembling a near miss ("a square and a circle" drawn as two circles) then
    loses reward. Only shipped ShapesWorld prompts have near misses. ``near_miss_kinds`` keeps some kinds of edit
    only (:func:`leapalign.worlds.shapes.contrast.parse_kinds`); a prompt without any near miss scores 1 and gives no
    gradient.

    Args:
        path: Weights directory (default: the shipped ones). Loaded lazily on the first call.
        encoder: A MiniLM encoder to share (one is built on first use otherwise).
        views: Number of perturbed views to average (0: score the image as it is).
        max_shift: Largest shift of a view, in pixels (the same for the whole scene, so relations hold).
        negatives: Number of near-miss prompts of the contrastive form (0: the plain cosine score).
        near_miss_kinds: Which edits make the near misses (comma-separated or a list; default: all of
            :data:`leapalign.worlds.shapes.contrast.NEAR_MISS_KINDS`).
    """

    name = "shapes_score"
    differentiable = True

    def __init__(
        self,
        path: str | None = None,
        encoder: MiniLMEncoder | None = None,
        views: int = 0,
        max_shift: int = 2,
        negatives: int = 0,
        near_miss_kinds: str | Sequence[str] | None = None,
    ) -> None:
        if min(views, max_shift, negatives) < 0:
            raise ValueError(
                f"ShapesScore: views ({views}), max_shift ({max_shift}) and negatives ({negatives}) must be >= 0."
            )
        self.path = Path(path) if path else default_weights()
        self.views, self.max_shift, self.negatives = int(views), int(max_shift), int(negatives)
        self.near_miss_kinds = parse_kinds(near_miss_kinds)
        if self.negatives:  # a different quantity: logged under its own name
            self.name = f"shapes_score_contrast{self.negatives}"
            if self.near_miss_kinds != NEAR_MISS_KINDS:
                self.name += "_" + "_".join(self.near_miss_kinds)
        self._encoder = encoder
        self._model: ShapesScoreModel | None = None
        self._tokens: dict[str, Tensor] = {}
        self._contrast: dict[str, Tensor] = {}  # prompt -> text embeddings of it and its near misses

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
            b, n = images.shape[0], max(self.views, 1)
            x = images.float() if self.views == 0 else perturb(images.float().repeat(n, 1, 1, 1), self.max_shift)
            if self.negatives == 0:
                tokens = self.tokens(prompts).to(images.device).float()
                return model(x, tokens.repeat(n, 1, 1)).view(n, b).mean(0)
            image = model.image(x).view(n, b, -1)  # (views, B, D)
            scale = model.logit_scale.exp().clamp(max=100)
            out = []
            for i, prompt in enumerate(prompts):
                texts = self._candidates(prompt, model, images.device)  # (1 + K, D), the prompt first
                out.append(torch.softmax(scale * image[:, i] @ texts.T, dim=-1)[:, 0].mean())
            return torch.stack(out)

    def _candidates(self, prompt: str, model: ShapesScoreModel, device: torch.device) -> Tensor:
        """Text embeddings of ``prompt`` and its near misses, ``(1 + K, D)``, cached (the weights are frozen)."""
        if prompt not in self._contrast:
            texts = [prompt, *near_misses(prompt, self.negatives, kinds=self.near_miss_kinds)]
            with torch.no_grad():
                self._contrast[prompt] = model.text(self.tokens(texts).float().to(device))
        return self._contrast[prompt].to(device)


def perturb(images: Tensor, max_shift: int) -> Tensor:
    """Random meaning-preserving perturbations of ``(N, 3, H, W)`` images in ``[0, 1]``, differentiably.

    Each image is shifted by a random integer offset in ``[-max_shift, max_shift]`` on both axes (the canvas is
    zero-padded: the background is black), scaled in brightness by ``U(0.9, 1.1)`` and given Gaussian noise of
    std 0.03 (not clamped, so the gradient reaches every pixel). Uses torch's global generator.
    """
    n, _, h, w = images.shape
    if max_shift > 0:
        m = max_shift
        padded = F.pad(images, (m, m, m, m))
        dx, dy = (torch.randint(0, 2 * m + 1, (n,)).tolist() for _ in range(2))
        images = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    gain = torch.empty(n, 1, 1, 1, device=images.device).uniform_(0.9, 1.1)
    noise = 0.03 * torch.randn(images.shape, device=images.device)
    return images * gain + noise
