import pytest
import torch

from leapalign.diversity import pairwise_distances, prompt_diversity


def test_identical_images_have_zero_diversity_and_different_ones_positive():
    a = torch.rand(1, 3, 32, 32).expand(4, -1, -1, -1)
    assert prompt_diversity(a, [0, 0, 1, 1]) == pytest.approx(0.0, abs=1e-6)
    b = torch.zeros(2, 3, 32, 32)
    b[1] = 1.0
    assert prompt_diversity(b, [0, 0]) == pytest.approx(1.0, abs=1e-6)


def test_groups_do_not_mix_and_singletons_are_skipped():
    x = torch.zeros(3, 3, 32, 32)
    x[2] = 1.0  # alone in its group: must not count
    assert prompt_diversity(x, [0, 0, 1]) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least two images"):
        prompt_diversity(x, [0, 1, 2])


def test_feature_distance_uses_cosine():
    x = torch.rand(3, 3, 8, 8)
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    d = pairwise_distances(x, embed=lambda _: feats)
    assert d[0, 1] == pytest.approx(1.0) and d[0, 2] == pytest.approx(0.0, abs=1e-6)
