"""LoRA / full fine-tuning setup, gradient checkpointing, checkpoint state dicts and diffusers exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from safetensors.torch import load_file, save_file
from torch import nn

from leapalign.models import (
    build_tiny_flux_pipeline,
    build_tiny_sd3_pipeline,
    export_for_diffusers,
    load_trainable_state_dict,
    prepare_for_training,
    trainable_state_dict,
    unwrap_model,
)
from leapalign.models.config import ModelConfig

SEQ = 32
PROMPTS = ["a red cat", "two blue squares"]
KINDS = ["flux", "sd3"]


def _make(kind: str, make_flux, make_sd3, **overrides) -> tuple:
    name = "tiny-flux" if kind == "flux" else "tiny-sd3"
    cfg = ModelConfig(name=name, max_sequence_length=SEQ, lora_rank=4, lora_alpha=8, **overrides)
    model = (make_flux if kind == "flux" else make_sd3)(cfg)
    return prepare_for_training(model, cfg), cfg


def _loss(model, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, *model.latent_shape(64, 64), generator=g)
    return model.velocity(x, torch.tensor([0.3, 0.8]), model.encode_prompts(PROMPTS)).square().mean()


def _perturb(params: list[nn.Parameter], seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def _raw_call(kind: str, transformer: nn.Module, model, x: torch.Tensor, cond) -> torch.Tensor:
    """Plain diffusers transformer call (conditional branch, no guidance mixing) on the model's inputs."""
    if kind == "flux":
        from leapalign.models.flux import latent_image_ids

        h, w = x.shape[1:3]
        return transformer(
            hidden_states=model.to_tokens(x),
            timestep=torch.full((2,), 0.5),
            guidance=torch.full((2,), 3.5),
            pooled_projections=cond.pooled,
            encoder_hidden_states=cond.prompt_embeds,
            txt_ids=torch.zeros(SEQ, 3),
            img_ids=latent_image_ids(h, w, x.device, x.dtype),
            return_dict=False,
        )[0]
    return transformer(
        hidden_states=x,
        timestep=torch.full((2,), 500.0),
        encoder_hidden_states=cond.prompt_embeds,
        pooled_projections=cond.pooled,
        return_dict=False,
    )[0]


