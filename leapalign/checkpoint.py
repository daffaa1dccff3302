"""Checkpoints: trainable weights, EMA, optimiser, RNG streams and counters, in safetensors plus JSON.

Layout of ``<run_dir>/checkpoints/step_000010/``::

    trainable.safetensors   trainable weights by parameter name (full tensors, whatever the sharding)
    ema.safetensors         EMA of the trainable weights (same names)
    optimizer.safetensors   optimiser state tensors (AdamW step and moments), flattened as "<param name>.<key>"
    optimizer.json          param groups (hyper-parameters, parameters by name) and non-tensor state values
    rng_rank<r>.safetensors every generator of rank r
    state.json              step counter, bookkeeping and the SHA-256 of every other file (written last: its
                            presence marks completeness)

Weights and optimiser state go through torch's distributed-checkpoint state-dict API
(``torch.distributed.checkpoint.state_dict``), which treats a plain module, DDP, FSDP1 and FSDP2 alike: saving
gathers full tensors (a collective that every rank joins; rank 0 writes), loading has every rank check the names,
rank 0 read the tensors and broadcast them, and each rank keep its own shard (:func:`save_weights`,
:func:`load_weights`, :func:`save_optimizer`, :func:`load_optimizer`). A checkpoint written under FSDP therefore
loads into a plain module and the other way round.

A checkpoint is written into ``step_XXXXXX.tmp`` and renamed when complete, so a crash never leaves a
half-written checkpoint that ``--resume`` would pick up, and never touches the previous one. Loading verifies
every file against its checksum first (:func:`verify`), so a truncated or bit-flipped file is named and the
trainer falls back to the previous complete checkpoint. Files get the permissions of any file the user creates
(``0666 & ~umask``; safetensors alone writes ``0600``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from accelerate.optimizer import AcceleratedOptimizer
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.tensor import DTensor

STATE_FILE = "state.json"
# Name segments that wrappers insert inside a module (FSDP1, activation checkpointing, torch.compile); the
# distributed-checkpoint API drops them from parameter names too.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: a file missing, unreadable or not matching its recorded checksum."""


class IncompatibleCheckpointError(ValueError):
    """A sound checkpoint that this run cannot load (another number of processes): no fallback helps."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step_{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run (``state.json`` present), newest first."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and (p / STATE_FILE).is_file()]
    return sorted(done, key=lambda p: int(p.name.split("_")[1]), reverse=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    done = complete_checkpoints(run_dir)
    return done[0] if done else None


def describe_checkpoints(run_dir: Path) -> str:
    """One line on what ``run_dir/checkpoints`` holds, for error messages."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return f"{root} does not exist"
    found = sorted(p.name for p in root.iterdir())
    if not found:
        return f"{root} is empty"
    incomplete = [n for n in found if n.endswith(".tmp") or not (root / n / STATE_FILE).is_file()]
    return f"{root} holds {', '.join(found)}" + (f" (incomplete: {', '.join(incomplete)})" if incomplete else "")


def sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(8 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> dict[str, Any]:
    """Reads ``state.json`` and checks every file it lists against its size and SHA-256.

    Returns:
        The checkpoint's state.

    Raises:
        CheckpointError: naming the first file that is missing, truncated or corrupt.
    """
    try:
        state = read_state(directory)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / STATE_FILE} is unreadable ({err}).") from err
    for name, expected in state.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"{path} is missing.")
        if path.stat().st_size != expected["bytes"]:
            raise CheckpointError(f"{path} has {path.stat().st_size} bytes, {expected['bytes']} were written.")
        if sha256(path) != expected["sha256"]:
            raise CheckpointError(f"{path} does not match its SHA-256 (the file is corrupt).")
    return state


def _default_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def named_trainable(module: nn.Module) -> dict[str, nn.Parameter]:
    """Trainable parameters of ``module`` by name, in registration order.

    Names are those of the plain module: the segments FSDP1, activation checkpointing and ``torch.compile`` insert
    are dropped, as the distributed-checkpoint API names parameters. Under FSDP the values are this rank's shards.
    """
    names = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            for segment in _WRAPPER_SEGMENTS:
                name = name.replace(segment, "")
            names[name] = p
    return names


