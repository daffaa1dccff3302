"""Prompt sets, statistics and reward selection of ``leapalign eval``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from leapalign.config import ConfigError
from leapalign.eval.command import reward_terms
from leapalign.eval.prompts import load_prompt_set
from leapalign.eval.runner import image_seed
from leapalign.eval.stats import category_accuracy, summarize, win_rate
from leapalign.rewards import RewardTermConfig


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
    assert not load_prompt_set(str(geneval)).is_shapes()
    shapes = load_prompt_set("shapes:eval")
    assert shapes.is_shapes() and len(shapes) == 96 and load_prompt_set("builtin:tiny").prompts[0]
    with pytest.raises(ValueError, match="no such file"):
        load_prompt_set(str(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match="'prompt'"):
        load_prompt_set(str(tmp_path / "bad.jsonl"))


def test_statistics() -> None:
    values, groups = [1.0, 3.0, 2.0, 4.0, 6.0, 8.0], [0, 0, 1, 1, 2, 2]
    s = summarize(values, groups)
    prompt_means = [2.0, 3.0, 7.0]  # sd 2.6458, 3 prompts
    half = 1.959963984540054 * math.sqrt(sum((m - 4) ** 2 for m in prompt_means) / 2) / math.sqrt(3)
    assert s["mean"] == pytest.approx(4.0) and s["std"] == pytest.approx(math.sqrt(34 / 5))
    assert s["ci95_low"] == pytest.approx(4.0 - half) and s["ci95_high"] == pytest.approx(4.0 + half)
    w = win_rate({0: 1.0, 1: 2.0, 2: 3.0, 3: 0.0}, {0: 0.5, 1: 2.0, 2: 4.0, 3: -1.0})
    assert w["win_rate"] == pytest.approx((2 + 0.5) / 4) and w["mean_diff"] == pytest.approx(0.125)
    acc = category_accuracy([1, 0, 1, 1], ["counting", "counting", "colors", "zzz"], ["colors", "counting"])
    assert list(acc) == ["overall", "colors", "counting", "zzz"] and acc["overall"] == pytest.approx(2.5 / 3)
    assert image_seed(0, 5, 2, 96) == 2005 and image_seed(0, 5, 2, 4000) == 8005


def test_reward_selection() -> None:
    configured = [RewardTermConfig("hpsv2", 1.0, {"checkpoint": "/w/HPS.pt"})]
    terms = reward_terms("hpsv2,pickscore", ["pickscore.scale=0.01", "hpsv2.version=v2.0"], configured)
    assert [(t.name, t.args) for t in terms] == [
        ("hpsv2", {"checkpoint": "/w/HPS.pt", "version": "v2.0"}),
        ("pickscore", {"scale": 0.01}),
    ]
    assert [t.name for t in reward_terms(None, [], configured)] == ["hpsv2"]
    ensemble = [RewardTermConfig("shapes_score"), RewardTermConfig("shapes_score", 1.0, {"path": "m2"})]
    (term,) = reward_terms("shapes_score", [], ensemble)  # ambiguous: the defaults, not the last member's path
    assert term.args == {}
    (term,) = reward_terms("shapes_score", ["shapes_score.path=m2"], ensemble)
    assert term.args == {"path": "m2"}
    with pytest.raises(ConfigError, match="NAME.KEY=VALUE"):
        reward_terms("hpsv2", ["clip_score.model=x"], configured)
