"""Outputs of an evaluation: ``eval.json``, ``images.csv``, ``samples.png``, ``report.md``; and the side-by-side
comparison of two evaluations (``compare.json``, ``compare.png``, ``report.md``).

``eval.json`` keys: ``<reward>.mean``, ``<reward>.std``, ``<reward>.ci95_low``, ``<reward>.ci95_high`` per
reward (interval: see :mod:`leapalign.eval.stats`); ``shapes_eval.overall`` and ``shapes_eval.<category>`` for
ShapesWorld prompts; ``diversity.pixel`` (and ``diversity.<reward>`` in that reward's feature space, when asked);
``num_images``, ``num_prompts``, ``images_per_prompt``; ``settings`` (model, prompts, sampling, rewards).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from leapalign.diversity import prompt_diversity
from leapalign.eval.runner import EvalRun
from leapalign.eval.stats import category_accuracy, group_means, summarize, win_rate
from leapalign.evaluation import write_json
from leapalign.sampling import image_grid

GRID_PROMPTS = 12
GRID_COLUMNS = 8


def _prompt_images(run: EvalRun, prompt_index: int, limit: int | None = None) -> Tensor:
    recs = run.records[prompt_index * run.images_per_prompt : (prompt_index + 1) * run.images_per_prompt]
    return torch.stack([run.store.load_image(rec) for rec in recs[:limit]])


def diversity(run: EvalRun, embed: Callable[[Tensor], Tensor] | None = None) -> float:
    """Mean over prompts of the mean pairwise distance between a prompt's images (see :mod:`leapalign.diversity`),
    loading one prompt's images at a time."""
    per_prompt = []
    for i in range(len(run.prompt_set)):
        images = _prompt_images(run, i)
        per_prompt.append(prompt_diversity(images, [0] * len(images), embed=embed))
    return sum(per_prompt) / len(per_prompt)


def summarize_run(run: EvalRun, embeds: dict[str, Callable[[Tensor], Tensor]] | None = None) -> dict[str, Any]:
    """The flat metrics of :data:`eval.json <leapalign.eval.report>` (without ``settings``)."""
    groups = [rec["prompt_index"] for rec in run.records]
    out: dict[str, Any] = {}
    for name in run.reward_names:
        stats = summarize([rec["scores"][name] for rec in run.records], groups)
        out.update({f"{name}.{k}": v for k, v in stats.items()})
    if run.shapes:
        from leapalign.worlds.shapes.prompts import CATEGORIES

        tags = [run.prompt_set.entries[rec["prompt_index"]]["tag"] for rec in run.records]
        acc = category_accuracy([float(rec["shapes_eval"]) for rec in run.records], tags, CATEGORIES)
        out.update({f"shapes_eval.{k}": v for k, v in acc.items()})
    if run.images_per_prompt >= 2:
        out["diversity.pixel"] = diversity(run)
        for name, embed in (embeds or {}).items():
            out[f"diversity.{name}"] = diversity(run, embed)
    out.update(
        {"num_images": len(run.records), "num_prompts": len(run.prompt_set), "images_per_prompt": run.images_per_prompt}
    )
    return out


