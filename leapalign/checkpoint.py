"""Checkpoints: trainable weights, EMA, optimiser, RNG streams and counters, in safetensors plus JSON.

Layout of ``<run_dir>/checkpoints/step_000010/``::

    trainable.safetensors   trainable weights by parameter name
    ema.safetensors         EMA of the trainable weights (same names)
    optimizer.safetensors   AdamW moments, flattened as "<param index>.<key>"
    optimizer.json          param groups (hyper-parameters)
    rng_rank<r>.safetensors every generator of rank r
    state.json              step counter and bookkeeping (written last: its presence marks completeness)

A checkpoint is written into ``step_XXXXXX.tmp`` and renamed when complete, so a crash never leaves a
half-written checkpoint that ``--resume`` would pick up, and never touches the previous one.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

STATE_FILE = "state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def named_trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``module`` by name, in registration order."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def tensors_to_file(tensors: Mapping[str, Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_into(params: Mapping[str, nn.Parameter], path: Path) -> None:
    """Copies tensors from a safetensors file into ``params``; every name must match exactly."""
    state = load_file(str(path))
    missing, extra = set(params) - set(state), set(state) - set(params)
    if missing or extra:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}. "
            f"Was it written with another model or fine-tuning mode (LoRA rank, targets)?"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p))


def optimizer_to_files(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for key, value in st.items():
            tensors[f"{idx}.{key}"] = value if isinstance(value, Tensor) else torch.tensor(value)
    tensors_to_file(tensors, directory / "optimizer.safetensors")
    (directory / "optimizer.json").write_text(json.dumps(sd["param_groups"]))


def optimizer_from_files(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    flat = load_file(str(directory / "optimizer.safetensors"))
    state: dict[int, dict[str, Tensor]] = {}
    for name, value in flat.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    groups = json.loads((directory / "optimizer.json").read_text())
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def generators_to_file(generators: Mapping[str, torch.Generator], path: Path) -> None:
    tensors = {name: g.get_state() for name, g in generators.items()}
    tensors["torch_global"] = torch.get_rng_state()
    tensors_to_file(tensors, path)


def generators_from_file(generators: Mapping[str, torch.Generator], path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"{path} is missing: resume with the same number of processes the run was started with.")
    state = load_file(str(path))
    for name, g in generators.items():
        g.set_state(state[name])
    torch.set_rng_state(state["torch_global"])


def begin(run_dir: Path, step: int) -> Path:
    """Creates (empty) the temporary directory of the checkpoint at ``step``."""
    tmp = checkpoint_dir(run_dir, step).with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit(tmp: Path, state: dict[str, Any], keep: int) -> Path:
    """Writes ``state.json``, renames ``tmp`` into place and prunes all but the ``keep`` newest checkpoints."""
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    final = tmp.with_suffix("")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    done = sorted(
        (p for p in final.parent.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(directory: Path) -> dict[str, Any]:
    return json.loads((directory / STATE_FILE).read_text())
