"""The annotator (a learned scene parser) and the preference data it labels for ShapesScore training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from leapalign.worlds.shapes.evaluator import check
from leapalign.worlds.shapes.scenes import COLORS, SHAPES, Obj, Scene
from leapalign.worlds.shapes.score import default_weights
from research.shapesworld.annotator import AnnotatorTrainer, SceneSegmenter, annotate, parse, pixel_targets
from research.shapesworld.preferences import Preferences
from research.shapesworld.score_research import ResearchScoreTrainer

RED, BLUE = list(COLORS).index("red"), list(COLORS).index("blue")


def test_pixel_targets_label_valid_objects_and_leave_nuisances_as_background() -> None:
    scene = Scene(
        (
            Obj("circle", "red", 8, 8, 8),
            Obj("square", "blue", 20, 20, 8),
            Obj("circle", "white", 4, 28, 6),  # off-palette: no object
            Obj("ellipse", "red", 28, 4, 6),  # invalid shape: no object
        )
    )
    shape, color = pixel_targets(scene)
    assert shape[8, 8] == 1 + SHAPES.index("circle") and color[8, 8] == RED
    assert shape[20, 20] == 1 + SHAPES.index("square") and color[20, 20] == BLUE
    assert shape[28, 4] == 0 and color[28, 4] == -1 and shape[4, 28] == 0
    assert (shape > 0).sum() == (color >= 0).sum()
    assert 40 <= (shape == 1 + SHAPES.index("circle")).sum() <= 56  # a disc of radius 4: ~50 px
    assert (shape == 1 + SHAPES.index("square")).sum() == 64


class _Oracle(SceneSegmenter):
    """Returns the exact pixel labels of one scene, to test how a segmentation becomes detections."""

    def __init__(self, scene: Scene) -> None:
        super().__init__()
        shape, color = (torch.from_numpy(t) for t in pixel_targets(scene))
        self.shape = torch.nn.functional.one_hot(shape, 1 + len(SHAPES)).permute(2, 0, 1).float()
        self.color = torch.nn.functional.one_hot(color.clamp(min=0), len(COLORS)).permute(2, 0, 1).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(images)
        return self.shape.expand(n, *self.shape.shape), self.color.expand(n, *self.color.shape)


def test_parse_turns_a_segmentation_into_detections_the_prompt_rules_understand() -> None:
    scene = Scene((Obj("circle", "red", 8, 16, 8), Obj("square", "blue", 20, 16, 8), Obj("square", "blue", 26, 4, 4)))
    oracle = _Oracle(scene)
    (dets,) = parse(oracle, torch.zeros(1, 3, 32, 32))
    # the 4 px square has 16 pixels: an object; sorted by area, largest first
    assert [(d.shape, d.color) for d in dets] == [("square", "blue"), ("circle", "red"), ("square", "blue")]
    assert abs(dets[1].cx - 8) < 0.1 and abs(dets[1].cy - 16) < 0.1 and dets[0].area == 64
    left = {
        "tag": "position",
        "prompt": "a circle left of a square",
        "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}],
    }
    right = {**left, "include": [left["include"][0], {**left["include"][1], "position": ["right of", 0]}]}
    two = {"tag": "counting", "prompt": "two squares", "include": [{"class": "square", "count": 2}]}
    three = {"tag": "counting", "prompt": "three squares", "include": [{"class": "square", "count": 3}]}
    assert check(left, dets) and not check(right, dets) and check(two, dets) and not check(three, dets)
    assert annotate(oracle, torch.zeros(2, 3, 32, 32), [left, right]).tolist() == [True, False]


def test_annotator_training_lowers_its_loss_and_round_trips(tmp_path: Path) -> None:
    trainer = AnnotatorTrainer(batch=8, lr=3e-3)
    held = trainer.batch_at(0, np.random.default_rng(99))
    with torch.no_grad():
        before = trainer.loss(*held).item()
    for step in range(30):
        trainer.step(step, 30)
    with torch.no_grad():
        after = trainer.loss(*held).item()
    assert after < 0.6 * before  # starts near log 4 + log 6; background alone is learned in a few steps
    trainer.model.save(tmp_path / "a", {"note": "test"})
    loaded = SceneSegmenter.load(tmp_path / "a")
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[0], trainer.model.eval()(x)[0])
    with pytest.raises(FileNotFoundError, match="annotator"):
        SceneSegmenter.load(tmp_path / "missing")


def _write_prefs(path: Path, index: list[int], accepted: list[bool]) -> None:
    n = len(index)
    save_file(
        {
            "images": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8),
            "prompt_index": torch.tensor(index),
            "accepted": torch.tensor(accepted, dtype=torch.uint8),
        },
        str(path),
    )


def test_preference_pairs_join_accepted_and_rejected_images_of_the_same_prompt(tmp_path: Path) -> None:
    _write_prefs(tmp_path / "a.safetensors", [0, 0, 0, 1, 1], [True, False, False, True, True])
    _write_prefs(tmp_path / "b.safetensors", [2, 2, 0], [False, True, True])
    prefs = Preferences.load([tmp_path / "a.safetensors", tmp_path / "b.safetensors"])
    assert prefs.images.shape == (8, 3, 32, 32) and prefs.images.min() >= 0 and prefs.images.max() <= 1
    right, wrong = prefs.pairs()
    pairs = sorted(zip(right.tolist(), wrong.tolist(), strict=True))
    # prompt 0: accepted {0, 7} x rejected {1, 2}; prompt 1: none rejected; prompt 2: accepted 6, rejected 5
    assert pairs == [(0, 1), (0, 2), (6, 5), (7, 1), (7, 2)]
    with pytest.raises(FileNotFoundError, match="preferences"):
        Preferences.load([tmp_path / "nope.safetensors"])


def test_score_training_with_preferences_adds_a_pairwise_loss(tmp_path: Path) -> None:
    _write_prefs(tmp_path / "p.safetensors", [0, 0, 3, 3], [True, False, False, True])
    prefs = Preferences.load([tmp_path / "p.safetensors"])
    trainer = ResearchScoreTrainer(batch=4, init=default_weights(), lr=1e-4, preferences=prefs, pref_pairs=8)
    pref = trainer._preference_loss(0)
    assert pref.ndim == 0 and torch.isfinite(pref) and pref > 0
    assert np.isfinite(trainer.step(0, 10))
    _write_prefs(tmp_path / "q.safetensors", [0, 1], [True, False])
    with pytest.raises(ValueError, match="both an accepted and a rejected"):
        ResearchScoreTrainer(batch=4, preferences=Preferences.load([tmp_path / "q.safetensors"]))


def test_annotator_can_learn_hybrid_shapes_as_background() -> None:
    def drawn_background(corruptions: tuple[str, ...]) -> int:
        images, shapes, _ = AnnotatorTrainer(batch=8, corruptions=corruptions).batch_at(0, np.random.default_rng(3))
        return int(((images.amax(1) > 0.5) & (shapes == 0)).sum())

    # a hybrid is drawn (the image has colour there) but labelled background, like any non-object; deleting or
    # duplicating valid objects leaves only a few anti-aliased edge pixels so
    assert drawn_background(("hybrid",)) > max(20, 3 * drawn_background(("delete",)))


def test_relabel_judges_stored_images_again_without_sampling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from research.shapesworld import preferences

    SceneSegmenter().save(tmp_path / "ann", {"note": "untrained"})
    _write_prefs(tmp_path / "old.safetensors", [0, 0, 5], [True, True, True])
    save_file(  # a file made by the CLI carries its settings; keep them and say where the labels came from
        {k: v for k, v in preferences.load_file(str(tmp_path / "old.safetensors")).items()},
        str(tmp_path / "old.safetensors"),
        metadata={"info": '{"source": "base", "seed": 3}'},
    )
    monkeypatch.setattr(preferences, "sample_source", lambda *a, **k: pytest.fail("relabel must not sample"))
    judged = []

    def fake_annotate(seg: SceneSegmenter, images: torch.Tensor, metas: list[dict]) -> np.ndarray:
        judged.append([m["prompt"] for m in metas])
        return np.array([False, True, False])

    monkeypatch.setattr("research.shapesworld.annotator.annotate", fake_annotate)
    argv = ["prefs", "--annotator", str(tmp_path / "ann"), "--relabel", str(tmp_path / "old.safetensors")]
    monkeypatch.setattr("sys.argv", [*argv, "--out", str(tmp_path / "new.safetensors")])
    preferences.main()
    old = Preferences.load([tmp_path / "old.safetensors"])
    new = Preferences.load([tmp_path / "new.safetensors"])
    assert torch.equal(new.images, old.images) and torch.equal(new.prompt_index, old.prompt_index)
    assert new.accepted.tolist() == [False, True, False]  # the new verdicts replace the stored ones
    train = preferences.load_metadata("train")
    assert judged == [[train[0]["prompt"], train[0]["prompt"], train[5]["prompt"]]]  # each image with its prompt
    card = preferences.info(tmp_path / "new.safetensors")
    assert card["source"] == "base" and card["seed"] == 3 and card["relabelled_from"].endswith("old.safetensors")
    assert set(card["accepted_by_category"]) <= {m["tag"] for m in preferences.load_metadata("train")}
    monkeypatch.setattr("sys.argv", [*argv, "--source", "base", "--out", str(tmp_path / "x.safetensors")])
    with pytest.raises(SystemExit):  # --source and --relabel exclude each other
        preferences.main()
