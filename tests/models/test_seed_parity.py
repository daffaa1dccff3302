"""The same seed gives the same initial noise and the same image in leapalign as in the diffusers pipeline.

Issue 18 item 2: FLUX.1's pipeline draws unpacked ``(B, C, H/8, W/8)`` noise and packs it, so drawing in leapalign's
packed layout gave other noise (and another image) for the same generator.
"""

from __future__ import annotations

import pytest
import torch

from leapalign.batches import make_batch
from leapalign.config import ExperimentConfig
from leapalign.models import build_tiny_flux_pipeline, build_tiny_sd3_pipeline, noise_like_latents
from leapalign.models.config import ModelConfig
from leapalign.sampling import generate

SEQ = 32
PROMPTS = ["a red cat", "two blue squares"]
HEIGHT, WIDTH = 64, 96  # non-square, so a transposed or mis-packed draw cannot pass by symmetry
ATOL = RTOL = 1e-5  # float32 on CPU: same ops in the same order, only summation-order noise is allowed


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


def _flux_ref_noise(pipe, generator) -> torch.Tensor:
    channels = pipe.transformer.config.in_channels // 4
    latents, _ = pipe.prepare_latents(2, channels, HEIGHT, WIDTH, torch.float32, torch.device("cpu"), generator)
    return latents


@pytest.mark.parametrize("one_generator", [True, False], ids=["one-generator", "generator-per-image"])
def test_flux_initial_noise_is_the_pipelines(make_flux, flux_cfg: ModelConfig, one_generator: bool) -> None:
    model = make_flux(flux_cfg)
    pipe = build_tiny_flux_pipeline(0)
    gen = (lambda: torch.Generator().manual_seed(7)) if one_generator else (lambda: _gens(7, 8))
    ours = noise_like_latents(model, 2, HEIGHT, WIDTH, gen(), model.device)
    assert ours.shape == (2, *model.latent_shape(HEIGHT, WIDTH)) and ours.dtype == torch.float32
    assert torch.equal(model.to_tokens(ours), _flux_ref_noise(pipe, gen()))


@pytest.mark.parametrize("one_generator", [True, False], ids=["one-generator", "generator-per-image"])
def test_sd3_initial_noise_is_the_pipelines(make_sd3, sd3_cfg: ModelConfig, one_generator: bool) -> None:
    model = make_sd3(sd3_cfg)
    pipe = build_tiny_sd3_pipeline(0)
    gen = (lambda: torch.Generator().manual_seed(7)) if one_generator else (lambda: _gens(7, 8))
    ours = noise_like_latents(model, 2, HEIGHT, WIDTH, gen(), model.device)
    channels = pipe.transformer.config.in_channels
    ref = pipe.prepare_latents(2, channels, HEIGHT, WIDTH, torch.float32, torch.device("cpu"), gen())
    assert torch.equal(ours, ref)


def test_trainer_batch_noise_is_the_pipelines_for_its_generator(make_flux, flux_cfg: ModelConfig) -> None:
    # the trainer draws a micro-batch's noise from one generator, as the pipeline does for one generator per batch
    model = make_flux(flux_cfg)
    cfg = ExperimentConfig()
    cfg.sampler.height, cfg.sampler.width = HEIGHT, WIDTH
    batch = make_batch(model, PROMPTS, cfg, {"noise": torch.Generator().manual_seed(3), "method": None, "steps": None})
    ref = _flux_ref_noise(build_tiny_flux_pipeline(0), torch.Generator().manual_seed(3))
    assert torch.equal(model.to_tokens(batch.noise), ref)


def test_generator_list_of_wrong_length_is_refused(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    with pytest.raises(ValueError, match="one generator or one per image"):
        noise_like_latents(model, 2, HEIGHT, WIDTH, _gens(1, 2, 3), model.device)


@pytest.mark.parametrize("guidance_embeds", [True, False], ids=["embedded-guidance", "true-cfg"])
def test_flux_same_seed_same_image_as_pipeline(make_flux, guidance_embeds: bool) -> None:
    cfg = ModelConfig(max_sequence_length=SEQ, guidance_scale=3.5 if guidance_embeds else 2.5)
    model = make_flux(cfg, guidance_embeds=guidance_embeds)
    pipe = build_tiny_flux_pipeline(0, guidance_embeds=guidance_embeds)
    ours = generate(model, PROMPTS, seeds=[11, 12], num_steps=4, height=HEIGHT, width=WIDTH, batch_size=1)
    guidance = {"guidance_scale": 3.5} if guidance_embeds else {"true_cfg_scale": 2.5, "negative_prompt": ""}
    ref = pipe(
        PROMPTS,
        generator=_gens(11, 12),
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=4,
        max_sequence_length=SEQ,
        output_type="pt",
        **guidance,
    ).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0], ids=["cfg", "no-cfg"])
def test_sd3_same_seed_same_image_as_pipeline(make_sd3, guidance_scale: float) -> None:
    model = make_sd3(ModelConfig(name="tiny-sd3", max_sequence_length=SEQ, guidance_scale=guidance_scale))
    pipe = build_tiny_sd3_pipeline(0)
    ours = generate(model, PROMPTS, seeds=[11, 12], num_steps=4, height=HEIGHT, width=WIDTH)
    ref = pipe(
        PROMPTS,
        generator=_gens(11, 12),
        height=HEIGHT,
        width=WIDTH,
        num_inference_steps=4,
        max_sequence_length=SEQ,
        guidance_scale=guidance_scale,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)
