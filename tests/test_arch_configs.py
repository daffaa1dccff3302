"""The GPU benchmarks' architectures against their published sizes, and the planning of the GPU cost grid.

Everything is built on the meta device (nothing allocated, nothing downloaded).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of scripts at the repo root, not an installed package

from benchmarks.archs import ARCHS, arch_spec  # noqa: E402

NEW_ARCHS = ("flux2-dev", "flux2-klein-9b", "flux2-klein-4b", "qwen-image", "z-image")
#: Transformer parameters of each published config with diffusers 0.42 (the published sizes are rounded: 32B, 9B,
#: 4B, 20B, 6B; each count is within 5 % of its own).
COUNTS = {
    "flux1-dev": 11_901_408_320,
    "flux2-dev": 32_223_281_152,
    "flux2-klein-9b": 9_078_581_248,
    "flux2-klein-4b": 3_875_544_576,
    "qwen-image": 20_430_401_088,
    "z-image": 6_154_908_736,
}


def meta_params(arch: str, part: str = "transformer") -> int:
    import diffusers

    spec = arch_spec(arch, tiny=False)
    with torch.device("meta"):
        module = getattr(diffusers, spec[f"{part}_class"])(**spec[part])
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch", [*NEW_ARCHS, "flux1-dev"])
def test_each_transformer_has_its_published_size(arch: str) -> None:
    count = meta_params(arch)
    assert abs(count / (ARCHS[arch]["published_b"] * 1e9) - 1) < 0.05
    assert count == COUNTS[arch]


def test_the_vaes_have_their_published_latent_layouts() -> None:
    import diffusers

    with torch.device("meta"):
        flux2 = diffusers.AutoencoderKLFlux2(**ARCHS["flux2-dev"]["vae"])
        qwen = diffusers.AutoencoderKLQwenImage(**ARCHS["qwen-image"]["vae"])
    assert (
        flux2.config.latent_channels == 32
        and flux2.bn.num_features == 128 == ARCHS["flux2-dev"]["transformer"]["in_channels"]
    )
    assert qwen.config.z_dim * 4 == ARCHS["qwen-image"]["transformer"]["in_channels"] and len(qwen.config.latents_std)
    assert ARCHS["z-image"]["vae"]["latent_channels"] == ARCHS["z-image"]["transformer"]["in_channels"] == 16
    assert 8e7 < meta_params("flux2-dev", "vae") < 9e7 and 1.2e8 < meta_params("qwen-image", "vae") < 1.3e8


def test_random_text_returns_what_each_familys_encoder_returns() -> None:
    from benchmarks.random_models import RandomText

    def shapes(arch: str) -> list[tuple[tuple[int, ...], torch.dtype]]:
        t = arch_spec(arch, tiny=True)["text"]
        out = RandomText(t["tokens"], t["dim"], torch.bfloat16, t.get("pooled"), t.get("mask"))(["a", "b"])
        return [(tuple(x.shape), x.dtype) for x in out]

    assert shapes("flux1-dev") == [((2, 8, 32), torch.bfloat16), ((2, 32), torch.bfloat16)]  # (embeds, pooled)
    assert shapes("flux2-dev") == [((2, 8, 48), torch.bfloat16)]  # (embeds,)
    assert shapes("qwen-image") == [((2, 8, 32), torch.bfloat16), ((2, 8), torch.long)]  # (embeds, mask)
    assert shapes("z-image") == [((2, 8, 32), torch.bfloat16), ((2, 8), torch.bool)]
    text = RandomText(4, 8, torch.float32)
    assert torch.equal(text(["x"])[0], text(["y", "x"])[0][1:])  # the same prompt, the same embedding


def test_flux2_dev_lora_fits_an_80gb_card_and_its_full_fine_tuning_does_not() -> None:
    from benchmarks.random_models import activation_margin, param_counts, static_bytes

    lora = param_counts("flux2-dev", "lora")
    assert lora["transformer"] == COUNTS["flux2-dev"] and 3.0e8 < lora["trained"] < 3.2e8  # rank 64, default targets
    assert 69e9 < static_bytes("flux2-dev", "lora") < 70e9
    assert static_bytes("flux2-dev", "lora") + activation_margin(512) < 80e9 < static_bytes("flux2-dev", "full")
    assert static_bytes("z-image", "full") + activation_margin(512) < 80e9 < static_bytes("flux2-klein-9b", "full")


def test_full_fine_tuning_is_not_run_where_its_state_cannot_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import cost_gpu

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (84_000_000_000, 85_000_000_000))
    cuda = torch.device("cuda")
    reason = cost_gpu.full_fits("flux2-klein-9b", 512, cuda)
    assert reason is not None and "91.0 GB resident" in reason and "84.0 GB free" in reason
    assert cost_gpu.full_fits("z-image", 512, cuda) is None
    assert "119.2 GB resident" in (cost_gpu.full_fits("flux1-dev", 512, cuda) or "")
    assert cost_gpu.full_fits("flux2-klein-9b", 512, torch.device("cpu")) is None  # the tiny CPU path is not gated


def test_the_default_grid_is_the_eight_minute_plan_and_large_the_whole_product() -> None:
    from benchmarks import cost_gpu

    args = cost_gpu.parse_args([])
    assert args.pairs[:4] == [(a, "lora") for a in ("flux2-dev", "flux2-klein-9b", "qwen-image", "z-image")]
    assert {p for p in args.pairs if p[1] == "full"} == {("z-image", "full"), ("sd3.5-medium", "full")}
    assert (args.methods, args.steps, args.resolutions, args.repeats, args.max_minutes) == (
        "leapalign,refl",
        "25",
        "512",
        2,
        8.0,
    )
    large = cost_gpu.parse_args(["--grid", "large"])
    assert len(large.pairs) == 2 * len(ARCHS) and large.max_minutes == 0.0 and large.resolutions == "512,1024"
    only = cost_gpu.parse_args(["--archs", "z-image", "--finetune", "lora", "--steps", "2"])
    assert only.pairs == [("z-image", "lora")] and only.steps == "2" and only.methods == "leapalign,refl"
    with pytest.raises(SystemExit):
        cost_gpu.parse_args(["--archs", "flux3"])


def test_the_time_limit_learns_the_throughput_and_refuses_cells_that_would_overrun() -> None:
    from benchmarks.cost_gpu import TimeLimit, velocity_calls

    assert velocity_calls("leapalign", 25, 1) == 25 + 31 and velocity_calls("dance-grpo", 10, 4) == 4 * 40
    clock = TimeLimit(limit_s=60.0, prior_tflops=250.0, start=time.monotonic())
    assert clock.fits(1000.0) and not clock.fits(20_000.0)  # 4.4 s, 88 s at 250 TFLOP/s
    clock.ran(1000.0, 20.0)  # the cells run at 50 TFLOP/s, not 250
    assert clock.tflops() == pytest.approx(50.0) and clock.fits(2_000.0) and not clock.fits(3_000.0)  # 44 s, 66 s
    assert TimeLimit(limit_s=0.0, prior_tflops=1.0).fits(1e12)  # no limit


NEW_FAMILY_CONFIGS = (
    "flux2/leapalign_lora",
    "flux2-klein/leapalign",
    "qwen-image/leapalign_lora",
    "z-image/leapalign_lora",
)


@pytest.mark.parametrize("name", NEW_FAMILY_CONFIGS)
def test_the_memory_a_config_header_states_is_the_estimators(name: str) -> None:
    """The "about N GB" of each new family's config header is ``benchmarks.estimate_memory``'s figure, rounded."""
    from benchmarks.estimate_memory import estimate
    from leapalign.config import config_dir

    lines = (config_dir() / f"{name}.yaml").read_text().split("\nrun:")[0].splitlines()
    header = " ".join(line.lstrip("# ") for line in lines)
    assert "ESTIMATE, python -m benchmarks.estimate_memory" in header
    stated = [int(n) for n in re.findall(r"about (\d+) GB", header)]
    e = estimate(name)
    expected = [round(e.total_one_process / 1e9)]
    if e.per_gpu_at_launch != e.total_one_process:
        expected.append(round(e.per_gpu_at_launch / 1e9))
    assert stated == expected
