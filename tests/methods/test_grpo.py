"""The policy-gradient family's sanity checks (grpo.md section 1.5): ratio 1 and the REINFORCE gradient on the
first update, zero-mean group advantages, no gradient from a group without reward spread, KL(model, model) = 0,
batch-size invariance of the log-probabilities, the step plans of each method, exact resume, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import ToyFlowModel, make_batch
from safetensors.torch import load_file

from leapalign.cli import main
from leapalign.config import ConfigError, load_config
from leapalign.methods import build_method
from leapalign.methods.grpo import Experience, group_advantages
from leapalign.models import ModelConfig, build_model


def gather(t: torch.Tensor) -> torch.Tensor:
    return t


class Brightness:
    name, differentiable = "brightness", False

    def __call__(self, images: torch.Tensor, prompts) -> torch.Tensor:
        return images.mean((1, 2, 3))


def collect(method_name: str, model, prompts: list[str], num_steps: int = 6, size: int = 8, **options) -> tuple:
    cfg = load_config("tiny/leapalign", [f"method={method_name}", "data.batch_size=4", f"sampler.num_steps={num_steps}"]
                      + [f"method.{k}={v}" for k, v in options.items()]).method  # fmt: skip
    method = build_method(cfg)
    batch = make_batch(model, prompts, num_steps=num_steps, size=size, seed=0)
    return method, method.collect(model, batch, Brightness(), gather, iteration=0)


def test_first_update_has_ratio_one_and_the_reinforce_gradient() -> None:
    model = ToyFlowModel()
    method, exp = collect("flow-grpo", model, ["a", "a", "bb", "bb"], group_size=2)
    idx = torch.arange(4)
    loss, record = method.step_loss(model, exp, idx, 0)
    assert record["ratio_mean"] == record["ratio_min"] == record["ratio_max"] == 1.0 and record["clip_frac"] == 0.0
    grads = torch.autograd.grad(loss, list(model.transformer.parameters()))
    # REINFORCE with the same advantages: -mean(A * log pi)
    step = exp.steps[0]
    v = model.velocity(step.latent, exp.sigmas[0], exp.cond)
    from leapalign.flow import step_log_prob

    log_prob, _ = step_log_prob(v, step, exp.sigmas[0], exp.sigmas[1], exp.schedule, exp.level)
    reinforce = -(exp.advantages.clamp(-5, 5) * log_prob).mean()
    expected = torch.autograd.grad(reinforce, list(model.transformer.parameters()))
    assert all(torch.allclose(g, e, atol=1e-7) for g, e in zip(grads, expected, strict=True))


def test_group_advantages_are_centred_and_a_tied_group_gives_no_gradient() -> None:
    opts = load_config("tiny/leapalign", ["method=flow-grpo", "data.batch_size=4", "method.group_size=2"]).method
    adv, metrics = group_advantages(torch.tensor([1.0, 3.0, 5.0, 5.0]), opts, gather)
    assert torch.allclose(adv.view(2, 2).sum(1), torch.zeros(2)) and adv[2] == adv[3] == 0
    assert metrics["zero_std_groups"] == 0.5
    model = ToyFlowModel()
    method, exp = collect("flow-grpo", model, ["a", "a", "bb", "bb"], group_size=2)
    tied = Experience(**{**exp.__dict__, "advantages": torch.tensor([0.7, -0.7, 0.0, 0.0])})
    loss, _ = method.step_loss(model, tied, torch.tensor([2, 3]), 0)
    grads = torch.autograd.grad(loss, list(model.transformer.parameters()), allow_unused=True)
    assert all(g is None or g.abs().max() == 0 for g in grads)


def test_a_threshold_zeroes_the_advantages_of_a_group_that_passes_it_and_keeps_the_others() -> None:
    # a group whose samples all pass differs only by rounding: without the threshold its std scales that up
    rewards = torch.tensor([0.9650, 0.9652, 0.9648, 0.9651, 0.20, 0.60, 0.95, 0.40])
    base = ["method=flow-grpo", "data.batch_size=8", "method.group_size=4"]
    plain, _ = group_advantages(rewards, load_config("tiny/leapalign", base).method, gather)
    assert plain[:4].abs().max() > 0.5  # differences of 2e-4 become advantages of order one
    opts = load_config("tiny/leapalign", [*base, "method.threshold=0.9"]).method
    adv, metrics = group_advantages(rewards, opts, gather)
    assert torch.equal(adv[:4], torch.zeros(4)) and metrics["zero_std_groups"] == 0.5
    assert metrics["above_threshold"] == 5 / 8
    clipped = torch.tensor([0.20, 0.60, 0.90, 0.40])  # the passing sample counts as the threshold
    expected = (clipped - clipped.mean()) / (clipped.std() + opts.adv_eps)
    assert torch.allclose(adv[4:], expected)


def test_kl_of_the_base_model_to_itself_is_zero_and_log_probs_do_not_depend_on_the_batch() -> None:
    model = build_model(ModelConfig(name="tiny-flux", finetune="lora", lora_rank=2))
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    method, exp = collect("flow-grpo", model, prompts, num_steps=3, size=16, group_size=2, kl_weight=0.04)
    with pytest.raises(ValueError, match=r"call method.prepare\(model\) first"):
        method.step_loss(model, exp, torch.arange(4), 1)
    method.prepare(model)
    assert method.reference.kind == "adapters" and method.reference.copy is None
    _, record = method.step_loss(model, exp, torch.arange(4), 1)  # LoRA B = 0 at init: policy == reference
    assert record["kl_ref"] == 0.0 and record["ratio_mean"] == 1.0
    for i in range(4):  # the same step, one sample at a time instead of the sampling batch of 4
        _, alone = method.step_loss(model, exp, torch.tensor([i]), 1)
        assert abs(alone["ratio_mean"] - 1.0) < 1e-5


def test_each_method_plans_its_stochastic_and_trained_steps() -> None:
    model = ToyFlowModel()
    _, exp = collect("flow-grpo", model, ["a"] * 4, num_steps=10, group_size=2)
    assert [s.index for s in exp.steps] == list(range(10)) and exp.trained.sum(1).tolist() == [9] * 4
    _, fast = collect("flow-grpo", model, ["a"] * 4, num_steps=10, group_size=2, fast=True, window_size=3)
    window = [s.index for s in fast.steps]
    assert len(window) == 3 and window[0] + 3 <= 5 and bool(fast.trained.all())
    _, dance = collect("dance-grpo", model, ["a"] * 4, num_steps=10, group_size=2)
    assert dance.trained.sum(1).tolist() == [6] * 4 and not dance.trained[:, -1].any()
    assert not torch.equal(dance.trained[0], dance.trained[1]) or not torch.equal(dance.trained[1], dance.trained[2])
    assert torch.equal(dance.steps[0].latent[0], dance.steps[0].latent[1])  # a group shares its initial noise
    mix = build_method(load_config("tiny/mix-grpo", ["method.window_every=2", "method.window_size=3"]).method)
    starts = [mix.window_start(8, it) for it in range(14)]
    assert starts == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 0, 0]  # T - w + 1 = 6 positions, then roll back


def test_bad_input_names_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="data.batch_size: it must be a multiple of method.group_size=4"):
        load_config("tiny/flow-grpo", ["method.group_size=4", "data.batch_size=6"])
    with pytest.raises(ConfigError, match=r"method.noise_level: it must be a number in \(0, 10\]"):
        load_config("tiny/flow-grpo", ["method.noise_level=0"])
    with pytest.raises(ConfigError, match="method.clip_range: it must be a number > 0"):
        load_config("tiny/dance-grpo", ["method.clip_range=0"])
    with pytest.raises(ConfigError, match="method.window_size: it must be at most sampler.num_steps=8"):
        load_config("tiny/mix-grpo", ["method.window_size=9"])
    with pytest.raises(ConfigError, match="train.grad_accum"):
        load_config("tiny/mix-grpo", ["train.grad_accum=2"])
    with pytest.raises(ConfigError, match="method.kl_weight: it must be a number >= 0"):
        load_config("tiny/flow-grpo", ["method.kl_weight=-0.01"])


def test_full_fine_tuning_measures_the_kl_against_a_frozen_copy_of_the_initial_weights() -> None:
    model = build_model(ModelConfig(name="tiny-flux", finetune="full"))
    prompts = ["a red circle", "a red circle", "a blue square", "a blue square"]
    method, exp = collect("flow-grpo", model, prompts, num_steps=3, size=16, group_size=2, kl_weight=0.04)
    method.prepare(model)
    ref = method.reference
    assert ref.kind == "frozen-copy" and not any(p.requires_grad for p in ref.copy.parameters())
    initial = {k: v.clone() for k, v in ref.copy.state_dict().items()}
    loss, record = method.step_loss(model, exp, torch.arange(4), 1)
    assert record["kl_ref"] == 0.0  # nothing has moved yet: policy == reference
    loss.backward()
    with torch.no_grad():
        for p in model.transformer.parameters():
            p.add_(torch.randn_like(p) * 1e-2)
    _, moved = method.step_loss(model, exp, torch.arange(4), 1)
    assert moved["kl_ref"] > 0  # the policy moved, the copy did not
    assert all(torch.equal(initial[k], v) for k, v in ref.copy.state_dict().items())
    assert all(p.grad is None for p in ref.copy.parameters())
    assert model.transformer is not ref.copy  # the swap is undone after the reference forward


@pytest.mark.parametrize("method", ["flow-grpo", "mix-grpo", "flow-grpo-full-kl"])
def test_a_resumed_run_is_exact(tmp_path: Path, method: str) -> None:
    name = method.removesuffix("-full-kl")
    common = ["--config", f"tiny/{name}", "sampler.num_steps=4", "sampler.height=32", "sampler.width=32"]
    common += ["run.tensorboard=false", "run.export=false", "method.inner_epochs=2", "method.updates_per_epoch=2"]
    common += ["method.window_every=1"] if name == "mix-grpo" else ["method.fast=true"]
    if method.endswith("-full-kl"):  # the frozen reference is the initial weights, also after a resume
        common += ["model.finetune=full", "method.kl_weight=0.1", "train.lr=1e-3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", *common, f"run.output_dir={a}", "train.max_steps=3"]) == 0
    assert main(["train", *common, f"run.output_dir={b}", "train.max_steps=1"]) == 0
    assert main(["train", *common, "--resume", f"run.output_dir={b}", "train.max_steps=3"]) == 0
    fa = load_file(str(a / "checkpoints/step_000003/trainable.safetensors"))
    fb = load_file(str(b / "checkpoints/step_000003/trainable.safetensors"))
    assert all(torch.equal(fa[k], fb[k]) for k in fa)


@pytest.mark.slow
@pytest.mark.parametrize("reward", ["brightness", "_rewards:darkness"])
def test_flow_grpo_climbs_a_reward_in_either_direction(tmp_path: Path, reward: str) -> None:
    """End to end, the estimator raises the mean batch reward, whichever way the reward points (a sign error would
    lower one of the two). On this machine: brightness 0.527 -> 0.539, darkness 0.474 -> 0.483 over 80 steps."""
    from leapalign.metrics import read_metrics

    args = ["train", "--config", "tiny/flow-grpo", f"reward={reward}", "train.max_steps=80", "train.lr=1e-2"]
    args += ["sampler.num_steps=6", "sampler.height=32", "sampler.width=32", "data.batch_size=16"]
    args += ["method.group_size=8", "run.tensorboard=false", "run.export=false", f"run.output_dir={tmp_path}"]
    assert main(args) == 0
    rewards = [r["reward_mean"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    first, last = sum(rewards[:20]) / 20, sum(rewards[-20:]) / 20
    assert last > first + 0.005, (first, last)
