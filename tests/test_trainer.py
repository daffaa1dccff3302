"""End-to-end training through the CLI on tiny Flux / SD3: every method, exports, resume, failure modes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leapalign import checkpoint as ckpt
from leapalign.cli import main
from leapalign.config import load_config
from leapalign.methods import METHODS
from leapalign.metrics import read_metrics
from leapalign.models import build_model

FAST = ["train.max_steps=2", "sampler.num_steps=4", "run.tensorboard=false", "data.batch_size=2"]


def train_cli(tmp_path: Path, *overrides: str, config: str = "tiny/leapalign") -> tuple[int, Path]:
    out = tmp_path / "run"
    rc = main(["train", "--config", config, f"run.output_dir={out}", *FAST, *overrides])
    return rc, out


@pytest.mark.parametrize("arch", ["tiny-flux", "tiny-sd3"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_exports(tmp_path: Path, method: str, arch: str) -> None:
    rc, run = train_cli(tmp_path, f"model={arch}", config=f"tiny/{method}")
    assert rc == 0
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2]
    for key in ("loss", "reward_mean", "reward_std", "grad_norm", "sec_per_iter", "peak_mem_mb"):
        assert all(r[key] is not None for r in records), key
    cfg = load_config(str(run / "config.yaml"))
    assert cfg.method.name == method and cfg.model.name == arch
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_000002"

    # The trainable weights moved, and the diffusers export reproduces the EMA model.
    fresh = build_model(cfg.model)
    trained = load_file(str(latest / "trainable.safetensors"))
    initial = {k: v.detach() for k, v in ckpt.named_trainable(fresh.transformer).items()}
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)
    ckpt.load_into(ckpt.named_trainable(fresh.transformer), latest / "ema.safetensors")
    _assert_export_reproduces(fresh, run / "export", arch)


def _assert_export_reproduces(model, export_dir: Path, arch: str) -> None:
    from leapalign.models import FluxAdapter, SD3Adapter, build_tiny_flux_pipeline, build_tiny_sd3_pipeline
    from leapalign.models.config import ModelConfig

    if arch == "tiny-flux":
        pipe = build_tiny_flux_pipeline(0)
        pipe.load_lora_weights(str(export_dir))
        reloaded = FluxAdapter.from_pipeline(pipe, ModelConfig(name=arch))
    else:
        pipe = build_tiny_sd3_pipeline(0)
        pipe.load_lora_weights(str(export_dir))
        reloaded = SD3Adapter.from_pipeline(pipe, ModelConfig(name=arch))
    prompts = ["a red circle", "two blue squares"]
    x = torch.randn(2, *model.latent_shape(64, 64))
    sigma = torch.tensor(0.7)
    with torch.no_grad():
        ours = model.velocity(x, sigma, model.encode_prompts(prompts))
        theirs = reloaded.velocity(x, sigma, reloaded.encode_prompts(prompts))
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_full_finetune_exports_a_diffusers_transformer(tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel

    rc, run = train_cli(tmp_path, "model.finetune=full", "train.lr=1e-4")
    assert rc == 0
    reloaded = FluxTransformer2DModel.from_pretrained(str(run / "export"), subfolder="transformer")
    ema = load_file(str(ckpt.latest_checkpoint(run) / "ema.safetensors"))
    sd = reloaded.state_dict()
    assert all(torch.allclose(sd[k], v) for k, v in ema.items())


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    base = ["train.max_steps=4", "sampler.num_steps=4", "run.tensorboard=false", "run.export=false"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--config", "tiny/leapalign", f"run.output_dir={a}", *base]) == 0
    assert main(["train", "--config", "tiny/leapalign", f"run.output_dir={b}", *base, "train.max_steps=2"]) == 0
    assert main(["train", "--config", "tiny/leapalign", "--resume", f"run.output_dir={b}", *base]) == 0
    for name in ("trainable.safetensors", "ema.safetensors", "optimizer.safetensors"):
        fa, fb = (
            load_file(str(a / "checkpoints/step_000004" / name)),
            load_file(str(b / "checkpoints/step_000004" / name)),
        )
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), name
    ra, rb = read_metrics(a / "metrics.jsonl"), read_metrics(b / "metrics.jsonl")
    assert [r["step"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb, strict=True):
        assert x["reward_mean"] == y["reward_mean"] and x["loss"] == y["loss"] and x.get("k") == y.get("k")


def test_nan_rewards_skip_steps_then_stop_without_damaging_checkpoints(tmp_path: Path, caplog) -> None:
    rc, run = train_cli(
        tmp_path,
        "reward.terms=[{name: '_rewards:NaNAfter', args: {after: 3}}]",
        "train.max_steps=6",
        "train.max_nan_steps=2",
        "run.checkpoint_every=1",
        "run.export=false",
    )
    assert rc == 2
    records = read_metrics(run / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0.0, 0.0, 1.0]  # step 4 raised before logging
    assert "update skipped" in caplog.text
    latest = ckpt.latest_checkpoint(run)
    assert latest is not None and latest.name == "step_000003"
    assert not list((run / "checkpoints").glob("*.tmp"))
    s2 = load_file(str(run / "checkpoints/step_000002/trainable.safetensors"))
    s3 = load_file(str(latest / "trainable.safetensors"))
    assert all(torch.equal(s2[k], s3[k]) for k in s2)  # the skipped step did not update the weights


def test_function_reward_by_import_path_and_weighted_sum(tmp_path: Path) -> None:
    rc, run = train_cli(
        tmp_path,
        "reward.terms=[{name: '_rewards:mean_red', weight: 0.5}, {name: brightness, weight: 1.0}]",
        "run.export=false",
    )
    assert rc == 0
    rec = read_metrics(run / "metrics.jsonl")[-1]
    assert "reward/mean_red" in rec and "reward/brightness" in rec


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=nope"], "unknown method"),
        (["model=nope"], "model.name"),
        (["reward=nope"], "unknown reward"),
        (["method.alpha=1.5"], "alpha"),
        (["method.tau=0"], "tau"),
        (["method.step_range=middle"], "step_range"),
        (["method=alignprop", "method.min_grad_steps=5", "method.max_grad_steps=2"], "min_grad_steps"),
        (["sampler.num_steps=0"], "sampler.num_steps"),
        (["data.prompts=/no/such/file.txt"], "no such file"),
        (["sampler.height=60"], "multiples of 16"),
        (["reward=png_compressibility"], "not differentiable"),
        (["train.max_stepz=3"], "max_stepz"),
        (["train.max_steps=abc"], "max_steps"),
    ],
)
def test_bad_input_is_rejected_with_a_clear_message(tmp_path: Path, capsys, overrides, message) -> None:
    rc, run = train_cli(tmp_path, *overrides)
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (run / "checkpoints").exists()


def test_empty_prompt_file_is_rejected(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    rc, _ = train_cli(tmp_path, f"data.prompts={empty}")
    assert rc == 2 and "holds no prompt" in capsys.readouterr().err


def test_jsonl_prompts_and_config_listing(tmp_path: Path, capsys) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"prompt": p, "tag": "x"}) for p in ["a red circle", "a blue square"]))
    rc, _ = train_cli(tmp_path, f"data.prompts={path}", "run.export=false", "train.max_steps=1")
    assert rc == 0
    assert main(["configs"]) == 0
    listed = capsys.readouterr().out.split()
    assert {f"tiny/{m}" for m in METHODS} <= set(listed) and "flux/leapalign" in listed


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.mixed_precision=bf16"],
        ["model.gradient_checkpointing=true"],
        ["train.grad_accum=2", "data.batch_size=1"],
    ],
)
def test_precision_checkpointing_and_accumulation_options_train(tmp_path: Path, overrides: list[str]) -> None:
    rc, run = train_cli(tmp_path, "run.export=false", *overrides)
    assert rc == 0
    records = read_metrics(run / "metrics.jsonl")
    assert len(records) == 2 and all(r["grad_norm"] is not None and r["grad_norm"] > 0 for r in records)


def test_sample_command_writes_a_grid_from_a_run(tmp_path: Path) -> None:
    from PIL import Image

    rc, run = train_cli(tmp_path, "run.export=false")
    assert rc == 0
    out = tmp_path / "grid.png"
    assert (
        main(["sample", "--run", str(run), "--prompt", "a red circle", "--num", "3", "--steps", "4", "--out", str(out)])
        == 0
    )
    img = Image.open(out)
    assert img.size[0] > 3 * 64 and img.size[1] >= 64
    assert main(["sample", "--run", str(tmp_path / "nothing"), "--out", str(out)]) == 2


def test_a_fresh_run_never_mixes_into_an_earlier_one(tmp_path: Path, capsys) -> None:
    rc, run = train_cli(tmp_path, "run.export=false", "train.max_steps=1")
    assert rc == 0
    rc, _ = train_cli(tmp_path, "run.export=false", "train.max_steps=1")
    assert rc == 2 and "already holds a run" in capsys.readouterr().err
    rc, _ = train_cli(tmp_path, "run.export=false", "train.max_steps=1", "run.overwrite=true")
    assert rc == 0 and [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]


def test_gradient_accumulation_matches_the_larger_batch(tmp_path: Path) -> None:
    """batch 2 x accumulation 1 == batch 1 x accumulation 2 (DRaFT-K: the trained steps do not depend on a draw)."""
    common = ["train.max_steps=1", "sampler.num_steps=4", "run.tensorboard=false", "run.export=false"]
    runs = {}
    for name, extra in (("big", ["data.batch_size=2"]), ("accum", ["data.batch_size=1", "train.grad_accum=2"])):
        runs[name] = tmp_path / name
        assert main(["train", "--config", "tiny/draft-k", f"run.output_dir={runs[name]}", *common, *extra]) == 0
    a = load_file(str(runs["big"] / "checkpoints/step_000001/trainable.safetensors"))
    b = load_file(str(runs["accum"] / "checkpoints/step_000001/trainable.safetensors"))
    # Adam's first step is lr * g / (|g| + eps): an element whose gradient is near eps moves by a rounding-sized
    # fraction of lr (1e-3) that differs between the two summation orders, so 1e-5 (1% of lr) is the bound
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # Adam's update hides a wrongly scaled gradient; the logged (pre-clipping) gradient norm does not.
    norms = [read_metrics(runs[n] / "metrics.jsonl")[0]["grad_norm"] for n in ("big", "accum")]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)


@pytest.mark.parametrize("method", ["flow-grpo", "dance-grpo", "mix-grpo"])
def test_policy_gradient_methods_train_on_a_non_differentiable_reward(tmp_path: Path, method: str) -> None:
    rc, run = train_cli(tmp_path, "model=tiny-sd3", "reward=png_compressibility", config=f"tiny/{method}")
    assert rc == 0
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["grad_norm"] is not None for r in records)
    assert load_config(str(run / "config.yaml")).reward.terms[0].name == "png_compressibility"
