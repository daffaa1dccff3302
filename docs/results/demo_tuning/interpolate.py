"""Interpolates a run's EMA weights back towards the shipped base model (a weight-space average, as WiSE-FT).

Writes a run folder whose latest checkpoint holds ``base + a * (run - base)``, which ``leapalign eval --run``
then evaluates. Run from the repository root::

    python docs/results/demo_tuning/interpolate.py runs/t40 0.5 runs/wise/t40_0.5
    leapalign eval --run runs/wise/t40_0.5 --out runs/wise/t40_0.5/eval
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

BASE = Path("leapalign/shapes/assets/base/diffusion_pytorch_model.safetensors")

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a full fine-tuning run folder (checkpoints/step_*)")
    parser.add_argument("a", type=float, help="0 = the base model, 1 = the run")
    parser.add_argument("out", type=Path, help="the new run folder (must not exist)")
    args = parser.parse_args()
    base = load_file(str(BASE))
    ckpt = sorted((args.run / "checkpoints").glob("step_*"))[-1]
    ema = load_file(str(ckpt / "ema.safetensors"))
    if set(ema) != set(base):
        raise SystemExit(f"{ckpt} does not hold full weights of the base model (LoRA runs are not supported).")
    target = args.out / "checkpoints" / ckpt.name
    target.mkdir(parents=True, exist_ok=False)
    for f in ckpt.iterdir():
        if f.name != "ema.safetensors":
            shutil.copy(f, target / f.name)
    shutil.copy(args.run / "config.yaml", args.out / "config.yaml")
    mixed = {k: (base[k] + args.a * (ema[k] - base[k])).contiguous() for k in ema}
    save_file(mixed, str(target / "ema.safetensors"))
    sys.stdout.write(f"wrote {target}\n")
