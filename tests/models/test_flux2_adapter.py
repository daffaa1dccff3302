"""FLUX.2 [dev] and [klein] adapters against Flux2Pipeline / Flux2KleinPipeline on tiny random-init models.

Tolerance: float32 on the CPU, the same operations in the same order up to how a batch is split (the pipelines
encode prompts in one batch and run klein's two CFG passes separately; the adapter encodes one prompt at a time and
batches the CFG passes), so images and velocities agree to 1e-5 absolute; schedules and noise are bit-identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE

from leapalign.flow import sample
from leapalign.models import FlowModel, export_for_diffusers, noise_like_latents, prepare_for_training
from leapalign.models.config import ModelConfig
from leapalign.models.flux2 import (
    Flux2Adapter,
    Flux2KleinAdapter,
    build_tiny_flux2,
    build_tiny_flux2_klein,
    empirical_mu,
    latent_ids,
    patchify,
    text_ids,
    unpatchify,
)
from leapalign.models.tiny_flux2 import (
    TINY_TEXT_LAYERS,
    build_tiny_flux2_klein_pipeline,
    build_tiny_flux2_pipeline,
    build_tiny_flux2_transformer,
)
from leapalign.sampling import generate

SEQ = 64  # text tokens: the tiny [dev] system message takes about 40 of them
PROMPTS = ["a red cat", "two blue squares"]
H, W = 64, 96  # non-square: a transposed layout cannot pass by symmetry
ATOL = RTOL = 1e-5
VARIANTS = {  # name -> (pipeline builder, adapter class, guidance_scale)
    "dev": (lambda: build_tiny_flux2_pipeline(0), Flux2Adapter, 2.5),
    "klein-base": (lambda: build_tiny_flux2_klein_pipeline(0), Flux2KleinAdapter, 3.0),
    "klein-distilled": (lambda: build_tiny_flux2_klein_pipeline(0, is_distilled=True), Flux2KleinAdapter, 1.0),
}


def _cfg(guidance: float = 2.5, **kw) -> ModelConfig:
    return ModelConfig(max_sequence_length=SEQ, guidance_scale=guidance, lora_rank=4, lora_alpha=8, **kw)


def _make(variant: str, **kw):
    build, cls, guidance = VARIANTS[variant]
    pipe = build()
    return pipe, cls.from_pipeline(pipe, _cfg(guidance, **kw), TINY_TEXT_LAYERS), guidance


def _call(pipe, guidance: float, **kw) -> torch.Tensor:
    common = dict(height=H, width=W, num_inference_steps=3, max_sequence_length=SEQ, guidance_scale=guidance)
    return pipe(prompt=PROMPTS, text_encoder_out_layers=TINY_TEXT_LAYERS, output_type="pt", **common, **kw).images


def _gens(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(s) for s in seeds]


# ----------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize(("seq_len", "steps"), [(16, 3), (1024, 28), (4096, 50), (4624, 4), (9000, 50)])
def test_empirical_mu_is_the_pipelines(seq_len: int, steps: int) -> None:
    assert empirical_mu(seq_len, steps) == compute_empirical_mu(seq_len, steps)


@pytest.mark.parametrize("variant", ["dev", "klein-base"])
@pytest.mark.parametrize(("n", "height", "width"), [(1, 64, 64), (3, 64, 96), (28, 1024, 1024), (4, 1088, 1088)])
def test_sigmas_equal_pipeline_scheduler(variant: str, n: int, height: int, width: int) -> None:
    pipe, model, _ = _make(variant)
    seq_len = (height // 16) * (width // 16)
    # exactly as the pipelines' __call__: retrieve_timesteps(scheduler, n, sigmas=linspace(1, 1/n, n), mu=mu)
    pipe.scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=compute_empirical_mu(seq_len, n))
    ours = model.sigmas(n, height, width)
    assert ours.dtype == torch.float32 and ours.shape == (n + 1,)
    assert torch.equal(ours, pipe.scheduler.sigmas)


# ------------------------------------------------------------------------------------------------- layout
def test_layout_and_position_ids_match_pipeline() -> None:
    lat = torch.randn(2, 8, 8, 12)
    assert torch.equal(patchify(lat), Flux2Pipeline._patchify_latents(lat))
    assert torch.equal(unpatchify(patchify(lat)), lat)
    assert torch.equal(unpatchify(patchify(lat)), Flux2Pipeline._unpatchify_latents(patchify(lat)))
    ref_ids = Flux2Pipeline._prepare_latent_ids(torch.zeros(1, 32, 4, 6))[0]
    assert torch.equal(latent_ids(4, 6), ref_ids)
    assert torch.equal(text_ids(SEQ), Flux2Pipeline._prepare_text_ids(torch.zeros(1, SEQ, 48))[0])
    pipe, model, _ = _make("dev")
    assert isinstance(model, FlowModel) and model.resolutions_multiple == 16
    assert model.latent_shape(H, W) == (32, 4, 6)
    lat, _ = pipe.prepare_latents(2, 8, H, W, torch.float32, torch.device("cpu"), torch.Generator().manual_seed(0))
    noise = noise_like_latents(model, 2, H, W, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert torch.equal(noise.flatten(2).transpose(1, 2), lat)  # drawn in our layout, then _pack_latents


@pytest.mark.parametrize(("height", "width"), [(72, 64), (64, 40), (0, 64)])
def test_unsupported_resolution_is_refused(height: int, width: int) -> None:
    _, model, _ = _make("dev")
    with pytest.raises(ValueError, match="multiples of 16"):
        model.latent_shape(height, width)
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(model, PROMPTS[:1], seeds=[0], num_steps=1, height=height, width=width)


# ------------------------------------------------------------------------------------------- conditioning
@pytest.mark.parametrize("variant", ["dev", "klein-base"])
def test_conditioning_matches_pipeline_encode(variant: str) -> None:
    pipe, model, _ = _make(variant)
    cond = model.encode_prompts(PROMPTS)
    assert model.encode_prompts(PROMPTS[::-1]).prompt_embeds[1].equal(cond.prompt_embeds[0])
    assert model.prompt_cache.num_encoded == 2 + (variant == "klein-base")  # each prompt (and "") encoded once
    with torch.no_grad():
        ref, ref_ids = pipe.encode_prompt(PROMPTS, max_sequence_length=SEQ, text_encoder_out_layers=TINY_TEXT_LAYERS)
    assert cond.prompt_embeds.shape == (2, SEQ, 48) and cond.pooled is None and cond.mask is None
    torch.testing.assert_close(cond.prompt_embeds, ref, atol=ATOL, rtol=RTOL)
    assert torch.equal(text_ids(SEQ).expand(2, -1, -1), ref_ids)
    if variant == "dev":
        assert cond.negative_embeds is None  # embedded guidance: no empty-prompt pass
    else:  # true CFG: the empty prompt, as Flux2KleinPipeline encodes negative_prompt=""
        with torch.no_grad():
            neg, _ = pipe.encode_prompt([""], max_sequence_length=SEQ, text_encoder_out_layers=TINY_TEXT_LAYERS)
        torch.testing.assert_close(cond.negative_embeds, neg.expand(2, -1, -1), atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rollout_parity_with_pipeline(variant: str) -> None:
    pipe, model, guidance = _make(variant)
    assert (model.cfg_scale is not None) == (variant == "klein-base")
    noise = torch.randn(2, *model.latent_shape(H, W), generator=torch.Generator().manual_seed(1))
    cond = model.encode_prompts(PROMPTS)
    with torch.no_grad():
        ro = sample(lambda x, s: model.velocity(x, s, cond), noise, model.sigmas(3, H, W))
        ours = model.decode(ro.latent, H, W)
    ref = _call(pipe, guidance, latents=noise)
    assert ours.shape == (2, 3, H, W) and ours.std() > 0.05
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("variant", ["dev", "klein-base"])
def test_seed_parity_with_pipeline(variant: str) -> None:
    pipe, model, guidance = _make(variant)
    ours = generate(model, PROMPTS, seeds=[11, 12], num_steps=3, height=H, width=W, batch_size=1)
    ref = _call(pipe, guidance, generator=_gens(11, 12))
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=RTOL)


def test_encode_pixels_is_the_pipelines_latent_normalisation() -> None:
    pipe, model, _ = _make("klein-base")
    images = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = pipe._encode_vae_image(images * 2 - 1, generator=None)
    torch.testing.assert_close(model.encode_pixels(images), ref, atol=ATOL, rtol=RTOL)


# ----------------------------------------------------------------------------------------------- guidance
def test_guidance_settings_a_variant_ignores_are_refused() -> None:
    with pytest.raises(ValueError, match=r"step-distilled.*guidance_scale=1"):
        Flux2KleinAdapter.from_pipeline(build_tiny_flux2_klein_pipeline(0, True), _cfg(3.5), TINY_TEXT_LAYERS)
    with pytest.raises(ValueError, match=r"guidance_scale=0.5 is not used.*> 1"):
        Flux2KleinAdapter.from_pipeline(build_tiny_flux2_klein_pipeline(0), _cfg(0.5), TINY_TEXT_LAYERS)
    pipe = build_tiny_flux2_pipeline(0)
    with torch.random.fork_rng(devices=[]):
        pipe.transformer = build_tiny_flux2_transformer(guidance_embeds=False)
    with pytest.raises(ValueError, match="model.name=flux2-klein"):
        Flux2Adapter.from_pipeline(pipe, _cfg(), TINY_TEXT_LAYERS)
    with pytest.raises(ValueError, match="wraps a Flux2KleinPipeline"):
        Flux2KleinAdapter.from_pipeline(build_tiny_flux2_pipeline(0), _cfg())
    plain = Flux2KleinAdapter.from_pipeline(build_tiny_flux2_klein_pipeline(0), _cfg(1.0), TINY_TEXT_LAYERS)
    assert plain.cfg_scale is None and plain.encode_prompts(PROMPTS).negative_embeds is None


# -------------------------------------------------------------------------------------------- fine-tuning
def _lora_model(variant: str, **kw):
    pipe, model, _ = _make(variant, **kw)
    prepare_for_training(model, _cfg(VARIANTS[variant][2], **kw))  # lora_targets=None: the adapter's defaults
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:  # gaussian init leaves B = 0: make the adapter change the velocity
                p.normal_(0.0, 0.2)
    return pipe, model


def test_default_lora_targets_exist_and_cover_single_stream_blocks() -> None:
    _, model = _lora_model("dev")
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.transformer.named_parameters() if ".lora_A." in n}
    for target in model.default_lora_targets:
        assert any(a == target or a.endswith("." + target) for a in adapted), target
    for i, _ in enumerate(model.transformer.single_transformer_blocks):
        assert f"single_transformer_blocks.{i}.attn.to_qkv_mlp_proj" in adapted
        assert f"single_transformer_blocks.{i}.attn.to_out" in adapted
    assert "transformer_blocks.0.attn.to_q" in adapted and "transformer_blocks.0.attn.to_out.0" in adapted


@pytest.mark.parametrize("variant", ["dev", "klein-base"])
def test_lora_export_reloads_in_pipeline(tmp_path, variant: str) -> None:
    _, model = _lora_model(variant)
    x = torch.randn(2, *model.latent_shape(H, W), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        trained = model.velocity(x, 0.7, model.encode_prompts(PROMPTS))
    export_for_diffusers(model, tmp_path / "lora", "lora")
    pipe, fresh, _ = _make(variant)
    with torch.no_grad():
        base = fresh.velocity(x, 0.7, fresh.encode_prompts(PROMPTS))
        pipe.load_lora_weights(tmp_path / "lora")
        reloaded = fresh.velocity(x, 0.7, fresh.encode_prompts(PROMPTS))
    assert (trained - base).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(reloaded, trained, atol=ATOL, rtol=RTOL)


def test_full_export_reloads_with_from_pretrained(tmp_path) -> None:
    _, model, _ = _make("dev", finetune="full")
    prepare_for_training(model, _cfg(finetune="full"))
    with torch.no_grad():
        model.transformer.proj_out.weight.mul_(1.5)
    x = torch.randn(2, *model.latent_shape(H, W), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        trained = model.velocity(x, 0.4, model.encode_prompts(PROMPTS))
    export_for_diffusers(model, tmp_path / "full", "full")
    pipe = build_tiny_flux2_pipeline(0)
    pipe.transformer = Flux2Transformer2DModel.from_pretrained(tmp_path / "full", subfolder="transformer")
    fresh = Flux2Adapter.from_pipeline(pipe, _cfg(finetune="full"), TINY_TEXT_LAYERS)
    with torch.no_grad():
        torch.testing.assert_close(fresh.velocity(x, 0.4, fresh.encode_prompts(PROMPTS)), trained, atol=0, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradient() -> None:
    grads = []
    for checkpointing in (False, True):
        _, model = _lora_model("klein-base", gradient_checkpointing=checkpointing)
        assert model.transformer.gradient_checkpointing is checkpointing
        x = torch.randn(2, *model.latent_shape(H, W), generator=torch.Generator().manual_seed(3))
        model.velocity(x, torch.tensor([0.3, 0.8]), model.encode_prompts(PROMPTS)).square().mean().backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    assert len(grads[0]) > 0 and all(g.abs().sum() > 0 for g in grads[0])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("variant", ["dev", "klein-base"])
def test_bf16_weights_build_and_run(variant: str) -> None:
    _, model, _ = _make(variant, weights_dtype="bf16")
    assert model.compute_dtype == torch.bfloat16 and next(model.vae.parameters()).dtype == torch.bfloat16
    cond = model.encode_prompts(PROMPTS)
    assert cond.prompt_embeds.dtype == torch.bfloat16
    x = torch.randn(2, *model.latent_shape(H, W))
    with torch.no_grad():
        v = model.velocity(x, 0.5, cond)
        img = model.decode(x, H, W)
    assert v.dtype == torch.float32 and v.shape == x.shape and torch.isfinite(v).all()
    assert img.shape == (2, 3, H, W) and torch.isfinite(img).all()


def test_decode_is_differentiable() -> None:
    _, model, _ = _make("dev")
    lat = torch.randn(1, *model.latent_shape(H, W), requires_grad=True)
    model.decode(lat, H, W).mean().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match"):
        model.decode(lat, W, H)


# ------------------------------------------------------------------------------------------------ loading
def test_from_pretrained_reads_the_folder_and_refuses_other_families(tmp_path) -> None:
    build_tiny_flux2_pipeline(0).save_pretrained(tmp_path / "dev")
    build_tiny_flux2_klein_pipeline(0, is_distilled=True).save_pretrained(tmp_path / "klein")
    dev = Flux2Adapter.from_pretrained(tmp_path / "dev", _cfg(), TINY_TEXT_LAYERS)
    assert dev.text_encoder.system_message == SYSTEM_MESSAGE
    _, ref, _ = _make("dev")
    x = torch.randn(1, *ref.latent_shape(H, W))
    with torch.no_grad():
        torch.testing.assert_close(
            dev.velocity(x, 0.6, dev.encode_prompts(PROMPTS[:1])),
            ref.velocity(x, 0.6, ref.encode_prompts(PROMPTS[:1])),
            atol=ATOL,
            rtol=RTOL,
        )
    klein = Flux2KleinAdapter.from_pretrained(tmp_path / "klein", _cfg(1.0), TINY_TEXT_LAYERS)
    assert klein.is_distilled and klein.cfg_scale is None
    with pytest.raises(ValueError, match="is_distilled=True"):
        Flux2KleinAdapter.from_pretrained(tmp_path / "klein", _cfg(4.0), TINY_TEXT_LAYERS)
    with pytest.raises(ValueError, match="text_encoder_out_layers"):  # the published layers need 36+ layers
        Flux2KleinAdapter.from_pretrained(tmp_path / "klein", _cfg(1.0))
    with pytest.raises(ValueError, match="model.name=flux2-klein"):
        Flux2Adapter.from_pretrained(tmp_path / "klein", _cfg())
    with pytest.raises(ValueError, match="model.name=flux2"):
        Flux2KleinAdapter.from_pretrained(tmp_path / "dev", _cfg(1.0))


def test_tiny_builders_are_deterministic_and_leave_the_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b = build_tiny_flux2(_cfg(seed=3)), build_tiny_flux2(_cfg(seed=3))
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.transformer.parameters(), b.transformer.parameters(), strict=True):
        assert torch.equal(p, q)
    assert torch.equal(a.vae.bn.running_mean, b.vae.bn.running_mean)
    klein = build_tiny_flux2_klein(_cfg(3.0, seed=4))
    assert isinstance(klein, Flux2KleinAdapter) and isinstance(klein.prompt_cache.encoder.model, torch.nn.Module)
    assert Flux2KleinPipeline is klein.pipeline_class
    assert not torch.equal(klein.transformer.x_embedder.weight, a.transformer.x_embedder.weight)
