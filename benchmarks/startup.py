"""Start-up time of the ``leapalign`` command: ``--help``, ``configs`` and ``rewards``, each run ``--runs`` times
in a fresh process, recorded in ``benchmarks/results/startup.json`` with the machine.

    python -m benchmarks.startup                      # 5 runs of each command (about a minute)
    python -m benchmarks.startup --runs 3 --commands configs --out /tmp/startup.json

Per command: every wall time (the process from start to exit, as a user waits for it), their median and minimum,
and from one more run with ``PYTHONPROFILEIMPORTTIME=1``: the torch-heavy packages it imported (``torch``,
``diffusers``, ``transformers``, ``accelerate``) and the seconds its imports took under that profiler (slower than
without). ``torchvision_notice`` says whether any run printed transformers' torchvision fallback notice. The
load average before and after is kept: above the core count, other work shared the CPU and the times are slower
than the machine's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, ROOT, git_info, machine_info, write_json

OUT = RESULTS / "startup.json"
COMMANDS = {"--help": ["--help"], "configs": ["configs"], "rewards": ["rewards"], "list": ["list"]}
HEAVY = ("torch", "diffusers", "transformers", "accelerate")


def launcher() -> list[str]:
    """The installed ``leapalign`` script next to this Python (what users run), else ``python -m leapalign.cli``."""
    script = shutil.which("leapalign", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "leapalign.cli"]


def run_once(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Runs one command in a fresh process; returns its wall time in seconds and its stderr.

    Raises:
        RuntimeError: The command failed.
    """
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, done.stderr


def import_profile(stderr: str) -> tuple[list[str], float]:
    """The torch-heavy top-level packages in a ``-X importtime`` report, and the seconds of its top-level imports."""
    heavy, total_us = set(), 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        if name.strip().split(".")[0] in HEAVY:
            heavy.add(name.strip().split(".")[0])
        if cumulative.strip().isdigit() and not name.startswith("  "):  # indented: imported by another import
            total_us += int(cumulative)
    return sorted(heavy), total_us / 1e6


def measure(name: str, runs: int, base: list[str]) -> dict[str, Any]:
    """``runs`` timed runs of one command plus one profiled run."""
    argv = [*base, *COMMANDS[name]]
    times, notice = [], False
    for _ in range(runs):
        seconds, stderr = run_once(argv)
        times.append(round(seconds, 4))
        notice |= "torchvision" in stderr
    _, profiled = run_once(argv, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    heavy, import_s = import_profile(profiled)
    print(f"leapalign {name:8s} median {statistics.median(times):.3f} s, min {min(times):.3f} s; heavy: {heavy}")
    return {
        "argv": COMMANDS[name],
        "times_s": times,
        "median_s": round(statistics.median(times), 4),
        "min_s": min(times),
        "heavy_modules": heavy,
        "import_s_profiled": round(import_s, 4),
        "torchvision_notice": notice,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="timed runs per command (each a fresh process)")
    p.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS))
    p.add_argument("--out", type=Path, default=OUT, help="the results file (replaced)")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error(f"--runs={args.runs} must be >= 1.")
    base = launcher()
    load_before = [round(x, 2) for x in os.getloadavg()]
    commands = {name: measure(name, args.runs, base) for name in args.commands}
    write_json(
        args.out,
        {
            "benchmark": "startup",
            "launcher": "leapalign" if len(base) == 1 else "python -m leapalign.cli",
            "runs": args.runs,
            "commands": commands,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "git": git_info(),
            "load_avg_before": load_before,
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
