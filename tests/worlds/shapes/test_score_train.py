"""ShapesScore training as shipped: the command in the weights' card is the trainer's defaults, steps are
deterministic, corruptions break the prompt, and weights folders load (old ones too) or say why not."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from leapalign.worlds.shapes.evaluator import check
from leapalign.worlds.shapes.scenes import HYBRID_SHAPES, Obj, Scene, render
from leapalign.worlds.shapes.score import ScoreArch, ShapesScoreModel, default_weights
from leapalign.worlds.shapes.score_train import (
    DEFAULT_CORRUPTIONS,
    ScoreTrainer,
    build_parser,
    command_line,
    corrupt,
    scene_detections,
)


def test_the_shipped_command_is_the_default_training() -> None:
    config = json.loads((default_weights() / "config.json").read_text())
    argv = shlex.split(config["command"])
    assert argv[:3] == ["python", "-m", "leapalign.worlds.shapes.score_train"]
    args = build_parser().parse_args(argv[3:])
    assert (args.steps, args.batch, args.seed) == (config["steps"], config["batch"], config["seed"])
    assert (args.lr, args.wrong_per_scene, args.corruptions) == (1e-3, 1, DEFAULT_CORRUPTIONS)
    assert ScoreArch(**config["arch"]) == ScoreArch()  # the trainer builds ShapesScoreModel(ScoreArch())
    assert command_line(args).startswith(config["command"])  # the card of a rerun names every option


def test_training_steps_are_deterministic_and_learn() -> None:
    a, b = ScoreTrainer(batch=4), ScoreTrainer(batch=4)
    before = a.model.text.out.weight.clone()
    assert torch.equal(before, b.model.text.out.weight)  # the same seed, the same initialisation
    loss = a.step(0, 10)
    assert np.isfinite(loss) and loss == b.step(0, 10)
    assert torch.equal(a.model.text.out.weight, b.model.text.out.weight)
    assert not torch.equal(a.model.text.out.weight, before)
    batch = a.prepare(1)
    assert batch.images.shape == (4, 3, 32, 32) and batch.wrong.shape == (4, 3, 32, 32)
    assert batch.texts.shape == (4 + len(batch.owner), 128) and batch.satisfied.shape == (4, 4)
    assert not batch.satisfied.diagonal().any()


def test_hybrid_corruption_draws_a_shape_between_two_valid_ones() -> None:
    scene = Scene((Obj("square", "red", 10, 16, 12), Obj("triangle", "blue", 24, 16, 12)))
    meta = {
        "prompt": "a square and a triangle",
        "include": [{"class": "square", "count": 1}, {"class": "triangle", "count": 1}],
    }
    rng = np.random.default_rng(0)
    for _ in range(6):
        bad, kind = corrupt(scene, rng, ("hybrid",))
        assert kind == "hybrid"
        changed = [o for o in bad.objects if o.shape in HYBRID_SHAPES]
        assert len(changed) == 1 and not check(meta, scene_detections(bad))  # the prompt no longer holds
    drawn = {
        s: render(Scene((Obj(s, "red", 16, 16, 16),)))[0] for s in ("square", "triangle", "circle", *HYBRID_SHAPES)
    }
    for hybrid in HYBRID_SHAPES:  # a different outline from every valid shape of the same size (>= 20 px apart)
        assert all(np.abs(drawn[hybrid] - drawn[s]).sum() > 20 for s in ("square", "triangle", "circle"))
    with pytest.raises(ValueError, match="unknown corruptions"):
        corrupt(scene, rng, ("melt",))


def _copy_weights(tmp_path: Path, arch: dict) -> Path:
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((default_weights() / "model.safetensors").read_bytes())
    config = json.loads((default_weights() / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "arch": arch}))
    return folder


def test_older_weights_folders_load_or_point_to_the_research_code(tmp_path: Path) -> None:
    arch = json.loads((default_weights() / "config.json").read_text())["arch"]
    folder = _copy_weights(tmp_path, {**arch, "backbone": "pixels", "segmenter_width": 16})
    loaded, shipped = ShapesScoreModel.load(folder), ShapesScoreModel.load(default_weights())
    assert loaded.arch == shipped.arch
    x, tokens = torch.rand(2, 3, 32, 32), torch.randn(2, 5, 384)
    assert torch.equal(loaded(x, tokens), shipped(x, tokens))
    (folder / "config.json").write_text(json.dumps({"arch": {**arch, "backbone": "segmenter", "segmenter_width": 16}}))
    with pytest.raises(ValueError, match="research/shapesworld"):
        ShapesScoreModel.load(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ShapesScoreModel.load(tmp_path / "missing")
