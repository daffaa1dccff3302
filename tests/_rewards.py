"""Rewards used by the trainer tests through the dotted-import-path mechanism (``_rewards:NaNAfter``)."""

from __future__ import annotations


class NaNAfter:
    """Brightness, but NaN from the ``after``-th call on (counting from 1)."""

    name = "nan_after"
    differentiable = True

    def __init__(self, after: int = 3) -> None:
        self.after, self.calls = after, 0

    def __call__(self, images, prompts):
        self.calls += 1
        score = images.mean(dim=(1, 2, 3))
        return score * float("nan") if self.calls >= self.after else score


def mean_red(images, prompts):
    """A plain function reward: mean red channel."""
    return images[:, 0].mean(dim=(1, 2))
