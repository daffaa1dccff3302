"""The shipped ShapesWorld weights: they load, generate, rank prompts as their card says, and fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leapalign.cli import main
from leapalign.models import build_model
from leapalign.models.config import ModelConfig
from leapalign.worlds.shapes.model import base_weights
from leapalign.worlds.shapes.score import ShapesScore, ShapesScoreModel, default_weights
from leapalign.worlds.shapes.score_train import measure

MARGIN = 0.05  # allowed shortfall against the card (different seeds than the card's measurement)


def test_base_model_loads_and_generates() -> None:
    from leapalign.sampling import generate

    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    assert model.uses_true_cfg and model.latent_shape(32, 32) == (8, 8, 48)
    images = generate(model, ["a photo of a red circle", "two squares"], seeds=[0, 1], num_steps=6, height=32, width=32)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    again = generate(model, ["a photo of a red circle"], seeds=[0], num_steps=6, height=32, width=32)
    assert torch.allclose(images[:1], again, atol=1e-5)  # deterministic given the seed


def test_shipped_weights_fit_the_size_budget() -> None:
    total = sum(f.stat().st_size for d in (base_weights(), default_weights()) for f in d.iterdir())
    assert total < 30 * 2**20


def test_shapes_score_is_differentiable_and_ranks_as_its_card_says() -> None:
    reward = ShapesScore()
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    scores = reward(images, ["a red circle", "three squares"])
    assert scores.shape == (2,) and (scores.abs() <= 1 + 1e-5).all()
    scores.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0

    card = json.loads((default_weights() / "config.json").read_text())["heldout"]
    measured = measure(ShapesScoreModel.load(default_weights()), reward, seeds=1, seed=99)
    for key, value in card.items():
        if key.startswith("acc_vs_"):
            assert measured[key] >= value - MARGIN, (key, measured[key], value)
            assert measured[key] > 0.6, key  # above chance (0.5)


@pytest.mark.slow
def test_short_leapalign_run_raises_shapes_score(tmp_path: Path) -> None:
    """30 LeapAlign steps at a high learning rate raise ShapesScore on fixed (prompt, seed) pairs.

    The method alone: the demo config's replay regulariser is switched off, since over 30 steps its pull towards
    the renders would hide what the reward gradient does (the full demo raises ShapesScore over 200 steps).
    """
    from leapalign import checkpoint as ckpt
    from leapalign.data import load_prompts
    from leapalign.sampling import generate

    run = tmp_path / "run"
    rc = main(
        [
            "train",
            "--config",
            "shapes/leapalign-score",
            f"run.output_dir={run}",
            "train.max_steps=30",
            "train.lr=1e-4",
            "train.ema_decay=0",
            "train.replay_weight=0",
            "evaluation.enabled=false",
            "run.export=false",
            "run.tensorboard=false",
        ]
    )
    assert rc == 0
    prompts = load_prompts("shapes:train", balance_by="tag")[::81][:32]
    seeds = list(range(len(prompts)))
    reward = ShapesScore()

    def mean_score(model) -> float:
        images = generate(model, prompts, seeds=seeds, num_steps=25, height=32, width=32)
        return reward(images, prompts).mean().item()

    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    before = mean_score(model)
    ckpt.load_into(ckpt.named_trainable(model.transformer), ckpt.latest_checkpoint(run) / "trainable.safetensors")
    after = mean_score(model)
    assert after > before + 0.01, (before, after)


def test_eval_command_writes_the_shapes_metrics(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    rc = main(
        [
            "eval",
            "--config",
            "shapes/leapalign",
            "--out",
            str(out),
            "evaluation.images_per_prompt=1",
            "evaluation.num_steps=4",
        ]
    )
    assert rc == 0
    metrics = json.loads((out / "eval.json").read_text())
    for key in ("shapes_score.mean", "shapes_score.std", "shapes_eval.overall", "shapes_eval.position"):
        assert key in metrics
    assert metrics["num_images"] == 96 and (out / "samples.png").is_file()
