"""QwenImageAdapter against QwenImagePipeline (tiny random-init, built in-process): prompt template and masks,
packing, schedule, rollout and seed parity with and without true CFG, LoRA/full exports, dtypes and bad input.

Parity tolerance: 1e-5 absolute (float32) on latents and images; the schedule is compared exactly.
"""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import QwenImagePipeline, QwenImageTransformer2DModel
from torch import nn

from leapalign.flow import sample
from leapalign.models import FlowModel, build_model, export_for_diffusers, prepare_for_training
from leapalign.models.config import ModelConfig
from leapalign.models.qwen_image import (
    QWEN_IMAGE_LORA_TARGETS,
    QwenImageAdapter,
    build_qwen_image,
    build_tiny_qwen_image,
)
from leapalign.models.qwen_image_text import PROMPT_TEMPLATE, TEMPLATE_START_IDX
from leapalign.models.tiny_qwen_image import build_tiny_qwen_image_pipeline
from leapalign.sampling import generate

TINY = "tiny-qwen-image"
SEQ = 64
PROMPTS = ["a red cat", "two blue squares on a wooden table"]  # different lengths: the batch is padded
ATOL = 1e-5


def _cfg(**overrides) -> ModelConfig:
    values = dict(name=TINY, max_sequence_length=SEQ, guidance_scale=4.0, lora_rank=4, lora_alpha=8)
    return ModelConfig(**{**values, **overrides})  # lora_targets=None: the family's default_lora_targets


def _make(cfg: ModelConfig | None = None, seed: int = 0) -> tuple[QwenImageAdapter, QwenImagePipeline]:
    pipe = build_tiny_qwen_image_pipeline(seed)
    return QwenImageAdapter.from_pipeline(pipe, cfg or _cfg()), pipe


def _pipe_kwargs(guidance: float) -> dict:
    cfg = {"true_cfg_scale": guidance}
    return {**cfg, "negative_prompt": [""] * len(PROMPTS)} if guidance > 1 else cfg


def _perturb(params: list[nn.Parameter], seed: int = 1, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def _velocity(model: QwenImageAdapter, seed: int = 2) -> torch.Tensor:
    x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(seed))
    return model.velocity(x, torch.tensor([0.3, 0.8]), model.encode_prompts(PROMPTS))


def test_prompt_template_and_dropped_tokens() -> None:
    model, pipe = _make()
    assert isinstance(model, FlowModel)
    assert pipe.prompt_template_encode == PROMPT_TEMPLATE
    assert pipe.prompt_template_encode_start_idx == TEMPLATE_START_IDX == 34
    prefix = PROMPT_TEMPLATE.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == TEMPLATE_START_IDX  # the system prefix is what gets dropped
    full = pipe.tokenizer(PROMPT_TEMPLATE.format(""), return_tensors="pt")
    with torch.no_grad():
        hidden = pipe.text_encoder(**full, output_hidden_states=True).hidden_states[-1][0]
    embeds, mask = model.text_encoder([""])
    assert embeds.shape == (1, hidden.shape[0] - TEMPLATE_START_IDX, 32) == (1, 5, 32)  # <|im_end|>\n...assistant\n
    torch.testing.assert_close(embeds[0], hidden[TEMPLATE_START_IDX:], atol=1e-6, rtol=0)
    assert mask.dtype == torch.int64 and bool(mask.all())


@pytest.mark.parametrize("max_len", [SEQ, 8])
def test_conditioning_matches_pipeline_encode(max_len: int) -> None:
    model, pipe = _make(_cfg(max_sequence_length=max_len))
    cond = model.encode_prompts(PROMPTS)
    model.encode_prompts(PROMPTS[::-1])
    assert model.prompt_cache.num_encoded == 3  # each prompt once, and the empty (negative) prompt once
    with torch.no_grad():
        embeds, mask = pipe.encode_prompt(PROMPTS, max_sequence_length=max_len)
    assert cond.pooled is None and cond.prompt_embeds.shape == embeds.shape
    torch.testing.assert_close(cond.prompt_embeds, embeds, atol=ATOL, rtol=0)
    if max_len == SEQ:  # prompts of different lengths: padded with zeros and masked, as the pipeline pads them
        assert torch.equal(cond.mask, mask) and not bool(mask.all())
        assert cond.negative_embeds.shape == (2, 5, 32) and bool(cond.negative_mask.all())
    else:  # both cut to max_sequence_length: no padding left, and the pipeline drops the all-ones mask
        assert mask is None and cond.prompt_embeds.shape[1] == max_len and bool(cond.mask.all())


