"""ShapesScore training options: PGD within an L2 ball and adversarial fine-tuning from given weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from leapalign.worlds.shapes.prompts import CATEGORIES
from leapalign.worlds.shapes.score import ShapesScoreModel, default_weights
from leapalign.worlds.shapes.score_train import ScoreTrainer, category_probabilities, parse_category_weights, pgd_l2


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
    trainer = ScoreTrainer(batch=6, init=default_weights(), lr=1e-4, adv_eps=0.5, adv_steps=1)
    shipped = ShapesScoreModel.load(default_weights())
    assert torch.equal(trainer.model.image.proj.weight, shipped.image.proj.weight)
    loss = trainer.step(0, 10)
    assert loss == loss and loss > 0  # finite
    assert not torch.equal(trainer.model.image.proj.weight, shipped.image.proj.weight)


def test_bad_adversarial_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="adv_eps"):
        ScoreTrainer(batch=2, adv_eps=-1.0)
    with pytest.raises(FileNotFoundError, match="config.json"):
        ScoreTrainer(batch=2, init=tmp_path)


def test_hybrid_corruption_draws_a_shape_between_two_valid_ones() -> None:
    import numpy as np

    from leapalign.worlds.shapes.evaluator import check
    from leapalign.worlds.shapes.scenes import HYBRID_SHAPES, Obj, Scene, render
    from leapalign.worlds.shapes.score_train import corrupt, scene_detections

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


def test_segmenter_backbone_reads_a_frozen_segmenter_and_round_trips(tmp_path: Path) -> None:
    from leapalign.worlds.shapes.scenes import COLORS, SHAPES
    from leapalign.worlds.shapes.score import ScoreArch
    from leapalign.worlds.shapes.segmenter import SceneSegmenter

    torch.manual_seed(0)
    SceneSegmenter().save(tmp_path / "seg", {"note": "test"})
    trainer = ScoreTrainer(batch=4, lr=1e-3, segmenter=tmp_path / "seg")
    model = trainer.model
    assert model.arch.backbone == "segmenter" and model.image.segmenter is not None
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
    loaded = ShapesScoreModel.load(tmp_path / "score")
    torch.testing.assert_close(loaded(images, tokens), model(images, tokens))
    with pytest.raises(ValueError, match="backbone"):
        ScoreArch(backbone="vit")
    with pytest.raises(ValueError, match="not both"):
        ScoreTrainer(batch=4, init=default_weights(), segmenter=tmp_path / "seg")


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

    trainer = ScoreTrainer(batch=32, category_weights={"position": 1.0} | {c: 0.0 for c in CATEGORIES[:-2]})
    metas, *_ = trainer._batch(0)
    assert {m["tag"] for m in metas} <= {"position", "color_attr"}
    assert sum(m["tag"] == "position" for m in metas) > 4
