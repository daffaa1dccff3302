"""Model cards of the shipped ShapesWorld weights, generated from what the training runs recorded.

Write or refresh the cards (the base model's evaluates it on the held-out prompts, a few minutes on CPU)::

    python -m leapalign.worlds.shapes.cards --pretrain-run runs/shapes-pretrain
    python -m leapalign.worlds.shapes.cards --rewards-only     # ShapesScore's and ShapesLayout's only
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)


def _machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.processor() or 'cpu'}"


def base_card(state: dict[str, Any], metrics: dict[str, Any], params: int) -> str:
    """Markdown card of the base model from the pretraining state and its held-out evaluation."""
    rows = "\n".join(
        f"| {k.removeprefix('shapes_eval.')} | {v:.3f} |" for k, v in metrics.items() if k.startswith("shapes_eval.")
    )
    cosine = state.get("schedule", "constant") == "cosine"
    command = (
        f"python -m leapalign.worlds.shapes.pretrain --out runs/shapes-pretrain --steps {state['step']} "
        + ("--schedule cosine " if cosine else "")
        + "--export leapalign/worlds/shapes/assets/base"
    )
    decay = f", then a cosine decay to {state.get('min_lr')} at step {state.get('total_steps')}" if cosine else ""
    recipe = (
        f"Seed {state['seed']}, batch {state['batch']}, AdamW lr {state['lr']} (warm-up {state['warmup']} steps"
        f"{decay}), {state['step']} steps"
    )
    return f"""# ShapesWorld base model

A `FluxTransformer2DModel` ({params / 1e6:.2f}M parameters; {state["arch"]}) trained from scratch with the
rectified-flow loss on rendered ShapesWorld scenes, in pixel space (32x32 RGB folded 2x2 space-to-depth, so
a token is a 4x4-pixel patch), conditioned on MiniLM (all-MiniLM-L6-v2) token and pooled embeddings, with
10% prompt dropout for classifier-free guidance. Weights: EMA (decay {state["ema_decay"]}).

- Command: `{command}`
- {recipe}
- Training time: {state["elapsed_s"] / 3600:.2f} h of optimiser steps on the project machine (2 CPU cores)

Held-out evaluation (`leapalign eval --config shapes/leapalign`: {metrics["num_images"]} images,
{metrics["images_per_prompt"]} per prompt, {metrics["num_steps"]} Euler steps, true CFG 3.0):

| ShapesEval category | accuracy |
|---|---|
{rows}

ShapesScore on these images: {metrics["shapes_score.mean"]:.4f} (std {metrics["shapes_score.std"]:.4f}).
"""


def score_card(config: dict[str, Any]) -> str:
    """Markdown card of ShapesScore from the ``config.json`` its training wrote."""
    held = config["heldout"]
    rows = "\n".join(
        f"| {k.removeprefix('acc_vs_')} | {v:.3f} | {held['n_' + k.removeprefix('acc_vs_')]} |"
        for k, v in held.items()
        if k.startswith("acc_vs_")
    )
    return f"""# ShapesScore

A CLIP-style dual encoder (CNN image tower with a 4x4 spatial map; one transformer layer over MiniLM token
embeddings), trained contrastively on rendered scenes with exact in-batch negatives and hard negatives that
differ in one colour, count, relation or shape. The reward is the cosine similarity, in [-1, 1].

- Command: `{config["command"]}`
- Seed {config["seed"]}, {config["steps"]} steps of batch {config["batch"]}; {config["train_seconds"] / 60:.1f} min on
  the project machine (2 CPU cores, shared with another job)

Held-out ranking accuracy (renders of the held-out prompts; the true prompt must outscore the negative):

| negative | accuracy | pairs |
|---|---|---|
{rows}
"""


def layout_card(config: dict[str, Any]) -> str:
    """Markdown card of the layout reward's perception from the ``config.json`` its training (ranking) and
    :mod:`~leapalign.worlds.shapes.layout_audit` (agreement with ShapesEval) wrote."""
    held = config["heldout_ranking"]
    rows = "\n".join(f"| {k} | {v:.3f} | {held['n_' + k]} |" for k, v in held.items() if not k.startswith("n_"))
    card = f"""# ShapesLayout (reward `shapes_layout`)