def test_pack_unpack_and_initial_noise_match_pipeline() -> None:
    model, pipe = _make()
    assert model.resolutions_multiple == 16 and model.latent_shape(64, 96) == (4, 6, 64)
    lat = torch.randn(2, 16, 1, 8, 12)
    x = model.pack(lat)
    assert torch.equal(model.to_tokens(x), QwenImagePipeline._pack_latents(lat, 2, 16, 8, 12))
    assert torch.equal(model.unpack(x), QwenImagePipeline._unpack_latents(model.to_tokens(x), 64, 96, 8))
    assert torch.equal(model.unpack(x), lat)
    for gens in (lambda: torch.Generator().manual_seed(5), lambda: [torch.Generator().manual_seed(s) for s in (5, 6)]):
        ref = pipe.prepare_latents(2, 16, 64, 96, torch.float32, "cpu", gens())  # draws (B, 1, C, H/8, W/8), packs
        assert torch.equal(model.to_tokens(model.initial_noise(2, 64, 96, gens())), ref)


@pytest.mark.parametrize(("n", "height", "width"), [(2, 64, 64), (4, 64, 96), (3, 128, 64)])
def test_sigmas_match_pipeline_scheduler(n: int, height: int, width: int) -> None:
    model, pipe = _make(_cfg(guidance_scale=1.0))
    pipe(PROMPTS[:1], height=height, width=width, num_inference_steps=n, output_type="latent", true_cfg_scale=1.0)
    ours = model.sigmas(n, height, width)
    assert ours.dtype == torch.float32 and ours.shape == (n + 1,)
    assert torch.equal(ours, pipe.scheduler.sigmas)  # exactly the schedule the pipeline stepped through
    assert float(ours[0]) == 1.0 and abs(float(ours[-2]) - 0.02) < 1e-6  # Qwen-Image's shift_terminal


def test_one_step_schedule_is_refused() -> None:
    # QwenImagePipeline's scheduler (shift_terminal=0.02) stretches a one-step schedule to NaN; we refuse it.
    model, _ = _make()
    with pytest.raises(ValueError, match="at least 2 steps"):
        model.sigmas(1, 64, 64)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_rollout_matches_pipeline(guidance: float) -> None:
    model, pipe = _make(_cfg(guidance_scale=guidance))
    cond = model.encode_prompts(PROMPTS)
    assert (cond.negative_embeds is None) == (guidance == 1.0)
    x0 = torch.randn(2, *model.latent_shape(64, 96), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ro = sample(lambda x, s: model.velocity(x, s, cond), x0, model.sigmas(3, 64, 96))
        images = model.decode(ro.latent, 64, 96)
    common = dict(height=64, width=96, num_inference_steps=3, max_sequence_length=SEQ, latents=model.to_tokens(x0))
    ref = pipe(PROMPTS, output_type="latent", **common, **_pipe_kwargs(guidance)).images
    ref_images = pipe(PROMPTS, output_type="pt", **common, **_pipe_kwargs(guidance)).images
    torch.testing.assert_close(model.to_tokens(ro.latent), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(images, ref_images, atol=ATOL, rtol=0)


@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_seed_parity_with_pipeline(guidance: float) -> None:
    model, pipe = _make(_cfg(guidance_scale=guidance))
    ours = generate(model, PROMPTS, seeds=[11, 12], num_steps=2, height=64, width=64)
    gens = [torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)]
    ref = pipe(
        PROMPTS, generator=gens, height=64, width=64, num_inference_steps=2, max_sequence_length=SEQ,
        output_type="pt", **_pipe_kwargs(guidance),
    ).images  # fmt: skip
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_velocity_invariant_to_padding_under_the_mask() -> None:
    model, _ = _make()
    x = torch.randn(1, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(3))
    alone = model.encode_prompts(PROMPTS[:1])  # the short prompt, unpadded (mask all ones)
    padded = model.encode_prompts(PROMPTS)  # the same prompt padded to the long one's length
    row = padded.prompt_embeds[:1], padded.mask[:1]
    assert row[0].shape[1] > alone.prompt_embeds.shape[1] and not bool(row[1].all())
    extra = torch.nn.functional.pad(row[0], (0, 0, 0, 7)), torch.nn.functional.pad(row[1], (0, 7))
    with torch.no_grad():
        ref = model.velocity(x, 0.6, alone)
        for embeds, mask in (row, extra):
            cond = type(alone)(embeds, None, alone.negative_embeds, None, mask=mask, negative_mask=alone.negative_mask)
            torch.testing.assert_close(model.velocity(x, 0.6, cond), ref, atol=ATOL, rtol=0)
        unmasked = type(alone)(row[0], None, alone.negative_embeds, None, mask=None)
        assert (model.velocity(x, 0.6, unmasked) - ref).abs().max() > 1e-3  # the mask is what makes it invariant


def test_lora_default_targets_cover_both_streams() -> None:
    model, _ = _make()
    assert QwenImageAdapter.default_lora_targets == QWEN_IMAGE_LORA_TARGETS
    prepare_for_training(model, _cfg())
    blocks = model.transformer.transformer_blocks
    unused = set(model.unused_modules())
    for target in QWEN_IMAGE_LORA_TARGETS:  # every target is a Linear in every dual-stream block
        for i, block in enumerate(blocks):
            path = target if "mlp" in target else f"attn.{target}"
            wrapped_here = hasattr(block.get_submodule(path), "lora_A")
            assert wrapped_here == (f"transformer_blocks.{i}.{path}" not in unused), target
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.transformer.named_modules() if n.endswith(".lora_A")}
    assert len(wrapped) == len(QWEN_IMAGE_LORA_TARGETS) * len(blocks) - len(unused)
    assert not any(k in n for n in wrapped for k in ("_mod", "norm", "img_in", "txt_in", "proj_out", "time_"))