@pytest.mark.parametrize("kind", KINDS)
def test_lora_only_lora_params_trainable_and_b_gets_grad(kind: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3)
    trainable = dict((n, p) for n, p in model.transformer.named_parameters() if p.requires_grad)
    assert trainable and all("lora_" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert [id(p) for p in model.trainable_parameters()] == [id(p) for p in trainable.values()]
    frozen = [model.vae, model.text_encoder.t5]
    assert not any(p.requires_grad for m in frozen for p in m.parameters())
    _loss(model).backward()
    b_grads = [p.grad for n, p in trainable.items() if "lora_B" in n]
    a_grads = [p.grad for n, p in trainable.items() if "lora_A" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in b_grads)
    assert all(g is None or g.abs().sum() == 0 for g in a_grads)  # B starts at zero


@pytest.mark.parametrize("kind", KINDS)
def test_full_mode_trains_every_transformer_param(kind: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3, finetune="full")
    params = list(model.transformer.parameters())
    assert all(p.requires_grad for p in params) and len(model.trainable_parameters()) == len(params)
    assert not any(p.requires_grad for p in model.vae.parameters())
    _loss(model).backward()
    assert sum(p.grad.abs().sum() for p in params if p.grad is not None) > 0


def test_lora_init_is_seeded_and_leaves_global_rng(make_flux) -> None:
    state = torch.random.get_rng_state()
    a, _ = _make("flux", make_flux, None)
    assert torch.equal(torch.random.get_rng_state(), state)
    b, _ = _make("flux", make_flux, None)
    for p, q in zip(a.trainable_parameters(), b.trainable_parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(ValueError, match="twice"):
        prepare_for_training(a, ModelConfig(max_sequence_length=SEQ))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_checkpointing_gives_same_gradient(kind: str, make_flux, make_sd3) -> None:
    plain, _ = _make(kind, make_flux, make_sd3)
    ckpt, _ = _make(kind, make_flux, make_sd3, gradient_checkpointing=True)
    assert unwrap_model(ckpt.transformer).is_gradient_checkpointing
    calls = []
    inner = ckpt.transformer._gradient_checkpointing_func
    ckpt.transformer._gradient_checkpointing_func = lambda *a, **k: calls.append(1) or inner(*a, **k)
    for m in (plain, ckpt):
        _perturb([p for n, p in m.transformer.named_parameters() if "lora_B" in n])
        _loss(m).backward()
    assert calls, "checkpointed blocks were not used"
    for p, q in zip(plain.trainable_parameters(), ckpt.trainable_parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("kind", "mode"), [(k, m) for k in KINDS for m in ("lora", "full")])
def test_checkpoint_state_dict_round_trip(tmp_path: Path, kind: str, mode: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3, finetune=mode)
    _perturb(model.trainable_parameters())
    state = trainable_state_dict(model.transformer, mode)
    if mode == "lora":
        assert state and all("lora_" in k for k in state)
    save_file(state, str(tmp_path / "w.safetensors"))
    fresh, _ = _make(kind, make_flux, make_sd3, finetune=mode)
    load_trainable_state_dict(fresh.transformer, load_file(str(tmp_path / "w.safetensors")), mode)
    for p, q in zip(model.trainable_parameters(), fresh.trainable_parameters(), strict=True):
        assert torch.equal(p, q)
    if mode == "lora":
        with pytest.raises(ValueError, match="does not match"):
            load_trainable_state_dict(fresh.transformer, {"bogus.lora_A.weight": torch.zeros(1)}, mode)


class _DDPLike(nn.Module):
    """Stand-in for DDP / accelerate wrappers: holds the real model as ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


@pytest.mark.parametrize("kind", KINDS)
def test_export_lora_round_trip(tmp_path: Path, kind: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3)
    _perturb(model.trainable_parameters())
    model.transformer = _DDPLike(model.transformer)  # export must unwrap
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, *model.latent_shape(64, 64))
    out = tmp_path / "export"
    out.mkdir()
    (out / "stale.txt").write_text("old export")
    export_for_diffusers(model, out, "lora")
    assert (out / "pytorch_lora_weights.safetensors").exists() and not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["export"]  # no temporary leftovers
    pipe = build_tiny_flux_pipeline(0) if kind == "flux" else build_tiny_sd3_pipeline(0)
    pipe.load_lora_weights(str(out))
    with torch.no_grad():
        ref = _raw_call(kind, unwrap_model(model.transformer), model, x, cond)
        ours = _raw_call(kind, pipe.transformer, model, x, cond)
        base = _raw_call(
            kind,
            build_tiny_flux_pipeline(0).transformer if kind == "flux" else build_tiny_sd3_pipeline(0).transformer,
            model,
            x,
            cond,
        )
    assert (ref - base).abs().max() > 1e-4  # the perturbation is visible ...
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)  # ... and survives the export


@pytest.mark.parametrize("kind", KINDS)
def test_export_full_round_trip(tmp_path: Path, kind: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3, finetune="full")
    _perturb(model.trainable_parameters())
    cond = model.encode_prompts(PROMPTS)
    x = torch.randn(2, *model.latent_shape(64, 64))
    export_for_diffusers(model, tmp_path / "full", "full")
    cls = FluxTransformer2DModel if kind == "flux" else SD3Transformer2DModel
    loaded = cls.from_pretrained(str(tmp_path / "full"), subfolder="transformer")
    assert any(p.name.endswith(".safetensors") for p in (tmp_path / "full" / "transformer").iterdir())
    with torch.no_grad():
        torch.testing.assert_close(
            _raw_call(kind, loaded, model, x, cond),
            _raw_call(kind, model.transformer, model, x, cond),
            atol=1e-6,
            rtol=1e-6,
        )


def test_failed_export_leaves_previous_export_intact(tmp_path: Path, make_flux, monkeypatch) -> None:
    model, _ = _make("flux", make_flux, None)
    out = tmp_path / "export"
    export_for_diffusers(model, out, "lora")
    before = (out / "pytorch_lora_weights.safetensors").read_bytes()

    def boom(*args, **kwargs):
        Path(args[0], "partial.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(model.pipeline_class, "save_lora_weights", boom)
    _perturb(model.trainable_parameters())
    with pytest.raises(RuntimeError, match="disk full"):
        export_for_diffusers(model, out, "lora")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (out / "pytorch_lora_weights.safetensors").read_bytes() == before
    with pytest.raises(ValueError, match="mode='lora'"):
        export_for_diffusers(model, tmp_path / "x", "full")


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_frozen_weights_with_fp32_lora(kind: str, make_flux, make_sd3) -> None:
    model, _ = _make(kind, make_flux, make_sd3, weights_dtype="bf16")
    assert model.compute_dtype == torch.bfloat16 and next(model.vae.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.trainable_parameters())
    x = torch.randn(2, *model.latent_shape(64, 64), requires_grad=True)
    v = model.velocity(x, 0.5, model.encode_prompts(PROMPTS))
    img = model.decode(x - 0.5 * v, 64, 64)
    assert v.dtype == torch.float32 and img.dtype == torch.float32
    img.mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())