Soft GenEval rules on a learned perception. The prompt's objects, colours, counts and relations come from its
metadata; the image is read by a small U-Net that labels every pixel background, circle, square, triangle or
other and predicts the area of the object under it (so that each object counts one), and by analytic colour
maps. The rules: at least n objects of each included shape and colour, fewer than m of each excluded one, and
the relation between object centroids, each a sigmoid; the reward is their mean, in [0, 1]. It shares the rules
with ShapesEval (both read GenEval metadata), not the perception.

- Command: `{config["command"]}`
- Seed {config["seed"]}, {config["steps"]} steps of batch {config["batch"]}; {config["train_seconds"] / 60:.1f} min on
  the project machine (2 CPU cores)

Held-out ranking accuracy (renders of the held-out prompts; the true scene must outscore a scene that differs in
one attribute, under the true prompt; `binding` swaps two objects' colours):

| negative | accuracy | pairs |
|---|---|---|
{rows}
"""
    agreement = config.get("agreement")
    if agreement:
        sampling = agreement["settings"]["sampling"]
        lines = "\n".join(
            f"| {k} | {v['auc']:.3f} | {v['n']} | {v['accepted']:.3f} |" for k, v in agreement["by_category"].items()
        )
        card += f"""
Agreement with ShapesEval on the base model's samples (held-out prompts, {sampling["images_per_prompt"]} images per
prompt, {sampling["num_steps"]} steps, guidance {sampling["guidance"]}): ROC AUC of the reward against ShapesEval's
verdict (the chance that an accepted image outscores a rejected one); `accepted` is ShapesEval's rate per image.

| category | AUC | images | accepted |
|---|---|---|---|
{lines}

Made by `python -m leapalign.worlds.shapes.layout_audit --eval {agreement["eval"]} --write-card`.

The reward reads layout: position, colour binding and two-object prompts are where it separates what ShapesEval
accepts from what it rejects. On single objects and colours it is nearly saturated (it scores most images above
0.9, rejected ones included), and the images ShapesEval rejects there are borderline drawings that the perception
reads as the valid shape: the AUC of those categories ranks near-ties. The reward judges whether a shape is one of
the three, where, how many and in what colour, and only coarsely how well it is drawn.
"""
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="Write the model cards of the shipped ShapesWorld weights")
    parser.add_argument("--pretrain-run", type=Path, default=Path("runs/shapes-pretrain"))
    parser.add_argument("--eval-out", type=Path, default=Path("runs/shapes-cards-eval"), help="evaluation folder")
    parser.add_argument("--rewards-only", action="store_true", help="only the reward cards (no base evaluation)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    from leapalign.data import load_prompt_set
    from leapalign.eval import SamplingSettings, build_evaluator, run_evaluation, summarize_run
    from leapalign.models import ModelConfig, build_model
    from leapalign.rewards import RewardTermConfig, build_reward_term
    from leapalign.worlds.shapes.layout import default_weights as layout_weights
    from leapalign.worlds.shapes.model import base_weights
    from leapalign.worlds.shapes.score import default_weights

    score_dir, layout_dir = default_weights(), layout_weights()
    (score_dir / "README.md").write_text(score_card(json.loads((score_dir / "config.json").read_text())))
    (layout_dir / "README.md").write_text(layout_card(json.loads((layout_dir / "config.json").read_text())))
    if args.rewards_only:
        return
    state = json.loads((args.pretrain_run / "checkpoint" / "state.json").read_text())
    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    sampling = SamplingSettings(images_per_prompt=4, num_steps=25, height=32, width=32, guidance=3.0, batch_size=64)
    run = run_evaluation(
        model,
        load_prompt_set("shapes:eval"),
        [build_reward_term(RewardTermConfig("shapes_score"))],
        sampling,
        [build_evaluator("shapes_eval")],
        args.eval_out,
        {"model": "shapes", "weights": str(base_weights())},
        overwrite=True,
    )
    metrics = {**summarize_run(run), "num_steps": sampling.num_steps}
    params = sum(p.numel() for p in model.transformer.parameters())
    (base_weights() / "README.md").write_text(base_card(state, metrics, params))
    (base_weights() / "card.json").write_text(json.dumps({"pretrain_state": state, "heldout": metrics}, indent=1))
    logger.info("wrote the model cards")


if __name__ == "__main__":
    main()
