"""Evaluation on ShapesWorld: fixed prompts and seeds, ShapesScore and ShapesEval, sample grids.

Used by the trainer (before / after fine-tuning, when ``evaluation.enabled``) and by ``leapalign eval``.
Output keys (``eval_*.json``): ``shapes_score.mean``, ``shapes_score.std``, ``shapes_eval.overall`` and
``shapes_eval.<category>``, plus ``num_images`` and the sampling settings.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from leapalign.models.base import FlowModel
from leapalign.sampling import generate, image_grid

logger = logging.getLogger(__name__)


@dataclass
class EvalConfig:
    """Evaluation during training (``evaluation.*`` keys).

    Attributes:
        enabled: Evaluate before training and after it (EMA weights) and write eval_before/after.json,
            samples_before/after.png and reward_curve.png to the run directory.
        prompts: ``shapes:eval`` (the held-out ShapesWorld prompts) or ``shapes:train``.
        images_per_prompt: Images per prompt; image r of prompt i uses seed ``seed + 1000 * r + i``.
        seed: Base seed of the evaluation noise (fixed, independent of the training seed).
        num_steps: Euler steps of the evaluation sampler.
        batch_size: Images per sampling batch.
        grid_prompts: How many prompts the sample grids show (one row each, ``images_per_prompt`` columns).
    """

    enabled: bool = False
    prompts: str = "shapes:eval"
    images_per_prompt: int = 2
    seed: int = 0
    num_steps: int = 25
    batch_size: int = 64
    grid_prompts: int = 12

    def __post_init__(self) -> None:
        if self.prompts not in ("shapes:eval", "shapes:train"):
            raise ValueError(f"evaluation.prompts={self.prompts!r} is invalid; allowed: shapes:eval, shapes:train.")
        if self.images_per_prompt < 1 or self.num_steps < 1 or self.batch_size < 1:
            raise ValueError("evaluation.images_per_prompt, num_steps and batch_size must be >= 1.")


def eval_metadata(cfg: EvalConfig) -> list[dict]:
    from leapalign.worlds.shapes.prompts import load_metadata

    return load_metadata(cfg.prompts.removeprefix("shapes:"))


def generate_eval_images(model: FlowModel, metadata: list[dict], cfg: EvalConfig, height: int, width: int) -> Tensor:
    """Images ``(N * R, 3, H, W)``, ordered prompt-major (all R images of prompt 0 first)."""
    prompts, seeds = [], []
    for i, meta in enumerate(metadata):
        for r in range(cfg.images_per_prompt):
            prompts.append(meta["prompt"])
            seeds.append(cfg.seed + 1000 * r + i)
    return generate(
        model, prompts, seeds=seeds, num_steps=cfg.num_steps, height=height, width=width, batch_size=cfg.batch_size
    )


@torch.no_grad()
def score_images(images: Tensor, metadata: list[dict], images_per_prompt: int) -> dict[str, Any]:
    """ShapesScore and ShapesEval of prompt-major ``images``; returns the flat metrics dict."""
    from leapalign.worlds.shapes.evaluator import evaluate
    from leapalign.worlds.shapes.score import ShapesScore

    metas = [m for m in metadata for _ in range(images_per_prompt)]
    prompts = [m["prompt"] for m in metas]
    scorer = ShapesScore()
    scores = torch.cat([scorer(images[i : i + 256], prompts[i : i + 256]) for i in range(0, len(prompts), 256)])
    result = evaluate(images, metas)
    out: dict[str, Any] = {
        "shapes_score.mean": scores.mean().item(),
        "shapes_score.std": scores.std().item(),
        "shapes_eval.overall": result.overall,
    }
    out.update({f"shapes_eval.{cat}": acc for cat, acc in result.by_category.items()})
    out["num_images"] = len(prompts)
    return out


def evaluate_model(
    model: FlowModel, cfg: EvalConfig, height: int, width: int, out_dir: Path | None = None, tag: str = ""
) -> dict[str, Any]:
    """Generates the evaluation images, scores them, and optionally writes ``eval_<tag>.json`` and a grid."""
    metadata = eval_metadata(cfg)
    images = generate_eval_images(model, metadata, cfg, height, width)
    metrics = score_images(images, metadata, cfg.images_per_prompt)
    metrics.update(
        {
            "images_per_prompt": cfg.images_per_prompt,
            "num_steps": cfg.num_steps,
            "seed": cfg.seed,
            "prompts": cfg.prompts,
        }
    )
    if out_dir is not None:
        suffix = f"_{tag}" if tag else ""
        write_json(out_dir / f"eval{suffix}.json", metrics)
        save_grid(images, metadata, cfg, out_dir / f"samples{suffix}.png")
    return metrics


def save_grid(images: Tensor, metadata: list[dict], cfg: EvalConfig, path: Path) -> None:
    """One row per prompt (spread over the categories), ``images_per_prompt`` columns, upscaled 4x."""
    step = max(1, len(metadata) // cfg.grid_prompts)
    rows = list(range(0, len(metadata), step))[: cfg.grid_prompts]
    r = cfg.images_per_prompt
    picked = torch.cat([images[i * r : (i + 1) * r] for i in rows])
    image_grid(picked, ncols=r, scale=4).save(path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes JSON atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def comparison_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A small Markdown table of the before / after metrics."""
    keys = [k for k in before if k.startswith(("shapes_score.mean", "shapes_eval."))]
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    for k in keys:
        lines.append(f"| {k} | {before[k]:.4f} | {after[k]:.4f} | {after[k] - before[k]:+.4f} |")
    return "\n".join(lines)


def plot_reward_curve(metrics_path: Path, out: Path) -> None:
    """Plots the training reward (mean per step, with a moving average) from ``metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from leapalign.metrics import read_metrics

    records = [r for r in read_metrics(metrics_path) if r.get("reward_mean") is not None]
    if not records:
        return
    steps = [r["step"] for r in records]
    rewards = [r["reward_mean"] for r in records]
    k = max(1, len(rewards) // 20)
    smooth = [
        sum(rewards[max(0, i - k + 1) : i + 1]) / len(rewards[max(0, i - k + 1) : i + 1]) for i in range(len(rewards))
    ]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, rewards, alpha=0.35, label="batch mean")
    ax.plot(steps, smooth, label=f"moving average ({k})")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("training reward")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