def tensors_to_file(tensors: Mapping[str, Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    path.chmod(_default_mode())


def non_finite(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity (empty when all are finite); a sharded tensor
    (FSDP2's ``DTensor``) is checked on this rank's shard only."""
    local = {n: t.to_local() if isinstance(t, DTensor) else t for n, t in tensors.items()}
    return [n for n, t in local.items() if not bool(torch.isfinite(t.detach()).all())]


def load_into(params: Mapping[str, nn.Parameter], path: Path) -> None:
    """Copies tensors from a safetensors file into the parameters of an unsharded module; every name must match
    exactly (a wrapped or sharded model loads with :func:`load_weights`)."""
    check_names(path, params)
    state = load_file(str(path))
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(state[name].to(p))


def check_names(path: Path, names: Sequence[str] | Mapping[str, Any]) -> None:
    """Raises ``ValueError`` unless the safetensors file ``path`` holds exactly ``names`` (reads its header only)."""
    with safe_open(str(path), framework="pt") as fh:
        found = set(fh.keys())
    missing, extra = set(names) - found, found - set(names)
    if missing or extra:
        raise ValueError(
            f"{path} does not match the model: missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}. "
            f"Was it written with another model or fine-tuning mode (LoRA rank, targets)?"
        )


# ------------------------------------------------------------------ weights and optimiser, any wrapping or sharding
def is_main_rank() -> bool:
    """Whether this process writes the checkpoint files: rank 0, or the only process."""
    return not _distributed() or dist.get_rank() == 0


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_options(model: nn.Module) -> StateDictOptions:
    # cpu_offload gathers on rank 0 only, in host memory. FSDP1 crashes gathering CPU parameters with it (torch
    # 2.13, gloo), so FSDP1 on the CPU gives every rank the full tensors instead.
    fsdp1_on_cpu = any(isinstance(m, FullyShardedDataParallel) for m in model.modules()) and all(
        p.device.type == "cpu" for p in model.parameters()
    )
    return StateDictOptions(full_state_dict=True, cpu_offload=not fsdp1_on_cpu, ignore_frozen_params=True)


def _load_options() -> StateDictOptions:
    # strict=False: a checkpoint holds the trainable weights only (the names are checked before loading).
    return StateDictOptions(full_state_dict=True, strict=False, broadcast_from_rank0=_distributed())


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    # The optimiser itself: accelerate's wrapper would run its GradScaler when the state-dict API initialises state.
    while isinstance(optimizer, AcceleratedOptimizer):
        optimizer = optimizer.optimizer
    return optimizer


def gather_weights(model: nn.Module, names: Sequence[str]) -> dict[str, Tensor]:
    """Full copies of the weights ``names`` of a plain, DDP, FSDP1 or FSDP2 ``model``.

    A collective: every rank calls it. The result is complete on rank 0; other ranks may get an empty dict. On
    one process the tensors may be the parameters themselves (write them before changing the parameters).
    """
    state = get_model_state_dict(model, options=_gather_options(model))
    if not state:
        return {}
    missing = set(names) - set(state)
    if missing:
        raise ValueError(f"the model has no trainable parameter named {sorted(missing)[:5]}.")
    return {n: state[n] for n in names}


def save_weights(model: nn.Module, names: Sequence[str], path: Path) -> None:
    """Gathers the weights ``names`` (collective, :func:`gather_weights`); rank 0 writes them to ``path``."""
    state = gather_weights(model, names)
    if is_main_rank():
        tensors_to_file(state, path)


def load_weights(model: nn.Module, names: Sequence[str], path: Path) -> None:
    """Loads a file of :func:`save_weights` into ``model`` (plain, DDP, FSDP1 or FSDP2), leaving other weights.

    A collective: every rank checks the names (so all fail together), rank 0 reads the tensors, which are
    broadcast and sharded into each rank's parameters.
    """
    check_names(path, names)
    state = load_file(str(path)) if is_main_rank() else {}
    set_model_state_dict(model, state, options=_load_options())


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """Gathers the optimiser state of ``model``'s parameters by parameter name (collective); rank 0 writes
    ``optimizer.safetensors`` (tensors as ``"<param name>.<key>"``) and ``optimizer.json``."""
    state = get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_gather_options(model))
    if not is_main_rank():
        return
    tensors: dict[str, Tensor] = {}
    values: dict[str, dict[str, Any]] = {}
    for name, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{name}.{key}"] = value
            else:
                values.setdefault(name, {})[key] = value
    tensors_to_file(tensors, directory / "optimizer.safetensors")
    (directory / "optimizer.json").write_text(json.dumps({"param_groups": state["param_groups"], "state": values}))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, names: Sequence[str], directory: Path) -> None:
    """Loads the files of :func:`save_optimizer` into ``optimizer`` (collective, as :func:`load_weights`).

    ``names`` are the trainable parameters in the optimiser's order; they also read checkpoints written before the
    state was keyed by name (keyed by the parameter's index in that order).
    """
    spec = json.loads((directory / "optimizer.json").read_text())
    by_index = isinstance(spec, list)
    if by_index:
        spec = {"param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in spec], "state": {}}
    listed = [n for group in spec["param_groups"] for n in group["params"]]
    if sorted(listed) != sorted(names):
        missing, extra = set(names) - set(listed), set(listed) - set(names)
        raise ValueError(
            f"{directory / 'optimizer.json'} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(extra)[:5]}. Was it written with another model or fine-tuning mode?"
        )
    full: dict[str, Any] = {}
    if is_main_rank():
        state: dict[str, dict[str, Any]] = {n: dict(v) for n, v in spec["state"].items()}
        for key, value in load_file(str(directory / "optimizer.safetensors")).items():
            name, field = key.rsplit(".", 1)
            state.setdefault(names[int(name)] if by_index else name, {})[field] = value
        full = {"state": state, "param_groups": spec["param_groups"]}
    set_optimizer_state_dict(model, _torch_optimizer(optimizer), full, options=_load_options())


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
    """Records every file's size and SHA-256 in ``state.json`` (written last), renames ``tmp`` into place and
    prunes all but the ``keep`` newest checkpoints."""
    files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != STATE_FILE)
    state = {**state, "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files}}
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
    (tmp / STATE_FILE).chmod(_default_mode())
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
