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


class NaNGradAfter:
    """Brightness with a finite value, but a NaN gradient from the ``after``-th call on (counting from 1)."""

    name = "nan_grad_after"
    differentiable = True

    def __init__(self, after: int = 3) -> None:
        self.after, self.calls = after, 0

    def __call__(self, images, prompts):
        self.calls += 1
        score = images.mean(dim=(1, 2, 3))
        if self.calls >= self.after and score.requires_grad:
            score.register_hook(lambda grad: grad * float("nan"))
        return score


class SignalAt:
    """Brightness; at the ``at``-th call it sends ``signum`` to its own process, once (a marker file remembers)."""

    name = "signal_at"
    differentiable = True

    def __init__(self, at: int, marker: str, signum: int = 15) -> None:
        self.at, self.marker, self.signum, self.calls = at, marker, signum, 0

    def __call__(self, images, prompts):
        import os
        from pathlib import Path

        self.calls += 1
        if self.calls == self.at and not Path(self.marker).exists():
            Path(self.marker).write_text("sent")
            os.kill(os.getpid(), self.signum)
        return images.mean(dim=(1, 2, 3))


class StallOnRank:
    """Brightness; on process ``rank`` (``RANK``) its ``at``-th call sleeps ``seconds``: a stalled rank."""

    name = "stall_on_rank"
    differentiable = True

    def __init__(self, rank: int, at: int, seconds: float) -> None:
        self.rank, self.at, self.seconds, self.calls = rank, at, seconds, 0

    def __call__(self, images, prompts):
        import os
        import time

        self.calls += 1
        if self.calls == self.at and int(os.environ.get("RANK", "0")) == self.rank:
            time.sleep(self.seconds)
        return images.mean(dim=(1, 2, 3))


def darkness(images, prompts):
    """One minus the mean pixel value: the opposite of ``brightness``, for direction checks."""
    return 1.0 - images.mean((1, 2, 3))
