"""Image helpers: tensors to PIL, and the library's one image-grid writer (rows optionally captioned)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

CAPTION_LINE_HEIGHT = 12


def to_pil(images: Tensor) -> list[Image.Image]:
    """Converts images in ``[0, 1]`` of shape ``(N, 3, H, W)`` to PIL images."""
    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def fit_tiles(images: Tensor, side: int = 256, small: int = 128) -> tuple[Tensor, int]:
    """Downscales images larger than ``side`` pixels; returns them and the integer upscale that brings smaller
    ones to about ``small`` pixels (nearest neighbour, so toy images stay crisp)."""
    h, w = images.shape[-2:]
    if max(h, w) > side:
        size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False), 1
    return images, max(1, small // max(h, w))


def image_grid(
    images: Tensor, ncols: int, pad: int = 2, scale: int = 1, captions: Sequence[str] | None = None
) -> Image.Image:
    """Pastes ``(N, 3, H, W)`` images into one grid of ``ncols`` columns on white.

    Args:
        images: Images in ``[0, 1]``.
        ncols: Columns.
        pad: Pixels between tiles.
        scale: Integer nearest-neighbour upscaling of each tile.
        captions: One caption per row (e.g. the row's prompt), written above it and wrapped to the grid's width.

    Returns:
        The grid as an RGB PIL image.
    """
    tiles = to_pil(images)
    if scale > 1:
        tiles = [t.resize((t.width * scale, t.height * scale), Image.NEAREST) for t in tiles]
    w, h = tiles[0].size
    nrows = (len(tiles) + ncols - 1) // ncols
    if captions is not None and len(captions) != nrows:
        raise ValueError(f"got {len(captions)} captions for {nrows} rows; give one caption per row.")
    width = ncols * (w + pad) + pad
    chars = max(8, width // 6)
    wrapped = [textwrap.wrap(c, chars)[:3] or [""] for c in captions] if captions is not None else [[]] * nrows
    heights = [len(lines) * CAPTION_LINE_HEIGHT + (2 if lines else 0) for lines in wrapped]
    grid = Image.new("RGB", (width, sum(heights) + nrows * (h + pad) + pad), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    y = pad
    for row in range(nrows):
        for k, line in enumerate(wrapped[row]):
            draw.text((pad, y + k * CAPTION_LINE_HEIGHT), line, fill="black", font=font)
        y += heights[row]
        for col, tile in enumerate(tiles[row * ncols : (row + 1) * ncols]):
            grid.paste(tile, (pad + col * (w + pad), y))
        y += h + pad
    return grid
