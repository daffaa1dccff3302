"""Pretraining-loss replay: the rectified-flow loss on real data, added to the reward loss as a regulariser.

ImageReward's ReFL (Xu et al., 2023) keeps the fine-tuned model on the data manifold by adding the
pretraining loss on (image, caption) pairs to the reward loss, :math:`L = L_{reward} + \\lambda L_{FM}`. A
direct-gradient method with a learned reward otherwise drifts towards what the reward over-values (textures,
tints, one layout per prompt): the replay term pulls it back towards images that really occur. It is the same
loss the base model was trained with (conditional velocity, no guidance, 10% prompt dropout so the
unconditional velocity that classifier-free guidance uses stays anchored too), at logit-normal sigmas.

Built-in data source: ``shapes:train``, ShapesWorld scenes of the training prompts rendered on the fly (its
pretraining data). Any model with ``encode_pixels`` (pixel space, or a VAE encoder) can use it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from leapalign.flow import interpolate, velocity_target
from leapalign.models.base import FlowModel

REPLAY_SOURCES = ("shapes:train",)


@contextmanager
def guidance_off(model: FlowModel) -> Iterator[FlowModel]:
    """Within the block, ``model.velocity`` is the plain conditional velocity (guidance scale 1)."""
    scale = model.guidance_scale
    model.guidance_scale = 1.0
    try:
        yield model
    finally:
        model.guidance_scale = scale


class ShapesReplay:
    """Rendered ShapesWorld training scenes, category-balanced, a deterministic function of ``(seed, step)``.

    Args:
        seed: Seed of the scenes (offset from the pretraining seeds so the draws are new).
        batch_size: Scenes per call.
    """

    def __init__(self, seed: int, batch_size: int) -> None:
        from leapalign.worlds.shapes.pretrain import _by_category
        from leapalign.worlds.shapes.prompts import load_metadata

        self.seed, self.batch_size = 10_000 + seed, batch_size
        self.records = _by_category(load_metadata("train"))

    def batch(self, step: int) -> tuple[list[str], Tensor]:
        """Prompts and images ``(B, 3, 32, 32)`` in ``[0, 1]`` for optimiser step ``step``."""
        from leapalign.worlds.shapes.pretrain import make_batch

        return make_batch(self.records, self.seed, step, self.batch_size)


def build_replay(source: str, seed: int, batch_size: int) -> ShapesReplay:
    """The replay data source named ``source`` (see :data:`REPLAY_SOURCES`)."""
    if source != "shapes:train":
        raise ValueError(
            f"train.replay_source={source!r} is unknown; built-in sources: {', '.join(REPLAY_SOURCES)} "
            "(set train.replay_weight=0 to train without replay)."
        )
    return ShapesReplay(seed, batch_size)


def flow_matching_loss(
    model: FlowModel, images: Tensor, prompts: list[str], generator: torch.Generator, dropout: float = 0.1
) -> Tensor:
    """The rectified-flow loss of ``model`` on real ``images``.

    Args:
        model: The flow model being fine-tuned (must offer ``encode_pixels``).
        images: Real images ``(B, 3, H, W)`` in ``[0, 1]``.
        prompts: Their ``B`` captions.
        generator: CPU generator of the noise, sigmas and prompt dropout.
        dropout: Share of captions replaced by the empty prompt.

    Returns:
        Scalar mean squared error between the velocity and its target ``noise - x0``.
    """
    encode = getattr(model, "encode_pixels", None)
    if encode is None:
        raise ValueError(f"{type(model).__name__} cannot encode images (no encode_pixels); replay needs it.")
    b = images.shape[0]
    drop = torch.rand(b, generator=generator) < dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    x0 = encode(images.to(model.device))
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    sigma = torch.sigmoid(torch.randn(b, generator=generator)).to(x0)  # logit-normal(0, 1), as pretraining
    x = interpolate(x0, noise, sigma.view(b, *[1] * (x0.ndim - 1)))
    with guidance_off(model):
        v = model.velocity(x, sigma, model.encode_prompts(prompts))
    return (v.float() - velocity_target(x0, noise).float()).pow(2).mean()
