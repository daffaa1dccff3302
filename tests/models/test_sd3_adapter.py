"""SD3Adapter against diffusers' StableDiffusion3Pipeline: schedule, conditioning, CFG velocity, sampling."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from leapalign.models import FlowModel, SD3Adapter, build_model, build_tiny_sd3_pipeline
from leapalign.models.config import ModelConfig

SEQ = 32
PROMPTS = ["a red cat", "two blue squares"]


def test_latent_shape(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    assert isinstance(model, FlowModel)
    assert model.resolutions_multiple == 16
    assert model.latent_shape(128, 96) == (16, 16, 12)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.latent_shape(120, 128)


@pytest.mark.parametrize("n", [1, 4, 8, 28])
def test_sigmas_match_pipeline_scheduler(make_sd3, sd3_cfg: ModelConfig, n: int) -> None:
    model = make_sd3(sd3_cfg)
    scheduler = build_tiny_sd3_pipeline(0).scheduler
    scheduler.set_timesteps(n)
    torch.testing.assert_close(model.sigmas(n, 128, 128), scheduler.sigmas, atol=1e-6, rtol=0)
    if n == 8:  # documented values, incl. the doubly shifted last non-zero sigma 0.0089
        expected = torch.tensor([1.0, 0.9475, 0.8828, 0.8008, 0.6938, 0.548, 0.338, 0.0089, 0.0])
        torch.testing.assert_close(model.sigmas(n, 128, 128), expected, atol=1e-4, rtol=0)


def test_constant_velocity_euler_matches_scheduler_step(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(5)
    sigmas = model.sigmas(5, 64, 64)
    x0 = torch.randn(1, *model.latent_shape(64, 64))
    v = torch.randn_like(x0)
    ours, ref = x0.clone(), x0.clone()
    for i, t in enumerate(scheduler.timesteps):
        ours = ours + (sigmas[i + 1] - sigmas[i]) * v
        ref = scheduler.step(v, t, ref, return_dict=False)[0]
        torch.testing.assert_close(t / 1000, sigmas[i], atol=1e-6, rtol=0)  # timestep = 1000 sigma
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_conditioning_matches_pipeline_encode(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    pipe = build_tiny_sd3_pipeline(0)
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        embeds, neg, pooled, neg_pooled = pipe.encode_prompt(PROMPTS, None, None, max_sequence_length=SEQ)
    assert cond.prompt_embeds.shape == (2, 77 + SEQ, 80) and cond.pooled.shape == (2, 64)
    for ours, ref in [
        (cond.prompt_embeds, embeds),
        (cond.negative_embeds, neg),
        (cond.pooled, pooled),
        (cond.negative_pooled, neg_pooled),
    ]:
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert torch.all(cond.prompt_embeds[:, :77, 64:] == 0)  # CLIP states zero-padded to the T5 width


def test_velocity_matches_pipeline_cfg_call(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    pipe = build_tiny_sd3_pipeline(0)
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, *model.latent_shape(64, 64))
    pipe.scheduler.set_timesteps(6)
    t = pipe.scheduler.timesteps[2]
    with torch.no_grad():
        out = pipe.transformer(
            hidden_states=torch.cat([x, x]),
            timestep=t.expand(4),
            encoder_hidden_states=torch.cat([cond.negative_embeds, cond.prompt_embeds]),
            pooled_projections=torch.cat([cond.negative_pooled, cond.pooled]),
            return_dict=False,
        )[0]
        uncond, text = out.chunk(2)
        ref = uncond + 4.5 * (text - uncond)
        ours = model.velocity(x, pipe.scheduler.sigmas[2], cond)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("guidance_scale", [4.5, 1.0])
def test_sampling_loop_matches_pipeline(make_sd3, guidance_scale: float) -> None:
    cfg = ModelConfig(name="tiny-sd3", max_sequence_length=SEQ, guidance_scale=guidance_scale)
    model = make_sd3(cfg)
    pipe = build_tiny_sd3_pipeline(0)
    cond = model.encode_prompts(PROMPTS)
    assert (cond.negative_embeds is None) == (guidance_scale <= 1)
    x0 = torch.randn(2, *model.latent_shape(128, 128), generator=torch.Generator().manual_seed(2))
    sigmas = model.sigmas(4, 128, 128)
    x = x0
    with torch.no_grad():
        for i in range(4):
            x = x + (sigmas[i + 1] - sigmas[i]) * model.velocity(x, sigmas[i], cond)
        images = model.decode(x, 128, 128)
    common = dict(
        height=128,
        width=128,
        num_inference_steps=4,
        max_sequence_length=SEQ,
        latents=x0,
        guidance_scale=guidance_scale,
    )
    ref = pipe(PROMPTS, output_type="latent", **common).images
    ref_images = pipe(PROMPTS, output_type="pt", **common).images
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images, ref_images, atol=1e-5, rtol=1e-5)


def test_decode_range_and_gradient(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    lat = torch.randn(2, *model.latent_shape(64, 64), requires_grad=True)
    img = model.decode(lat, 64, 64)
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    img.square().mean().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0


def test_prompt_cache_and_negative_once(make_sd3, sd3_cfg: ModelConfig) -> None:
    model = make_sd3(sd3_cfg)
    model.encode_prompts(["a", "b"])
    model.encode_prompts(["b", "a", "c"])
    assert model.prompt_cache.num_encoded == 4  # a, b, c and the empty negative prompt, once each
    assert len(model.prompt_cache) == 3


def test_from_pretrained_on_saved_pipeline(tmp_path, make_sd3, sd3_cfg: ModelConfig) -> None:
    build_tiny_sd3_pipeline(0).save_pretrained(tmp_path / "pipe")
    loaded = SD3Adapter.from_pretrained(tmp_path / "pipe", sd3_cfg)
    reference = make_sd3(sd3_cfg)
    assert loaded.shift == 3.0
    x = torch.randn(2, *reference.latent_shape(64, 64))
    with torch.no_grad():
        ours = loaded.velocity(x, 0.4, loaded.encode_prompts(PROMPTS))
        ref = reference.velocity(x, 0.4, reference.encode_prompts(PROMPTS))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"model\.path"):
        build_model(ModelConfig(name="sd3", path=str(tmp_path / "missing")))


def test_build_model_tiny_sd3(sd3_cfg: ModelConfig) -> None:
    model = build_model(sd3_cfg)
    assert isinstance(model, SD3Adapter)
    assert all("lora_" in n for n, p in model.transformer.named_parameters() if p.requires_grad)
