"""Inference helpers: no-grad generation with a :class:`FlowModel` and image grids (Pillow)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from leapalign.flow import sample
from leapalign.models.base import FlowModel, check_resolution


@torch.no_grad()
def generate(
    model: FlowModel,
    prompts: Sequence[str],
    *,
    seeds: Sequence[int],
    num_steps: int,
    height: int,
    width: int,
    batch_size: int = 8,
) -> Tensor:
    """Generates one image per (prompt, seed) pair with deterministic Euler sampling.

    Each image's initial noise comes from its own seed, so results do not depend on the batch size.

    Args:
        model: The flow model.
        prompts: ``N`` prompts.
        seeds: ``N`` seeds, one per prompt.
        num_steps: Euler steps.
        height: Image height in pixels.
        width: Image width in pixels.
        batch_size: Images per forward batch.

    Returns:
        Images in ``[0, 1]``, shape ``(N, 3, height, width)``, on the CPU.
    """
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    check_resolution(model, height, width)
    shape = model.latent_shape(height, width)
    sigmas = model.sigmas(num_steps, height, width).to(model.device)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        noise = torch.stack(
            [
                torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                for s in seeds[start : start + batch_size]
            ]
        ).to(model.device)
        cond = model.encode_prompts(chunk)
        ro = sample(lambda x, s, c=cond: model.velocity(x, s, c), noise, sigmas)
        out.append(model.decode(ro.latent, height, width).float().cpu())
    return torch.cat(out)


def to_pil(images: Tensor) -> list[Image.Image]:
    """Converts images in ``[0, 1]`` of shape ``(N, 3, H, W)`` to PIL images."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def image_grid(images: Tensor, ncols: int, pad: int = 2, scale: int = 1) -> Image.Image:
    """Pastes ``(N, 3, H, W)`` images into one grid (``ncols`` columns, white padding, optional upscaling)."""
    tiles = to_pil(images)
    if scale > 1:
        tiles = [t.resize((t.width * scale, t.height * scale), Image.NEAREST) for t in tiles]
    w, h = tiles[0].size
    nrows = (len(tiles) + ncols - 1) // ncols
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad) + pad), "white")
    for i, tile in enumerate(tiles):
        grid.paste(tile, (pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad)))
    return grid
