"""Pretraining of the ShapesWorld base model from scratch with the rectified-flow loss.

Reproduce the shipped weights with one command (resumable: stop it and run it again to continue)::

    python -m leapalign.worlds.shapes.pretrain --out runs/shapes-pretrain --steps 24000 \\
        --export leapalign/worlds/shapes/assets/base

Data are rendered on the fly. Every random draw of step ``s`` (prompts, scenes, noise, sigmas, prompt
dropout) comes from generators seeded with ``(seed, s)``, so a resumed run continues exactly where it stopped
and the whole run is a deterministic function of its seed. Categories are drawn uniformly, then a training
prompt of that category, then a scene that satisfies the prompt. Sigmas follow a logit-normal law (SD3's
default); 10% of prompts are dropped to the empty prompt for classifier-free guidance. The EMA of the weights
(decay 0.999) is what gets exported.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from leapalign.flow import interpolate, velocity_target
from leapalign.worlds.shapes.model import RESOLUTION, ShapesArch, shapes_adapter
from leapalign.worlds.shapes.prompts import CATEGORIES, by_category, load_metadata
from leapalign.worlds.shapes.scenes import render, scene_for

logger = logging.getLogger(__name__)


def make_batch(records: dict[str, list[dict]], seed: int, step: int, batch: int) -> tuple[list[str], Tensor]:
    """Draws ``batch`` (prompt, rendered scene) pairs for ``step``; images ``(B, 3, 32, 32)`` in ``[0, 1]``."""
    rng = np.random.default_rng([seed, step])
    prompts, images = [], []
    for _ in range(batch):
        cat = CATEGORIES[rng.integers(len(CATEGORIES))]
        meta = records[cat][rng.integers(len(records[cat]))]
        prompts.append(meta["prompt"])
        images.append(render(scene_for(meta, rng, RESOLUTION)))
    return prompts, torch.from_numpy(np.stack(images))


class Pretrainer:
    """Owns the model, optimiser, EMA and the resumable loop."""

    def __init__(
        self,
        out: Path,
        *,
        seed: int = 0,
        batch: int = 32,
        lr: float = 1e-3,
        warmup: int = 500,
        ema_decay: float = 0.999,
        dropout: float = 0.1,
        arch: ShapesArch | None = None,
        schedule: str = "constant",
        total_steps: int | None = None,
        min_lr: float = 1e-5,
    ) -> None:
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"unknown schedule {schedule!r}; use constant or cosine.")
        if schedule == "cosine" and not total_steps:
            raise ValueError("the cosine schedule needs total_steps (the step it reaches min_lr at).")
        self.out, self.seed, self.batch, self.lr, self.warmup = out, seed, batch, lr, warmup
        self.schedule, self.total_steps, self.min_lr = schedule, total_steps, min_lr
        self.ema_decay, self.dropout = ema_decay, dropout
        self.arch = arch or ShapesArch()
        torch.manual_seed(seed)
        self.transformer = self.arch.build()
        self.model = shapes_adapter(self.transformer, guidance_scale=1.0)  # conditional velocity for training
        self.ema = {k: v.detach().clone() for k, v in self.transformer.state_dict().items()}
        self.opt = torch.optim.AdamW(self.transformer.parameters(), lr=lr, weight_decay=0.01)
        self.records = by_category(load_metadata("train"))
        self.step = 0
        self.elapsed = 0.0

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then constant or a cosine decay to ``min_lr`` at ``total_steps``."""
        if step < self.warmup or self.schedule == "constant":
            return self.lr * min(1.0, (step + 1) / self.warmup)
        assert self.total_steps is not None
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * progress))

    def train_step(self) -> float:
        prompts, images = make_batch(self.records, self.seed, self.step, self.batch)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.step)
        drop = torch.rand(self.batch, generator=gen) < self.dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        x0 = self.model.encode_pixels(images)
        noise = torch.randn(x0.shape, generator=gen)
        sigma = torch.sigmoid(torch.randn(self.batch, generator=gen))  # logit-normal(0, 1)
        x = interpolate(x0, noise, sigma)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        v = self.model.velocity(x, sigma, self.model.encode_prompts(prompts))
        loss = (v - velocity_target(x0, noise)).pow(2).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.transformer.parameters(), 1.0)
        self.opt.step()
        with torch.no_grad():
            for k, v_ in self.transformer.state_dict().items():
                self.ema[k].lerp_(v_, 1.0 - self.ema_decay)
        self.step += 1
        return loss.item()

    # -------------------------------------------------------------------------------------------- checkpoints
    def save(self) -> None:
        tmp = self.out / "checkpoint.tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.transformer.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in self.ema.items()}, str(tmp / "ema.safetensors"))
        opt_sd = self.opt.state_dict()
        flat = {f"{i}.{k}": v for i, st in opt_sd["state"].items() for k, v in st.items()}
        save_file({k: v.contiguous() for k, v in flat.items()}, str(tmp / "optimizer.safetensors"))
        state = {
            "step": self.step,
            "elapsed_s": self.elapsed,
            "seed": self.seed,
            "batch": self.batch,
            "lr": self.lr,
            "warmup": self.warmup,
            "ema_decay": self.ema_decay,
            "schedule": self.schedule,
            "total_steps": self.total_steps,
            "min_lr": self.min_lr,
            "arch": self.arch.to_dict(),
            "param_groups": opt_sd["param_groups"],
        }
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        final = self.out / "checkpoint"
        old = self.out / "checkpoint.old"
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        if old.exists():
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    def load(self) -> bool:
        ck = self.out / "checkpoint"
        if not (ck / "state.json").is_file():
            return False
        state = json.loads((ck / "state.json").read_text())
        mine = {"schedule": self.schedule, "total_steps": self.total_steps, "lr": self.lr, "batch": self.batch}
        theirs = {"schedule": state.get("schedule", "constant"), "total_steps": state.get("total_steps")}
        theirs |= {"lr": state["lr"], "batch": state["batch"]}
        if mine["schedule"] == "constant":  # a constant schedule does not depend on the total
            mine["total_steps"] = theirs["total_steps"] = None
        if mine != theirs:
            raise ValueError(
                f"{ck} was written with {theirs}, this run asks for {mine}: resume with the same --schedule, "
                f"--steps (cosine), --lr and --batch, or use another --out."
            )
        self.transformer.load_state_dict(load_file(str(ck / "model.safetensors")))
        self.ema = load_file(str(ck / "ema.safetensors"))
        flat = load_file(str(ck / "optimizer.safetensors"))
        opt_state: dict[int, dict[str, Tensor]] = {}
        for name, value in flat.items():
            i, k = name.split(".", 1)
            opt_state.setdefault(int(i), {})[k] = value
        self.opt.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
        self.step, self.elapsed = int(state["step"]), float(state["elapsed_s"])
        return True

    def export(self, directory: Path) -> None:
        """Writes the EMA weights as a diffusers model folder (``FluxTransformer2DModel.from_pretrained``)."""
        model = self.arch.build()
        model.load_state_dict(self.ema)
        tmp = directory.with_name(directory.name + ".tmp")
        model.save_pretrained(str(tmp), safe_serialization=True)
        if directory.exists():
            for f in directory.iterdir():
                f.unlink()
            directory.rmdir()
        tmp.rename(directory)

    def run(self, steps: int, checkpoint_every: int = 100, log_every: int = 50) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.load():
            logger.info("resumed at step %d (%.0f s trained so far)", self.step, self.elapsed)
        log = (self.out / "log.jsonl").open("a")
        bar = tqdm(total=steps, initial=self.step, desc="pretrain")
        losses: list[float] = []
        while self.step < steps:
            start = time.perf_counter()
            losses.append(self.train_step())
            self.elapsed += time.perf_counter() - start
            bar.update(1)
            if self.step % log_every == 0:
                mean = sum(losses) / len(losses)
                losses.clear()
                bar.set_postfix(loss=f"{mean:.4f}")
                log.write(json.dumps({"step": self.step, "loss": mean, "elapsed_s": round(self.elapsed, 1)}) + "\n")
                log.flush()
            if self.step % checkpoint_every == 0 or self.step == steps:
                self.save()
        bar.close()
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/shapes-pretrain"))
    parser.add_argument("--steps", type=int, default=24000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                        help="learning rate after the warm-up (cosine: down to 1e-5 at --steps)")  # fmt: skip
    parser.add_argument("--export", type=Path, default=None, help="write the EMA weights here when done")
    parser.add_argument("--export-only", action="store_true", help="export the latest checkpoint, do not train")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trainer = Pretrainer(
        args.out, seed=args.seed, batch=args.batch, lr=args.lr, schedule=args.schedule, total_steps=args.steps
    )
    if args.export_only:
        if not trainer.load():
            raise SystemExit(f"{args.out} has no checkpoint to export.")
    else:
        trainer.run(args.steps)
    if args.export is not None:
        trainer.export(args.export)
        logger.info("exported EMA weights to %s", args.export)


if __name__ == "__main__":
    main()
