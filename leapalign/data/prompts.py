"""Prompt files and per-rank prompt sampling."""

from __future__ import annotations

import json
from pathlib import Path

import torch

BUILTIN_PROMPTS: dict[str, list[str]] = {
    "tiny": [
        "a red circle on a white background",
        "a blue square on a black background",
        "two green triangles",
        "a yellow circle to the left of a purple square",
        "a photo of a cat",
        "a watercolor painting of a lighthouse at dusk",
        "three orange squares",
        "a blue triangle above a red circle",
    ],
}


def load_prompts(source: str) -> list[str]:
    """Reads prompts from a built-in list, a ``.txt`` file or a ``.jsonl`` file.

    Args:
        source: ``shapes:train`` / ``shapes:eval`` (the ShapesWorld prompt sets), ``builtin:<name>``, a text
            file with one prompt a line (blank lines and ``#`` comments
            skipped), or a JSONL file whose lines hold a ``prompt`` key (GenEval metadata files work too).

    Returns:
        The list of prompts, in file order.

    Raises:
        ValueError: Unknown built-in name, missing file, unreadable line, or no prompt at all.
    """
    if source in ("shapes:train", "shapes:eval"):
        return shapes_prompts(source.removeprefix("shapes:"))
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in BUILTIN_PROMPTS:
            raise ValueError(
                f"data.prompts={source!r}: unknown built-in list; known: "
                f"{', '.join('builtin:' + n for n in BUILTIN_PROMPTS)}."
            )
        return list(BUILTIN_PROMPTS[name])
    path = Path(source)
    if not path.is_file():
        raise ValueError(
            f"data.prompts={source!r}: no such file. Give a .txt (one prompt a line) or .jsonl file "
            f"(a 'prompt' key a line), or a built-in list such as builtin:tiny."
        )
    prompts: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.strip()
            if not line or (path.suffix != ".jsonl" and line.startswith("#")):
                continue
            if path.suffix == ".jsonl":
                try:
                    prompts.append(str(json.loads(line)["prompt"]))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    raise ValueError(f"{path}:{lineno}: expected a JSON object with a 'prompt' key ({err}).") from err
            else:
                prompts.append(line)
    if not prompts:
        raise ValueError(f"data.prompts={source!r}: the file holds no prompt.")
    return prompts


def shapes_prompts(split: str) -> list[str]:
    """ShapesWorld prompts of ``split``, each GenEval category given equal total weight.

    The six categories have very different numbers of prompts (colour binding has the most), so prompts of
    smaller categories are repeated until every category contributes the same number of entries; uniform
    sampling from the list then draws the categories uniformly.
    """
    from leapalign.worlds.shapes.prompts import load_metadata

    by_cat: dict[str, list[str]] = {}
    for meta in load_metadata(split):
        by_cat.setdefault(meta["tag"], []).append(meta["prompt"])
    size = max(len(v) for v in by_cat.values())
    return [p for prompts in by_cat.values() for p in (prompts * (size // len(prompts) + 1))[:size]]


class PromptSampler:
    """Draws micro-batches of prompts uniformly with replacement from a per-rank generator.

    The generator state is part of every checkpoint, so a resumed run draws the same prompts.
    """

    def __init__(self, prompts: list[str], batch_size: int, generator: torch.Generator) -> None:
        self.prompts = prompts
        self.batch_size = batch_size
        self.generator = generator

    def next(self) -> list[str]:
        """The next ``batch_size`` prompts."""
        idx = torch.randint(len(self.prompts), (self.batch_size,), generator=self.generator)
        return [self.prompts[int(i)] for i in idx]
