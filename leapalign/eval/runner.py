"""Generate and score the images of an evaluation, resumably.

Image ``r`` of prompt ``i`` uses the seed ``seed + max(1000, P) * r + i`` (``P`` prompts), the convention of the
training-time evaluation (:mod:`leapalign.evaluation`) for up to 1000 prompts, so both produce the same images.
Scores are computed on the 8-bit images that the PNGs hold, so a resumed evaluation gives the same numbers as an
uninterrupted one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from leapalign.eval.prompts import PromptSet
from leapalign.eval.store import EvalStore, image_path, quantize
from leapalign.models.base import FlowModel, check_resolution
from leapalign.rewards.base import RewardFn
from leapalign.sampling import generate

logger = logging.getLogger(__name__)


@dataclass
class SamplingSettings:
    """How the evaluation images are drawn.

    Attributes:
        images_per_prompt: Images per prompt (different seeds).
        seed: Base seed.
        num_steps: Euler steps.
        height: Image height in pixels.
        width: Image width in pixels.
        guidance: Guidance scale the model was built with (recorded; ``None`` when unknown).
        batch_size: Images per generation batch (does not change the results).
    """

    images_per_prompt: int = 4
    seed: int = 0
    num_steps: int = 50
    height: int = 512
    width: int = 512
    guidance: float | None = None
    batch_size: int = 8

    def __post_init__(self) -> None:
        if min(self.images_per_prompt, self.num_steps, self.height, self.width, self.batch_size) < 1:
            raise ValueError("images per prompt, steps, height, width and batch size must all be >= 1.")

    def identity(self) -> dict[str, Any]:
        """The settings that determine the results (everything but the batch size)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


def image_seed(seed: int, prompt_index: int, repeat: int, num_prompts: int) -> int:
    """The noise seed of image ``repeat`` of prompt ``prompt_index``."""
    return seed + max(1000, num_prompts) * repeat + prompt_index


@dataclass
class EvalRun:
    """A finished evaluation: its folder, prompt set, reward names and one record per image (prompt-major)."""

    store: EvalStore
    prompt_set: PromptSet
    reward_names: list[str]
    records: list[dict]
    shapes: bool
    images_per_prompt: int


def run_evaluation(
    model: FlowModel,
    prompt_set: PromptSet,
    rewards: Sequence[RewardFn],
    sampling: SamplingSettings,
    out_dir: Path,
    model_identity: dict[str, Any],
    reward_identity: list[dict[str, Any]] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> EvalRun:
    """Generates, scores and stores every missing image of the evaluation in ``out_dir``.

    Args:
        model: The flow model (its weights already loaded).
        prompt_set: The prompts.
        rewards: Rewards to score each image with (names must differ).
        sampling: Sampling settings.
        out_dir: The evaluation folder (created; an earlier evaluation with the same settings is resumed).
        model_identity: What identifies the model (config, checkpoint), stored in ``settings.json``.
        reward_identity: What identifies each reward (name and arguments), likewise.
        overwrite: Replace an earlier evaluation in ``out_dir``.
        progress: Show a progress bar.

    Returns:
        The :class:`EvalRun` with every image's record.
    """
    names = [r.name for r in rewards]
    if len(set(names)) != len(names):
        raise ValueError(
            f"rewards must have distinct names, got {names} (e.g. the members of an ensemble reward); choose the "
            f"ones to report with --rewards NAME and --reward-arg NAME.path=..., one evaluation per member."
        )
    check_resolution(model, sampling.height, sampling.width)
    shapes = prompt_set.is_shapes()
    settings = {
        "model": model_identity,
        "prompts": prompt_set.source,
        "prompts_sha1": prompt_set.digest(),
        "num_prompts": len(prompt_set),
        "sampling": sampling.identity(),
        "rewards": reward_identity if reward_identity is not None else names,
        "shapes_eval": shapes,
    }
    store = EvalStore(Path(out_dir), settings, overwrite=overwrite)
    for reward in rewards:  # load the reward weights now: a missing file fails before any image is generated
        if callable(getattr(reward, "load", None)):
            reward.load(model.device)
    done = store.records()
    n, r_count = len(prompt_set), sampling.images_per_prompt
    todo = [(i, r) for i in range(n) for r in range(r_count) if (i, r) not in done]
    if done:
        logger.info("resuming %s: %d of %d images already done", out_dir, len(done), n * r_count)
    bar = tqdm(total=n * r_count, initial=n * r_count - len(todo), disable=not progress, unit="img", desc="eval")
    for start in range(0, len(todo), sampling.batch_size):
        chunk = todo[start : start + sampling.batch_size]
        prompts = [prompt_set.entries[i]["prompt"] for i, _ in chunk]
        seeds = [image_seed(sampling.seed, i, r, n) for i, r in chunk]
        images = generate(
            model,
            prompts,
            seeds=seeds,
            num_steps=sampling.num_steps,
            height=sampling.height,
            width=sampling.width,
            batch_size=sampling.batch_size,
        )
        images = quantize(images)
        records = [
            {
                "prompt_index": i,
                "repeat": r,
                "seed": s,
                "prompt": p,
                "file": str(image_path(Path(), i, r)),
                "scores": {},
            }
            for (i, r), s, p in zip(chunk, seeds, prompts, strict=True)
        ]
        with torch.no_grad():
            device_images = images.to(model.device)
            for reward in rewards:
                scores = reward(device_images, prompts).float().cpu()
                for rec, value in zip(records, scores.tolist(), strict=True):
                    rec["scores"][reward.name] = value
        if shapes:
            from leapalign.worlds.shapes.evaluator import evaluate

            result = evaluate(images, [prompt_set.entries[i] for i, _ in chunk])
            for rec, ok in zip(records, result.correct, strict=True):
                rec["shapes_eval"] = bool(ok)
        for i in sorted({i for i, _ in chunk}):
            store.write_metadata(i, prompt_set.entries[i])
        store.add(records, images)
        bar.update(len(chunk))
    bar.close()
    final = store.records()
    ordered = [final[(i, r)] for i in range(n) for r in range(r_count)]
    return EvalRun(store, prompt_set, names, ordered, shapes, r_count)
