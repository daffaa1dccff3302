"""The research forms of ShapesScore: averaged over perturbed views, and the plain score when no option is set."""

from __future__ import annotations

import pytest
import torch

from leapalign.worlds.shapes.score import ShapesScore
from research.shapesworld.score_variants import ResearchShapesScore, perturb


def test_without_options_it_is_the_shipped_score() -> None:
    x = torch.rand(3, 3, 32, 32)
    prompts = ["a red circle", "three squares", "a photo of a circle and a square"]
    assert torch.equal(ResearchShapesScore()(x, prompts), ShapesScore()(x, prompts))
    assert ResearchShapesScore().name == ShapesScore.name


def test_shapes_score_views_average_perturbed_copies_and_pass_gradients() -> None:
    images = torch.zeros(3, 3, 32, 32)
    images[:, 0, 10:20, 10:20] = 1.0  # a red square
    torch.manual_seed(0)
    out = perturb(images, max_shift=2)
    assert out.shape == images.shape
    # A shift moves the square by at most 2 px and keeps its area; brightness and noise stay small.
    for view in out:
        red = view[0] > 0.5
        ys, xs = red.nonzero(as_tuple=True)
        assert 8 <= ys.min() <= 12 and 8 <= xs.min() <= 12 and abs(int(red.sum()) - 100) <= 10

    plain, averaged = ShapesScore(), ResearchShapesScore(views=4)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    prompts = ["a red circle", "three squares"]
    averaged(x, prompts)  # loads the weights (building the model draws from torch's generator)
    torch.manual_seed(1)
    a = averaged(x, prompts)
    torch.manual_seed(1)
    assert torch.equal(a, averaged(x, prompts))  # deterministic given torch's seed
    assert a.shape == (2,) and not torch.allclose(a, plain(x, prompts))
    a.sum().backward()
    assert x.grad is not None and (x.grad != 0).float().mean() > 0.9  # not clamped: every pixel gets a gradient
    with pytest.raises(ValueError, match="views"):
        ResearchShapesScore(views=-1)