def _dead_lora_modules(model: QwenImageAdapter) -> set[str]:
    """LoRA-wrapped modules whose LoRA weights get no gradient or an exactly zero one (after a backward)."""
    dead = set()
    for name, p in model.transformer.named_parameters():
        if "lora_" in name and (p.grad is None or not p.grad.any()):
            dead.add(name.split(".lora_")[0])
    return dead


def test_lora_exclusions_are_exactly_the_modules_without_gradient() -> None:
    # The last block's text stream is discarded: LoRA there would be dead weight (and break DDP), so the adapter lists
    # it in unused_modules(), which prepare_for_training excludes (and freezes under full fine-tuning).
    from peft import LoraConfig

    model, _ = _make()  # LoRA on every default target, no exclusion: exactly the unused modules get no gradient
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(QWEN_IMAGE_LORA_TARGETS), init_lora_weights="gaussian")
    model.transformer.add_adapter(lora)
    params = [p for n, p in model.transformer.named_parameters() if "lora_" in n]
    _perturb(params)
    _velocity(model).square().mean().backward()
    assert (
        _dead_lora_modules(model)
        == set(model.unused_modules())
        == {
            "transformer_blocks.1.attn.add_q_proj",
            "transformer_blocks.1.attn.to_add_out",
            "transformer_blocks.1.txt_mlp.net.0.proj",
            "transformer_blocks.1.txt_mlp.net.2",
        }
    )
    cfg = _cfg()
    model, _ = _make(cfg)
    prepare_for_training(model, cfg)
    params = model.trainable_parameters()
    _perturb(params)
    _velocity(model).square().mean().backward()
    assert len(params) == 2 * (2 * len(QWEN_IMAGE_LORA_TARGETS) - 4) and not _dead_lora_modules(model)
    full = _cfg(finetune="full")
    model, _ = _make(full)
    prepare_for_training(model, full)
    frozen = {n for n, p in model.transformer.named_parameters() if not p.requires_grad}
    assert frozen and {n.rsplit(".", 1)[0] for n in frozen} == set(model.unused_modules())


def test_lora_export_reloads_in_pipeline(tmp_path) -> None:
    cfg = _cfg()
    model, _ = _make(cfg)
    prepare_for_training(model, cfg)
    _perturb(model.trainable_parameters())
    with torch.no_grad():
        trained = _velocity(model)
    export_for_diffusers(model, tmp_path / "lora", "lora")
    pipe = build_tiny_qwen_image_pipeline(0)
    with torch.no_grad():
        base = _velocity(QwenImageAdapter.from_pipeline(pipe, cfg))
    pipe.load_lora_weights(tmp_path / "lora")
    with torch.no_grad():
        reloaded = _velocity(QwenImageAdapter.from_pipeline(pipe, cfg))
    assert (trained - base).abs().max() > 1e-3
    torch.testing.assert_close(reloaded, trained, atol=ATOL, rtol=0)


def test_full_export_reloads_transformer(tmp_path) -> None:
    cfg = _cfg(finetune="full")
    model, _ = _make(cfg)
    prepare_for_training(model, cfg)
    _perturb(model.trainable_parameters())
    with torch.no_grad():
        trained = _velocity(model)
    export_for_diffusers(model, tmp_path / "full", "full")
    pipe = build_tiny_qwen_image_pipeline(0)
    pipe.transformer = QwenImageTransformer2DModel.from_pretrained(tmp_path / "full", subfolder="transformer")
    with torch.no_grad():
        reloaded = _velocity(QwenImageAdapter.from_pipeline(pipe, cfg))
    torch.testing.assert_close(reloaded, trained, atol=ATOL, rtol=0)


def test_unsupported_resolution_is_refused() -> None:
    model, _ = _make()
    for call in (lambda: model.latent_shape(72, 64), lambda: model.sigmas(2, 64, 40)):
        with pytest.raises(ValueError, match="multiples of 16"):
            call()
    with pytest.raises(ValueError, match="multiples of 16"):
        generate(model, PROMPTS[:1], seeds=[0], num_steps=1, height=64, width=100)


