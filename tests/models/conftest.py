"""Shared fixtures for the model-adapter tests: tiny random-init Flux / SD3 pipelines and adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from leapalign.models import FluxAdapter, SD3Adapter, build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from leapalign.models.config import ModelConfig

SEQ = 32  # T5 tokens: keeps the tiny transformers at 64 image + 32 text tokens


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """The tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP spinning makes
    them up to 100x slower; the previous setting is restored after each test."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def flux_cfg() -> ModelConfig:
    return ModelConfig(name="tiny-flux", max_sequence_length=SEQ, guidance_scale=3.5, lora_rank=4, lora_alpha=8)


@pytest.fixture
def sd3_cfg() -> ModelConfig:
    return ModelConfig(name="tiny-sd3", max_sequence_length=SEQ, guidance_scale=4.5, lora_rank=4, lora_alpha=8)


@pytest.fixture
def make_flux() -> Callable[..., FluxAdapter]:
    """Builds a fresh tiny Flux adapter (own pipeline, so tests never share mutable modules)."""

    def make(cfg: ModelConfig, seed: int = 0, guidance_embeds: bool = True) -> FluxAdapter:
        return FluxAdapter.from_pipeline(build_tiny_flux_pipeline(seed, guidance_embeds=guidance_embeds), cfg)

    return make


@pytest.fixture
def make_sd3() -> Callable[..., SD3Adapter]:
    def make(cfg: ModelConfig, seed: int = 0) -> SD3Adapter:
        return SD3Adapter.from_pipeline(build_tiny_sd3_pipeline(seed), cfg)

    return make
