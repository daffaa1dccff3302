"""Pieces shared by the diffusers adapters (Flux, SD3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from leapalign.models.finetune import unwrap_model


class TransformerPlumbing:
    """Parameter, dtype and device accessors of an adapter whose velocity network is ``self.transformer``."""

    transformer: nn.Module

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the transformer that require gradients."""
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @property
    def compute_dtype(self) -> torch.dtype:
        """dtype the transformer computes in (its first floating parameter)."""
        return unwrap_model(self.transformer).dtype

    @property
    def device(self) -> torch.device:
        """Device of the transformer."""
        return next(self.transformer.parameters()).device


def vae_decode(vae: nn.Module, latents: Tensor, scaling_factor: float, shift_factor: float) -> Tensor:
    """Differentiable VAE decode of unpacked latents ``(B, C, h, w)`` to images in ``[0, 1]`` ``(B, 3, H, W)``.

    Undoes the latent normalisation (``latents / scaling + shift``), decodes in the VAE's dtype and maps
    ``[-1, 1]`` to ``[0, 1]`` with a clamp, as the diffusers pipelines do.
    """
    lat = latents / scaling_factor + shift_factor
    vae_dtype = next(vae.parameters()).dtype
    img = vae.decode(lat.to(vae_dtype), return_dict=False)[0].to(latents.dtype)
    return (img * 0.5 + 0.5).clamp(0.0, 1.0)


@torch.no_grad()
def vae_encode(vae: nn.Module, images: Tensor, scaling_factor: float, shift_factor: float) -> Tensor:
    """VAE encode of images in ``[0, 1]`` ``(B, 3, H, W)`` to normalised, unpacked latents ``(B, C, h, w)``.

    The inverse of :func:`vae_decode`: ``(z - shift) * scaling`` with ``z`` the posterior mean (the mode, so the
    same image always gives the same latent; the pretraining loss adds its own noise). No gradient: the VAE is
    frozen and the images are data.
    """
    vae_dtype = next(vae.parameters()).dtype
    z = vae.encode((images * 2.0 - 1.0).to(vae_dtype)).latent_dist.mode()
    return ((z.float() - shift_factor) * scaling_factor).to(images.dtype)
