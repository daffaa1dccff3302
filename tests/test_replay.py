"""The pretraining-loss replay regulariser on a folder of captioned images: loading, the VAE-encoded loss on the
tiny Flux model, the trainer wiring and exact resume, and the errors for bad sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from leapalign.cli import main
from leapalign.metrics import read_metrics
from leapalign.models import ModelConfig, build_model
from leapalign.regularizers import REPLAY_SOURCES, ImageFolderReplay, build_replay, flow_matching_loss

RUN = [
    "sampler.num_steps=2",
    "sampler.height=32",
    "sampler.width=32",
    "data.batch_size=2",
    "run.tensorboard=false",
    "run.export=false",
    "train.replay_weight=0.5",
    "train.replay_batch_size=3",
]


def write_folder(root: Path, n: int = 5, size: tuple[int, int] = (48, 40)) -> Path:
    """``n`` random RGB images of ``size`` (w, h) with same-named caption files."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"a photo number {i}\n")
    return root


def test_image_folder_and_jsonl_sources_are_deterministic_and_resized(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "imgs")
    source = build_replay(str(folder), seed=3, batch_size=4, height=32, width=32)
    assert isinstance(source, ImageFolderReplay)
    prompts, images = source.batch(7)
    assert images.shape == (4, 3, 32, 32) and images.min() >= 0.0 and images.max() <= 1.0
    assert all(p.startswith("a photo number") for p in prompts)
    again_prompts, again = build_replay(str(folder), 3, 4, 32, 32).batch(7)
    assert again_prompts == prompts and torch.equal(again, images)
    listing = tmp_path / "list.jsonl"
    listing.write_text("\n".join(json.dumps({"image": f"imgs/img{i}.png", "prompt": f"p{i}"}) for i in range(2)))
    prompts, images = build_replay(str(listing), 0, 3, 16, 24).batch(0)
    assert images.shape == (3, 3, 16, 24) and set(prompts) <= {"p0", "p1"}


def test_bad_sources_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match="train.replay_source='laion:5b': unknown replay source; registered: .*shapes:train"
    ):
        build_replay("laion:5b", 0, 2, 32, 32)
    folder = write_folder(tmp_path / "imgs", n=1)
    (folder / "img0.txt").unlink()
    with pytest.raises(ValueError, match="img0.png has no caption file img0.txt"):
        build_replay(str(folder), 0, 2, 32, 32)
    assert "shapes:train" in REPLAY_SOURCES  # a plugin's source is listed beside the folder form


def test_vae_encoded_replay_loss_trains_the_tiny_flux_model(tmp_path: Path) -> None:
    model = build_model(ModelConfig(name="tiny-flux", finetune="full"))
    prompts, images = build_replay(str(write_folder(tmp_path / "imgs")), 0, 2, 32, 32).batch(0)
    latents = model.encode_pixels(images)
    assert latents.shape == (2, *model.latent_shape(32, 32)) and not latents.requires_grad
    loss = flow_matching_loss(model, images, prompts, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.guidance_scale == 3.5
    assert sum(p.grad.abs().sum() for p in model.transformer.parameters() if p.grad is not None) > 0


def test_replay_from_a_folder_is_logged_and_a_resumed_run_is_exact(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "imgs")
    a, b = tmp_path / "a", tmp_path / "b"
    cfg = ["--config", "tiny/leapalign", f"train.replay_source={folder}", *RUN]
    assert main(["train", *cfg, f"run.output_dir={a}", "train.max_steps=2"]) == 0
    assert main(["train", *cfg, f"run.output_dir={b}", "train.max_steps=1"]) == 0
    assert main(["train", *cfg, "--resume", f"run.output_dir={b}", "train.max_steps=2"]) == 0
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert all(r["replay_loss"] > 0 for r in ra)
    assert [r["replay_loss"] for r in ra] == [r["replay_loss"] for r in rb]
    fa = load_file(str(a / "checkpoints/step_000002/trainable.safetensors"))
    fb = load_file(str(b / "checkpoints/step_000002/trainable.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


def test_replay_config_errors(tmp_path: Path, capsys) -> None:
    out = [f"run.output_dir={tmp_path}"]
    assert main(["train", "--config", "tiny/leapalign", *out, "train.replay_weight=-1"]) == 2
    assert "train.replay_weight" in capsys.readouterr().err
    assert main(["train", "--config", "tiny/leapalign", *out, "train.replay_weight=1"]) == 2
    assert "train.replay_source" in capsys.readouterr().err


def test_policy_gradient_methods_add_the_replay_loss_to_every_update(tmp_path: Path) -> None:
    """Replay regularises the policy-gradient family as it does the direct methods: one weighted replay backward per
    update, logged, changing the update, and exact on resume."""
    folder = write_folder(tmp_path / "imgs")
    common = ["--config", "tiny/flow-grpo", f"train.replay_source={folder}", "sampler.num_steps=2"]
    common += ["sampler.height=32", "sampler.width=32", "run.tensorboard=false", "run.export=false"]
    common += ["method.updates_per_epoch=2"]
    runs = {}
    for name, weight, steps in (("replay", 1.0, 2), ("none", 0.0, 1), ("half", 1.0, 1)):
        runs[name] = tmp_path / name
        args = [*common, f"run.output_dir={runs[name]}", f"train.replay_weight={weight}", f"train.max_steps={steps}"]
        assert main(["train", *args]) == 0
    args = [*common, "--resume", f"run.output_dir={runs['half']}", "train.replay_weight=1.0", "train.max_steps=2"]
    assert main(["train", *args]) == 0
    records = read_metrics(runs["replay"] / "metrics.jsonl")
    assert all(r["regularizer_loss"] > 0 and r["updates"] == 2 for r in records)
    assert "regularizer_loss" not in read_metrics(runs["none"] / "metrics.jsonl")[0]

    def weights(name: str, step: int) -> dict[str, torch.Tensor]:
        return load_file(str(runs[name] / f"checkpoints/step_00000{step}/trainable.safetensors"))

    with_replay, without = weights("half", 1), weights("none", 1)  # the same first step, with and without replay
    assert any(not torch.equal(with_replay[k], without[k]) for k in without)
    resumed, straight = weights("half", 2), weights("replay", 2)
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
