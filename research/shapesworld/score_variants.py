"""Research forms of ShapesScore: averaged over perturbed views, contrastive against near-miss prompts, and any
weights folder (including the segmenter backbone of :mod:`research.shapesworld.segmenter`).

:class:`ResearchShapesScore` is :class:`leapalign.worlds.shapes.score.ShapesScore` with the options the tuning
trials of ``docs/shapesworld.md`` used (``views``, ``max_shift``, ``negatives``, ``near_miss_kinds``). With all of
them at their defaults it is the plain score. Name it as a dotted-path reward, with the repository root on
``PYTHONPATH``::

    PYTHONPATH=. leapalign train --config shapes/leapalign \\
        'reward.terms=[{name: research.shapesworld.score_variants:ResearchShapesScore, args: {negatives: 8}}]'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.worlds.shapes.score import ShapesScore, ShapesScoreModel
from leapalign.worlds.shapes.text import MiniLMEncoder
from research.shapesworld.contrast import NEAR_MISS_KINDS, near_misses, parse_kinds
from research.shapesworld.segmenter import load_score_model


class ResearchShapesScore(ShapesScore):
    """ShapesScore with the research options; differentiable, weights frozen, text cached.

    With ``views > 0`` the score is averaged over that many randomly perturbed copies of each image (:func:`perturb`:
    a shift of up to ``max_shift`` pixels, a brightness change of up to 10 % and pixel noise of std 0.03), drawn from
    torch's global generator. This is the expectation-over-transformations trick of CLIP-guided generation (random
    cutouts): the gradient of a small CNN with respect to its input pixels is dominated by non-semantic directions a
    generator can follow (patch textures, tints) to raise the score without changing the scene; averaging over
    perturbations that keep the scene's meaning cancels most of them.

    With ``negatives > 0`` the reward is *contrastive*: the probability, under the model's own temperature, of the
    prompt among itself and up to ``negatives`` near misses (:func:`research.shapesworld.contrast.near_misses`: one
    attribute changed, or two named objects collapsed into one shape or colour), in ``(0, 1)``. An image that pleases
    the plain score by resembling a near miss ("a square and a circle" drawn as two circles) then loses reward. Only
    shipped ShapesWorld prompts have near misses. ``near_miss_kinds`` keeps some kinds of edit only
    (:func:`research.shapesworld.contrast.parse_kinds`); a prompt without any near miss scores 1 and gives no
    gradient.

    Args:
        path: Weights directory of either backbone (default: the shipped ones). Loaded lazily on the first call.
        encoder: A MiniLM encoder to share (one is built on first use otherwise).
        views: Number of perturbed views to average (0: score the image as it is).
        max_shift: Largest shift of a view, in pixels (the same for the whole scene, so relations hold).
        negatives: Number of near-miss prompts of the contrastive form (0: the plain cosine score).
        near_miss_kinds: Which edits make the near misses (comma-separated or a list; default: all of
            :data:`research.shapesworld.contrast.NEAR_MISS_KINDS`).
    """

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
        super().__init__(path, encoder)
        self.views, self.max_shift, self.negatives = int(views), int(max_shift), int(negatives)
        self.near_miss_kinds = parse_kinds(near_miss_kinds)
        if self.negatives:  # a different quantity: logged under its own name
            self.name = f"shapes_score_contrast{self.negatives}"
            if self.near_miss_kinds != NEAR_MISS_KINDS:
                self.name += "_" + "_".join(self.near_miss_kinds)
        self._contrast: dict[str, Tensor] = {}  # prompt -> text embeddings of it and its near misses

    @property
    def model(self) -> ShapesScoreModel:
        if self._model is None:
            self._model = load_score_model(self.path).requires_grad_(False)
        return self._model

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