def test_guidance_settings_the_family_does_not_use_are_refused() -> None:
    with pytest.raises(ValueError, match=r"model\.guidance_scale=0\.5 .*true_cfg_scale.*set 1"):
        _make(_cfg(guidance_scale=0.5))
    pipe = build_tiny_qwen_image_pipeline(0)
    pipe.transformer.register_to_config(guidance_embeds=True)
    with pytest.raises(ValueError, match="guidance embedding.*point model.path"):
        QwenImageAdapter.from_pipeline(pipe, _cfg())
    pipe = build_tiny_qwen_image_pipeline(0)
    pipe.scheduler.register_to_config(stochastic_sampling=True)
    with pytest.raises(ValueError, match="stochastic_sampling"):
        QwenImageAdapter.from_pipeline(pipe, _cfg())
    with pytest.raises(ValueError, match=r"model\.max_sequence_length=2000.*1024"):
        _make(_cfg(max_sequence_length=2000))


def test_bf16_weights_build_and_run_a_velocity() -> None:
    cfg = _cfg(weights_dtype="bf16")
    model, _ = _make(cfg)
    prepare_for_training(model, cfg)
    assert model.compute_dtype == torch.bfloat16 and next(model.vae.parameters()).dtype == torch.bfloat16
    assert model.encode_prompts(PROMPTS).prompt_embeds.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    _perturb(model.trainable_parameters())
    v = _velocity(model)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    v.square().mean().backward()
    assert not _dead_lora_modules(model) - set(model.unused_modules())


def test_gradient_checkpointing_gives_same_gradient() -> None:
    grads, calls = [], []
    for checkpointing in (False, True):
        cfg = _cfg(gradient_checkpointing=checkpointing)
        model, _ = _make(cfg)
        prepare_for_training(model, cfg)
        if checkpointing:
            inner = model.transformer._gradient_checkpointing_func
            model.transformer._gradient_checkpointing_func = lambda *a, f=inner: calls.append(1) or f(*a)
        _perturb(model.trainable_parameters())
        _velocity(model).square().mean().backward()
        grads.append([p.grad for p in model.trainable_parameters()])
    assert len(calls) == 2 * 2  # both blocks, conditional and negative passes
    assert sum(a is not None for a in grads[0]) > 0
    for a, b in zip(*grads, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_decode_is_differentiable_and_encode_pixels_normalises() -> None:
    model, _ = _make()
    lat = torch.randn(2, *model.latent_shape(64, 64), requires_grad=True)
    img = model.decode(lat, 64, 64)
    assert img.shape == (2, 3, 64, 64) and img.min() >= 0 and img.max() <= 1
    img.mean().backward()
    assert lat.grad is not None and lat.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="do not match"):
        model.decode(lat, 128, 64)
    images = torch.rand(2, 3, 64, 64)
    z = model.encode_pixels(images)
    assert z.shape == lat.shape and not z.requires_grad
    with torch.no_grad():
        mode = model.vae.encode(images[:, :, None] * 2 - 1).latent_dist.mode()
    mean = torch.tensor(model.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(model.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(model.unpack(z), (mode - mean) / std, atol=1e-5, rtol=1e-5)


def test_from_pretrained_and_family_check(tmp_path) -> None:
    build_tiny_qwen_image_pipeline(0).save_pretrained(tmp_path / "pipe")
    loaded = build_qwen_image(_cfg(name="qwen-image", path=str(tmp_path / "pipe")))
    reference, _ = _make()
    with torch.no_grad():
        torch.testing.assert_close(_velocity(loaded), _velocity(reference), atol=ATOL, rtol=0)
    other = tmp_path / "flux"
    (other / "transformer").mkdir(parents=True)
    (other / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    with pytest.raises(ValueError, match="model.name=flux"):
        build_qwen_image(_cfg(name="qwen-image", path=str(other)))
    with pytest.raises(ValueError, match=r"model\.path"):
        build_qwen_image(_cfg(name="qwen-image", path="/definitely/not/here"))


def test_tiny_builder_is_deterministic_and_leaves_global_rng() -> None:
    state = torch.random.get_rng_state()
    a, b, c = (build_tiny_qwen_image(_cfg(seed=s)) for s in (3, 3, 4))
    assert torch.equal(torch.random.get_rng_state(), state)
    for p, q in zip(a.transformer.parameters(), b.transformer.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(a.transformer.img_in.weight, c.transformer.img_in.weight)
    assert sum(p.numel() for p in a.transformer.parameters()) < 150_000
    built = build_model(_cfg())  # the registered name, LoRA on the family's default targets
    assert isinstance(built, QwenImageAdapter) and len(built.trainable_parameters()) == 2 * (12 * 2 - 4)
