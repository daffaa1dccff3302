"""Prompt sets, statistics, evaluators and reward selection of the evaluation path."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from scipy import stats as scipy_stats

from leapalign.cli.eval import reward_terms
from leapalign.config import ConfigError, load_config
from leapalign.data import PROMPT_SETS, load_prompt_set
from leapalign.eval import EVALUATORS, build_evaluator
from leapalign.eval.runner import image_seed
from leapalign.eval.stats import category_accuracy, mean_ci, summarize, win_rate
from leapalign.registry import RegistryError


def test_prompt_files_in_every_format(tmp_path: Path) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("first\n\n# skipped\n  second  \n")
    assert load_prompt_set(str(txt)).prompts == ["first", "second"]
    geneval = tmp_path / "evaluation_metadata.jsonl"
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"}
    geneval.write_text(json.dumps(meta) + "\n\n" + json.dumps({"prompt": "x"}) + "\n")
    entries = load_prompt_set(str(geneval)).entries
    assert entries[0] == meta and entries[1] == {"prompt": "x"}
    hpd = tmp_path / "test.json"  # HPDv2's test.json: objects with a prompt; the HPS benchmark files: strings
    hpd.write_text(json.dumps([{"prompt": "a", "image_path": ["1.jpg"], "rank": [1]}, {"prompt": "b"}]))
    assert load_prompt_set(str(hpd), limit=1).prompts == ["a"]
    (tmp_path / "bench.json").write_text(json.dumps(["c", "d"]))
    assert load_prompt_set(str(tmp_path / "bench.json")).prompts == ["c", "d"]
    assert len(load_prompt_set("builtin:eval32")) == 32 and load_prompt_set("builtin:tiny").prompts[0]
    with pytest.raises(ValueError, match="no such file or prompt set.*builtin:eval32"):
        load_prompt_set(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="'prompt'"):
        load_prompt_set(str(tmp_path / "bad.jsonl"))
    (tmp_path / "p.csv").write_text("prompt\na cat\n")  # the 'prompt' column, not the header
    assert load_prompt_set(str(tmp_path / "p.csv")).prompts == ["a cat"]
    (tmp_path / "p.xlsx").write_text("prompt\na cat\n")
    with pytest.raises(ValueError, match="unsupported prompt file type '.xlsx'"):
        load_prompt_set(str(tmp_path / "p.xlsx"))


def test_balancing_by_a_metadata_tag(tmp_path: Path) -> None:
    rows = [{"prompt": f"a{i}", "tag": "a"} for i in range(4)] + [{"prompt": "b0", "tag": "b"}]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    balanced = load_prompt_set(str(path), balance_by="tag")
    assert balanced.prompts == ["a0", "a1", "a2", "a3", "b0", "b0", "b0", "b0"]
    with pytest.raises(ValueError, match="has no 'color' key"):
        load_prompt_set(str(path), balance_by="color")


def test_prompt_sets_by_import_path_and_registration() -> None:
    PROMPT_SETS.register("test:two", lambda: ["one", {"prompt": "two", "tag": "t"}], "two prompts", replace=True)
    assert load_prompt_set("test:two").entries == [{"prompt": "one"}, {"prompt": "two", "tag": "t"}]
    assert load_prompt_set("leapalign.data.prompts:TINY_PROMPTS").prompts[0] == "a red circle on a white background"
    with pytest.raises(RegistryError, match="unknown prompt set; registered: .*builtin:eval32.*cannot import"):
        load_prompt_set("no_such_pkg.prompts:load")


def test_statistics_use_student_t_over_prompt_means() -> None:
    values, groups = [1.0, 3.0, 2.0, 4.0, 6.0, 8.0], [0, 0, 1, 1, 2, 2]
    s = summarize(values, groups)
    prompt_means = [2.0, 3.0, 7.0]  # sd 2.6458, 3 prompts: t(0.975, 2) = 4.303
    t = scipy_stats.t.ppf(0.975, 2)
    half = t * math.sqrt(sum((m - 4) ** 2 for m in prompt_means) / 2) / math.sqrt(3)
    assert t == pytest.approx(4.302652729911275)
    assert s["mean"] == pytest.approx(4.0) and s["std"] == pytest.approx(math.sqrt(34 / 5))
    assert s["ci95_low"] == pytest.approx(4.0 - half) and s["ci95_high"] == pytest.approx(4.0 + half)
    ci = mean_ci(prompt_means)  # the benchmarks' interval is the same definition
    assert (ci["lo"], ci["hi"]) == pytest.approx((s["ci95_low"], s["ci95_high"]))
    w = win_rate({0: 1.0, 1: 2.0, 2: 3.0, 3: 0.0}, {0: 0.5, 1: 2.0, 2: 4.0, 3: -1.0})
    assert w["win_rate"] == pytest.approx((2 + 0.5) / 4) and w["mean_diff"] == pytest.approx(0.125)
    acc = category_accuracy([1, 0, 1, 1], ["counting", "counting", "colors", "zzz"], ["colors", "counting"])
    assert list(acc) == ["overall", "colors", "counting", "zzz"] and acc["overall"] == pytest.approx(2.5 / 3)
    assert image_seed(0, 5, 2, 96) == 2005 and image_seed(0, 5, 2, 4000) == 8005


def test_unknown_evaluator_lists_the_registered_ones() -> None:
    assert "shapes_eval" in EVALUATORS  # the ShapesWorld plugin, loaded through its entry point
    with pytest.raises(ConfigError, match="unknown evaluator; registered: .*shapes_eval"):
        load_config("tiny/leapalign", ["evaluation.evaluators=nope"])
    with pytest.raises(ValueError, match="lacks"):
        build_evaluator("leapalign.data.prompts:PromptSet", {"source": "x", "entries": []})


def test_reward_selection() -> None:
    cfg = load_config("tiny/leapalign", ["reward.terms.0.args.color=red"])
    assert [(t.name, t.args) for t in reward_terms(cfg)] == [("prompt_color", {"color": "red"})]
    cfg = load_config(
        "tiny/leapalign", ["evaluation.rewards=brightness,clip_score", "evaluation.rewards.1.args.scale=2"]
    )
    assert [(t.name, t.args) for t in reward_terms(cfg)] == [("brightness", {}), ("clip_score", {"scale": 2})]
    ensemble = load_config("tiny/leapalign", ["reward=brightness,brightness"])
    with pytest.raises(ConfigError, match="one member at a time"):
        reward_terms(ensemble)
    with pytest.raises(ConfigError, match=r"evaluation.rewards.0.name='nope': unknown reward"):
        load_config("tiny/leapalign", ["evaluation.rewards=nope"])
