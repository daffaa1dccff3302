"""On-disk state of one evaluation, written so that an interrupted run resumes without redoing finished images.

Layout of an evaluation folder::

    settings.json              what is evaluated (model and the content of its weights, prompts, sampling,
                               rewards); a resumed run must match
    images/00000/metadata.jsonl  the prompt's entry (GenEval's layout: GenEval's evaluator reads this folder)
    images/00000/samples/0000.png  image r of prompt i, 8-bit PNG, written to a temporary name then renamed
    records.jsonl              one line per finished image (its scores), appended after its PNG exists

An image counts as done when its record and its PNG both exist. The weights are identified by their content
(:func:`weights_fingerprint`), not only by their path: a checkpoint retrained or replaced in place makes the cached
evaluation stale, and it is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from leapalign.checkpoint import STATE_FILE

logger = logging.getLogger(__name__)

OUTPUTS = ("settings.json", "records.jsonl", "images", "eval.json", "images.csv", "samples.png", "report.md")
WHOLE_HASH_BYTES = 64 << 20
"""Files up to this size are hashed whole; larger ones by :data:`SAMPLED_BLOCKS` blocks spread over the file."""
SAMPLED_BLOCKS = 64
BLOCK_BYTES = 64 << 10


def weights_fingerprint(path: Path) -> dict[str, Any]:
    """The content identity of a weights file, cheap even for a full FLUX checkpoint.

    Its size, a SHA-1 of its bytes (whole up to 64 MiB; past that, of 64 blocks of 64 KiB spread evenly over the
    file, which retrained weights change everywhere) and, when the file sits in a checkpoint folder, the SHA-1 of
    its ``state.json`` (which records the step and every file's SHA-256).
    """
    size = path.stat().st_size
    digest = hashlib.sha1()
    with path.open("rb") as fh:
        if size <= WHOLE_HASH_BYTES:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        else:
            for i in range(SAMPLED_BLOCKS):
                fh.seek((size - BLOCK_BYTES) * i // (SAMPLED_BLOCKS - 1))
                digest.update(fh.read(BLOCK_BYTES))
    state = path.parent / STATE_FILE
    return {
        "size": size,
        "sha1": digest.hexdigest(),
        "state_sha1": hashlib.sha1(state.read_bytes()).hexdigest() if state.is_file() else None,
    }


def remove_outputs(root: Path, names: Iterable[str] = OUTPUTS) -> None:
    """Deletes the files and folders ``names`` under ``root`` (those that exist)."""
    for name in names:
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def image_path(root: Path, prompt_index: int, repeat: int) -> Path:
    return root / "images" / f"{prompt_index:05d}" / "samples" / f"{repeat:04d}.png"


def quantize(images: Tensor) -> Tensor:
    """Rounds ``[0, 1]`` images to the 8-bit values their PNGs hold (scores are computed on these)."""
    return (images.clamp(0, 1) * 255).round() / 255


def save_png(image: Tensor, path: Path) -> None:
    """Writes one ``(3, H, W)`` image in ``[0, 1]`` as PNG atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    tmp = path.with_name(path.stem + ".tmp.png")
    Image.fromarray(np.ascontiguousarray(arr)).save(tmp)
    os.replace(tmp, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes JSON atomically (a temporary file renamed into place)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def load_png(path: Path) -> Tensor:
    """Reads a PNG as a ``(3, H, W)`` float tensor in ``[0, 1]``."""
    arr = np.asarray(Image.open(path).convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255


class EvalStore:
    """The evaluation folder: settings check, images and per-image records.

    Args:
        root: The folder.
        settings: Everything that determines the results (compared with an earlier run's ``settings.json``).
        overwrite: Delete an earlier evaluation in ``root`` first.
        content_keys: Settings that identify content rather than a choice (the weights' fingerprint): when an
            earlier evaluation differs from ``settings`` in these keys only, it is stale, and it is deleted and
            recomputed (with a log line) instead of refused.
    """

    def __init__(
        self,
        root: Path,
        settings: dict[str, Any],
        overwrite: bool = False,
        content_keys: Sequence[str] = (),
    ) -> None:
        self.root = Path(root)
        self.settings = json.loads(json.dumps(settings))  # plain JSON types, as they are read back
        if overwrite:
            remove_outputs(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / "settings.json"
        if path.is_file():
            earlier = json.loads(path.read_text())
            keys = sorted(k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k))
            if keys and set(keys) <= set(content_keys):
                logger.warning(
                    "%s: the weights changed since this evaluation was made (%s differs; e.g. the checkpoint was "
                    "retrained in place); recomputing it",
                    self.root,
                    ", ".join(keys),
                )
                remove_outputs(self.root)
            elif keys:
                raise ValueError(
                    f"{self.root} holds an evaluation with other settings (differing: {', '.join(keys)}); resume "
                    f"needs the same settings. Pass --overwrite to replace it, or choose another --out."
                )
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.settings, indent=1))
            tmp.replace(path)

    def records(self) -> dict[tuple[int, int], dict]:
        """Finished images by ``(prompt_index, repeat)``; a truncated last line or a missing PNG means unfinished."""
        path = self.root / "records.jsonl"
        out: dict[tuple[int, int], dict] = {}
        if not path.is_file():
            return out
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (int(rec["prompt_index"]), int(rec["repeat"]))
            if (self.root / rec["file"]).is_file():
                out[key] = rec
        return out

    def write_metadata(self, prompt_index: int, entry: dict) -> None:
        path = self.root / "images" / f"{prompt_index:05d}" / "metadata.jsonl"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(entry) + "\n")

    def add(self, records: list[dict], images: Tensor) -> None:
        """Saves the images (PNG) and then appends their records, flushed to disk."""
        for rec, image in zip(records, images, strict=True):
            save_png(image, self.root / rec["file"])
        with (self.root / "records.jsonl").open("a") as fh:
            for rec in records:
                fh.write(json.dumps(rec) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def load_image(self, record: dict) -> Tensor:
        return load_png(self.root / record["file"])
