"""The demo's documented check: its weights against the base model on 1,152 held-out images of fresh noise, with
the paired change of every metric and its 95% bootstrap interval (``leapalign eval --compare``), recorded in
``benchmarks/results/demo_check.json``.

    make demo                                   # writes runs/demo
    python -m benchmarks.demo_check             # evaluates runs/demo and the base into runs/demo-check (minutes)

The record holds the command, the paired changes, both evaluations' metrics, the run's config and the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.common import RESULTS, provenance, write_json

IMAGES_PER_PROMPT = 12  # 96 held-out prompts: 1,152 images
SEED = 7  # not the seed of the training-time evaluations (0): fresh noise


def main(argv: list[str] | None = None) -> int:
    from leapalign.cli import main as leapalign

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=Path("runs/demo"), help="the demo's run folder")
    p.add_argument("--out", type=Path, default=Path("runs/demo-check"), help="the evaluation folder")
    p.add_argument("--record", type=Path, default=RESULTS / "demo_check.json")
    args = p.parse_args(argv)
    command = [
        "eval",
        "--run",
        str(args.run),
        "--compare",
        "base",
        f"evaluation.images_per_prompt={IMAGES_PER_PROMPT}",
        f"evaluation.seed={SEED}",
        "--out",
        str(args.out),
        "--overwrite",
        "--no-progress",
    ]
    start = time.perf_counter()
    if leapalign(command) != 0:
        return 1
    compare = json.loads((args.out / "compare.json").read_text())
    labels = compare["labels"]
    record = {
        "command": "leapalign " + " ".join(command),
        "run_config": (args.run / "config.yaml").read_text(),
        "paired": compare["paired"],
        "metrics": {label: compare[label] for label in labels},
        "labels": labels,
        "seconds": round(time.perf_counter() - start, 1),
        **provenance(threads=torch.get_num_threads()),
    }
    write_json(args.record, record)
    overall = compare["paired"]["shapes_eval.overall"]
    print(  # a script's report, not library code
        f"ShapesEval overall {overall['change']:+.4f} [{overall['ci_low']:+.4f}, {overall['ci_high']:+.4f}]; "
        f"wrote {args.record}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
