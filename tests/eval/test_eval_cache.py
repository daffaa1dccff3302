"""``leapalign eval --run`` keys its cache on the content of the checkpoint's weights, not only on their path: a
checkpoint replaced in place is evaluated again (with a log line), an unchanged one is resumed."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import leapalign.eval.runner as runner
from leapalign.cli import main
from leapalign.eval.store import weights_fingerprint


def _eval(run: Path, out: Path) -> float:
    args = ["eval", "--config", "tiny/leapalign", "--run", str(run), "--out", str(out), "--no-progress"]
    args += ["evaluation.prompts=builtin:tiny", "evaluation.limit=2", "evaluation.images_per_prompt=1"]
    args += ["evaluation.num_steps=2", "evaluation.batch_size=2", "evaluation.rewards=brightness"]
    assert main([*args, "sampler.height=32", "sampler.width=32"]) == 0
    return json.loads((out / "eval.json").read_text())["brightness.mean"]


def test_a_checkpoint_replaced_in_place_is_evaluated_again(tmp_path: Path, monkeypatch, caplog) -> None:
    run, out = tmp_path / "run", tmp_path / "eval"
    train = ["train", "--config", "tiny/leapalign", f"run.output_dir={run}", "train.max_steps=1", "train.lr=1e-2"]
    assert main([*train, "sampler.num_steps=2", "sampler.height=32", "sampler.width=32", "run.tensorboard=false"]) == 0
    before = _eval(run, out)

    calls: list[int] = []
    real = runner.generate
    monkeypatch.setattr(runner, "generate", lambda model, prompts, **kw: calls.append(1) or real(model, prompts, **kw))
    assert _eval(run, out) == before and calls == []  # unchanged weights: the cached evaluation is resumed

    (weights,) = (run / "checkpoints").glob("step_*/ema.safetensors")
    fingerprint = weights_fingerprint(weights)
    gen = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=gen).to(v.dtype) * 0.5 for k, v in load_file(weights).items()}
    save_file(tensors, weights)  # retrained in place: same path, same size, same state.json
    assert weights_fingerprint(weights) != fingerprint and weights_fingerprint(weights)["size"] == fingerprint["size"]

    with caplog.at_level(logging.WARNING, logger="leapalign.eval.store"):
        after = _eval(run, out)
    assert calls and after != before
    assert "the weights changed since this evaluation was made" in caplog.text and "recomputing" in caplog.text
