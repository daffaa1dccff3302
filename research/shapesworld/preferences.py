"""Preference data for ShapesScore from the generator's own images, judged by the annotator.

HPS learns from people's judgements of images that generators drew; ShapesScore v3 learned from clean renders
only, and every policy trained on it found images it over-scores. This module draws the images a reward must
judge (the base model's and, for a second round as in iterated RLHF, those of policies that hacked the
previous reward) on the *training* prompts, and labels each with the annotator
(:mod:`research.shapesworld.annotator`). ``score_research --preferences`` then asks the reward to score, for the same
prompt, the images the annotator accepts above those it rejects. ShapesEval and the held-out prompts are never
used.

Collect, from the repository root (one source per ``--source``: ``base``, or a training run / checkpoint folder)::

    python -m research.shapesworld.preferences --annotator runs/annotator --out runs/prefs/base.safetensors \\
        --source base --images-per-prompt 4

Re-judge the images of an existing file with another annotator (nothing is resampled)::

    python -m research.shapesworld.preferences --annotator runs/annotator_hybrid \\
        --relabel runs/prefs/base.safetensors --out runs/prefs/base_hybrid.safetensors

The file holds ``images`` (uint8, ``(N, 3, 32, 32)``), ``prompt_index`` and ``accepted`` (``(N,)``), with the
sources and settings in its metadata.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from leapalign.worlds.shapes.prompts import load_metadata
from research.shapesworld import annotator
from research.shapesworld.segmenter import SceneSegmenter

logger = logging.getLogger(__name__)

SEED_OFFSET = 50_000_000  # noise seeds far from the evaluation's (seed + 1000 * r + i)


@dataclass
class Preferences:
    """Generated images with the annotator's verdicts.

    Attributes:
        images: ``(N, 3, 32, 32)`` float images in ``[0, 1]``.
        prompt_index: ``(N,)`` index into the training prompts (:func:`load_metadata` ``("train")``).
        accepted: ``(N,)`` booleans: the annotator judges the image to show its prompt.
    """

    images: Tensor
    prompt_index: Tensor
    accepted: Tensor

    @classmethod
    def load(cls, paths: list[Path]) -> Preferences:
        parts = []
        for path in paths:
            parts.append(load_file(str(_existing(path))))
        return cls(
            torch.cat([p["images"] for p in parts]).float() / 255.0,
            torch.cat([p["prompt_index"] for p in parts]).long(),
            torch.cat([p["accepted"] for p in parts]).bool(),
        )

    def pairs(self) -> tuple[Tensor, Tensor]:
        """Every (accepted, rejected) pair of images of the same prompt: two ``(P,)`` index tensors."""
        right, wrong = [], []
        for prompt in torch.unique(self.prompt_index):
            same = self.prompt_index == prompt
            acc = torch.nonzero(same & self.accepted).flatten()
            rej = torch.nonzero(same & ~self.accepted).flatten()
            if len(acc) and len(rej):
                right.append(acc.repeat_interleave(len(rej)))
                wrong.append(rej.repeat(len(acc)))
        if not right:
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
        return torch.cat(right), torch.cat(wrong)


def sample_source(source: str, metadata: list[dict], images_per_prompt: int, seed: int, num_steps: int) -> Tensor:
    """Images ``(N * R, 3, 32, 32)`` of ``source`` (``base`` or a run / checkpoint folder), prompt-major."""
    from leapalign.cli.sources import ModelSource, build_source, resolve_run
    from leapalign.config import load_config
    from leapalign.sampling import generate

    src = ModelSource("base", load_config("shapes/leapalign")) if source == "base" else resolve_run(source)
    model = build_source(src, device="cpu")
    prompts = [m["prompt"] for m in metadata for _ in range(images_per_prompt)]
    seeds = [SEED_OFFSET + seed + 1000 * r + i for i in range(len(metadata)) for r in range(images_per_prompt)]
    return generate(model, prompts, seeds=seeds, num_steps=num_steps, height=32, width=32, batch_size=64)


def main() -> None:
    parser = argparse.ArgumentParser(description="Generated images of the training prompts, judged by the annotator")
    parser.add_argument("--annotator", type=Path, required=True, help="annotator weights directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--source", help="'base' or a training run / checkpoint folder")
    what.add_argument("--relabel", type=Path, help="a preference file whose images to judge again (no sampling)")
    parser.add_argument("--out", type=Path, required=True, help="output .safetensors file")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-steps", type=int, default=25)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.out.suffix != ".safetensors":
        raise SystemExit(f"--out {args.out}: give a .safetensors file name.")
    metadata = load_metadata("train")
    start = time.perf_counter()
    if args.relabel is not None:
        stored = load_file(str(_existing(args.relabel)))
        images = stored["images"].float() / 255.0
        index = stored["prompt_index"].long()
        card = {**info(args.relabel), "relabelled_from": str(args.relabel)}
    else:
        images = sample_source(args.source, metadata, args.images_per_prompt, args.seed, args.num_steps)
        index = torch.arange(len(metadata)).repeat_interleave(args.images_per_prompt)
        card = {
            "source": args.source,
            "images_per_prompt": args.images_per_prompt,
            "seed": args.seed,
            "num_steps": args.num_steps,
        }
    metas = [metadata[i] for i in index.tolist()]
    accepted = annotator.annotate(SceneSegmenter.load(args.annotator), images, metas)
    tags = np.array([m["tag"] for m in metas])
    card["annotator"] = str(args.annotator)
    card["accepted_by_category"] = {t: float(accepted[tags == t].mean()) for t in sorted(set(tags))}
    card["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(
        {
            "images": (images.clamp(0, 1) * 255).round().to(torch.uint8).contiguous(),
            "prompt_index": index.contiguous(),
            "accepted": torch.from_numpy(accepted).to(torch.uint8),
        },
        str(tmp),
        metadata={"info": json.dumps(card)},
    )
    tmp.replace(args.out)  # never a half-written file under the final name
    logger.info("wrote %d images to %s: %s", len(images), args.out, json.dumps(card))


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no preference file; make one with python -m {__name__} --source ...")
    return path


def info(path: Path) -> dict:
    """The settings and acceptance rates stored with a preference file."""
    with safe_open(str(path), "pt") as fh:
        return json.loads(fh.metadata()["info"])


if __name__ == "__main__":
    main()
