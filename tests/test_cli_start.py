"""The command line starts light: ``--help``, ``configs``, ``accelerate-config``, ``rewards`` and ``list`` import no
torch-heavy module (the built-in entries and ShapesWorld's are declared by import path), yet list exactly what the
registries hold once every module is imported, and every declared entry resolves; no subcommand prints
transformers' torchvision fallback notice. Timings live in ``benchmarks/startup.py``, never in tests."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from leapalign import registry
from leapalign.cli import main
from leapalign.config import list_configs

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate")
PROBE = """
import json, sys
from leapalign.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps([m for m in {heavy} if m in sys.modules]))
"""


def heavy_imports(*argv: str) -> list[str]:
    """The torch-heavy modules a fresh process has imported after running ``leapalign *argv``."""
    code = PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["configs"], ["accelerate-config", "ddp_cpu"], ["eval", "--help"], ["rewards"], ["list"], ["models"]],
)
def test_light_commands_import_no_torch(argv: list[str]) -> None:
    assert heavy_imports(*argv) == []


def test_configs_lists_the_shipped_configs(capsys) -> None:
    assert main(["configs"]) == 0
    assert capsys.readouterr().out.split() == list_configs()


def test_accelerate_config_prints_a_shipped_file(capsys) -> None:
    assert main(["accelerate-config", "ddp_cpu"]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()


def test_the_torchvision_fallback_notice_is_filtered_and_nothing_else() -> None:
    main(["configs"])
    logger = logging.getLogger("transformers.utils.import_utils")  # where transformers emits it
    notice = "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"

    def passes(message: str) -> bool:
        return bool(logger.filter(logger.makeRecord(logger.name, logging.WARNING, __file__, 1, message, (), None)))

    assert not passes(notice) and passes("some other warning")


def test_listing_the_registries_prints_no_torchvision_notice() -> None:
    """``leapalign list`` once imported diffusers' pipelines with the registries; it must stay quiet either way."""
    out = subprocess.run(
        [sys.executable, "-m", "leapalign.cli", "list", "models"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0 and "tiny-flux" in out.stdout
    assert "torchvision" not in out.stderr, out.stderr


LISTING_PROBE = """
import contextlib, importlib, io, json, pkgutil, sys
import leapalign
from leapalign import registry
from leapalign.cli import main

listed = {{}}
for argv in (["list"], ["rewards"]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(argv)
    listed[argv[0]] = out.getvalue()
heavy = [m for m in {heavy} if m in sys.modules]
for info in pkgutil.walk_packages(leapalign.__path__, "leapalign."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)  # every module that could register something when imported
registries = {{"models": registry.MODELS, "rewards": registry.REWARDS, "evaluators": registry.EVALUATORS,
               "prompt-sets": registry.PROMPT_SETS, "replay-sources": registry.REPLAY_SOURCES}}
described = {{kind: reg.describe() for kind, reg in registries.items()}}
resolved = {{f"{{kind}} {{name}}": reg.resolve(name) for kind, reg in registries.items() for name in reg}}
unresolved = [key for key, obj in resolved.items() if isinstance(obj, str) or not callable(obj)]
from leapalign.worlds.shapes import builders, plugin
moved = [n for n in ("ShapesEvaluator", "ShapesReplay", "ShapesEvalReward")
         if getattr(plugin, n) is not getattr(builders, n)]
result = {{"heavy": heavy, "listed": listed, "described": described, "unresolved": unresolved, "moved": moved}}
print(json.dumps(result))
"""


def parse_list(text: str) -> dict[str, dict[str, str]]:
    """``leapalign list``'s output as ``{kind: {name: description}}``."""
    kinds: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            kind = kinds.setdefault(line[:-1], {})
        elif line.startswith("  "):
            name, _, doc = line.strip().partition(" ")
            kind[name] = doc.strip()
    return kinds


def test_listing_shows_what_the_registries_hold_once_everything_is_imported() -> None:
    """The light listing neither misses an entry that importing a module would register nor shows one that does
    not resolve: built-ins and ShapesWorld's plugin, whose classes stay importable from their old module."""
    code = LISTING_PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["heavy"] == [] and probe["unresolved"] == [] and probe["moved"] == []
    assert parse_list(probe["listed"]["list"]) == probe["described"]
    reward_lines = probe["listed"]["rewards"].split("\n\n")[0].splitlines()
    rewards = {name: doc.strip() for name, _, doc in (line.partition(" ") for line in reward_lines)}
    assert rewards == probe["described"]["rewards"]
    assert {"hpsv2", "brightness", "shapes_score"} <= rewards.keys()  # built-ins and the plugin's
    assert "shapes:train" in probe["described"]["replay-sources"]


def test_a_lazy_entry_is_described_without_importing_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "lazy_probe.py").write_text("class Probe:\n    '''A probe.'''\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_entry_points_loaded", True)  # no installed plugin: this registry is the test's
    things = registry.Registry("thing", "thing.name")
    things.register("probe", "lazy_probe:Probe", "a probe, imported on first use")
    try:
        assert things.describe() == {"probe": "a probe, imported on first use"} and "lazy_probe" not in sys.modules
        assert not things.imports("probe") and things.imports("lazy_probe:Probe")
        probe = things.resolve("probe")
        assert probe.__name__ == "Probe" and "lazy_probe" in sys.modules
        things.register("probe", probe)  # the object its path named: the same entry, description kept
        assert things.describe() == {"probe": "a probe, imported on first use"}
        with pytest.raises(registry.RegistryError, match="already registered"):
            things.register("probe", "lazy_probe:Other")
        with pytest.raises(registry.RegistryError, match="not an import path"):
            things.register("other", "no import path")
    finally:
        sys.modules.pop("lazy_probe", None)


def test_startup_benchmark_records_the_commands(tmp_path: Path) -> None:
    out = tmp_path / "startup.json"
    cmd = [sys.executable, "-m", "benchmarks.startup", "--runs", "1", "--commands", "configs", "--out", str(out)]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, check=True)
    record = json.loads(out.read_text())
    configs = record["commands"]["configs"]
    assert configs["heavy_modules"] == [] and len(configs["times_s"]) == 1 and configs["min_s"] <= configs["median_s"]
    assert record["machine"]["logical_cpus"] >= 1 and record["runs"] == 1
