"""FluxAdapter against FluxPipeline: layout, schedule, velocity, sampling, decode, cache, loading."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from leapalign.models import FlowModel, FluxAdapter, build_model, build_tiny_flux_pipeline
from leapalign.models.config import ModelConfig
from leapalign.models.flux import latent_image_ids, pack_latents, unpack_latents
from leapalign.models.text import FluxTextEncoder
from leapalign.models.tiny import build_tiny_flux_transformer

SEQ = 32
PROMPTS = ["a red cat", "two blue squares"]


def _pipe_sigmas(pipe: FluxPipeline, n: int, seq_len: int) -> torch.Tensor:
    c = pipe.scheduler.config
    mu = calculate_shift(seq_len, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
    return pipe.scheduler.sigmas.clone()


def test_pack_unpack_round_trip_matches_pipeline() -> None:
    lat = torch.randn(2, 16, 8, 12)
    packed = pack_latents(lat)
    assert torch.equal(packed, FluxPipeline._pack_latents(lat, 2, 16, 8, 12))
    assert packed.shape == (2, 4 * 6, 64)
    back = unpack_latents(packed, 64, 96, 8)
    assert torch.equal(back, FluxPipeline._unpack_latents(packed, 64, 96, 8))
    assert torch.equal(back, lat)


def test_latent_shape_and_layout(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    assert isinstance(model, FlowModel)
    assert model.resolutions_multiple == 16
    assert model.latent_shape(128, 128) == (8, 8, 64)
    assert model.latent_shape(64, 96) == (4, 6, 64)
    with pytest.raises(ValueError, match="sampler.height"):
        model.latent_shape(120, 128)
    lat = torch.randn(2, 16, 8, 12)
    x = model.pack(lat)
    assert x.shape == (2, *model.latent_shape(64, 96))
    assert torch.equal(model.to_tokens(x), pack_latents(lat))
    assert torch.equal(model.from_tokens(pack_latents(lat), 64, 96), x)
    assert torch.equal(model.unpack(x), lat)
    ids = latent_image_ids(4, 6, torch.device("cpu"), torch.float32)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(2, 4, 6, "cpu", torch.float32))


@pytest.mark.parametrize(("n", "height", "width"), [(1, 128, 128), (8, 128, 128), (5, 256, 128)])
def test_sigmas_match_pipeline_scheduler(make_flux, flux_cfg: ModelConfig, n: int, height: int, width: int) -> None:
    model = make_flux(flux_cfg)
    pipe = build_tiny_flux_pipeline(0)
    ours = model.sigmas(n, height, width)
    ref = _pipe_sigmas(pipe, n, (height // 16) * (width // 16))
    assert ours.dtype == torch.float32 and ours.shape == (n + 1,)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    if (n, height) == (8, 128):  # the documented 128x128 values (environment.md 5.4)
        expected = torch.tensor([1.0, 0.9178, 0.8272, 0.7268, 0.6148, 0.4892, 0.3473, 0.1857, 0.0])
        torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_constant_velocity_euler_matches_scheduler_step(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(build_tiny_flux_pipeline(0).scheduler.config)
    c = scheduler.config
    mu = calculate_shift(64, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 6, 6), mu=mu)
    sigmas = model.sigmas(6, 128, 128)
    x0 = torch.randn(1, *model.latent_shape(128, 128))
    v = torch.randn_like(x0)
    ours, ref = x0.clone(), model.to_tokens(x0)
    for i, t in enumerate(scheduler.timesteps):
        ours = ours + (sigmas[i + 1] - sigmas[i]) * v
        ref = scheduler.step(model.to_tokens(v), t, ref, return_dict=False)[0]
    torch.testing.assert_close(model.to_tokens(ours), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours, x0 - v, atol=1e-6, rtol=0)  # sigma 1 -> 0 moves by exactly -v


def test_conditioning_matches_pipeline_encode(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    pipe = build_tiny_flux_pipeline(0)
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=SEQ)
    assert cond.prompt_embeds.shape == (2, SEQ, 32) and cond.pooled.shape == (2, 32)
    torch.testing.assert_close(cond.prompt_embeds, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, atol=1e-5, rtol=1e-5)
    assert torch.equal(cond.extras["txt_ids"], text_ids)
    assert cond.negative_embeds is None  # embedded guidance: no empty-prompt pass


def test_velocity_matches_pipeline_transformer_call(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    pipe = build_tiny_flux_pipeline(0)
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, *model.latent_shape(128, 128))
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.25, 4), mu=0.5)
    t = pipe.scheduler.timesteps[1]
    with torch.no_grad():
        ref = pipe.transformer(
            hidden_states=model.to_tokens(x),
            timestep=t.expand(2) / 1000,
            guidance=torch.full([1], 3.5).expand(2),
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.prompt_embeds,
            txt_ids=torch.zeros(SEQ, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(2, 8, 8, "cpu", torch.float32),
            return_dict=False,
        )[0]
        ours = model.velocity(x, pipe.scheduler.sigmas[1], cond)
        per_sample = model.velocity(x, pipe.scheduler.sigmas[1].expand(2), cond)
    torch.testing.assert_close(model.to_tokens(ours), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(per_sample, ours, atol=0, rtol=0)


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_sampling_loop_matches_pipeline(make_flux, guidance_embeds: bool) -> None:
    # guidance_embeds=False with guidance 2.5 exercises true CFG against FluxPipeline's true_cfg_scale path.
    cfg = ModelConfig(max_sequence_length=SEQ, guidance_scale=3.5 if guidance_embeds else 2.5)
    model = make_flux(cfg, guidance_embeds=guidance_embeds)
    pipe = build_tiny_flux_pipeline(0, guidance_embeds=guidance_embeds)
    cond = model.encode_prompts(PROMPTS)
    assert (cond.negative_embeds is None) == guidance_embeds
    x0 = torch.randn(2, *model.latent_shape(128, 128), generator=torch.Generator().manual_seed(1))
    sigmas = model.sigmas(4, 128, 128)
    x = x0
    with torch.no_grad():
        for i in range(4):
            x = x + (sigmas[i + 1] - sigmas[i]) * model.velocity(x, sigmas[i], cond)
        images = model.decode(x, 128, 128)
    kwargs = {"true_cfg_scale": 2.5, "negative_prompt": ""} if not guidance_embeds else {"guidance_scale": 3.5}
    common = dict(height=128, width=128, num_inference_steps=4, max_sequence_length=SEQ, latents=model.to_tokens(x0))
    ref = pipe(PROMPTS, output_type="latent", **common, **kwargs).images
    ref_images = pipe(PROMPTS, output_type="pt", **common, **kwargs).images
    torch.testing.assert_close(model.to_tokens(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(images, ref_images, atol=1e-5, rtol=1e-5)


def test_decode_range_and_gradient(make_flux, flux_cfg: ModelConfig) -> None:
    model = make_flux(flux_cfg)
    lat = torch.randn(2, *model.latent_shape(64, 64), requires_grad=True)
    img = model.decode(lat, 64, 64)
    assert img.shape == (2, 3, 64, 64)
    assert img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match"):
        model.decode(lat, 128, 128)


class _CountingEncoder:
    def __init__(self, inner: FluxTextEncoder) -> None:
        self.inner, self.seen = inner, []

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen.extend(prompts)
        return self.inner(prompts)

    def to(self, device: torch.device | str) -> _CountingEncoder:
        self.inner.to(device)
        return self


@pytest.mark.parametrize("guidance_embeds", [True, False])
def test_prompt_cache_encodes_each_prompt_once(make_flux, guidance_embeds: bool) -> None:
    model = make_flux(ModelConfig(max_sequence_length=SEQ, guidance_scale=3.0), guidance_embeds=guidance_embeds)
    counter = _CountingEncoder(model.text_encoder)
    model.prompt_cache.encoder = counter
    first = model.encode_prompts(["a", "b", "a"])
    second = model.encode_prompts(["b", "c"])
    model.encode_prompts(["c", "a"])
    expected_negative = [] if guidance_embeds else [""]
    assert sorted(counter.seen) == sorted(["a", "b", "c", *expected_negative])
    torch.testing.assert_close(first.prompt_embeds[0], first.prompt_embeds[2])
    torch.testing.assert_close(first.prompt_embeds[1], second.prompt_embeds[0])
    direct, _ = counter.inner(["c"])
    torch.testing.assert_close(second.prompt_embeds[1], direct[0], atol=1e-6, rtol=0)
    if not guidance_embeds:
        assert first.negative_embeds is not None and first.negative_embeds.shape == first.prompt_embeds.shape


def test_pixel_space_model_without_vae(make_flux, flux_cfg: ModelConfig) -> None:
    text = make_flux(flux_cfg).text_encoder
    torch.manual_seed(0)
    model = FluxAdapter(build_tiny_flux_transformer(in_channels=12), None, text, guidance_scale=3.5)
    assert model.resolutions_multiple == 2 and model.latent_channels == 3
    assert model.latent_shape(16, 24) == (8, 12, 12)
    pixels = torch.rand(2, 3, 16, 24) * 2 - 1
    x = model.pack(pixels)
    torch.testing.assert_close(model.decode(x, 16, 24), pixels * 0.5 + 0.5)
    with torch.no_grad():
        v = model.velocity(x, torch.tensor([0.3, 0.7]), model.encode_prompts(PROMPTS))
    assert v.shape == x.shape and torch.isfinite(v).all()


def test_from_pretrained_on_saved_pipeline(tmp_path, make_flux, flux_cfg: ModelConfig) -> None:
    build_tiny_flux_pipeline(0).save_pretrained(tmp_path / "pipe")
    loaded = FluxAdapter.from_pretrained(tmp_path / "pipe", flux_cfg)
    reference = make_flux(flux_cfg)
    x = torch.randn(2, *reference.latent_shape(64, 64))
    with torch.no_grad():
        ours = loaded.velocity(x, 0.6, loaded.encode_prompts(PROMPTS))
        ref = reference.velocity(x, 0.6, reference.encode_prompts(PROMPTS))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    built = build_model(ModelConfig(name="flux", path=str(tmp_path / "pipe"), max_sequence_length=SEQ))
    assert len(built.trainable_parameters()) > 0


@pytest.mark.parametrize("path", ["/definitely/not/here", "./relative/missing", "not a hub id"])
def test_bad_path_names_model_path(path: str) -> None:
    with pytest.raises(ValueError, match=r"model\.path"):
        build_model(ModelConfig(name="flux", path=path))
    with pytest.raises(ValueError, match=r"model\.path"):
        FluxAdapter.from_pretrained(path, ModelConfig(name="flux", path=path))


def test_build_model_tiny_flux_is_deterministic() -> None:
    cfg = ModelConfig(name="tiny-flux", max_sequence_length=SEQ, seed=3)
    a, b = build_model(cfg), build_model(cfg)
    for p, q in zip(a.trainable_parameters(), b.trainable_parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(
        build_model(ModelConfig(max_sequence_length=SEQ, seed=4)).transformer.x_embedder.weight,
        a.transformer.x_embedder.weight,
    )
