"""Outputs of an evaluation: ``eval.json``, ``images.csv``, ``samples.png``, ``report.md``; and the side-by-side
comparison of two evaluations (``compare.json``, ``compare.png``, ``report.md``).

``eval.json`` keys: ``<reward>.mean``, ``<reward>.std``, ``<reward>.ci95_low``, ``<reward>.ci95_high`` per
reward (Student-t interval over prompts: see :mod:`leapalign.eval.stats`); ``<evaluator>.overall`` and the
evaluator's breakdown (e.g. one accuracy per GenEval category) per evaluator; ``diversity.pixel`` (and
``diversity.<reward>`` in that reward's feature space, when asked); ``num_images``, ``num_prompts``,
``images_per_prompt``; ``settings`` (model, prompts, sampling, rewards, evaluators).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from leapalign.diversity import prompt_diversity
from leapalign.eval.paired import change_cell, paired_changes
from leapalign.eval.runner import EvalRun
from leapalign.eval.stats import group_means, summarize, win_rate
from leapalign.eval.store import write_json
from leapalign.images import fit_tiles, image_grid

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
    entries = [run.prompt_set.entries[rec["prompt_index"]] for rec in run.records]
    for evaluator in run.evaluators:
        summary = evaluator.summarize([rec["evals"][evaluator.name] for rec in run.records], entries)
        out.update({f"{evaluator.name}.{k}": v for k, v in summary.items()})
    if run.images_per_prompt >= 2:
        out["diversity.pixel"] = diversity(run)
        for name, embed in (embeds or {}).items():
            out[f"diversity.{name}"] = diversity(run, embed)
    out.update(
        {"num_images": len(run.records), "num_prompts": len(run.prompt_set), "images_per_prompt": run.images_per_prompt}
    )
    return out


def _grid_rows(num_prompts: int, rows: int = GRID_PROMPTS) -> list[int]:
    step = max(1, num_prompts // rows)
    return list(range(0, num_prompts, step))[:rows]


def save_grid(run: EvalRun, path: Path, rows: int = GRID_PROMPTS) -> None:
    """One row per prompt (up to ``rows``, spread over the set), up to 8 images each, captioned with the prompt."""
    cols = min(run.images_per_prompt, GRID_COLUMNS)
    picked = _grid_rows(len(run.prompt_set), rows)
    images = torch.cat([_prompt_images(run, i, cols) for i in picked])
    tiles, scale = fit_tiles(images)
    captions = [run.prompt_set.entries[i]["prompt"] for i in picked]
    image_grid(tiles, ncols=cols, scale=scale, captions=captions).save(path)


def write_csv(run: EvalRun, path: Path) -> None:
    """One row per image: index, prompt index, repeat, seed, prompt, file, one column per reward and evaluator."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    evals = run.evaluator_names
    writer.writerow(["index", "prompt_index", "repeat", "seed", "prompt", "file", *run.reward_names, *evals])
    for k, rec in enumerate(run.records):
        row = [k, rec["prompt_index"], rec["repeat"], rec["seed"], rec["prompt"], rec["file"]]
        row += [f"{rec['scores'][n]:.6g}" for n in run.reward_names] + [f"{rec['evals'][n]:.6g}" for n in evals]
        writer.writerow(row)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def _extra_keys(metrics: dict[str, Any], evaluator_names: list[str]) -> list[str]:
    """The evaluator and diversity keys of ``metrics``, in order."""
    prefixes = tuple(f"{n}." for n in evaluator_names) + ("diversity.",)
    return [k for k in metrics if k.startswith(prefixes)]


def _metric_rows(metrics: dict[str, Any], reward_names: list[str], evaluator_names: list[str]) -> list[str]:
    lines = ["| metric | mean | std | 95% interval |", "|---|---|---|---|"]
    for name in reward_names:
        m = metrics
        lines.append(
            f"| {name} | {m[f'{name}.mean']:.4f} | {m[f'{name}.std']:.4f} | "
            f"[{m[f'{name}.ci95_low']:.4f}, {m[f'{name}.ci95_high']:.4f}] |"
        )
    for key in _extra_keys(metrics, evaluator_names):
        lines.append(f"| {key} | {metrics[key]:.4f} | | |")
    return lines


def _describe_model(identity: dict[str, Any]) -> str:
    base = f"`{identity.get('name')}`" + (f" from `{identity['path']}`" if identity.get("path") else "")
    weights = f"`{identity['weights']}`" if identity.get("weights") else "base weights"
    return f"{base}, {identity.get('finetune')} fine-tuning, {weights}"


