"""Inference: no-grad generation of images with a :class:`FlowModel` (one seed per image)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from leapalign.flow import sample
from leapalign.models.base import FlowModel, check_resolution, noise_like_latents


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

    Each image's initial noise comes from its own seed, so results do not depend on the batch size, and is drawn as
    the model's diffusers pipeline draws it for ``generator=torch.Generator().manual_seed(seed)`` (see
    :func:`~leapalign.models.base.noise_like_latents`): the same seed, steps and guidance give the pipeline's image.

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
    sigmas = model.sigmas(num_steps, height, width).to(model.device)
    out = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch_size]]
        noise = noise_like_latents(model, len(chunk), height, width, gens, model.device)
        cond = model.encode_prompts(chunk)
        ro = sample(lambda x, s, c=cond: model.velocity(x, s, c), noise, sigmas)
        out.append(model.decode(ro.latent, height, width).float().cpu())
    return torch.cat(out)