def _tiles(images: Tensor, side: int = 256) -> tuple[Tensor, int]:
    """Downscales large images to ``side`` pixels; returns them and the integer upscale for small ones."""
    h, w = images.shape[-2:]
    if max(h, w) > side:
        size = (max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w))))
        return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False), 1
    return images, max(1, 128 // max(h, w))


def _grid_rows(num_prompts: int) -> list[int]:
    step = max(1, num_prompts // GRID_PROMPTS)
    return list(range(0, num_prompts, step))[:GRID_PROMPTS]


def save_grid(run: EvalRun, path: Path) -> None:
    """One row per prompt (up to 12, spread over the set), up to 8 images each."""
    cols = min(run.images_per_prompt, GRID_COLUMNS)
    images = torch.cat([_prompt_images(run, i, cols) for i in _grid_rows(len(run.prompt_set))])
    tiles, scale = _tiles(images)
    image_grid(tiles, ncols=cols, scale=scale).save(path)


def write_csv(run: EvalRun, path: Path) -> None:
    """One row per image: index, prompt index, repeat, seed, prompt, file, one column per reward (and ShapesEval)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    extra = ["shapes_eval"] if run.shapes else []
    writer.writerow(["index", "prompt_index", "repeat", "seed", "prompt", "file", *run.reward_names, *extra])
    for k, rec in enumerate(run.records):
        row = [k, rec["prompt_index"], rec["repeat"], rec["seed"], rec["prompt"], rec["file"]]
        row += [f"{rec['scores'][n]:.6g}" for n in run.reward_names] + ([int(rec["shapes_eval"])] if extra else [])
        writer.writerow(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def _metric_rows(metrics: dict[str, Any], reward_names: list[str]) -> list[str]:
    lines = ["| metric | mean | std | 95% interval |", "|---|---|---|---|"]
    for name in reward_names:
        m = metrics
        lines.append(
            f"| {name} | {m[f'{name}.mean']:.4f} | {m[f'{name}.std']:.4f} | "
            f"[{m[f'{name}.ci95_low']:.4f}, {m[f'{name}.ci95_high']:.4f}] |"
        )
    for key in (k for k in metrics if k.startswith(("shapes_eval.", "diversity."))):
        lines.append(f"| {key} | {metrics[key]:.4f} | | |")
    return lines


def _describe_model(identity: dict[str, Any]) -> str:
    base = f"`{identity.get('name')}`" + (f" from `{identity['path']}`" if identity.get("path") else "")
    weights = f"`{identity['weights']}`" if identity.get("weights") else "base weights"
    return f"{base}, {identity.get('finetune')} fine-tuning, {weights}"


def write_outputs(run: EvalRun, metrics: dict[str, Any], title: str) -> dict[str, Any]:
    """Writes ``eval.json``, ``images.csv``, ``samples.png`` and ``report.md``; returns the ``eval.json`` content."""
    root = run.store.root
    data = dict(metrics, settings=run.store.settings)
    write_json(root / "eval.json", data)
    write_csv(run, root / "images.csv")
    save_grid(run, root / "samples.png")
    s = run.store.settings
    samp = s["sampling"]
    lines = [
        f"# Evaluation: {title}",
        "",
        f"- model: {_describe_model(s['model'])}",
        f"- prompts: `{s['prompts']}` ({metrics['num_prompts']} prompts x {metrics['images_per_prompt']} images "
        f"= {metrics['num_images']})",
        f"- sampling: {samp['num_steps']} steps, guidance {samp['guidance']}, {samp['height']}x{samp['width']}, "
        f"seed {samp['seed']}",
        "- 95% interval: mean +- 1.96 sd/sqrt(P) over the P per-prompt means; diversity: mean pairwise distance "
        "between a prompt's images",
        "",
        *_metric_rows(metrics, run.reward_names),
        "",
        "![samples](samples.png)",
        "",
    ]
    (root / "report.md").write_text("\n".join(lines))
    return data


def compare_runs(a: EvalRun, b: EvalRun, labels: tuple[str, str]) -> dict[str, Any]:
    """Per-reward win rates of ``a`` over ``b`` on per-prompt mean scores (and ShapesEval accuracy)."""
    out: dict[str, Any] = {"labels": list(labels)}
    columns = [n for n in a.reward_names if n in b.reward_names]
    if a.shapes and b.shapes:
        columns.append("shapes_eval")
    for name in columns:

        def per_prompt(run: EvalRun, name: str = name) -> dict[int, float]:
            vals = [float(r["shapes_eval"]) if name == "shapes_eval" else r["scores"][name] for r in run.records]
            return group_means(vals, [r["prompt_index"] for r in run.records])

        out[name] = win_rate(per_prompt(a), per_prompt(b))
    return out


def write_comparison(
    a: EvalRun, b: EvalRun, ma: dict[str, Any], mb: dict[str, Any], labels: tuple[str, str], root: Path
) -> dict[str, Any]:
    """Writes ``compare.json``, ``compare.png`` (rows: prompts; ``a``'s images, then ``b``'s) and ``report.md``."""
    comp = compare_runs(a, b, labels)
    write_json(root / "compare.json", dict(comp, **{labels[0]: ma, labels[1]: mb}))
    cols = min(a.images_per_prompt, GRID_COLUMNS // 2 or 1)
    rows = [torch.cat([_prompt_images(a, i, cols), _prompt_images(b, i, cols)]) for i in _grid_rows(len(a.prompt_set))]
    tiles, scale = _tiles(torch.cat(rows))
    image_grid(tiles, ncols=2 * cols, scale=scale).save(root / "compare.png")
    la, lb = labels
    lines = [
        f"# Comparison: {la} vs {lb}",
        "",
        f"Same prompts and seeds (`{a.store.settings['prompts']}`, {ma['num_images']} images each). Win rate: share "
        f"of prompts where {la}'s mean score beats {lb}'s (ties count one half).",
        "",
        f"| metric | {la} | {lb} | {la} - {lb} | win rate of {la} |",
        "|---|---|---|---|---|",
    ]
    for name in [n for n in comp if n != "labels"]:
        key = "shapes_eval.overall" if name == "shapes_eval" else f"{name}.mean"
        w = comp[name]
        lines.append(f"| {name} | {ma[key]:.4f} | {mb[key]:.4f} | {ma[key] - mb[key]:+.4f} | {w['win_rate']:.3f} |")
    for key in (k for k in ma if k.startswith(("shapes_eval.", "diversity.")) and k != "shapes_eval.overall"):
        if key in mb:
            lines.append(f"| {key} | {ma[key]:.4f} | {mb[key]:.4f} | {ma[key] - mb[key]:+.4f} | |")
    lines += ["", f"Left: {la}; right: {lb}.", "", "![comparison](compare.png)", ""]
    (root / "report.md").write_text("\n".join(lines))
    return comp
