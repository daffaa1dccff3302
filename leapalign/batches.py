"""The trainer's random streams and the micro-batches it hands to a method."""

from __future__ import annotations

import torch

from leapalign.config import ExperimentConfig
from leapalign.methods import Batch
from leapalign.models.base import FlowModel, noise_like_latents


def generators(seed: int, rank: int, device: torch.device) -> dict[str, torch.Generator]:
    def gen(s: int, dev: str = "cpu") -> torch.Generator:
        return torch.Generator(device=dev).manual_seed(s)

    return {
        "noise": gen(seed * 1000 + 2 * rank + 1),
        "prompts": gen(seed * 1000 + 2 * rank + 2),
        "method": gen(seed * 1000 + 2 * rank + 501, device.type if device.type == "cuda" else "cpu"),
        "steps": gen(seed * 1000 + 999),  # identical on every rank
    }


def make_batch(model: FlowModel, prompts: list[str], cfg: ExperimentConfig, gens: dict[str, torch.Generator]) -> Batch:
    """Encodes prompts and draws the initial noise for one micro-batch."""
    h, w = cfg.sampler.height, cfg.sampler.width
    noise = noise_like_latents(model, len(prompts), h, w, gens["noise"], model.device)  # as the pipeline draws it
    return Batch(
        prompts=prompts,
        cond=model.encode_prompts(prompts),
        noise=noise,
        sigmas=model.sigmas(cfg.sampler.num_steps, h, w).to(model.device),
        height=h,
        width=w,
        generator=gens["method"],
        step_generator=gens["steps"],
    )
