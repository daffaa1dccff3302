"""Extending the library through its public registries: a toy world defined by the tests (model, reward,
evaluator, prompt set, replay data) trains with evaluation every step; a FLUX tiny run evaluates on a prompt file
with two rewards; bad plugin and model names list what is registered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from _tiny_clip import save_tiny_clip_folder

from leapalign.cli import main
from leapalign.config import ConfigError, load_config
from leapalign.metrics import read_metrics

TOY = {
    "plugins": ["_toy_world:register"],
    "model": {"name": "toy", "finetune": "full"},
    "sampler": {"num_steps": 3, "height": 8, "width": 8},
    "reward": {"terms": [{"name": "toy_redness"}]},
    "data": {"prompts": "toy:colors", "balance_by": "tag", "batch_size": 2},
    "train": {"max_steps": 2, "lr": 1.0e-2, "ema_decay": 0.5, "replay_weight": 0.1, "replay_source": "toy:solid"},
    "run": {"tensorboard": False, "export": False},
    "evaluation": {
        "enabled": True,
        "every_n_steps": 1,
        "prompts": "toy:colors",
        "rewards": [{"name": "toy_redness"}, {"name": "brightness"}],
        "evaluators": [{"name": "toy_color"}],
        "images_per_prompt": 2,
        "num_steps": 3,
    },
    "method": {"name": "leapalign", "threshold": 10.0},
}


def test_a_toy_world_trains_with_evaluation_every_step(tmp_path: Path, capsys) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), f"run.output_dir={run}"]) == 0
    assert "| toy_color.overall |" in capsys.readouterr().out  # the before / after table
    tags = ["before", "step_000001", "after"]  # step 2 is the last: its evaluation is "after"
    assert sorted(p.name for p in (run / "eval").iterdir()) == sorted(tags)
    for tag in tags:
        metrics = json.loads((run / "eval" / tag / "eval.json").read_text())
        assert metrics["num_images"] == 8 and set(metrics["settings"]["evaluators"]) == {"toy_color"}
        assert {"toy_redness.mean", "brightness.ci95_high", "toy_color.overall", "toy_color.two colors"} <= set(metrics)
        assert (run / "eval" / tag / "samples.png").is_file()
    assert (run / "eval_before.json").is_file() and (run / "samples_after.png").is_file()
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "eval/toy_redness.mean" in r]
    assert [r["step"] for r in logged] == [0, 1, 2]
    assert all({"eval/brightness.ci95_low", "eval/toy_color.overall"} <= set(r) for r in logged)
    assert all(r["replay_loss"] > 0 for r in read_metrics(run / "metrics.jsonl") if "loss" in r)
    # the run folder is enough for `leapalign eval`: its config names the plugin (code, hence --trust-config)
    assert main(["eval", "--run", str(run), "--trust-config", "--no-progress", "evaluation.images_per_prompt=1"]) == 0
    assert json.loads((run / "eval" / "eval.json").read_text())["num_images"] == 4


def test_evaluators_check_the_metadata_before_any_model_is_built(tmp_path: Path, capsys) -> None:
    config = tmp_path / "toy.yaml"
    config.write_text(yaml.safe_dump(TOY))
    rc = main(["train", "--config", str(config), f"run.output_dir={tmp_path / 'r'}", "evaluation.prompts=builtin:tiny"])
    assert rc == 2 and "toy_color needs a 'color'" in capsys.readouterr().err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_unknown_names_list_what_is_registered() -> None:
    with pytest.raises(ConfigError, match="plugin 'no_such_plugin' cannot be imported"):
        load_config("tiny/leapalign", ["plugins=[no_such_plugin]"])
    with pytest.raises(
        ConfigError,
        match=r"model.name='nope': unknown model; registered: flux, flux2, flux2-klein, qwen-image, sd3, shapes",
    ):
        load_config("tiny/leapalign", ["model=nope"])
    with pytest.raises(ConfigError, match="unknown reward; registered: .*brightness"):
        load_config("tiny/leapalign", ["reward=nope"])


def test_flux_tiny_evaluates_every_step_on_a_prompt_file_with_two_rewards(tmp_path: Path) -> None:
    prompts = tmp_path / "my_prompts.txt"
    prompts.write_text("a red circle\na photo of a cat\na blue square\n")
    clip = save_tiny_clip_folder(tmp_path / "clip")
    run = tmp_path / "run"
    args = ["train", "--config", "tiny/leapalign", f"run.output_dir={run}", "train.max_steps=2"]
    args += ["sampler.num_steps=2", "sampler.height=32", "sampler.width=32", "run.tensorboard=false"]
    args += ["evaluation.enabled=true", "evaluation.every_n_steps=1", f"evaluation.prompts={prompts}"]
    args += ["evaluation.rewards=brightness,clip_score", f"evaluation.rewards.1.args.model={clip}"]
    args += ["evaluation.num_steps=2", "evaluation.images_per_prompt=2", "evaluation.batch_size=3"]
    assert main(args) == 0
    for tag in ("before", "step_000001", "after"):
        metrics = json.loads((run / "eval" / tag / "eval.json").read_text())
        assert metrics["num_prompts"] == 3 and "clip_score.ci95_low" in metrics and "brightness.mean" in metrics
        assert (run / "eval" / tag / "samples.png").stat().st_size > 0
    logged = [r for r in read_metrics(run / "metrics.jsonl") if "eval/clip_score.mean" in r]
    assert [r["step"] for r in logged] == [0, 1, 2]
    after = json.loads((run / "eval_after.json").read_text())
    assert after["settings"]["model"]["weights"] == "ema" and after["settings"]["model"]["step"] == 2


def test_the_documented_flux_command_validates(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("my_prompts.txt").write_text("a lighthouse at dusk\n")
    cfg = load_config("flux/leapalign_lora", ["evaluation.every_n_steps=50", "evaluation.prompts=my_prompts.txt"])
    assert cfg.evaluation.enabled and cfg.evaluation.every_n_steps == 50
    assert [t.name for t in cfg.evaluation.rewards] == ["hpsv2", "pickscore", "clip_score"]
