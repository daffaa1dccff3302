"""Checkpoints that are correct whatever the wrapping: weights, EMA and optimiser state saved and loaded through
torch's distributed-checkpoint state-dict API (leapalign.checkpoint), by parameter name.

The default tier checks the round trip on one process. The distributed tier runs tests/_fsdp_worker.py on two CPU
processes (gloo): FSDP2 ``fully_shard`` and FSDP1 (``use_orig_params``, one unit per block, as the shipped
leapalign/accelerate/fsdp.yaml) against the same steps without FSDP, and the Trainer with FSDP2-sharded
parameters, resumed. Only a GPU run through ``accelerate launch --config_file fsdp.yaml`` exercises accelerate's
own FSDP prepare (auto-wrap by class name, its optimiser switch), NCCL, bf16 mixed precision, FSDP1's gather
with CPU offload (rank 0 only) and real memory peaks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fsdp_worker import Run, same
from safetensors.torch import load_file, save_file

from leapalign import checkpoint as ckpt

WORKER = Path(__file__).parent / "_fsdp_worker.py"


def test_a_round_trip_restores_weights_ema_and_optimizer_exactly(tmp_path: Path) -> None:
    trained = Run(None)
    for _ in range(2):
        trained.step()
    trained.save(tmp_path)
    names = list(trained.params)
    moments = load_file(str(tmp_path / "optimizer.safetensors"))
    assert set(moments) == {f"{n}.{k}" for n in names for k in ("step", "exp_avg", "exp_avg_sq")}  # by name
    spec = json.loads((tmp_path / "optimizer.json").read_text())
    assert [n for group in spec["param_groups"] for n in group["params"]] == names
    fresh = Run(None, seed=1, shift=0.5)
    before, saved = fresh.shards(), trained.shards()  # fresh: other weights and EMA, no optimiser state yet
    assert before and not any(torch.equal(before[k], saved[k]) for k in before)
    fresh.load(tmp_path)
    same(fresh.shards(), trained.shards(), "after loading")
    assert fresh.opt.param_groups[0]["weight_decay"] == 0.1
    fresh.step()
    trained.step()
    same(fresh.shards(), trained.shards(), "one step after loading")


def test_an_optimizer_saved_by_index_still_loads(tmp_path: Path) -> None:
    trained = Run(None)
    trained.step()
    sd = trained.opt.state_dict()  # the format checkpoints had before the state was keyed by name
    save_file({f"{i}.{k}": v for i, s in sd["state"].items() for k, v in s.items()}, tmp_path / "optimizer.safetensors")
    (tmp_path / "optimizer.json").write_text(json.dumps(sd["param_groups"]))
    fresh = Run(None)
    ckpt.load_optimizer(fresh.model.transformer, fresh.opt, list(fresh.params), tmp_path)
    moments = {n: fresh.opt.state[p] for n, p in fresh.params.items()}
    for name, p in trained.params.items():
        same(moments[name], trained.opt.state[p], name)


def test_a_checkpoint_of_other_parameters_is_refused_by_name(tmp_path: Path) -> None:
    run = Run(None)
    run.step()
    names, model = list(run.params), run.model.transformer
    ckpt.save_weights(model, names[:-1], tmp_path / "trainable.safetensors")
    with pytest.raises(ValueError, match=r"does not match the model: missing \['single_transformer"):
        ckpt.load_weights(model, names, tmp_path / "trainable.safetensors")
    ckpt.save_optimizer(model, run.opt, tmp_path)
    with pytest.raises(ValueError, match=r"does not match the model: missing \['x.weight'\]"):
        ckpt.load_optimizer(model, run.opt, [*names, "x.weight"], tmp_path)


@pytest.mark.distributed  # two processes: `make test-slow`
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp1", "trainer"])
def test_two_process_fsdp_checkpoints_equal_the_unsharded_run(tmp_path: Path, mode: str) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd += [str(WORKER), mode, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RANK 0 OK" in proc.stdout and "RANK 1 OK" in proc.stdout
