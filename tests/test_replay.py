"""The pretraining-loss replay regulariser: the loss, its gradient, the trainer wiring and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leapalign.cli import main
from leapalign.metrics import read_metrics
from leapalign.models.config import ModelConfig
from leapalign.replay import ShapesReplay, build_replay, flow_matching_loss
from leapalign.worlds.shapes.model import build_shapes_model

RUN = [
    "sampler.num_steps=4",
    "data.batch_size=2",
    "run.tensorboard=false",
    "run.export=false",
    "evaluation.enabled=false",
    "train.replay_weight=0.5",
    "train.replay_batch_size=3",
]


def test_replay_loss_trains_the_conditional_velocity_and_leaves_guidance_alone() -> None:
    model = build_shapes_model(ModelConfig(name="shapes", guidance_scale=3.0))
    prompts, images = ShapesReplay(seed=0, batch_size=3).batch(0)
    assert images.shape == (3, 3, 32, 32) and len(prompts) == 3
    loss = flow_matching_loss(model, images, prompts, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.guidance_scale == 3.0
    grads = [p.grad for p in model.transformer.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0
    # The shipped base was trained with this loss: it fits real scenes far better than pure-noise targets.
    noise_images = torch.rand_like(images)
    with torch.no_grad():
        worse = flow_matching_loss(model, noise_images, prompts, torch.Generator().manual_seed(0))
    assert loss.item() < worse.item()


def test_unknown_replay_source_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="shapes:train"):
        build_replay("laion:5b", 0, 2)


def test_replay_is_logged_and_a_resumed_run_is_exact(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = ["--config", "shapes/leapalign"]
    assert main(["train", *cfg, f"run.output_dir={a}", *RUN, "train.max_steps=2"]) == 0
    assert main(["train", *cfg, f"run.output_dir={b}", *RUN, "train.max_steps=1"]) == 0
    assert main(["train", *cfg, "--resume", f"run.output_dir={b}", *RUN, "train.max_steps=2"]) == 0
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert all(r["replay_loss"] > 0 for r in ra)
    assert [r["replay_loss"] for r in ra] == [r["replay_loss"] for r in rb]
    fa = load_file(str(a / "checkpoints/step_000002/trainable.safetensors"))
    fb = load_file(str(b / "checkpoints/step_000002/trainable.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_negative_replay_weight_is_a_config_error(tmp_path: Path, capsys) -> None:
    assert main(["train", "--config", "shapes/leapalign", f"run.output_dir={tmp_path}", "train.replay_weight=-1"]) == 2
    assert "train.replay_weight" in capsys.readouterr().err
