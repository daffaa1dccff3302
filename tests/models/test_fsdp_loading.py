"""Loading ``flux`` / ``sd3`` from a pipeline folder under FSDP's RAM-efficient loading (the shipped
leapalign/accelerate/fsdp.yaml): ranks > 0 build the transformer, and its LoRA adapters, on the meta device with the
dtypes rank 0 loads; rank 0 reads the real weights; nobody moves the transformer before ``accelerator.prepare``.

The default tier fakes the launch in one process: the variables ``accelerate launch`` exports, ``RANK``, and an
initialised process group (``torch.distributed.is_initialized`` patched, as a process group is what transformers'
own check and ours require). The distributed tier (``make test-slow``) runs this file on two CPU processes (gloo):
FSDP1 with ``sync_module_states`` and accelerate's ``param_init_fn`` must materialise rank 1's meta transformer and
fill it with rank 0's weights (FSDP1's check that those tensors are on a GPU is lifted for gloo). Only a GPU run
through ``accelerate launch --config_file fsdp.yaml`` exercises accelerate's own prepare (NCCL, auto-wrap by class
name, moving rank 0's CPU transformer to the GPU) and the real host-memory saving.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from leapalign.models import ModelConfig, build_model, build_tiny_flux_pipeline, build_tiny_sd3_pipeline
from leapalign.models.common import fsdp_ram_efficient_loading

SEQ = 32
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny Flux and SD3 pipeline folders (shared by the tests of this module, read only)."""
    root = tmp_path_factory.mktemp("pipes")
    build_tiny_flux_pipeline(0).save_pretrained(root / "flux")
    build_tiny_sd3_pipeline(0).save_pretrained(root / "sd3")
    return {"flux": root / "flux", "sd3": root / "sd3"}


def launched(monkeypatch: pytest.MonkeyPatch, rank: int, fsdp: bool = True, group: bool = True) -> None:
    """This process as rank ``rank`` of an ``accelerate launch`` (FSDP RAM-efficient loading when ``fsdp``)."""
    for key in FSDP_ENV:
        monkeypatch.delenv(key, raising=False)
    if fsdp:
        for key, value in FSDP_ENV.items():
            monkeypatch.setenv(key, value)
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: group)


def config(kind: str, folder: Path, finetune: str = "lora", weights: str = "fp32") -> ModelConfig:
    return ModelConfig(
        name=kind, path=str(folder), finetune=finetune, weights_dtype=weights, lora_rank=4, max_sequence_length=SEQ
    )


def file_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))


def layout(module: torch.nn.Module) -> dict[str, tuple]:
    """Name -> (shape, dtype, requires_grad) of every parameter and buffer: what FSDP's broadcast must match."""
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return {n: (tuple(t.shape), t.dtype, t.requires_grad) for n, t in tensors}


