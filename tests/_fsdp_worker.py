"""One rank of the FSDP checkpoint checks of tests/test_fsdp.py, on CPU with gloo.

Launched as ``python -m torch.distributed.run --nproc_per_node 2 tests/_fsdp_worker.py MODE OUT_DIR``:

* ``fsdp2`` / ``fsdp1``: the tiny Flux transformer (LoRA), sharded with FSDP2 ``fully_shard`` or FSDP1
  (``use_orig_params``, one unit per transformer block, as leapalign/accelerate/fsdp.yaml), takes AdamW steps with
  an EMA on the same data on every rank; its checkpoint (``leapalign.checkpoint``) must equal, bit for bit, the
  same steps taken without FSDP by one process. Loaded into a fresh sharded model, every rank's shards of the
  weights, EMA and optimiser state must equal those that were saved, and one more step must agree.
* ``trainer``: :class:`leapalign.trainer.Trainer` on a 2-process accelerator whose ``prepare`` shards the
  transformer with FSDP2 (accelerate only shards on GPUs): 3 steps straight must equal 2 steps, a checkpoint and
  a resumed third step bit for bit, and must agree with the same run under DDP.

Each rank prints ``RANK <r> OK`` at the end.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
from accelerate import Accelerator
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
from safetensors.torch import load_file
from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from torch.distributed.tensor import DTensor

from leapalign import checkpoint as ckpt
from leapalign.config import load_config
from leapalign.ema import EMA
from leapalign.models import build_model
from leapalign.models.finetune import unwrap_model

BLOCKS = (FluxTransformerBlock, FluxSingleTransformerBlock)
RUN = ["sampler.num_steps=4", "run.tensorboard=false", "run.export=false", "data.batch_size=2"]


def local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def shard(transformer: torch.nn.Module, kind: str) -> torch.nn.Module:
    if kind == "fsdp1":
        policy = ModuleWrapPolicy(set(BLOCKS))
        cpu = torch.device("cpu")
        return FullyShardedDataParallel(transformer, use_orig_params=True, auto_wrap_policy=policy, device_id=cpu)
    for module in transformer.modules():
        if isinstance(module, BLOCKS):
            fully_shard(module)
    return fully_shard(transformer)


class Run:
    """A tiny Flux model, its AdamW and EMA, optionally sharded; ``step`` takes one step on fixed data."""

    def __init__(self, kind: str | None, seed: int = 0, shift: float = 0.0) -> None:
        torch.manual_seed(seed)
        self.model = build_model(load_config("tiny/leapalign").model)
        if shift:  # weights that differ from those a checkpoint will bring
            with torch.no_grad():
                for p in ckpt.named_trainable(self.model.transformer).values():
                    p.add_(shift)
        if kind is not None:
            self.model.transformer = shard(self.model.transformer, kind)
        self.params = ckpt.named_trainable(unwrap_model(self.model.transformer))
        self.opt = torch.optim.AdamW(list(self.params.values()), lr=1e-2, weight_decay=0.1)
        self.ema = EMA(self.params, 0.9)
        gen = torch.Generator().manual_seed(1234)  # the same data on every rank
        self.x = torch.randn(2, *self.model.latent_shape(64, 64), generator=gen)
        self.cond = self.model.encode_prompts(["a red circle", "two blue squares"])

    def step(self) -> None:
        loss = self.model.velocity(self.x, torch.tensor(0.6), self.cond).square().mean()
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update()

    def save(self, directory: Path) -> None:
        names, model = list(self.params), self.model.transformer
        ckpt.save_weights(model, names, directory / "trainable.safetensors")
        with self.ema.swapped():
            ckpt.save_weights(model, names, directory / "ema.safetensors")
        ckpt.save_optimizer(model, self.opt, directory)

    def load(self, directory: Path) -> None:
        names, model = list(self.params), self.model.transformer
        ckpt.load_weights(model, names, directory / "trainable.safetensors")
        with self.ema.swapped():
            ckpt.load_weights(model, names, directory / "ema.safetensors")
        ckpt.load_optimizer(model, self.opt, names, directory)

    def shards(self) -> dict[str, torch.Tensor]:
        """This rank's part of every weight, EMA tensor and optimiser state tensor."""
        out = {f"w/{n}": local(p).detach().clone() for n, p in self.params.items()}
        out.update({f"ema/{n}": local(t).clone() for n, t in self.ema.named().items()})
        for n, p in self.params.items():
            out.update({f"opt/{n}.{k}": local(v).clone() for k, v in self.opt.state.get(p, {}).items()})
        return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), (what, sorted(set(a) ^ set(b))[:5])
    bad = [k for k in a if not torch.equal(a[k], b[k])]
    assert not bad, f"{what}: {len(bad)} tensors differ, e.g. {bad[:3]}"


