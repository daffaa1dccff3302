"""Plugins are code: ``leapalign eval --run`` and ``sample --run`` refuse a run whose config.yaml names import paths
or plugins, before importing any of them, unless ``--trust-config`` is given; runs of built-in names load as before."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from leapalign.cli import main
from leapalign.cli.sources import config_import_paths, resolve_source

BUILTIN = {
    "model": {"name": "tiny-flux"},
    "reward": {"terms": [{"name": "brightness"}]},
    "data": {"prompts": "builtin:tiny"},  # a registered name shaped like an import path
    "evaluation": {"prompts": "builtin:tiny", "images_per_prompt": 1, "num_steps": 2},
    "sampler": {"num_steps": 2, "height": 32, "width": 32},
}
PROBES = ("trust_probe_reward", "trust_probe_plugin")  # modules written per test; importing one leaves a marker


@pytest.fixture
def probes(tmp_path: Path, monkeypatch) -> Path:
    """Two importable modules in ``tmp_path/code`` that create ``tmp_path/<module>.imported`` when imported: a
    reward (``trust_probe_reward:Probe``, which refuses to be built) and a plugin module."""
    code = tmp_path / "code"
    code.mkdir()
    marker = "from pathlib import Path\nPath({path!r}).touch()\n"
    (code / "trust_probe_plugin.py").write_text(marker.format(path=str(tmp_path / "trust_probe_plugin.imported")))
    (code / "trust_probe_reward.py").write_text(
        marker.format(path=str(tmp_path / "trust_probe_reward.imported"))
        + "\n\nclass Probe:\n    def __init__(self):\n        raise ValueError('the probe reward was built')\n"
    )
    monkeypatch.syspath_prepend(str(code))
    yield tmp_path
    for name in PROBES:
        sys.modules.pop(name, None)


def make_run(root: Path, config: dict) -> Path:
    """A run folder as training leaves it, as far as loading goes: config.yaml and one complete checkpoint."""
    run = root / "run"
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    (run / "checkpoints" / "step_000001" / "state.json").write_text(json.dumps({"step": 1, "files": {}}))
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


UNTRUSTED = {**BUILTIN, "plugins": ["trust_probe_plugin"], "reward": {"terms": [{"name": "trust_probe_reward:Probe"}]}}


@pytest.mark.parametrize("command", [["eval", "--no-progress"], ["sample", "--out", "never.png"]])
def test_a_run_naming_import_paths_is_refused_before_importing_them(probes: Path, command, capsys) -> None:
    run = make_run(probes, UNTRUSTED)
    assert main([*command, "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--trust-config" in err
    assert "plugins=trust_probe_plugin" in err and "reward.terms.0.name=trust_probe_reward:Probe" in err
    assert not list(probes.glob("*.imported")) and not set(PROBES) & set(sys.modules)


def test_trust_config_loads_it(probes: Path, capsys) -> None:
    run = make_run(probes, UNTRUSTED)
    assert main(["eval", "--run", str(run), "--no-progress", "--trust-config"]) == 2
    assert "the probe reward was built" in capsys.readouterr().err  # it got as far as building the reward
    assert (probes / "trust_probe_plugin.imported").is_file() and (probes / "trust_probe_reward.imported").is_file()


def test_a_run_of_built_in_names_loads_as_before(tmp_path: Path) -> None:
    run = make_run(tmp_path, BUILTIN)
    source = resolve_source(None, str(run))
    assert source.cfg.model.name == "tiny-flux" and source.weights.parent == run / "checkpoints" / "step_000001"


def test_a_run_of_the_shapes_world_is_trusted(tmp_path: Path) -> None:
    """Names of an installed entry-point plugin (``shapes:train`` is shaped like an import path) are built-in, and
    so is listing that plugin itself."""
    from leapalign.config import load_config, to_yaml

    config = yaml.safe_load(to_yaml(load_config("shapes/leapalign")))
    config["plugins"] = ["leapalign.worlds.shapes.plugin:register"]
    assert config_import_paths(config) == []


def test_config_import_paths_names_each_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("heldout.prompts").write_text("a red circle\n")  # a file is read, not imported, whatever its name
    raw = {
        "plugins": ["lab.plugin:register"],
        "model": {"name": "lab.models:build"},
        "reward": {"terms": [{"name": "brightness"}, {"name": "lab.rewards.Sharp"}]},
        "data": {"prompts": "lab.prompts:load"},
        "evaluation": {"prompts": "heldout.prompts", "evaluators": [{"name": "lab.evals:OCR"}], "rewards": []},
        "train": {"replay_source": "lab.replay:Shards"},
    }
    assert config_import_paths(raw) == [
        "plugins=lab.plugin:register",
        "model.name=lab.models:build",
        "data.prompts=lab.prompts:load",
        "train.replay_source=lab.replay:Shards",
        "reward.terms.1.name=lab.rewards.Sharp",
        "evaluation.evaluators.0.name=lab.evals:OCR",
    ]
