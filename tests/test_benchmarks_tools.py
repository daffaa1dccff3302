"""The cost, GPU-cost, gradient-fidelity and report scripts, each on a tiny cell, and the statistics helpers."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of scripts at the repo root, not an installed package

from leapalign.eval.stats import fmt_ci, mean_ci, verdict, welch, welch_diff_ci  # noqa: E402


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def test_mean_ci_is_a_student_t_interval() -> None:
    s = mean_ci([1.0, 2.0, 3.0])
    assert s["mean"] == pytest.approx(2.0) and s["sd"] == pytest.approx(1.0)
    assert s["hi"] - s["mean"] == pytest.approx(4.302653 / 3**0.5, rel=1e-5)  # t(0.975, 2) * sd / sqrt(n)
    assert mean_ci([0.5])["lo"] is None and fmt_ci(mean_ci([0.5])) == "0.500"
    assert verdict([1.0, 1.1, 0.9], [2.0, 2.1, 1.9]) == "lower"
    assert verdict([1.0, 2.0], [1.1, 1.9]) == "no significant difference"
    assert verdict([1.0], [2.0]) == "too few seeds"


def test_welch_difference_interval_matches_welch_satterthwaite() -> None:
    a, b = [0.45, 0.47, 0.44, 0.49], [0.40, 0.46, 0.38]
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = scipy_stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    d = welch_diff_ci(a, b)
    assert d is not None and d["diff"] == pytest.approx(statistics.fmean(a) - statistics.fmean(b))
    assert (d["lo"], d["hi"]) == pytest.approx((d["diff"] - half, d["diff"] + half))
    # the interval excludes 0 exactly when the test rejects at 0.05
    assert (d["lo"] > 0) == (welch(a, b) < 0.05)
    assert welch_diff_ci([0.1, 0.1], [0.2, 0.2]) is None and welch_diff_ci([0.1], [0.2, 0.3]) is None
    from benchmarks.report_claims import compare

    text = compare(a, b, "a", "b")
    assert f"difference {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], Welch p = " in text, text


def test_values_without_spread_give_no_interval_and_no_test() -> None:
    s = mean_ci([0.047, 0.047])
    assert s["mean"] == pytest.approx(0.047) and s["sd"] == 0.0 and s["lo"] is None and s["hi"] is None
    assert fmt_ci(s) == "0.047 (2 equal values, no interval)"
    assert welch([0.1, 0.1], [0.2, 0.2]) is None
    assert verdict([0.1, 0.1], [0.2, 0.2]) == "no spread to test"
    assert welch([0.1, 0.1, 0.1], [0.2, 0.25, 0.3]) is not None  # one side varying is still a Welch test
    from benchmarks.report_claims import compare

    assert compare([0.1, 0.1], [0.2, 0.2], "a", "b").startswith("a has no spread, nor has b (0.100 (2 equal")


def test_cost_cell_records_time_and_memory_and_skips_when_done(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    args = ["--sizes", "shapes", "--methods", "leapalign", "--steps", "2", "--repeats", "1", "--groups", "none"]
    args += ["--out", str(out)]
    run_module("benchmarks.cost", *args)
    (rec,) = json.loads(out.read_text())
    assert (rec["method"], rec["T"], rec["device"], rec["model_size"]) == ("leapalign", 2, "cpu", "shapes")
    assert rec["sec_per_iter"] > 0 and rec["sampling_sec"] > 0 and rec["peak_mem_mb"] > rec["peak_mem_delta_mb"]
    assert rec["threads"] == 1 and rec["allocator"] and rec["batch"] == 8
    assert len(rec["load_avg"]) == 3 and min(rec["load_avg"]) >= 0  # whether other work shared the CPU
    again = run_module("benchmarks.cost", *args)
    assert "done, skipped" in again.stdout and json.loads(out.read_text()) == [rec]


def test_cost_of_a_policy_gradient_method_and_the_group_size_sweep(tmp_path: Path) -> None:
    out = tmp_path / "cost.json"
    args = ["--sizes", "shapes", "--methods", "dance-grpo", "--steps", "2", "--repeats", "1", "--groups", "2"]
    run_module("benchmarks.cost", *args, "--group-steps", "3", "--out", str(out))
    by_batch = {r["batch"]: r for r in json.loads(out.read_text())}
    # the size's default (8 samples in groups of 4, T=2) and the sweep's 2 prompts x G=2 (T=3 here)
    assert {(b, r["group_size"], r["T"]) for b, r in by_batch.items()} == {(8, 4, 2), (4, 2, 3)}
    for rec in by_batch.values():
        assert rec["sec_per_iter"] > 0 and rec["peak_mem_delta_mb"] > 0
        assert set(rec["breakdown_sec"]) == {"collect", "update"} and rec["method_config"]["name"] == "dance-grpo"


def test_cost_gpu_script_runs_tiny_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "cost_gpu.json"
    run_module(
        "benchmarks.cost_gpu", "--tiny", "--device", "cpu", "--archs", "sd3.5-medium", "--finetune", "lora",
        "--resolutions", "64", "--methods", "leapalign,dance-grpo", "--steps", "2", "--repeats", "1",
        "--groups", "2", "--out", str(out),
    )  # fmt: skip
    rec, grpo = json.loads(out.read_text())
    assert rec["device"] == "cpu" and rec["tiny"] and not rec["oom"] and rec["sec_per_iter"] > 0
    assert rec["finetune"] == "lora" and rec["trainable_params"] < rec["model_params"]
    assert (rec["batch"], rec["group_size"]) == (1, None) and (grpo["batch"], grpo["group_size"]) == (2, 2)
    assert not grpo["oom"] and set(grpo["breakdown_sec"]) == {"collect", "update"}


def test_cost_gpu_script_runs_every_new_family_tiny_on_cpu_within_its_time_limit(tmp_path: Path) -> None:
    out = tmp_path / "cost_gpu.json"
    archs = ("flux2-dev", "flux2-klein-9b", "qwen-image", "z-image")
    run_module(
        "benchmarks.cost_gpu", "--tiny", "--device", "cpu", "--archs", ",".join(archs), "--finetune", "lora",
        "--resolutions", "64", "--methods", "leapalign", "--steps", "2", "--repeats", "1", "--out", str(out),
    )  # fmt: skip
    records = {r["model_size"]: r for r in json.loads(out.read_text())}
    assert set(records) == set(archs)
    for rec in records.values():  # each family's adapter, its LoRA targets and its text-encoder stand-in ran
        assert not rec["oom"] and rec["sec_per_iter"] > 0 and rec["velocity_tflop"] > 0 and rec["cell_sec"] > 0
        assert 0 < rec["trainable_params"] < rec["model_params"] and rec["method_config"]["name"] == "leapalign"
    late = tmp_path / "late.json"
    again = run_module(
        "benchmarks.cost_gpu", "--tiny", "--device", "cpu", "--archs", "z-image", "--finetune", "full",
        "--resolutions", "64", "--methods", "refl", "--steps", "2", "--max-minutes", "0.0001", "--out", str(late),
    )  # fmt: skip
    assert "1 cells not started (--max-minutes 0.0001)" in again.stdout and not late.exists()  # resumable


def test_estimate_memory_covers_the_new_families_and_takes_an_architecture_directly(capsys) -> None:
    from benchmarks.estimate_memory import estimate, main

    main(["--arch", "z-image", "--finetune", "full", "--no-ema", "--json"])
    (est,) = json.loads(capsys.readouterr().out)
    assert est["arch"] == "z-image" and est["trained_params"] == est["transformer_params"] == 6_154_908_736
    assert est["transformer_base"] == 4 * est["trained_params"] and est["ema"] == 0  # fp32 weights when full
    main(["--arch", "flux2-dev", "--text-encoder-device", "cpu"])
    text = capsys.readouterr().out
    assert text.startswith("ESTIMATES") and "| flux2-dev | lora | 308,281,344 | 64.4 |" in text
    assert "| 48.0 |" in text  # the 24B Mistral encoder in host memory, not on the GPU
    flux2 = estimate("flux2/leapalign_lora")  # model.text_encoder_device: cpu
    assert flux2.arch == "flux2-dev" and flux2.text_encoders_host > 47e9 and flux2.text_encoders_vae < 1e9
    assert estimate("flux2-klein/leapalign").arch == "flux2-klein-9b"


def test_grad_fidelity_matches_the_library_and_report_builds(tmp_path: Path) -> None:
    results = tmp_path / "results"
    out, plot = results / "grad_fidelity.json", tmp_path / "fidelity.png"
    run_module(
        "benchmarks.grad_fidelity", "--steps", "3", "--batch", "1", "--seeds", "0", "--drtune-draws", "1",
        "--out", str(out), "--plot", str(plot),
    )  # fmt: skip
    fid = json.loads(out.read_text())
    assert plot.is_file() and len(fid["leapalign"]["per_pair"]) == 3  # every pair k < j of 3 steps
    for check in fid["library_checks"]:  # the script's estimators are the library methods' gradients
        assert check["cos"] == pytest.approx(1.0, abs=1e-4) and check["ratio"] == pytest.approx(1.0, abs=1e-3)
    assert -1.0 <= fid["expected"][0]["leapalign_cos_0.3"] <= 1.0

    doc = tmp_path / "benchmarks.md"
    run_module("benchmarks.report", "--results-dir", str(results), "--out", str(doc), "--assets", str(tmp_path),
               "--no-readme")  # fmt: skip
    text = doc.read_text()
    assert "## Gradient fidelity" in text and "Not yet run" in text and "Pending a GPU" in text


def test_peak_gold_finds_each_seeds_peak_against_the_base_on_the_same_images() -> None:
    from benchmarks.report_curves import peak, peak_gold_lines

    def cell(seed: int, values: list[float]) -> dict:
        points = [{"step": 100 * (i + 1), "shapes_eval_overall": v} for i, v in enumerate(values)]
        return {"variant": "m", "seed": seed, "curve": points}

    base = {"variant": "base", "curve": [{"step": 0, "shapes_eval_overall": 0.4}]}
    cells = [cell(0, [0.5, 0.6, 0.45]), cell(1, [0.55, 0.5, 0.5])]
    assert peak(cells[0]) == (0.6, 200) and peak(cells[1]) == (0.55, 100)
    row = peak_gold_lines(cells, base)[-1].split(" | ")
    assert row[2] == "0.400" and row[3].startswith("0.575 ±") and row[4] == "150" and row[6].startswith("0.175 ±")


def test_layout_claims_test_leapalign_against_each_rival_per_category() -> None:
    from benchmarks.layout_claims import claims, markdown

    def cell(variant: str, seed: int, position: float) -> dict:
        evals = {k: 0.5 for k in ("overall", "single_object", "two_object", "counting", "colors", "color_attr")}
        return {"variant": variant, "seed": seed, "shapes_layout": 0.6, "shapes_eval": {**evals, "position": position}}

    records = [cell("base", 0, 0.05)]
    records += [cell("leapalign", s, 0.30 + 0.01 * s) for s in range(3)]
    records += [cell("refl", s, 0.10 + 0.01 * s) for s in range(3)]
    result = claims(records)
    by_claim = {t["claim"]: t for t in result["tests"]}
    assert by_claim["leapalign beats refl on position"]["verdict"] == "higher"
    assert by_claim["leapalign beats refl on position"]["p_value"] < 0.001
    assert by_claim["leapalign beats refl on counting"]["verdict"] == "no spread to test"  # 0.5 for every seed
    assert by_claim["leapalign beats drtune on position"]["verdict"] == "too few seeds"
    assert result["methods"]["leapalign"]["seeds"] == 3 and "| base | – |" in markdown(result)


def test_report_states_the_layout_claims_with_p_values_and_changes_against_the_base(tmp_path: Path) -> None:
    from benchmarks.report_claims import layout_claims
    from benchmarks.report_study import Study

    keys = ("overall", "single_object", "two_object", "counting", "colors", "color_attr")

    def cell(variant: str, seed: int | None, position: float, train_sec: float = 100.0) -> dict:
        curve = [{"step": 200, "train_sec": train_sec, "shapes_eval_overall": 0.5 + position, "shapes_layout": 0.6}]
        evals = {**{k: 0.5 for k in keys}, "position": position}
        return {"variant": variant, "seed": seed, "shapes_layout": 0.6, "shapes_eval": evals, "curve": curve,
                "train_sec": train_sec}  # fmt: skip

    records = [cell("base", None, 0.05, 0.0)]
    records += [cell("leapalign", s, 0.30 + 0.01 * s, 120.0) for s in range(3)]
    records += [cell("refl", s, 0.10 + 0.01 * s) for s in range(3)]
    (tmp_path / "methods.json").write_text(json.dumps(records))
    study = Study("layout", "Layout study", tmp_path, tmp_path / "protocol_layout.yaml", "shapes_layout", "L")
    lines = layout_claims(study)
    position = next(line for line in lines if "position more than ReFL" in line)
    assert "leapalign higher than refl" in position and "Welch p = 0.000" in position and "3 and 3 seeds" in position
    assert any("more than DRTune" in line and "not yet run" in line for line in lines)
    gain = next(line for line in lines if line.startswith("- *leapalign improves on the base model*"))
    assert "position 0.260 ± 0.025" in gain and "excludes 0 upward for position" in gain
    assert any("equal wall-clock (100 s" in line and "leapalign higher than refl" in line for line in lines)
    assert "not yet run" in lines[-1] and "--suite ablations" in lines[-1]
    assert not any("surrogate's units" in line for line in lines)
    collapsed = cell("flow-grpo", 0, 0.0)  # a policy-gradient cell run without replay, kept apart as data
    collapsed["method"], collapsed["shapes_eval"]["overall"] = "flow-grpo", 0.09
    collapsed["curve"] = [{**collapsed["curve"][0], "step": 50, "shapes_layout": 0.55, "shapes_eval_overall": 0.2}]
    records[0]["curve"] = [{"step": 0, "shapes_layout": 0.58, "shapes_eval_overall": 0.46}]
    (tmp_path / "methods.json").write_text(json.dumps(records))
    (tmp_path / "grpo_without_replay.json").write_text(json.dumps([collapsed]))
    replayed = {**collapsed, "method": "mix-grpo", "shapes_eval": {**collapsed["shapes_eval"], "overall": 0.39}}
    (tmp_path / "grpo_with_replay.json").write_text(json.dumps([replayed]))
    lines = layout_claims(study)
    line = next(line for line in lines if "without a regulariser" in line)
    assert line.startswith("- *flow-grpo without a regulariser")
    assert "held-out ShapesEval 0.090 against the base's 0.500" in line
    assert "L 0.580 -> 0.550" in line and "ShapesEval 0.460 -> 0.200" in line
    line = next(line for line in lines if "with the common replay" in line)
    assert line.startswith("- *mix-grpo with the common replay") and "ShapesEval 0.390" in line


def test_the_readme_verdict_table_gives_each_rivals_verdicts_and_p_values() -> None:
    from benchmarks.report_claims import verdict_table

    keys = ("overall", "single_object", "two_object", "counting", "colors", "color_attr")

    def cell(variant: str, seed: int, position: float) -> dict:
        return {"variant": variant, "seed": seed, "shapes_eval": {**{k: 0.5 for k in keys}, "position": position}}

    records = [cell("leapalign", s, 0.30 + 0.01 * s) for s in range(3)] + [
        cell("refl", s, 0.1 + 0.01 * s) for s in range(3)
    ]
    lines = verdict_table(records)
    refl = next(line for line in lines if line.startswith("| ReFL |"))
    assert refl.startswith("| ReFL | 3, 3 | higher (p = 0.00) | no spread to test")  # counting is 0.5 everywhere
    assert next(line for line in lines if line.startswith("| DRTune |")).count("not yet run") == 3


def test_grad_snr_recovers_a_known_signal_fraction_and_says_when_there_is_none() -> None:
    import torch

    from benchmarks.grad_snr import signal_and_noise

    gen = torch.Generator().manual_seed(0)
    mu = torch.zeros(20_000)
    mu[:100] = 2.0  # |mu|^2 = 400; noise of variance 0.06 per coordinate: tr(Sigma) = 1200, rho = 400/1600 = 0.25
    g = mu + torch.randn(64, 20_000, generator=gen) * 0.06**0.5
    out = signal_and_noise(g, batch_size=8)
    assert abs(out["rho"] - 0.25) < 0.01 and out["rho_ci"][0] < out["rho"] < out["rho_ci"][1]
    assert out["rho_ci"][1] - out["rho_ci"][0] < 0.02  # the jackknife's 95% covers 0.25 in 189 of 200 such draws
    assert 16 < out["samples_for_snr1"] < 32  # 8 * (1 - 0.25) / 0.25 = 24
    assert abs(out["signal_norm"] - 20.0) < 2.0 and abs(out["minibatch_grad_norm"] - 40.0) < 1.0
    pure_noise = signal_and_noise(torch.randn(64, 20_000, generator=gen), batch_size=8)
    assert pure_noise["rho_ci"][0] < 0 < pure_noise["rho_ci"][1] and pure_noise["samples_for_snr1_ci"][1] is None


def test_the_snr_section_names_the_estimators_replay_outweighs_and_the_converted_weights() -> None:
    from benchmarks.report_sections import snr_section

    def row(norm: float, rho: float, **extra: float) -> dict:
        return {"rho": rho, "rho_ci": [rho - 0.01, rho + 0.01], "mean_pairwise_cosine": rho, "signal_norm": 0.1 * norm,
                "minibatch_grad_norm": norm, "samples_for_snr1": 8.0, "samples_for_snr1_ci": [4.0, None],
                "zero_gradient_minibatches": 0, "batch_size": 8, "sec_per_batch": 1.0, **extra}  # fmt: skip

    snr = {"batches": 16, "seed": 0, "protocol": "p.yaml", "methods": {
        "leapalign": row(20.0, 0.02), "drtune": row(0.3, 0.0),
        "flow-grpo": row(0.02, 0.0, group_std_harmonic=0.05, groups=20, trained_steps=9.0, latent_dims=3072,
                         surrogate_scale=7.2e-4, same_objective_replay_weight=0.0217),
        "replay": row(5.0, 0.0, replay_weight=30.0)}}  # fmt: skip
    text = "\n".join(snr_section(snr).lines)
    assert "excludes 0 for leapalign;" in text
    assert "Larger: leapalign (20). Smaller: drtune (0.3), flow-grpo (0.02)." in text
    assert "| flow-grpo | 20 | 0.0500 | 9.0 | 3072 | 0.00072 | 0.0217 |" in text
    assert "the replay term is 250 to 250 times the policy-gradient family's gradient" in text
    assert snr_section(None).lines == ["**Not yet run.** Run `python -m benchmarks.grad_snr`."]