def check_functions(kind: str, out: Path) -> None:
    rank = dist.get_rank()
    plain, sharded = Run(None), Run(kind)
    assert kind == "fsdp1" or all(isinstance(p, DTensor) for p in sharded.params.values())
    for _ in range(3):
        plain.step()
        sharded.step()
    directory = out / kind
    if rank == 0:
        directory.mkdir(parents=True)
    dist.barrier()
    sharded.save(directory)
    dist.barrier()
    # The saved full tensors equal those of the same steps without FSDP, bit for bit.
    weights = {n: p.detach() for n, p in plain.params.items()}
    same(load_file(str(directory / "trainable.safetensors")), weights, "weights")
    same(load_file(str(directory / "ema.safetensors")), plain.ema.named(), "ema")
    moments = {f"{n}.{k}": v for n, p in plain.params.items() for k, v in plain.opt.state[p].items()}
    same(load_file(str(directory / "optimizer.safetensors")), moments, "optimizer")
    # A fresh sharded model (other weights, no optimiser state) loads them into each rank's shards.
    fresh = Run(kind, seed=1, shift=0.5)
    fresh.load(directory)
    same(fresh.shards(), sharded.shards(), f"rank {rank} shards after loading")
    fresh.step()
    sharded.step()
    same(fresh.shards(), sharded.shards(), f"rank {rank} shards one step after loading")


class FullyShardAccelerator(Accelerator):
    """accelerate's multi-process CPU accelerator, except that ``prepare`` shards the model with FSDP2 and switches
    the optimiser to the sharded parameters, as accelerate's FSDP2 ``prepare`` does on GPUs."""

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer):  # type: ignore[override]
        names = {id(p): n for n, p in model.named_parameters()}
        model = shard(model, "fsdp2")
        sharded = dict(model.named_parameters())
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
        return model, optimizer


def check_trainer(out: Path) -> None:
    from leapalign.trainer import Trainer

    def train(acc: Accelerator, run: Path, steps: int, *extra: str) -> Trainer:
        cfg = load_config("tiny/leapalign", [f"run.output_dir={run}", f"train.max_steps={steps}", *RUN, *extra])
        trainer = Trainer(cfg, accelerator=acc)
        trainer.train()
        return trainer

    fsdp, ddp = FullyShardAccelerator(cpu=True), Accelerator(cpu=True)
    straight = train(fsdp, out / "straight", 3)
    assert all(isinstance(p, DTensor) for p in straight.params.values()), "the trainer kept unsharded parameters"
    train(fsdp, out / "resumed", 2)
    train(fsdp, out / "resumed", 3, "run.resume=true")
    train(ddp, out / "ddp", 3)
    last = "checkpoints/step_000003"
    for name in ("trainable", "ema", "optimizer"):
        a, b, c = (load_file(str(out / run / last / f"{name}.safetensors")) for run in ("straight", "resumed", "ddp"))
        same(a, b, f"{name}: resumed under FSDP2")
        assert a.keys() == c.keys() and all(torch.allclose(a[k], c[k], atol=1e-6) for k in a), f"{name}: FSDP2 vs DDP"
    first = load_file(str(out / "straight" / last / "trainable.safetensors"))
    initial = ckpt.named_trainable(build_model(load_config("tiny/leapalign").model).transformer)
    assert any(not torch.equal(first[k], initial[k]) for k in initial), "the checkpoint holds the initial weights"


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    warnings.filterwarnings("ignore", message=r"(?s).*requires_grad")  # FSDP1 on frozen + trainable parameters
    if mode == "trainer":
        check_trainer(out)  # the accelerator starts the process group
    else:
        dist.init_process_group("gloo")
        check_functions(mode, out)
    print(f"RANK {dist.get_rank()} OK", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