@pytest.mark.parametrize("kind", ["flux", "sd3"])
@pytest.mark.parametrize(("finetune", "weights"), [("lora", "fp32"), ("lora", "bf16"), ("full", "bf16")])
def test_rank_1_builds_the_transformer_on_meta_with_rank_0s_layout(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str, finetune: str, weights: str
) -> None:
    cfg = config(kind, folders[kind], finetune, weights)
    launched(monkeypatch, rank=0)
    first = build_model(cfg)
    launched(monkeypatch, rank=1)
    other = build_model(cfg)  # device="cpu": moving a meta transformer would raise
    assert other.transformer_placed_by_fsdp and first.transformer_placed_by_fsdp
    params = dict(other.transformer.named_parameters())
    assert params and all(p.is_meta for p in params.values())
    assert not any(p.is_meta for p in first.transformer.parameters())
    assert not any(b.is_meta for b in other.transformer.buffers())
    lora = [n for n in params if "lora_" in n]
    if finetune == "lora":
        assert lora and all(params[n].requires_grad and params[n].dtype == torch.float32 for n in lora)
    else:
        assert not lora and all(p.requires_grad for p in params.values())
    assert layout(other.transformer) == layout(first.transformer)
    frozen = [*other.vae.parameters(), *other.text_encoder.t5.parameters()]
    assert not any(p.is_meta for p in frozen)  # the frozen parts are not sharded: real on every rank


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_rank_0_loads_the_folders_weights_and_leaves_the_transformer_off_the_device(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    launched(monkeypatch, rank=0)
    model = build_model(config(kind, folders[kind], "full"), device="meta")  # "meta": any move would show
    state = model.transformer.state_dict()
    expected = file_weights(folders[kind])
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    assert all(p.device.type == "cpu" for p in model.transformer.parameters())  # FSDP moves it
    assert all(p.is_meta for p in model.vae.parameters())  # the frozen parts went to the device


@pytest.mark.parametrize(("rank", "fsdp", "group"), [(1, False, True), (1, True, False), (0, False, False)])
def test_without_ram_efficient_loading_every_rank_loads_real_weights(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, rank: int, fsdp: bool, group: bool
) -> None:
    launched(monkeypatch, rank=rank, fsdp=fsdp, group=group)
    assert not fsdp_ram_efficient_loading()
    model = build_model(config("flux", folders["flux"], "full"))
    assert not model.transformer_placed_by_fsdp
    state, expected = model.transformer.state_dict(), file_weights(folders["flux"])
    assert all(torch.equal(state[k], expected[k]) for k in expected)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_frozen_parts_load_alike_on_every_rank_under_the_flag(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """transformers' own FSDP path (taken on LOCAL_RANK != 0) must still give rank 1 the text encoders' weights."""
    cfg = config(kind, folders[kind])
    launched(monkeypatch, rank=1)
    other = build_model(cfg)
    launched(monkeypatch, rank=0, fsdp=False, group=False)
    plain = build_model(cfg)
    prompts = ["a red circle", ""]
    ours, ref = other.encode_prompts(prompts), plain.encode_prompts(prompts)
    assert torch.equal(ours.prompt_embeds, ref.prompt_embeds) and torch.equal(ours.pooled, ref.pooled)
    for a, b in zip(other.vae.state_dict().values(), plain.vae.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.distributed  # two processes: `make test-slow`
def test_two_process_fsdp1_sync_fills_rank_1_from_rank_0(folders: dict[str, Path]) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **FSDP_ENV}
    proc = subprocess.run([*cmd, str(folders["flux"])], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "RANK 0 OK" in proc.stdout and "RANK 1 OK" in proc.stdout


def _worker(folder: str) -> None:
    """One rank: build under FSDP RAM-efficient loading, wrap as accelerate's FSDP1 prepare does on this CPU (its
    ``param_init_fn``, ``sync_module_states``), and compare the full weights and a forward pass with a plain load."""
    import torch.distributed as dist
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from torch.distributed.fsdp import FullyShardedDataParallel, _init_utils
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    # FSDP1 refuses CPU tensors with sync_module_states only because NCCL cannot broadcast them; gloo can, so this
    # test lifts that device check to run the materialisation and the rank-0 broadcast themselves on CPU.
    _init_utils._check_module_states_for_sync_module_states = lambda states: None
    dist.init_process_group("gloo")
    rank, cpu = dist.get_rank(), torch.device("cpu")
    for finetune in ("lora", "full"):
        cfg = config("flux", Path(folder), finetune)
        os.environ.update(FSDP_ENV)
        model = build_model(cfg)
        assert all(p.is_meta == (rank != 0) for p in model.transformer.parameters()), f"rank {rank} {finetune}"
        os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] = "false"
        reference = build_model(cfg)
        model.transformer = FullyShardedDataParallel(
            model.transformer,
            auto_wrap_policy=ModuleWrapPolicy({FluxTransformerBlock, FluxSingleTransformerBlock}),
            use_orig_params=True,
            sync_module_states=True,
            param_init_fn=lambda m: m.to_empty(device=cpu, recurse=False),
            device_id=cpu,
        )
        with FullyShardedDataParallel.summon_full_params(model.transformer):
            full = {
                n.replace("_fsdp_wrapped_module.", ""): p.detach().clone()
                for n, p in model.transformer.named_parameters()
            }
        expected = dict(reference.transformer.named_parameters())
        assert full.keys() == expected.keys()
        bad = [n for n in expected if not torch.equal(full[n], expected[n])]
        assert not bad, f"rank {rank} {finetune}: {len(bad)} tensors differ from rank 0's, e.g. {bad[:3]}"
        x = torch.randn(2, *reference.latent_shape(64, 64), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours = model.velocity(x, 0.6, model.encode_prompts(["a red circle", "two blue squares"]))
            ref = reference.velocity(x, 0.6, reference.encode_prompts(["a red circle", "two blue squares"]))
        torch.testing.assert_close(ours, ref)
    dist.destroy_process_group()
    print(f"RANK {rank} OK", flush=True)


if __name__ == "__main__":
    _worker(sys.argv[1])
