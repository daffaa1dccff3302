"""The model contract every method talks to.

A :class:`FlowModel` hides everything model-specific (latent packing, timestep scaling, guidance,
text encoders, VAE constants) behind five calls. Methods and the trainer only ever see latents in the
model's own layout, sigmas in ``[0, 1]`` and images in ``[0, 1]``.

Time convention: ``sigma = 1`` is pure noise, ``sigma = 0`` is data, see :mod:`leapalign.flow.conventions`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor, nn


@dataclass
class Conditioning:
    """Text conditioning for one batch of prompts, as the transformer consumes it.

    Attributes:
        prompt_embeds: Token embeddings, shape ``(B, L, D)``.
        pooled: Pooled embedding, shape ``(B, P)``, or ``None`` for models without one (FLUX.2, Qwen-Image,
            Z-Image).
        negative_embeds: Token embeddings of the negative / empty prompt for true classifier-free
            guidance, shape ``(B, L', D)``; ``None`` when the model does not use true CFG.
        negative_pooled: Pooled negative embedding, shape ``(B, P)``, or ``None``.
        extras: Model-specific tensors without a batch dimension (e.g. Flux ``txt_ids`` of shape ``(L, 3)``).
        mask: Which tokens of ``prompt_embeds`` are real (1) rather than padding (0), shape ``(B, L)``, for models
            whose prompts have different lengths (Qwen-Image, Z-Image); ``None`` when every token counts.
        negative_mask: The same for ``negative_embeds``, shape ``(B, L')``, or ``None``.
    """

    prompt_embeds: Tensor
    pooled: Tensor | None = None
    negative_embeds: Tensor | None = None
    negative_pooled: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)
    mask: Tensor | None = None
    negative_mask: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.prompt_embeds.shape[0]

    def repeat(self, n: int) -> Conditioning:
        """Repeats every sample ``n`` times along the batch (``repeat_interleave``), e.g. for re-noised copies."""

        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.repeat_interleave(n, dim=0)

        return Conditioning(
            rep(self.prompt_embeds),  # type: ignore[arg-type]
            rep(self.pooled),
            rep(self.negative_embeds),
            rep(self.negative_pooled),
            dict(self.extras),
            rep(self.mask),
            rep(self.negative_mask),
        )


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


#: One generator for a whole batch, or one generator per image (the ``generator`` argument of diffusers pipelines).
Generators = torch.Generator | Sequence[torch.Generator]


def pipeline_randn(shape: tuple[int, ...], generator: Generators) -> Tensor:
    """Float32 standard normal noise of ``shape`` drawn exactly as diffusers pipelines draw their initial latents.

    Uses diffusers' ``randn_tensor`` on the generator's device: one generator fills the whole batch in one draw, a
    list of ``shape[0]`` generators draws each image from its own generator (so an image does not depend on the
    batch it is drawn in).
    """
    if isinstance(generator, torch.Generator):
        return randn_tensor(shape, generator=generator, device=generator.device, dtype=torch.float32)
    gens = list(generator)
    if len(gens) != shape[0]:
        raise ValueError(f"got {len(gens)} generators for a batch of {shape[0]}; give one generator or one per image.")
    return randn_tensor(shape, generator=gens, device=gens[0].device, dtype=torch.float32)


def noise_like_latents(
    model: FlowModel, batch: int, height: int, width: int, generator: Generators, device: torch.device
) -> Tensor:
    """Initial noise of shape ``(batch, *model.latent_shape(height, width))``, on ``device``.

    The same generator(s) give the same noise as the model's diffusers pipeline (``prepare_latents``): a model whose
    pipeline draws in another layout than the model's latents (FLUX.1 draws unpacked ``(B, C, H/f, W/f)`` noise and
    packs it) provides ``initial_noise(batch, height, width, generator)``; otherwise the noise is drawn directly in
    the latent layout with :func:`pipeline_randn`.

    Args:
        model: The flow model.
        batch: Number of images.
        height: Image height in pixels.
        width: Image width in pixels.
        generator: One generator for the batch, or ``batch`` generators (one per image), as the pipelines take.
        device: Device of the returned latents.
    """
    draw = getattr(model, "initial_noise", None)
    if draw is not None:
        noise = draw(batch, height, width, generator)
    else:
        noise = pipeline_randn((batch, *model.latent_shape(height, width)), generator)
    return noise.to(device)
