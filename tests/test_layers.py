"""The import layers as a test: the contracts of ``[tool.importlinter]`` in pyproject.toml hold, they cover every
core module, they catch a violation hidden inside a function, and ``flow/`` imports nothing but torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "leapalign"
LINT = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` in ``root`` (it reads ``root/pyproject.toml``), with ``root`` first on the path."""
    if root != ROOT:
        shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [LINT, "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_import_contracts_hold() -> None:
    result = lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


def test_every_core_module_is_bound_by_the_no_world_contract() -> None:
    (core,) = [c for c in contracts() if c["forbidden_modules"] == ["leapalign.worlds"]]
    top = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    top |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert top - {"worlds"} == {m.removeprefix("leapalign.") for m in core["source_modules"]}


def test_a_world_import_hidden_in_a_function_breaks_the_contract(tmp_path: Path) -> None:
    copy = tmp_path / "leapalign"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "assets", "*.safetensors"))
    schedule = copy / "flow" / "schedule.py"
    schedule.write_text(
        schedule.read_text()
        + "\n\ndef _probe():\n    from leapalign.worlds.shapes import scenes\n\n    return scenes\n"
    )
    result = lint(tmp_path)
    assert result.returncode != 0
    assert "leapalign.flow.schedule -> leapalign.worlds.shapes.scenes" in result.stdout


@pytest.mark.parametrize("package", ["leapalign.flow"])
def test_flow_imports_torch_and_the_standard_library_only(package: str) -> None:
    graph = grimp.build_graph("leapalign", include_external_packages=True)
    outside = set()
    for module in graph.find_children(package) | {package}:
        for imported in graph.find_modules_directly_imported_by(module):
            top = imported.split(".")[0]
            if not imported.startswith(package) and top not in sys.stdlib_module_names and top != "torch":
                outside.add(f"{module} -> {imported}")
    assert not outside, sorted(outside)
