"""ShapesScore's research training options: PGD within an L2 ball, adversarial fine-tuning from given weights, a
frozen segmenter backbone and skewed prompt categories; without options, the shipped reward's trainer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from leapalign.worlds.shapes.prompts import CATEGORIES
from leapalign.worlds.shapes.score import ShapesScoreModel, default_weights
from leapalign.worlds.shapes.score_train import ScoreTrainer
from research.shapesworld.score_research import (
    ResearchScoreTrainer,
    category_probabilities,
    parse_category_weights,
    pgd_l2,
)
from research.shapesworld.segmenter import SceneSegmenter, SegmenterScoreModel, load_score_model


def test_without_options_it_trains_exactly_as_the_shipped_trainer() -> None:
    shipped, research = ScoreTrainer(batch=4), ResearchScoreTrainer(batch=4)
    assert shipped.step(0, 2) == research.step(0, 2)
    a, b = shipped.model.state_dict(), research.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pgd_l2_stays_in_the_ball_and_the_image_range_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    x, y = torch.rand(4, 3, 8, 8), torch.rand(2, 3, 8, 8)
    w = torch.randn(3, 8, 8)

    def loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * w).sum() - (b * w).sum()

    adv_x, adv_y = pgd_l2(loss, (x, y), eps=0.5, steps=3)
    for clean, adv in ((x, adv_x), (y, adv_y)):
        assert not adv.requires_grad
        assert adv.min() >= 0.0 and adv.max() <= 1.0
        assert torch.all((adv - clean).flatten(1).norm(dim=1) <= 0.5 + 1e-5)
    assert loss(adv_x, adv_y) > loss(x, y) + 1.0  # a linear loss climbs close to eps * |w| per image


def test_pgd_l2_leaves_parameters_without_gradients() -> None:
    lin = torch.nn.Linear(12, 1)
    pgd_l2(lambda a: lin(a.flatten(1)).sum(), (torch.rand(2, 3, 2, 2),), eps=0.1, steps=2)
    assert all(p.grad is None for p in lin.parameters())


def test_adversarial_step_fine_tunes_the_given_weights() -> None:
    trainer = ResearchScoreTrainer(batch=6, init=default_weights(), lr=1e-4, adv_eps=0.5, adv_steps=1)
    shipped = ShapesScoreModel.load(default_weights())
    assert torch.equal(trainer.model.image.proj.weight, shipped.image.proj.weight)
    loss = trainer.step(0, 10)
    assert loss == loss and loss > 0  # finite
    assert not torch.equal(trainer.model.image.proj.weight, shipped.image.proj.weight)


def test_bad_adversarial_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adv_eps"):
        ResearchScoreTrainer(batch=2, adv_eps=-1.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ResearchScoreTrainer(batch=2, init=tmp_path)


def test_segmenter_backbone_reads_a_frozen_segmenter_and_round_trips(tmp_path: Path) -> None:
    from leapalign.worlds.shapes.scenes import COLORS, SHAPES
    from research.shapesworld.segmenter import SegmenterScoreArch

    torch.manual_seed(0)
    SceneSegmenter().save(tmp_path / "seg", {"note": "test"})
    trainer = ResearchScoreTrainer(batch=4, lr=1e-3, segmenter=tmp_path / "seg")
    model = trainer.model
    assert isinstance(model, SegmenterScoreModel) and model.arch.backbone == "segmenter"
    seg_before = {k: v.clone() for k, v in model.image.segmenter.state_dict().items()}
    torch.testing.assert_close(seg_before, SceneSegmenter.load(tmp_path / "seg").state_dict())
    maps = model.image.perceive(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 1 + len(SHAPES) + len(COLORS) + len(SHAPES) * len(COLORS), 32, 32)
    assert maps.min() >= 0 and maps.max() <= 1
    text_before = model.text.out.weight.clone()
    trainer.step(0, 10)
    assert not torch.equal(model.text.out.weight, text_before)  # the towers learn...
    for k, v in model.image.segmenter.state_dict().items():  # ...the backbone does not
        assert torch.equal(v, seg_before[k]), k
    images = torch.rand(3, 3, 32, 32, requires_grad=True)
    tokens = torch.randn(3, 6, 384)
    model.eval()(images, tokens).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0  # the reward's gradient reaches the pixels
    model.save(tmp_path / "score", {"note": "test"})
    arch = json.loads((tmp_path / "score" / "config.json").read_text())["arch"]
    assert arch["backbone"] == "segmenter" and arch["segmenter_width"] == 16  # the format of the former option
    loaded = load_score_model(tmp_path / "score")
    assert isinstance(loaded, SegmenterScoreModel)
    torch.testing.assert_close(loaded(images, tokens), model(images, tokens))
    with pytest.raises(ValueError, match="research"):  # the package refuses it and says where to look
        ShapesScoreModel.load(tmp_path / "score")
    assert type(load_score_model(default_weights())) is ShapesScoreModel
    with pytest.raises(ValueError, match="backbone"):
        SegmenterScoreArch(backbone="vit")
    with pytest.raises(ValueError, match="not both"):
        ResearchScoreTrainer(batch=4, init=default_weights(), segmenter=tmp_path / "seg")


def test_category_weights_parse_validate_and_skew_the_batches() -> None:
    assert parse_category_weights("") == {}
    assert parse_category_weights("position=3, counting=0.5") == {"position": 3.0, "counting": 0.5}
    for bad in ("position", "position=x"):
        with pytest.raises(ValueError, match="category=weight"):
            parse_category_weights(bad)
    with pytest.raises(ValueError, match="unknown categories"):
        category_probabilities({"positions": 2.0})
    with pytest.raises(ValueError, match=">= 0"):
        category_probabilities({"position": -1.0})
    assert category_probabilities({}) is None
    p = category_probabilities({"position": 6.0, "counting": 0.0})
    assert p is not None and p.sum() == pytest.approx(1.0)
    assert p[CATEGORIES.index("position")] == pytest.approx(0.6) and p[CATEGORIES.index("counting")] == 0.0

    trainer = ResearchScoreTrainer(batch=32, category_weights={"position": 1.0} | {c: 0.0 for c in CATEGORIES[:-2]})
    metas, *_ = trainer._batch(0)
    assert {m["tag"] for m in metas} <= {"position", "color_attr"}
    assert sum(m["tag"] == "position" for m in metas) > 4


def test_the_card_records_the_research_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from research.shapesworld import score_research

    monkeypatch.setattr("leapalign.worlds.shapes.score_train.measure", lambda *a, **k: {"acc_vs_color": 1.0})
    out = tmp_path / "w"
    score_research.main(["--out", str(out), "--steps", "1", "--batch", "2", "--category-weights", "position=2"])
    card = json.loads((out / "config.json").read_text())
    assert card["command"].startswith(f"python -m research.shapesworld.score_research --out {out} --steps 1 ")
    assert card["command"].endswith("--category-weights position=2") and card["category_weights"] == {"position": 2.0}
    assert card["heldout"] == {"acc_vs_color": 1.0}
    assert card["corruptions"] == ["off_palette", "blob", "delete", "duplicate"]
    with pytest.raises(SystemExit):  # a research run never writes the shipped weights by default
        score_research.main(["--steps", "1"])
