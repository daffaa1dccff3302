"""The model contract every method talks to.

A :class:`FlowModel` hides everything model-specific (latent packing, timestep scaling, guidance,
text encoders, VAE constants) behind five calls. Methods and the trainer only ever see latents in the
model's own layout, sigmas in ``[0, 1]`` and images in ``[0, 1]``.

Time convention: ``sigma = 1`` is pure noise, ``sigma = 0`` is data, see :mod:`leapalign.flow.conventions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Conditioning:
    """Text conditioning for one batch of prompts, as the transformer consumes it.

    Attributes:
        prompt_embeds: Token embeddings, shape ``(B, L, D)``.
        pooled: Pooled embedding, shape ``(B, P)``.
        negative_embeds: Token embeddings of the negative / empty prompt for true classifier-free
            guidance, shape ``(B, L, D)``; ``None`` when the model does not use true CFG.
        negative_pooled: Pooled negative embedding, shape ``(B, P)``, or ``None``.
        extras: Model-specific tensors (e.g. Flux ``txt_ids`` of shape ``(L, 3)``).
    """

    prompt_embeds: Tensor
    pooled: Tensor
    negative_embeds: Tensor | None = None
    negative_pooled: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]

    def repeat(self, n: int) -> Conditioning:
        """Repeats every sample ``n`` times along the batch (``repeat_interleave``), e.g. for re-noised copies."""

        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.repeat_interleave(n, dim=0)

        return Conditioning(
            rep(self.prompt_embeds),
            rep(self.pooled),
            rep(self.negative_embeds),
            rep(self.negative_pooled),
            dict(self.extras),
        )  # type: ignore[arg-type]


@runtime_checkable
class FlowModel(Protocol):
    """A text-to-image flow-matching model seen as a guided velocity field.

    Attributes:
        transformer: The trainable velocity network (the module the trainer prepares with accelerate).
        resolutions_multiple: Height and width must be multiples of this many pixels.
    """

    transformer: nn.Module
    resolutions_multiple: int

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Encodes prompts (cached per prompt string) into a :class:`Conditioning` of batch ``len(prompts)``."""
        ...

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one sample's latent (without batch dimension) for an image of ``height x width`` pixels."""
        ...

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        """Sampling schedule: ``num_steps + 1`` decreasing sigmas from 1 to a final 0, float32."""
        ...

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        """Guided velocity ``v(x, sigma)``.

        Args:
            x: Latents, shape ``(B, *latent_shape)``.
            sigma: Noise level, a scalar tensor or shape ``(B,)``, in ``[0, 1]``.
            cond: Conditioning of batch ``B``.

        Returns:
            The velocity after guidance (embedded guidance or true CFG), same shape as ``x``.
        """
        ...

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        """Decodes latents (differentiably) to images in ``[0, 1]`` of shape ``(B, 3, height, width)``."""
        ...

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (LoRA weights or the whole transformer)."""
        ...

    @property
    def device(self) -> torch.device:
        """Device of the transformer."""
        ...

    def to(self, device: torch.device | str) -> FlowModel:
        """Moves every component (transformer, VAE, text encoders, caches) to ``device``; returns ``self``."""
        ...


def check_resolution(model: FlowModel, height: int, width: int) -> None:
    """Raises a ``ValueError`` naming the fix when ``height x width`` is not supported by ``model``."""
    m = model.resolutions_multiple
    if height <= 0 or width <= 0 or height % m or width % m:
        raise ValueError(
            f"resolution {height}x{width} is not supported by this model: sampler.height and sampler.width "
            f"must be positive multiples of {m} (e.g. {max(m, (height // m) * m or m)})."
        )


def noise_like_latents(
    model: FlowModel, batch: int, height: int, width: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Standard normal latents of shape ``(batch, *model.latent_shape(height, width))`` drawn from ``generator``."""
    shape = (batch, *model.latent_shape(height, width))
    return torch.randn(shape, generator=generator, device=generator.device).to(device)
