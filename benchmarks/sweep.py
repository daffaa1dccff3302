"""Resumable benchmark runner: every (suite, variant, seed) cell of the protocol, one process per cell.

Usage (from the repository root):

    python -m benchmarks.sweep --suite methods                     # all cells; finished ones are skipped
    python -m benchmarks.sweep --suite ablations
    python -m benchmarks.sweep --suite methods --only drtune --seed 1          # reproduce one cell
    python -m benchmarks.sweep --suite methods --only drtune --seed 1 --force  # ... recomputing it
    python -m benchmarks.sweep --suite methods --list              # show the cells and their state

A cell's record is appended to ``benchmarks/results/<suite>.json`` (the whole file is rewritten atomically
under a lock) as soon as the cell ends, so the sweep can be stopped at any time (Ctrl-C) and continued by
running the same command: finished cells are skipped, a cell interrupted mid-training resumes from its last
checkpoint. A finished cell whose config hash no longer matches the protocol (the protocol file or the base
config changed) is stale and is run again. A cell whose resolved config equals that of a finished cell of
either suite (e.g. ``alpha_0.3`` and ``weight_both`` are both the default LeapAlign) reuses that record, and a
cell that finishes hands a reused copy of its record to every such cell at once.

Each cell runs in a fresh process (peak RSS is per process) with ``--threads`` torch threads and, when
installed, jemalloc preloaded; its log is ``<run_dir>/worker.log``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, find_record, jemalloc_path, read_records, upsert_record, write_json
from benchmarks.protocol import DEFAULT_PROTOCOL, SUITES, Cell, Protocol, load_protocol

DEFAULT_RUNS = ROOT / "benchmarks" / "runs"


def record_key(record: dict[str, Any]) -> tuple[Any, Any, Any]:
    return (record.get("suite"), record.get("variant"), record.get("seed"))


def results_path(results_dir: Path, suite: str) -> Path:
    return results_dir / f"{suite}.json"


def reused_copy(record: dict[str, Any], cell: Cell) -> dict[str, Any]:
    """``record`` relabelled as the result of ``cell``, which has the same resolved config and seed."""
    copy = {**record, "suite": cell.suite, "variant": cell.variant, "group": cell.group}
    copy["reused_from"] = f"{record['suite']}/{record['variant']}/seed{record['seed']}"
    return copy


class Sweep:
    """Plans and runs the cells of one suite."""

    def __init__(self, protocol: Protocol, suite: str, results_dir: Path, runs_dir: Path, threads: int) -> None:
        self.protocol, self.suite, self.threads = protocol, suite, threads
        self.results_dir, self.runs_dir = results_dir, runs_dir
        self.results = results_path(results_dir, suite)

    def select(self, only: list[str] | None, seed: int | None) -> list[Cell]:
        cells = self.protocol.cells(self.suite)
        if only:
            known = {c.variant for c in cells}
            unknown = [v for v in only if v not in known]
            if unknown:
                raise SystemExit(f"--only: unknown variant(s) {unknown} in suite {self.suite}; known: {sorted(known)}.")
            cells = [c for c in cells if c.variant in only]
        if seed is not None:
            cells = [c for c in cells if c.seed == seed or c.is_base]
        return cells

    def state(self, cell: Cell, config_hash: str) -> tuple[str, dict[str, Any] | None]:
        """``("done", record)``, ``("reuse", record)``, ``("stale", record)`` or ``("todo", None)``."""
        own = find_record(read_records(self.results), suite=cell.suite, variant=cell.variant, seed=cell.seed)
        if own is not None and own.get("config_hash") == config_hash:
            return "done", own
        for suite in SUITES:
            for rec in read_records(results_path(self.results_dir, suite)):
                if rec.get("config_hash") == config_hash and rec.get("seed") == cell.seed and "reused_from" not in rec:
                    return "reuse", rec
        return ("stale", own) if own is not None else ("todo", None)

    def run(self, cells: list[Cell], force: bool, keep_checkpoints: bool, dry: bool) -> int:
        failures = 0
        for n, cell in enumerate(cells, start=1):
            config_hash = self.protocol.config_hash(cell)
            state, rec = self.state(cell, config_hash)
            tag = f"[{n}/{len(cells)}] {cell.label()} ({config_hash})"
            if dry:
                print(f"{tag}: {state}", flush=True)
                continue
            if state == "done" and not force:
                print(f"{tag}: done, skipped", flush=True)
                continue
            if state == "reuse" and not force:
                assert rec is not None
                copy = reused_copy(rec, cell)
                upsert_record(self.results, copy, record_key)
                print(f"{tag}: same config as {copy['reused_from']}, record reused", flush=True)
                continue
            if state == "stale":
                print(f"{tag}: stale record (protocol or base config changed), running again", flush=True)
            failures += not self.run_cell(cell, config_hash, force, keep_checkpoints, tag)
        return 1 if failures else 0

    def share(self, record: dict[str, Any]) -> list[str]:
        """Gives every other cell of either suite with ``record``'s config and seed a reused copy of it.

        Without this, a cell equal to one just run (``reward_x0_dj`` is ``weight_d_j``) got its record only
        when a later sweep visited it, so a single-cell command left the report a seed short.

        Returns:
            The labels of the cells that received a copy.
        """
        shared = []
        for suite in SUITES:
            path = results_path(self.results_dir, suite)
            for cell in self.protocol.cells(suite):
                if cell.seed != record.get("seed") or (suite, cell.variant) == (record["suite"], record["variant"]):
                    continue
                if self.protocol.config_hash(cell) != record.get("config_hash"):
                    continue
                own = find_record(read_records(path), suite=suite, variant=cell.variant, seed=cell.seed)
                if own is not None and own.get("config_hash") == record["config_hash"] and "reused_from" not in own:
                    continue  # trained itself: keep its own record
                upsert_record(path, reused_copy(record, cell), record_key)
                shared.append(cell.label())
        return shared

    def run_cell(self, cell: Cell, config_hash: str, force: bool, keep_checkpoints: bool, tag: str) -> bool:
        run_dir = cell.run_dir(self.runs_dir)
        if force and run_dir.exists():
            shutil.rmtree(run_dir)
        cached = run_dir / "record.json"
        if cached.is_file() and json.loads(cached.read_text()).get("config_hash") == config_hash:
            record = json.loads(cached.read_text())
            upsert_record(self.results, record, record_key)
            print(f"{tag}: finished earlier, record collected from {cached}", flush=True)
            self.report_shared(tag, record)
            return True
        run_dir.mkdir(parents=True, exist_ok=True)
        spec = {
            "protocol": str(self.protocol.path.resolve()),
            "cell": cell.__dict__,
            "run_dir": str(run_dir.resolve()),
            "config_hash": config_hash,
            "threads": self.threads,
            "keep_checkpoints": keep_checkpoints,
        }
        spec_path = run_dir / "spec.json"
        write_json(spec_path, spec)
        env = dict(os.environ)
        if jemalloc_path():  # faster than glibc here, and its peak RSS is closer to live memory
            env["LD_PRELOAD"] = jemalloc_path()
        env.update({"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        print(f"{tag}: running (log {run_dir / 'worker.log'})", flush=True)
        start = time.perf_counter()
        with open(run_dir / "worker.log", "a") as log:
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.sweep", "--worker", str(spec_path)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if proc.returncode != 0 or not cached.is_file():
            tail = (run_dir / "worker.log").read_text()[-1500:]
            print(f"{tag}: FAILED (exit {proc.returncode}); end of its log:\n{tail}", flush=True)
            return False
        record = json.loads(cached.read_text())
        upsert_record(self.results, record, record_key)
        print(
            f"{tag}: done in {time.perf_counter() - start:.0f} s: shapes_score {record['shapes_score']:.4f}, "
            f"shapes_eval {record['shapes_eval']['overall']:.4f}, diversity {record['diversity']:.4f}",
            flush=True,
        )
        self.report_shared(tag, record)
        return True

    def report_shared(self, tag: str, record: dict[str, Any]) -> None:
        for label in self.share(record):
            print(f"{tag}: record reused by {label} (same config)", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", choices=SUITES, help="which suite to run")
    p.add_argument("--protocol", type=Path, default=DEFAULT_PROTOCOL, help="protocol YAML (default: %(default)s)")
    p.add_argument("--only", help="comma-separated variant names (methods: method names or 'base')")
    p.add_argument("--seed", type=int, help="only this seed (the base evaluation is kept)")
    p.add_argument("--force", action="store_true", help="recompute the selected cells even if finished")
    p.add_argument("--threads", type=int, default=1, help="torch threads per cell (default: %(default)s)")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where <suite>.json goes")
    p.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS, help="run directories (default: %(default)s)")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep every checkpoint of finished cells")
    p.add_argument("--list", action="store_true", help="print the cells and their state, run nothing")
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        from benchmarks.cell import run_worker

        return run_worker(args.worker)
    if args.suite is None:
        raise SystemExit("--suite is required (methods or ablations).")
    protocol = load_protocol(args.protocol)
    sweep = Sweep(protocol, args.suite, args.results_dir, args.runs_dir, args.threads)
    only = [v.strip() for v in args.only.split(",")] if args.only else None
    cells = sweep.select(only, args.seed)
    return sweep.run(cells, args.force, args.keep_checkpoints, args.list)


if __name__ == "__main__":
    sys.exit(main())
