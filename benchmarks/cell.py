"""One benchmark cell, run in its own process by :mod:`benchmarks.sweep`: train, evaluate, write a record.

Training is ``leapalign.trainer.train`` on the cell's config with a checkpoint every
``evaluation.curve_every`` steps (``run.resume=true run.resume_or_start=true``, so a killed cell continues from its
last checkpoint).
The EMA weights of every checkpoint are then evaluated on the held-out prompts with fixed seeds: the first
``curve_images_per_prompt`` images of every prompt for the curve, all ``images_per_prompt`` at the end. The
final record goes to ``<run_dir>/record.json``; the parent appends it to the suite's results file.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import Jemalloc, provenance, set_threads, write_json
from benchmarks.protocol import DEFAULT_PROTOCOL, Cell, EvalProtocol, Protocol

CATEGORY_PREFIX = "shapes_eval."


def select_metadata(ev: EvalProtocol) -> list[dict]:
    """The held-out prompt metadata, optionally limited to the first ``prompts_per_category`` of each category."""
    from leapalign.worlds.shapes.prompts import load_metadata

    metadata = load_metadata(ev.prompts.removeprefix("shapes:"))
    if ev.prompts_per_category is None:
        return metadata
    counts: dict[str, int] = {}
    out = []
    for meta in metadata:
        n = counts.get(meta["tag"], 0)
        if n < ev.prompts_per_category:
            out.append(meta)
            counts[meta["tag"]] = n + 1
    return out


def first_images(images: torch.Tensor, per_prompt: int, keep: int) -> torch.Tensor:
    """From prompt-major images ``(N * per_prompt, 3, H, W)``, the first ``keep`` of every prompt."""
    return images.view(-1, per_prompt, *images.shape[1:])[:, :keep].reshape(-1, *images.shape[1:])


def score(images: torch.Tensor, metadata: list[dict], per_prompt: int) -> dict[str, Any]:
    """ShapesScore, ShapesLayout, ShapesEval and pixel diversity of prompt-major float ``images`` (not rounded to
    8 bits: the recorded cells were measured this way)."""
    from leapalign.diversity import prompt_diversity
    from leapalign.worlds.shapes.evaluator import evaluate
    from leapalign.worlds.shapes.layout import ShapesLayout
    from leapalign.worlds.shapes.score import ShapesScore

    metas = [m for m in metadata for _ in range(per_prompt)]
    prompts = [m["prompt"] for m in metas]

    def mean_of(reward: Any) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([reward(images[i : i + 256], prompts[i : i + 256]) for i in range(0, len(prompts), 256)])

    scores, layout = mean_of(ShapesScore()), mean_of(ShapesLayout())
    result = evaluate(images, metas)
    groups = [i for i in range(len(metadata)) for _ in range(per_prompt)]
    return {
        "shapes_score": scores.mean().item(),
        "shapes_score_std": scores.std().item(),
        "shapes_layout": layout.mean().item(),
        "shapes_eval": {"overall": result.overall, **result.by_category},
        "diversity": prompt_diversity(images, groups),
        "num_eval_images": len(prompts),
    }


def generate(model: Any, cfg: Any, metadata: list[dict], per_prompt: int) -> torch.Tensor:
    """The fixed-seed evaluation images of ``model``, prompt-major (image r of prompt i: the library's
    :func:`~leapalign.eval.image_seed`, ``seed + 1000 r + i`` for up to 1000 prompts)."""
    from leapalign.eval import image_seed
    from leapalign.sampling import generate as sample

    ev, n = cfg.evaluation, len(metadata)
    pairs = [(i, r) for i in range(n) for r in range(per_prompt)]
    return sample(
        model,
        [metadata[i]["prompt"] for i, _ in pairs],
        seeds=[image_seed(ev.seed, i, r, n) for i, r in pairs],
        num_steps=ev.num_steps,
        height=cfg.sampler.height,
        width=cfg.sampler.width,
        batch_size=ev.batch_size,
    )


def curve_point(step: int, train_sec: float, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "step": step,
        "train_sec": train_sec,
        "shapes_score": metrics["shapes_score"],
        "shapes_eval_overall": metrics["shapes_eval"]["overall"],
        "shapes_layout": metrics.get("shapes_layout"),
        "diversity": metrics["diversity"],
    }


class CellRunner:
    """Runs one cell in this process (see the module docstring)."""

    def __init__(self, protocol: Protocol, cell: Cell, run_dir: Path, config_hash: str, threads: int) -> None:
        self.protocol, self.cell, self.run_dir, self.hash, self.threads = protocol, cell, run_dir, config_hash, threads
        self.ev = protocol.evaluation
        bookkeeping = [
            "run.resume=true",
            "run.resume_or_start=true",
            f"run.checkpoint_every={self.ev.curve_every}",
            "run.keep_checkpoints=100000",
        ]
        self.cfg = protocol.config_for(cell, run_dir, bookkeeping)
        self.metadata = select_metadata(self.ev)
        self._model = None

    # ------------------------------------------------------------------------------------------- helpers
    def _claim(self) -> None:
        """Starts afresh when the run directory holds a run of another config hash."""
        marker = self.run_dir / "cell.json"
        if marker.is_file() and json.loads(marker.read_text()).get("config_hash") != self.hash:
            print(f"{self.run_dir} holds a run of another protocol version; starting it again.", flush=True)
            shutil.rmtree(self.run_dir)
        write_json(marker, {"cell": self.cell.label(), "config_hash": self.hash, "overrides": self.cell.overrides})

    def model(self) -> Any:
        if self._model is None:
            from leapalign.models import build_model

            torch.manual_seed(self.cfg.run.seed)
            self._model = build_model(self.cfg.model)
        return self._model

    def load_ema(self, step: int) -> Any:
        from leapalign import checkpoint as ckpt

        directory = ckpt.checkpoint_dir(self.run_dir, step)
        weights = directory / "ema.safetensors"
        if not weights.is_file():  # EMA disabled: the live weights
            weights = directory / "trainable.safetensors"
        model = self.model()
        ckpt.load_into(ckpt.named_trainable(model.transformer), weights)
        return model

    def evaluate(self, step: int | None, per_prompt: int, tag: str) -> tuple[dict[str, Any], torch.Tensor]:
        """Evaluates the EMA weights of checkpoint ``step`` (``None``: the base model); cached as JSON."""
        model = self.model() if step is None else self.load_ema(step)
        start = time.perf_counter()
        images = generate(model, self.cfg, self.metadata, per_prompt)
        metrics = score(images, self.metadata, per_prompt)
        metrics["eval_sec"] = time.perf_counter() - start
        write_json(self.run_dir / f"eval_{tag}.json", metrics)
        return metrics, images

    def curve_metrics(self, step: int | None, images: torch.Tensor | None) -> dict[str, Any]:
        """Curve metrics at ``step``: from the final images when given, else a (cached) subset evaluation."""
        k = self.ev.curve_images_per_prompt
        if images is not None:
            return score(first_images(images, self.ev.images_per_prompt, k), self.metadata, k)
        cache = self.run_dir / f"eval_curve_{step or 0:06d}.json"
        if cache.is_file():
            return json.loads(cache.read_text())
        metrics, _ = self.evaluate(step, k, f"curve_{step or 0:06d}")
        return metrics

    def save_grid(self, images: torch.Tensor, name: str) -> None:
        """One row per prompt (up to 12, spread over the categories), one column per image, upscaled 4x."""
        from leapalign.images import image_grid

        r, n = self.ev.images_per_prompt, len(self.metadata)
        rows = list(range(0, n, max(1, n // 12)))[:12]
        picked = torch.cat([images[i * r : (i + 1) * r] for i in rows])
        captions = [self.metadata[i]["prompt"] for i in rows]
        image_grid(picked, ncols=r, scale=4, captions=captions).save(self.run_dir / name)

    def command(self) -> str:
        """The one command that recomputes this cell."""
        cmd = f"python -m benchmarks.sweep --suite {self.cell.suite} --only {self.cell.variant}"
        if self.cell.seed is not None:
            cmd += f" --seed {self.cell.seed}"
        if self.protocol.path.resolve() != DEFAULT_PROTOCOL.resolve():
            cmd += f" --protocol {self.protocol.path}"
        return cmd + f" --threads {self.threads} --force"

    # ------------------------------------------------------------------------------------------- the cell
    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._claim()
        record: dict[str, Any] = {
            "suite": self.cell.suite,
            "variant": self.cell.variant,
            "group": self.cell.group,
            "method": self.cell.method,
            "seed": self.cell.seed,
            "config_hash": self.hash,
            "overrides": self.protocol.overrides_for(self.cell),
            "base_config": self.protocol.base_config,
            "weights": "ema",
            "command": self.command(),
        }
        if self.cell.is_base:
            final, images = self.evaluate(None, self.ev.images_per_prompt, "final")
            record.update({"iterations": 0, "train_sec": 0.0})
            record["curve"] = [curve_point(0, 0.0, self.curve_metrics(0, images))]
        else:
            record.update(self._train())
            steps = record["iterations"]
            cum = dict(record.pop("_cum_sec"))
            final, images = self.evaluate(steps, self.ev.images_per_prompt, "final")
            every = self.ev.curve_every
            points = list(range(every, steps, every)) if every else []
            record["curve"] = [curve_point(s, cum[s], self.curve_metrics(s, None)) for s in points]
            record["curve"].append(curve_point(steps, cum[steps], self.curve_metrics(steps, images)))
        self.save_grid(images, "samples_final.png")
        record.update(
            {k: final[k] for k in ("shapes_score", "shapes_score_std", "shapes_layout", "shapes_eval", "diversity")}
        )
        record.update({"num_eval_images": final["num_eval_images"], "eval_sec": final["eval_sec"]})
        record["wall_clock_sec"] = time.perf_counter() - start
        record.update(provenance(self.threads))
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(self.run_dir / "record.json", record)
        return record

    def _train(self) -> dict[str, Any]:
        from leapalign import checkpoint as ckpt
        from leapalign.metrics import read_metrics
        from leapalign.trainer import train

        steps = self.cfg.train.max_steps
        done = ckpt.checkpoint_dir(self.run_dir, steps)
        resumed = ckpt.latest_checkpoint(self.run_dir) is not None and not done.is_dir()
        fresh = not done.is_dir() and not resumed  # the whole training runs in this process
        jemalloc = Jemalloc.active()
        live_start = jemalloc.allocated_mb() if jemalloc else 0.0
        if jemalloc:
            jemalloc.reset_thread_peak()
        if not done.is_dir():
            train(self.cfg)
        live_peak = live_start + jemalloc.thread_peak_mb() if jemalloc and fresh else None
        by_step = {r["step"]: r for r in read_metrics(self.run_dir / "metrics.jsonl")}  # last attempt wins
        rows = [by_step[s] for s in range(1, steps + 1)]
        times = [float(r["sec_per_iter"]) for r in rows]
        rewards = [float(r["reward_mean"]) for r in rows]
        cum, total = [], 0.0
        for s, t in enumerate(times, start=1):
            total += t
            cum.append((s, total))
        tail = max(1, steps // 10)
        peaks = [r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb") is not None]
        return {
            "iterations": steps,
            "resumed": resumed,
            "sec_per_iter": statistics.fmean(times),
            "sec_per_iter_median": statistics.median(times),
            "train_sec": total,
            "train_reward_final": statistics.fmean(rewards[-tail:]),
            "train_reward_curve": [[s, round(c, 3), round(r, 5)] for (s, c), r in zip(cum, rewards, strict=True)],
            "peak_mem_mb": max(peaks) if peaks else None,
            "peak_mem_method": "process peak RSS (ru_maxrss) over training, " + provenance(self.threads)["allocator"],
            "peak_live_mb": live_peak,  # jemalloc live bytes, peak over the training call (None if resumed)
            "_cum_sec": cum,
        }


def prune_checkpoints(run_dir: Path, keep_step: int) -> None:
    """Deletes every checkpoint of a finished cell except the final one (they are large; the record is kept)."""
    from leapalign import checkpoint as ckpt

    root = run_dir / "checkpoints"
    if not root.is_dir():
        return
    final = ckpt.checkpoint_dir(run_dir, keep_step)
    for path in root.iterdir():
        if path != final:
            shutil.rmtree(path, ignore_errors=True)


def run_worker(spec_path: Path) -> int:
    """Entry point of the worker process: reads the cell spec JSON, runs it, prunes checkpoints."""
    from benchmarks.protocol import load_protocol

    spec = json.loads(spec_path.read_text())
    set_threads(int(spec["threads"]))
    protocol = load_protocol(spec["protocol"])
    cell = Cell(**spec["cell"])
    runner = CellRunner(protocol, cell, Path(spec["run_dir"]), spec["config_hash"], int(spec["threads"]))
    record = runner.run()
    if not spec.get("keep_checkpoints", False) and not cell.is_base:
        prune_checkpoints(runner.run_dir, record["iterations"])
    return 0
