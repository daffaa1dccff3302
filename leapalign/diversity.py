"""Diversity of the images generated for one prompt: the reward-hacking signal that rewards do not show.

A policy that hacks its reward often collapses onto one image per prompt (the same layout, the same colour,
whatever the seed). :func:`prompt_diversity` measures that: for every prompt, the mean pairwise distance between
its images (different seeds), averaged over prompts. Two distances are offered:

* ``pixel``: root-mean-square difference of the images resized to ``size`` x ``size`` (area averaging), in
  ``[0, 1]``; model-free and exact, right for ShapesWorld where layout and colour are the content.
* features: pass ``embed`` (images ``(N, 3, H, W)`` -> features ``(N, D)``, e.g. a CLIP image tower); the
  distance is ``1 - cosine similarity`` of the normalised features, in ``[0, 2]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def pairwise_distances(images: Tensor, embed: Callable[[Tensor], Tensor] | None = None, size: int = 32) -> Tensor:
    """Distances between all pairs of ``images``.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        embed: Optional feature extractor ``(N, 3, H, W) -> (N, D)``; if given, ``1 - cos`` of its features.
        size: Side length the images are resized to for the pixel distance.

    Returns:
        ``(N, N)`` symmetric distances with a zero diagonal.
    """
    if images.ndim != 4:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    if embed is not None:
        feats = F.normalize(embed(images).float(), dim=-1)
        return (1.0 - feats @ feats.T).clamp_min(0.0).fill_diagonal_(0.0)
    small = F.adaptive_avg_pool2d(images.float(), size).flatten(1)
    sq = torch.cdist(small, small).pow(2) / small.shape[1]
    return sq.clamp_min(0.0).sqrt().fill_diagonal_(0.0)


def prompt_diversity(
    images: Tensor,
    groups: Sequence[int] | Tensor,
    embed: Callable[[Tensor], Tensor] | None = None,
    size: int = 32,
) -> float:
    """Mean over prompts of the mean pairwise distance between that prompt's images.

    Args:
        images: ``(N, 3, H, W)`` in ``[0, 1]``.
        groups: ``N`` integer group ids (the prompt index of each image). Groups of one image are skipped.
        embed: Optional feature extractor (see :func:`pairwise_distances`).
        size: Resize side for the pixel distance.

    Returns:
        The diversity (0 means every prompt's images are identical).

    Raises:
        ValueError: If no group has two images or the lengths differ.
    """
    groups = torch.as_tensor(groups)
    if groups.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {groups.shape[0]} group ids.")
    per_group = []
    for g in groups.unique():
        idx = (groups == g).nonzero().flatten()
        n = idx.numel()
        if n < 2:
            continue
        d = pairwise_distances(images[idx], embed=embed, size=size)
        per_group.append(d.sum() / (n * (n - 1)))
    if not per_group:
        raise ValueError("diversity needs at least two images of one prompt (images_per_prompt >= 2).")
    return torch.stack(per_group).mean().item()
