"""``leapalign eval`` end to end on the tiny Flux model with two rewards (one of them a CLIP model saved in the
Hugging Face format): outputs, resumption after an interruption, and ``--compare`` against a trained run."""

from __future__ import annotations

import csv
import json

import pytest
from _tiny_clip import save_tiny_clip_folder

import leapalign.eval.runner as runner
from leapalign.cli import main

REAL_GENERATE = runner.generate
REWARD_KEYS = [f"{r}.{s}" for r in ("brightness", "clip_score") for s in ("mean", "std", "ci95_low", "ci95_high")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("eval")
    prompts = root / "prompts.txt"
    prompts.write_text("a red circle\n# a comment\n\na blue square on white\na photo of a cat\n")
    clip = save_tiny_clip_folder(root / "clip")
    # one override grammar: everything that is a config key is key=value, as for `leapalign train`
    args = ["--config", "tiny/leapalign", "--no-progress", "--diversity-reward", "clip_score"]
    args += [f"evaluation.prompts={prompts}", "evaluation.images_per_prompt=2", "evaluation.num_steps=2"]
    args += ["sampler.height=32", "sampler.width=32", "evaluation.batch_size=2"]
    args += ["evaluation.rewards=brightness,clip_score", f"evaluation.rewards.1.args.model={clip}"]
    return {"root": root, "args": args}


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of an evaluation."""


def _counting_generate(limit: int | None = None) -> tuple[list[int], object]:
    calls: list[int] = []

    def generate(model, prompts, **kw):
        if limit is not None and len(calls) >= limit:
            raise Interrupted
        calls.append(len(prompts))
        return REAL_GENERATE(model, prompts, **kw)

    return calls, generate


def test_eval_writes_everything_and_resumes_after_an_interruption(setup, monkeypatch, capsys) -> None:
    root, args = setup["root"], setup["args"]
    full, part = root / "full", root / "part"
    assert main(["eval", *args, "--out", str(full)]) == 0
    out = capsys.readouterr().out
    assert "clip_score.mean" in out and "diversity.pixel" in out

    metrics = json.loads((full / "eval.json").read_text())
    assert all(k in metrics for k in REWARD_KEYS) and metrics["num_images"] == 6 and metrics["num_prompts"] == 3
    assert metrics["brightness.ci95_low"] <= metrics["brightness.mean"] <= metrics["brightness.ci95_high"]
    assert metrics["diversity.pixel"] > 0 and "diversity.clip_score" in metrics
    rows = list(csv.DictReader((full / "images.csv").open()))
    assert len(rows) == 6 and rows[1]["prompt"] == "a red circle" and rows[1]["seed"] == "1000"
    assert (full / rows[5]["file"]).is_file() and (full / "images/00002/metadata.jsonl").is_file()
    assert (full / "samples.png").is_file() and "| clip_score |" in (full / "report.md").read_text()

    calls, interrupted = _counting_generate(limit=1)
    monkeypatch.setattr(runner, "generate", interrupted)
    with pytest.raises(Interrupted):
        main(["eval", *args, "--out", str(part)])
    assert calls == [2] and len((part / "records.jsonl").read_text().splitlines()) == 2
    first_png = part / "images/00000/samples/0000.png"
    stamp = first_png.stat().st_mtime_ns

    calls, counting = _counting_generate()
    monkeypatch.setattr(runner, "generate", counting)
    assert main(["eval", *args, "--out", str(part)]) == 0
    assert sum(calls) == 4 and first_png.stat().st_mtime_ns == stamp  # finished images are not redone
    resumed = json.loads((part / "eval.json").read_text())
    for key in [*REWARD_KEYS, "diversity.pixel", "diversity.clip_score"]:
        assert resumed[key] == pytest.approx(metrics[key], abs=1e-6), key

    calls, counting = _counting_generate()
    monkeypatch.setattr(runner, "generate", counting)
    assert main(["eval", *args, "--out", str(part)]) == 0 and calls == []  # all done: nothing regenerated
    assert main(["eval", *args, "evaluation.num_steps=3", "--out", str(part)]) == 2
    assert "other settings (differing: sampling)" in capsys.readouterr().err


def test_compare_a_trained_run_with_its_base_model(setup, capsys) -> None:
    root, args = setup["root"], setup["args"]
    run = root / "run"
    train = ["train", "--config", "tiny/leapalign", f"run.output_dir={run}", "train.max_steps=2", "train.lr=1e-2"]
    assert main([*train, "sampler.num_steps=2", "run.tensorboard=false", "run.export=false"]) == 0
    out = root / "cmp"
    assert main(["eval", *args, "--run", str(run), "--compare", "base", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "win rate of run" in printed

    comp = json.loads((out / "compare.json").read_text())
    assert comp["labels"] == ["run", "base"]
    for name in ("brightness", "clip_score"):
        w = comp[name]
        assert 0.0 <= w["win_rate"] <= 1.0 and w["wins"] + w["ties"] + w["losses"] == w["prompts"] == 3
        diff = comp["run"][f"{name}.mean"] - comp["base"][f"{name}.mean"]
        assert w["mean_diff"] == pytest.approx(diff, abs=1e-9)
        paired = comp["paired"][f"{name}.mean"]
        assert paired["change"] == pytest.approx(diff, abs=1e-9) and paired["ci_low"] <= diff <= paired["ci_high"]
    settings_a = json.loads((out / "A/settings.json").read_text())
    assert settings_a["model"]["weights"].endswith("checkpoints/step_000002/ema.safetensors")
    assert json.loads((out / "B/settings.json").read_text())["model"]["weights"] is None
    assert (out / "compare.png").is_file() and "win rate of run" in (out / "report.md").read_text()
    # the base side equals a standalone evaluation of the base model with the same settings
    base = json.loads((root / "full" / "eval.json").read_text()) if (root / "full").is_dir() else None
    if base is not None:
        assert comp["base"]["clip_score.mean"] == pytest.approx(base["clip_score.mean"], abs=1e-6)
    assert comp["run"]["brightness.mean"] != comp["base"]["brightness.mean"]  # the LoRA weights were used
    live = root / "live"
    assert main(["eval", *args, "--run", str(run / "checkpoints/step_000002"), "--no-ema", "--out", str(live)]) == 0
    weights = json.loads((live / "settings.json").read_text())["model"]["weights"]
    assert weights.endswith("step_000002/trainable.safetensors")


def test_full_fine_tuning_checkpoint(setup) -> None:
    root, args = setup["root"], setup["args"]
    run = root / "full_ft"
    train = ["train", "--config", "tiny/leapalign", f"run.output_dir={run}", "model.finetune=full", "train.lr=1e-2"]
    assert main([*train, "train.max_steps=1", "sampler.num_steps=2", "run.tensorboard=false", "run.export=false"]) == 0
    out = root / "full_ft_eval"
    assert main(["eval", *args, "--run", str(run), "--compare", "base", "evaluation.limit=1", "--out", str(out)]) == 0
    comp = json.loads((out / "compare.json").read_text())
    assert json.loads((out / "A/settings.json").read_text())["model"]["finetune"] == "full"
    assert comp["full_ft"]["brightness.mean"] != comp["base"]["brightness.mean"]
