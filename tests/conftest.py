"""Shared fixtures: a seed per test and a toy pixel-space flow model that implements ``FlowModel``."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from leapalign.flow import flux_sigmas
from leapalign.methods.base import Batch
from leapalign.models.base import Conditioning


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class ToyVelocity(nn.Module):
    """A small conv net ``v(x, sigma, cond)`` on ``(B, 3, H, W)`` pixel latents."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3 + 1 + 4, width, 3, padding=1)
        self.out = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor, sigma: Tensor, emb: Tensor) -> Tensor:
        b, _, h, w = x.shape
        s = sigma.reshape(-1, 1, 1, 1).expand(b, 1, h, w)
        e = emb.view(b, -1, 1, 1).expand(b, emb.shape[1], h, w)
        return self.out(torch.tanh(self.inp(torch.cat([x, s, e], dim=1))))


class ToyFlowModel:
    """Pixel-space ``FlowModel`` for method tests: latents are images in ``[-1, 1]``, decode is affine."""

    resolutions_multiple = 4

    def __init__(self) -> None:
        self.transformer = ToyVelocity()
        self.calls = 0

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        emb = torch.stack([torch.tensor([len(p) % 3, p.count("a"), 1.0, 0.5]) for p in prompts]).float()
        return Conditioning(prompt_embeds=emb[:, None, :], pooled=emb)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (3, height, width)

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        return flux_sigmas(num_steps, height * width // 4)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        self.calls += 1
        return self.transformer(x, sigma.expand(x.shape[0]), cond.pooled)

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        return latents * 0.5 + 0.5

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.transformer.parameters())

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> ToyFlowModel:
        return self


@pytest.fixture
def toy_model() -> ToyFlowModel:
    return ToyFlowModel()


def make_batch(model, prompts: list[str], num_steps: int = 8, size: int = 8, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((len(prompts), *model.latent_shape(size, size)), generator=gen)
    return Batch(
        prompts=prompts,
        cond=model.encode_prompts(prompts),
        noise=noise,
        sigmas=model.sigmas(num_steps, size, size),
        height=size,
        width=size,
        generator=torch.Generator().manual_seed(seed + 1),
        step_generator=torch.Generator().manual_seed(seed + 2),
    )