def write_outputs(run: EvalRun, metrics: dict[str, Any], title: str, grid_rows: int = GRID_PROMPTS) -> dict[str, Any]:
    """Writes ``eval.json``, ``images.csv``, ``samples.png`` and ``report.md``; returns the ``eval.json`` content."""
    root = run.store.root
    data = dict(metrics, settings=run.store.settings)
    write_json(root / "eval.json", data)
    write_csv(run, root / "images.csv")
    save_grid(run, root / "samples.png", grid_rows)
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
        "- 95% interval: Student-t over the P per-prompt means, mean +- t(0.975, P-1) sd/sqrt(P); diversity: mean "
        "pairwise distance between a prompt's images",
        "",
        *_metric_rows(metrics, run.reward_names, run.evaluator_names),
        "",
        "![samples](samples.png)",
        "",
    ]
    (root / "report.md").write_text("\n".join(lines))
    return data


def compare_runs(a: EvalRun, b: EvalRun, labels: tuple[str, str]) -> dict[str, Any]:
    """Per-reward and per-evaluator win rates of ``a`` over ``b`` on per-prompt means."""
    out: dict[str, Any] = {"labels": list(labels)}
    columns = [n for n in a.reward_names if n in b.reward_names]
    columns += [n for n in a.evaluator_names if n in b.evaluator_names]
    for name in columns:
        field = "scores" if name in a.reward_names else "evals"

        def per_prompt(run: EvalRun, name: str = name, field: str = field) -> dict[int, float]:
            vals = [r[field][name] for r in run.records]
            return group_means(vals, [r["prompt_index"] for r in run.records])

        out[name] = win_rate(per_prompt(a), per_prompt(b))
    return out


def write_comparison(
    a: EvalRun, b: EvalRun, ma: dict[str, Any], mb: dict[str, Any], labels: tuple[str, str], root: Path
) -> dict[str, Any]:
    """Writes ``compare.json``, ``compare.png`` (rows: prompts; ``a``'s images, then ``b``'s) and ``report.md``."""
    comp = compare_runs(a, b, labels)
    comp["paired"] = paired_changes(a, b)
    write_json(root / "compare.json", dict(comp, **{labels[0]: ma, labels[1]: mb}))
    cols = min(a.images_per_prompt, GRID_COLUMNS // 2 or 1)
    picked = _grid_rows(len(a.prompt_set))
    rows = [torch.cat([_prompt_images(a, i, cols), _prompt_images(b, i, cols)]) for i in picked]
    tiles, scale = fit_tiles(torch.cat(rows))
    captions = [a.prompt_set.entries[i]["prompt"] for i in picked]
    image_grid(tiles, ncols=2 * cols, scale=scale, captions=captions).save(root / "compare.png")
    la, lb = labels
    lines = [
        f"# Comparison: {la} vs {lb}",
        "",
        f"Same prompts and seeds (`{a.store.settings['prompts']}`, {ma['num_images']} images each). Win rate: share "
        f"of prompts where {la}'s mean score beats {lb}'s (ties count one half). Change: {la} - {lb} on the same "
        f"images' noise, with a 95% paired bootstrap interval over prompts (stratified by category; "
        f"`leapalign.eval.paired`).",
        "",
        f"| metric | {la} | {lb} | {la} - {lb} [95% CI] | win rate of {la} |",
        "|---|---|---|---|---|",
    ]
    paired = comp["paired"]
    for name in [n for n in comp if n not in ("labels", "paired")]:
        key = f"{name}.mean" if name in a.reward_names else f"{name}.overall"
        w = comp[name]
        lines.append(f"| {name} | {ma[key]:.4f} | {mb[key]:.4f} | {change_cell(paired[key])} | {w['win_rate']:.3f} |")
    headline = {f"{n}.overall" for n in a.evaluator_names}
    for key in (k for k in _extra_keys(ma, a.evaluator_names) if k not in headline):
        if key in mb and key in paired:
            lines.append(f"| {key} | {ma[key]:.4f} | {mb[key]:.4f} | {change_cell(paired[key])} | |")
    lines += ["", f"Left: {la}; right: {lb}.", "", "![comparison](compare.png)", ""]
    (root / "report.md").write_text("\n".join(lines))
    return comp


def headline_keys(metrics: dict[str, Any]) -> list[str]:
    """The headline keys of an ``eval.json``: each reward's mean, then every evaluator key."""
    settings = metrics.get("settings", {})
    names = [r["name"] if isinstance(r, dict) else r for r in settings.get("rewards", [])]
    keys = [f"{n}.mean" for n in names]
    return keys + _extra_keys(metrics, list(settings.get("evaluators", [])))


def comparison_table(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A Markdown table of two ``eval.json`` contents (before / after): reward means and evaluator keys."""
    keys = [k for k in headline_keys(before) if not k.startswith("diversity.") and k in after]
    lines = ["| metric | before | after | change |", "|---|---|---|---|"]
    lines += [f"| {k} | {before[k]:.4f} | {after[k]:.4f} | {after[k] - before[k]:+.4f} |" for k in keys]
    return "\n".join(lines)
