"""Every method trains 2 steps through the CLI on every new family's tiny model, and the export reloads in that
family's diffusers pipeline and reproduces the trained (EMA) velocity; full fine-tuning exports a transformer that
``<Transformer>.from_pretrained`` reloads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leapalign import checkpoint as ckpt
from leapalign.cli import main
from leapalign.config import load_config
from leapalign.methods import METHODS
from leapalign.metrics import read_metrics
from leapalign.models import build_model
from leapalign.models.config import ModelConfig
from leapalign.models.flux2 import Flux2Adapter, Flux2KleinAdapter
from leapalign.models.qwen_image import QwenImageAdapter
from leapalign.models.tiny_flux2 import TINY_TEXT_LAYERS, build_tiny_flux2_klein_pipeline, build_tiny_flux2_pipeline
from leapalign.models.tiny_qwen_image import build_tiny_qwen_image_pipeline
from leapalign.models.tiny_z_image import build_tiny_z_image_pipeline
from leapalign.models.z_image import ZImageAdapter

FAST = ["train.max_steps=2", "sampler.num_steps=4", "run.tensorboard=false", "data.batch_size=2"]
SEQ = "model.max_sequence_length=16"
FLUX2_TINY = {"text_encoder_out_layers": TINY_TEXT_LAYERS}  # the tiny encoders have 2 layers, not 40 / 36
FAMILIES: dict[str, tuple[Callable[[int], object], type, dict]] = {
    "tiny-flux2": (build_tiny_flux2_pipeline, Flux2Adapter, FLUX2_TINY),
    "tiny-flux2-klein": (build_tiny_flux2_klein_pipeline, Flux2KleinAdapter, FLUX2_TINY),
    "tiny-qwen-image": (build_tiny_qwen_image_pipeline, QwenImageAdapter, {}),
    "tiny-z-image": (build_tiny_z_image_pipeline, ZImageAdapter, {}),
}


def _train(tmp_path: Path, arch: str, method: str, *overrides: str) -> Path:
    out = tmp_path / "run"
    argv = ["train", "--config", f"tiny/{method}", f"model={arch}", SEQ, f"run.output_dir={out}", *FAST, *overrides]
    assert main(argv) == 0
    return out


@pytest.mark.parametrize("arch", sorted(FAMILIES))
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_two_steps_and_the_lora_export_reloads_in_the_pipeline(
    tmp_path: Path, method: str, arch: str
) -> None:
    run = _train(tmp_path, arch, method)
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] is not None and r["grad_norm"] is not None for r in records)
    cfg = load_config(str(run / "config.yaml"))
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_000002"

    fresh = build_model(cfg.model)  # the same initial weights: the trainable ones moved
    trained = load_file(str(latest / "trainable.safetensors"))
    initial = {k: v.detach() for k, v in ckpt.named_trainable(fresh.transformer).items()}
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    ckpt.load_into(ckpt.named_trainable(fresh.transformer), latest / "ema.safetensors")

    build_pipeline, adapter, kwargs = FAMILIES[arch]
    pipe = build_pipeline(0)
    pipe.load_lora_weights(str(run / "export"))
    reloaded = adapter.from_pipeline(pipe, ModelConfig(name=arch, max_sequence_length=16), **kwargs)
    _assert_same_velocity(fresh, reloaded)


def _assert_same_velocity(model, other) -> None:
    prompts = ["a red circle", "two blue squares"]
    x = torch.randn(2, *model.latent_shape(64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model.velocity(x, torch.tensor(0.7), model.encode_prompts(prompts))
        theirs = other.velocity(x, torch.tensor(0.7), other.encode_prompts(prompts))
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", sorted(FAMILIES))
def test_full_fine_tuning_exports_a_transformer_the_family_reloads(tmp_path: Path, arch: str) -> None:
    run = _train(tmp_path, arch, "leapalign", "model.finetune=full", "train.lr=1e-4")
    transformer_cls = type(FAMILIES[arch][0](0).transformer)
    reloaded = transformer_cls.from_pretrained(str(run / "export"), subfolder="transformer")
    ema = load_file(str(ckpt.latest_checkpoint(run) / "ema.safetensors"))
    state = reloaded.state_dict()
    assert ema and all(torch.equal(state[k], v) for k, v in ema.items())
