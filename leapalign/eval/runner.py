"""Generate, score and judge the images of an evaluation, resumably: the one evaluation path of the library,
used by the trainer (before, every N steps, after) and by ``leapalign eval``.

Image ``r`` of prompt ``i`` uses the seed ``seed + max(1000, P) * r + i`` (``P`` prompts). Rewards and evaluators
see the 8-bit images that the PNGs hold, so a resumed evaluation gives the same numbers as an uninterrupted one.
When the model identity names a weights file (``model_identity["weights"]``), the file's content fingerprint is part
of the settings: an evaluation of a checkpoint that has since changed is recomputed, not resumed.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from leapalign.data.prompts import PromptSet
from leapalign.eval.evaluators import Evaluator
from leapalign.eval.store import EvalStore, image_path, quantize, weights_fingerprint
from leapalign.models.base import FlowModel, check_resolution
from leapalign.rewards.base import RewardFn, check_scores
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
    """A finished evaluation: its folder, prompt set, reward and evaluator names and one record per image
    (prompt-major; ``scores[reward]`` and ``evals[evaluator]`` per image)."""

    store: EvalStore
    prompt_set: PromptSet
    reward_names: list[str]
    records: list[dict]
    evaluators: list[Evaluator]
    images_per_prompt: int

    @property
    def evaluator_names(self) -> list[str]:
        return [e.name for e in self.evaluators]

    def headline(self, records: Sequence[dict]) -> dict[str, float]:
        """Each reward's mean (``<reward>.mean``) and every evaluator key (``<evaluator>.<key>``, from the
        evaluator's own summary) over ``records``, a selection of this evaluation's records (repeats allowed)."""
        entries = [self.prompt_set.entries[r["prompt_index"]] for r in records]
        out = {f"{n}.mean": statistics.fmean(r["scores"][n] for r in records) for n in self.reward_names}
        for ev in self.evaluators:
            summary = ev.summarize([r["evals"][ev.name] for r in records], entries)
            out.update({f"{ev.name}.{k}": float(v) for k, v in summary.items()})
        return out


def run_evaluation(
    model: FlowModel,
    prompt_set: PromptSet,
    rewards: Sequence[RewardFn],
    sampling: SamplingSettings,
    evaluators: Sequence[Evaluator],
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
        evaluators: Evaluators to judge each image against its prompt entry (names must differ from each other
            and from the rewards').
        out_dir: The evaluation folder (created; an earlier evaluation with the same settings is resumed).
        model_identity: What identifies the model (config, checkpoint), stored in ``settings.json``. A
            ``"weights"`` entry naming an existing file adds that file's content fingerprint
            (:func:`~leapalign.eval.store.weights_fingerprint`), so changed weights are evaluated again.
        reward_identity: What identifies each reward (name and arguments), likewise.
        overwrite: Replace an earlier evaluation in ``out_dir``.
        progress: Show a progress bar.

    Returns:
        The :class:`EvalRun` with every image's record.
    """
    names = [r.name for r in rewards]
    all_names = names + [e.name for e in evaluators]
    if len(set(all_names)) != len(all_names):
        raise ValueError(
            f"rewards and evaluators must have distinct names, got {all_names} (e.g. the members of an ensemble "
            f"reward); choose the ones to report with evaluation.rewards=NAME and "
            f"evaluation.rewards.0.args.KEY=VALUE, one evaluation per member."
        )
    check_resolution(model, sampling.height, sampling.width)
    for evaluator in evaluators:  # missing metadata fails before any image is generated
        evaluator.check(prompt_set.entries)
    settings = {
        "model": model_identity,
        "prompts": prompt_set.source,
        "prompts_sha1": prompt_set.digest(),
        "num_prompts": len(prompt_set),
        "sampling": sampling.identity(),
        "rewards": reward_identity if reward_identity is not None else names,
        "evaluators": [e.name for e in evaluators],
    }
    weights = model_identity.get("weights")
    if isinstance(weights, str | Path) and Path(weights).is_file():
        settings["weights_content"] = weights_fingerprint(Path(weights))
    store = EvalStore(Path(out_dir), settings, overwrite=overwrite, content_keys=("weights_content",))
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
                "evals": {},
            }
            for (i, r), s, p in zip(chunk, seeds, prompts, strict=True)
        ]
        with torch.no_grad():
            device_images = images.to(model.device)
            for reward in rewards:
                scores = check_scores(reward, reward(device_images, prompts), device_images).float().cpu()
                for rec, value in zip(records, scores.tolist(), strict=True):
                    rec["scores"][reward.name] = value
        for evaluator in evaluators:
            values = evaluator(images, [prompt_set.entries[i] for i, _ in chunk])
            for rec, value in zip(records, values, strict=True):
                rec["evals"][evaluator.name] = float(value)
        for i in sorted({i for i, _ in chunk}):
            store.write_metadata(i, prompt_set.entries[i])
        store.add(records, images)
        bar.update(len(chunk))
    bar.close()
    final = store.records()
    ordered = [final[(i, r)] for i in range(n) for r in range(r_count)]
    return EvalRun(store, prompt_set, names, ordered, list(evaluators), r_count)
