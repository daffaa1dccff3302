"""ZImageAdapter against ZImagePipeline (tiny random-init, in-process): text encoding, schedule, time and sign
conventions, guidance, rollout and seed parity, padding invariance, LoRA / full exports, errors, bf16, checkpointing.

Parity tolerance: 1e-5 absolute on images in [0, 1] and on latents (float32; observed differences are about 1e-6).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel
from torch import nn

from leapalign.flow import sample
from leapalign.models import FlowModel, export_for_diffusers, prepare_for_training, unwrap_model
from leapalign.models.config import ModelConfig
from leapalign.models.tiny_z_image import build_tiny_z_image_pipeline
from leapalign.models.z_image import ZImageAdapter, build_tiny_z_image, build_z_image
from leapalign.sampling import generate

SEQ = 64  # token budget: the chat-formatted tiny prompts have 28 and 35 tokens
PROMPTS = ("a red cat", "two blue squares")  # ZImagePipeline rewrites a prompt list in place: pass copies
TOL = {"atol": 1e-5, "rtol": 0.0}


def _cfg(**overrides) -> ModelConfig:
    base = {"name": "tiny-z-image", "max_sequence_length": SEQ, "guidance_scale": 0.0, "lora_rank": 4}
    return ModelConfig(**{**base, "lora_alpha": 8, **overrides})


def _model(seed: int = 0, dynamic_shift: bool = False, **overrides) -> ZImageAdapter:
    guidance = {k: overrides.pop(k) for k in ("cfg_truncation", "cfg_normalization") if k in overrides}
    return ZImageAdapter.from_pipeline(build_tiny_z_image_pipeline(seed, dynamic_shift), _cfg(**overrides), **guidance)


def _pipe_images(pipe, model: ZImageAdapter, height: int, width: int, steps: int, **kwargs) -> torch.Tensor:
    return pipe(
        list(PROMPTS),
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=model.guidance_scale,
        max_sequence_length=SEQ,
        output_type="pt",
        **kwargs,
    ).images


def test_builder_layout_and_determinism() -> None:
    state = torch.get_rng_state()
    a, b = build_tiny_z_image(_cfg(seed=3)), build_tiny_z_image(_cfg(seed=3))
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(a, FlowModel) and a.resolutions_multiple == 16
    assert a.latent_shape(64, 96) == (16, 8, 12)
    for p, q in zip(a.transformer.parameters(), b.transformer.parameters(), strict=True):
        assert torch.equal(p, q)
    other = build_tiny_z_image(_cfg(seed=4)).transformer.cap_embedder[1].weight
    assert not torch.equal(other, a.transformer.cap_embedder[1].weight)
    assert sum(p.numel() for p in a.transformer.parameters()) < 400_000


def test_prompt_encoding_matches_pipeline() -> None:
    model, pipe = _model(guidance_scale=3.0), build_tiny_z_image_pipeline(0)
    text = model.text_encoder
    assert text.format_prompt("a red cat") == "<|im_start|>user\na red cat<|im_end|>\n<|im_start|>assistant\n"
    cond = model.encode_prompts(list(PROMPTS))
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(list(PROMPTS), max_sequence_length=SEQ)
    assert cond.pooled is None and cond.prompt_embeds.shape == (2, 35, 32)
    assert cond.mask.tolist() == [[True] * 28 + [False] * 7, [True] * 35]
    assert torch.equal(cond.prompt_embeds[0, 28:], torch.zeros(7, 32))  # right-padded with zeros
    for i in range(2):
        torch.testing.assert_close(cond.prompt_embeds[i][cond.mask[i]], pos[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(cond.negative_embeds[i][cond.negative_mask[i]], neg[i], atol=1e-6, rtol=0)
    # the penultimate hidden state, not the last one
    ids = pipe.tokenizer([text.format_prompt(PROMPTS[0])], return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(cond.prompt_embeds[0, :28], hidden[-2][0], atol=1e-6, rtol=0)
    assert (hidden[-1][0] - hidden[-2][0]).abs().max() > 1e-2
    assert _model().encode_prompts(list(PROMPTS)).negative_embeds is None  # no CFG: no empty-prompt pass


@pytest.mark.parametrize("dynamic_shift", [False, True])
@pytest.mark.parametrize(("steps", "height", "width"), [(1, 64, 64), (4, 64, 64), (3, 64, 96), (8, 256, 128)])
def test_sigmas_match_pipeline_scheduler(dynamic_shift: bool, steps: int, height: int, width: int) -> None:
    model, pipe = _model(dynamic_shift=dynamic_shift), build_tiny_z_image_pipeline(0, dynamic_shift)
    pipe([PROMPTS[0]], height=height, width=width, num_inference_steps=steps, guidance_scale=0.0, output_type="latent")
    ours = model.sigmas(steps, height, width)
    assert ours.dtype == torch.float32 and ours.shape == (steps + 1,)
    assert torch.equal(ours, pipe.scheduler.sigmas)  # exactly, as the pipeline calls set_timesteps
    if not dynamic_shift and steps == 4:  # Z-Image-Turbo: static shift 3 on linspace(1, 1/4, 4)
        torch.testing.assert_close(ours, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]), atol=1e-6, rtol=0)
    if dynamic_shift and (steps, height) == (3, 64):  # mu of (64/16) * (96/16) = 24 image tokens
        assert torch.equal(ours, model.sigmas(3, 96, 64)) and not torch.equal(ours, model.sigmas(3, 128, 96))


def test_timestep_is_one_minus_sigma_and_velocity_is_negated_output() -> None:
    model, pipe = _model(), build_tiny_z_image_pipeline(0)
    calls: list[tuple] = []

    def spy(module: nn.Module, args: tuple, output: tuple) -> None:
        calls.append(([a.clone() for a in args[0]], args[1].clone(), [a.clone() for a in args[2]], output[0]))

    pipe.transformer.register_forward_hook(spy)
    pipe(list(PROMPTS), height=64, width=64, num_inference_steps=3, guidance_scale=0.0, max_sequence_length=SEQ)
    latents, t, _, out = calls[1]  # step 1 of 3
    sigma = pipe.scheduler.sigmas[1]
    torch.testing.assert_close(t, (1 - sigma).expand(2), atol=1e-6, rtol=0)  # the transformer's time is 1 - sigma
    x = torch.stack(latents).squeeze(2)
    with torch.no_grad():
        v = model.velocity(x, sigma, model.encode_prompts(list(PROMPTS)))
        seen = []
        model.transformer.register_forward_hook(lambda m, a, o: seen.append(a[1]))
        model.velocity(x, torch.tensor([0.25, 0.75]), model.encode_prompts(list(PROMPTS)))
    torch.testing.assert_close(v, -torch.stack(out).squeeze(2), **TOL)  # v = dx/dsigma = -output
    torch.testing.assert_close(seen[0], torch.tensor([0.75, 0.25]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("guidance_scale", "dynamic_shift", "height", "width"),
    [(0.0, False, 64, 64), (1.0, False, 64, 96), (3.0, False, 64, 96), (4.0, True, 64, 64)],
)
def test_rollout_matches_pipeline(guidance_scale: float, dynamic_shift: bool, height: int, width: int) -> None:
    model = _model(dynamic_shift=dynamic_shift, guidance_scale=guidance_scale)
    pipe = build_tiny_z_image_pipeline(0, dynamic_shift)
    assert model.uses_true_cfg == (guidance_scale > 0)
    x0 = torch.randn(2, *model.latent_shape(height, width), generator=torch.Generator().manual_seed(1))
    cond = model.encode_prompts(list(PROMPTS))
    with torch.no_grad():
        ro = sample(lambda x, s: model.velocity(x, s, cond), x0, model.sigmas(3, height, width))
        images = model.decode(ro.latent, height, width)
    common = {"latents": x0.clone(), "guidance_scale": model.guidance_scale, "max_sequence_length": SEQ}
    ref = pipe(list(PROMPTS), height=height, width=width, num_inference_steps=3, output_type="latent", **common).images
    torch.testing.assert_close(ro.latent, ref, **TOL)
    torch.testing.assert_close(images, _pipe_images(pipe, model, height, width, 3, latents=x0.clone()), **TOL)


@pytest.mark.parametrize("guidance_scale", [0.0, 3.0])
def test_seed_parity_with_pipeline(guidance_scale: float) -> None:
    model, pipe = _model(guidance_scale=guidance_scale), build_tiny_z_image_pipeline(0)
    ours = generate(model, list(PROMPTS), seeds=[11, 12], num_steps=3, height=64, width=96)
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    torch.testing.assert_close(ours, _pipe_images(pipe, model, 64, 96, 3, generator=gens), **TOL)


def test_cfg_truncation_and_normalization_match_pipeline() -> None:
    model = _model(guidance_scale=4.0, cfg_truncation=0.3, cfg_normalization=1.0)
    pipe = build_tiny_z_image_pipeline(0)
    x0 = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(2))
    cond = model.encode_prompts(list(PROMPTS))
    with torch.no_grad():
        images = model.decode(
            sample(lambda x, s: model.velocity(x, s, cond), x0, model.sigmas(4, 64, 64)).latent, 64, 64
        )
    ref = _pipe_images(pipe, model, 64, 64, 4, latents=x0.clone(), cfg_truncation=0.3, cfg_normalization=True)
    plain = _pipe_images(pipe, model, 64, 64, 4, latents=x0.clone())
    assert (ref - plain).abs().max() > 1e-3  # the options matter here ...
    torch.testing.assert_close(images, ref, **TOL)  # ... and are reproduced
    # per-sample sigmas: CFG where 1 - sigma <= 0.3 only (sample 0), the conditional velocity elsewhere
    untruncated, unguided = _model(guidance_scale=4.0, cfg_normalization=1.0), _model(guidance_scale=0.0)
    sigma = torch.tensor([0.9, 0.2])
    with torch.no_grad():
        mixed = model.velocity(x0, sigma, cond)
        guided = untruncated.velocity(x0, sigma, cond)
        plain_v = unguided.velocity(x0, sigma, unguided.encode_prompts(list(PROMPTS)))
    torch.testing.assert_close(mixed[0], guided[0], **TOL)
    torch.testing.assert_close(mixed[1], plain_v[1], **TOL)
    assert (guided[1] - plain_v[1]).abs().max() > 1e-3


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_velocity_is_invariant_to_batch_padding(guidance_scale: float) -> None:
    model = _model(guidance_scale=guidance_scale)
    x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(3))
    cond = model.encode_prompts(list(PROMPTS))  # "a red cat" is padded from 28 to 35 tokens
    with torch.no_grad():
        batched = model.velocity(x, 0.6, cond)
        alone = torch.cat([model.velocity(x[i : i + 1], 0.6, model.encode_prompts([p])) for i, p in enumerate(PROMPTS)])
        cond.prompt_embeds[0, 28:] = 5.0  # whatever the padding holds, the mask drops it
        garbage = model.velocity(x, 0.6, cond)
        cond.mask = None  # ignoring the mask feeds the padding to the transformer
        unmasked = model.velocity(x, 0.6, cond)
    torch.testing.assert_close(batched, alone, **TOL)
    torch.testing.assert_close(garbage, batched, **TOL)
    assert (unmasked[0] - batched[0]).abs().max() > 1e-3


def test_default_lora_targets_cover_every_block() -> None:
    model = _model()
    targets = ZImageAdapter.default_lora_targets
    assert targets == ("to_q", "to_k", "to_v", "to_out.0")
    blocks = [*model.transformer.layers, *model.transformer.noise_refiner, *model.transformer.context_refiner]
    for block in blocks:
        names = dict(block.named_modules())
        assert all(isinstance(names[f"attention.{t}"], nn.Linear) for t in targets)
    prepare_for_training(model, _cfg(lora_targets=list(targets)))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.transformer.named_parameters() if ".lora_A." in n}
    assert len(adapted) == len(targets) * len(blocks) == 16
    assert {n.split(".")[0] for n in adapted} == {"layers", "noise_refiner", "context_refiner"}
    assert all(p.requires_grad for p in model.trainable_parameters()) and model.trainable_parameters()
    assert not any(p.requires_grad for m in model.frozen_modules() for p in m.parameters())


def _perturb(params: list[nn.Parameter]) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_lora_export_reloads_in_pipeline(tmp_path: Path) -> None:
    cfg = _cfg(lora_targets=list(ZImageAdapter.default_lora_targets))
    model = prepare_for_training(_model(), cfg)
    _perturb(model.trainable_parameters())
    export_for_diffusers(model, tmp_path / "lora", "lora")
    pipe = build_tiny_z_image_pipeline(0)
    pipe.load_lora_weights(str(tmp_path / "lora"))
    reloaded, base = ZImageAdapter.from_pipeline(pipe, cfg), _model()
    x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        trained = model.velocity(x, torch.tensor([0.3, 0.8]), model.encode_prompts(list(PROMPTS)))
        ours = reloaded.velocity(x, torch.tensor([0.3, 0.8]), reloaded.encode_prompts(list(PROMPTS)))
        before = base.velocity(x, torch.tensor([0.3, 0.8]), base.encode_prompts(list(PROMPTS)))
    assert (trained - before).abs().max() > 1e-4  # the perturbation is visible ...
    torch.testing.assert_close(ours, trained, **TOL)  # ... and survives the export


def test_full_export_reloads_with_from_pretrained(tmp_path: Path) -> None:
    model = prepare_for_training(_model(), _cfg(finetune="full"))
    _perturb(model.trainable_parameters())
    export_for_diffusers(model, tmp_path / "full", "full")
    loaded = ZImageTransformer2DModel.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    reloaded = _model()
    reloaded.transformer = loaded
    x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        trained = model.velocity(x, 0.4, model.encode_prompts(list(PROMPTS)))
        ours = reloaded.velocity(x, 0.4, reloaded.encode_prompts(list(PROMPTS)))
        before = _model().velocity(x, 0.4, model.encode_prompts(list(PROMPTS)))
    assert (trained - before).abs().max() > 1e-4
    torch.testing.assert_close(ours, trained, atol=1e-6, rtol=0)


def test_from_pretrained_on_saved_pipeline(tmp_path: Path) -> None:
    build_tiny_z_image_pipeline(0, dynamic_shift=True).save_pretrained(tmp_path / "pipe")
    loaded = build_z_image(_cfg(name="z-image", path=str(tmp_path / "pipe"), guidance_scale=3.0))
    reference = _model(dynamic_shift=True, guidance_scale=3.0)
    x = torch.randn(2, *reference.latent_shape(64, 64))
    with torch.no_grad():
        ours = loaded.velocity(x, 0.6, loaded.encode_prompts(list(PROMPTS)))
        ref = reference.velocity(x, 0.6, reference.encode_prompts(list(PROMPTS)))
    torch.testing.assert_close(ours, ref, **TOL)
    assert torch.equal(loaded.sigmas(5, 64, 96), reference.sigmas(5, 64, 96))


def test_bad_resolution_guidance_scheduler_and_folder(tmp_path: Path) -> None:
    model = _model()
    with pytest.raises(ValueError, match="multiples of 16"):
        model.latent_shape(72, 64)
    with pytest.raises(ValueError, match="multiples of 16"):
        model.sigmas(4, 64, 40)
    with pytest.raises(ValueError, match="do not match"):
        model.decode(torch.zeros(1, *model.latent_shape(64, 64)), 64, 96)
    pipe = build_tiny_z_image_pipeline(0)
    parts = (pipe.transformer, pipe.vae, model.text_encoder)
    with pytest.raises(ValueError, match=r"guidance_scale=-1\.0 .*0: no CFG"):
        ZImageAdapter(*parts, pipe.scheduler.config, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="cfg_normalization=-0.5 is invalid: use 0"):
        ZImageAdapter(*parts, pipe.scheduler.config, guidance_scale=4.0, cfg_normalization=-0.5)
    inverted = FlowMatchEulerDiscreteScheduler(invert_sigmas=True).config
    with pytest.raises(ValueError, match="invert_sigmas"):
        ZImageAdapter(*parts, inverted)
    folder = tmp_path / "flux"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="model.name=flux"):
        build_z_image(_cfg(name="z-image", path=str(folder)))


def test_bf16_weights_build_and_run_velocity() -> None:
    cfg = _cfg(weights_dtype="bf16", guidance_scale=3.0, lora_targets=list(ZImageAdapter.default_lora_targets))
    model = prepare_for_training(build_tiny_z_image(cfg), cfg)
    assert model.compute_dtype == torch.bfloat16 and next(model.vae.parameters()).dtype == torch.bfloat16
    assert next(model.text_encoder.model.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    x = torch.randn(2, *model.latent_shape(64, 64), requires_grad=True)
    v = model.velocity(x, 0.5, model.encode_prompts(list(PROMPTS)))
    img = model.decode(x - 0.5 * v, 64, 64)
    assert v.dtype == torch.float32 and img.dtype == torch.float32 and torch.isfinite(img).all()
    img.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_gradient_checkpointing_gives_same_gradient() -> None:
    grads = []
    for checkpointing in (False, True):
        cfg = _cfg(gradient_checkpointing=checkpointing, lora_targets=list(ZImageAdapter.default_lora_targets))
        model = prepare_for_training(_model(), cfg)
        assert unwrap_model(model.transformer).is_gradient_checkpointing == checkpointing
        calls: list[int] = []
        inner = model.transformer._gradient_checkpointing_func
        model.transformer._gradient_checkpointing_func = lambda *a, _f=inner, _c=calls, **k: _c.append(1) or _f(*a, **k)
        _perturb(model.trainable_parameters())  # LoRA B starts at zero: give every LoRA weight a gradient path
        x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(6))
        model.velocity(x, torch.tensor([0.3, 0.7]), model.encode_prompts(list(PROMPTS))).square().mean().backward()
        assert (len(calls) == 4) == checkpointing  # 1 noise refiner + 1 context refiner + 2 layers
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    assert any(g.abs().sum() > 0 for g in grads[0])


def test_decode_and_encode_pixels() -> None:
    model = _model()
    lat = torch.randn(2, *model.latent_shape(64, 96), requires_grad=True)
    img = model.decode(lat, 64, 96)
    assert img.shape == (2, 3, 64, 96) and img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    assert model.encode_pixels(img.detach()).shape == lat.shape
