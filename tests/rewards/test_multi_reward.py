"""Multi-reward: weighted sums, running normalisation, per-term logging and the config keys."""

from __future__ import annotations

import pytest
import torch

from leapalign.config import ConfigError, load_config
from leapalign.rewards import RewardConfig, RewardTermConfig, WeightedReward, build_reward
from leapalign.rewards.normalize import RunningNormalizer


class Const:
    """A reward returning fixed per-call scores (one row per call) scaled by ``scale``."""

    differentiable = True

    def __init__(self, name: str, rows: list[list[float]], scale: float = 1.0) -> None:
        self.name, self.rows, self.scale, self.calls = name, rows, scale, 0

    def __call__(self, images, prompts):
        row = torch.tensor(self.rows[self.calls % len(self.rows)]) * self.scale
        self.calls += 1
        return row + 0 * images.mean(dim=(1, 2, 3))


def test_raw_weighted_sum_and_separate_logging() -> None:
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    a, b = Const("a", [[1.0, 2.0, 3.0]]), Const("b", [[10.0, 20.0, 40.0]])
    reward = WeightedReward([(a, 0.5), (b, -2.0)])
    out = reward(images, ["p"] * 3)
    torch.testing.assert_close(out, torch.tensor([-19.5, -39.0, -78.5]))
    assert set(reward.last_terms) == {"a", "b"}
    torch.testing.assert_close(reward.last_terms["b"], torch.tensor([10.0, 20.0, 40.0]))  # raw, unweighted
    assert reward.state_dict() == {}


def test_running_normalisation_matches_the_bias_corrected_ema() -> None:
    rows = [[1.0, 2.0, 3.0], [2.0, 2.0, 8.0], [0.0, 5.0, 1.0]]
    a, b = Const("a", rows), Const("b", rows, scale=1000.0)  # same signal on a 1000x larger scale
    reward = WeightedReward([(a, 1.0), (b, 1.0)], normalize="running", momentum=0.9)
    images = torch.rand(3, 3, 8, 8)
    m = s = 0.0
    for t, row in enumerate(rows, 1):
        out = reward(images, ["p"] * 3)
        x = torch.tensor(row)
        m, s = 0.9 * m + 0.1 * x.mean().item(), 0.9 * s + 0.1 * x.pow(2).mean().item()
        mean, var = m / (1 - 0.9**t), s / (1 - 0.9**t) - (m / (1 - 0.9**t)) ** 2
        expected = (x - mean) / (var + 1e-8) ** 0.5
        # each term is standardised on its own scale, so both contribute equally
        torch.testing.assert_close(out, 2 * expected, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(reward.last_terms["b"], 1000.0 * x)
    first = WeightedReward([(Const("a", rows), 1.0)], normalize="running")
    z = first(images, ["p"] * 3)  # the first batch is standardised by its own statistics
    torch.testing.assert_close(z.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.pow(2).mean(), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_running_state_round_trip_and_gradients() -> None:
    rows = [[1.0, 2.0], [3.0, 5.0], [4.0, -1.0]]
    one = WeightedReward([(Const("a", rows), 1.0)], normalize="running")
    images = torch.rand(2, 3, 8, 8)
    for _ in range(2):
        one(images, ["p", "q"])
    two = WeightedReward([(Const("a", rows), 1.0)], normalize="running")
    two.terms[0][0].calls = 2
    two.load_state_dict(one.state_dict())
    torch.testing.assert_close(one(images, ["p", "q"]), two(images, ["p", "q"]))
    with pytest.raises(ValueError, match="no statistics"):
        two.load_state_dict({"other": one.state_dict()["a"]})
    norm = RunningNormalizer(momentum=0.5)
    x = torch.tensor([1.0, 3.0], requires_grad=True)
    norm(x).sum().backward()  # statistics are constants: the gradient is 1 / std per element
    torch.testing.assert_close(x.grad, torch.full((2,), 1.0))


def test_config_keys_and_validation() -> None:
    cfg = load_config("tiny/leapalign", ["reward=brightness,saturation", "reward.normalize=running"])
    reward = build_reward(cfg.reward)
    assert reward.normalize == "running" and len(reward.normalizers) == 2 and cfg.reward.momentum == 0.99
    assert build_reward(RewardConfig(terms=[RewardTermConfig("brightness")])).normalizers == []
    with pytest.raises(ConfigError, match="reward.normalize"):
        load_config("tiny/leapalign", ["reward.normalize=zscore"])
    with pytest.raises(ConfigError, match="reward.momentum"):
        load_config("tiny/leapalign", ["reward.normalize=running", "reward.momentum=1.5"])
    with pytest.raises(ValueError, match="distinct names"):
        WeightedReward([(Const("a", [[1.0]]), 1.0), (Const("a", [[1.0]]), 1.0)], normalize="running")


def test_running_normalisation_resumes_exactly(tmp_path) -> None:
    from leapalign.cli import main
    from leapalign.metrics import read_metrics

    base = ["train.max_steps=4", "sampler.num_steps=4", "run.tensorboard=false", "run.export=false"]
    base += ["reward=brightness,saturation", "reward.normalize=running", "reward.momentum=0.5"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--config", "tiny/leapalign", f"run.output_dir={a}", *base]) == 0
    assert main(["train", "--config", "tiny/leapalign", f"run.output_dir={b}", *base, "train.max_steps=2"]) == 0
    assert main(["train", "--config", "tiny/leapalign", "--resume", f"run.output_dir={b}", *base]) == 0
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        assert x["loss"] == y["loss"] and x["reward_mean"] == y["reward_mean"]
        assert x["reward/brightness"] == y["reward/brightness"]  # raw per-term scores are logged


def test_min_combination_is_the_worst_weighted_member_and_logs_each_member() -> None:
    images = torch.rand(3, 3, 8, 8, requires_grad=True)
    members = [Const("m", [[1.0, 5.0, 3.0]]), Const("m", [[2.0, 4.0, 0.0]]), Const("m", [[0.5, 6.0, 9.0]])]
    reward = WeightedReward([(m, 1.0) for m in members], combine="min")
    torch.testing.assert_close(reward(images, ["p"] * 3), torch.tensor([0.5, 4.0, 0.0]))
    assert reward.name == "min(m,m,m)" and list(reward.last_terms) == ["m", "m_2", "m_3"]
    cfg = RewardConfig(terms=[RewardTermConfig("brightness"), RewardTermConfig("brightness")], combine="min")
    assert build_reward(cfg).combine == "min"
    with pytest.raises(ValueError, match="combine"):
        RewardConfig(combine="max")
