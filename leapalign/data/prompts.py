"""Prompt sets: the one loader for training and evaluation, the prompt-set registry, and per-rank sampling.

A prompt set is an ordered list of entries, each a dict with at least ``prompt``; other keys (GenEval's ``tag``,
``include``, ``exclude``) are kept as metadata for evaluators and for balanced sampling. Sources, tried in this
order:

1. a registered name (:data:`PROMPT_SETS`: ``builtin:tiny``, ``builtin:eval32``, and those of plugins);
2. a file: ``.txt`` (one prompt a line; blank lines and ``#`` comments skipped), ``.jsonl`` (one JSON object
   with a ``prompt`` key a line, e.g. GenEval's ``evaluation_metadata.jsonl``) or ``.json`` (a list of prompt
   strings or of objects with a ``prompt`` key, e.g. HPDv2's ``test.json``);
3. an import path ``my_pkg.prompts:load`` to a function returning such a list (or the list itself).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from leapalign.registry import Registry, looks_like_import_path

PROMPT_SETS: Registry[Callable[[], Sequence[str | dict]]] = Registry("prompt set", "data.prompts")
"""Named prompt sets: ``builder() -> list`` of prompt strings or entries with a ``prompt`` key."""

TINY_PROMPTS = [
    "a red circle on a white background",
    "a blue square on a black background",
    "two green triangles",
    "a yellow circle to the left of a purple square",
    "a photo of a cat",
    "a watercolor painting of a lighthouse at dusk",
    "three orange squares",
    "a blue triangle above a red circle",
]
PROMPT_FILE_DIR = Path(__file__).parent / "prompt_sets"
TEXT_SUFFIXES = (".txt", ".text", ".prompts", "")


@dataclass
class PromptSet:
    """An ordered list of prompt entries.

    Attributes:
        source: Where it came from (a registered name, a path or an import path).
        entries: One dict per prompt, each with a ``prompt`` string.
    """

    source: str
    entries: list[dict]

    @property
    def prompts(self) -> list[str]:
        return [e["prompt"] for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def digest(self) -> str:
        """SHA-1 of the entries: identifies the set in an evaluation's ``settings.json`` (resumption checks)."""
        return hashlib.sha1(json.dumps(self.entries, sort_keys=True).encode()).hexdigest()

    def balanced(self, key: str) -> PromptSet:
        """Every value of metadata ``key`` (e.g. GenEval's ``tag``) given equal total weight.

        Groups keep their first-appearance order; each smaller group's entries are repeated, in order, until it
        has as many entries as the largest, so uniform sampling from the result draws the groups uniformly.

        Raises:
            ValueError: An entry lacks ``key``.
        """
        groups: dict[str, list[dict]] = {}
        for i, entry in enumerate(self.entries):
            if key not in entry:
                raise ValueError(
                    f"{self.source}: entry {i} ({entry['prompt'][:40]!r}) has no {key!r} key, so the set cannot be "
                    f"balanced by it; remove data.balance_by or give a JSONL/JSON set whose entries carry {key!r}."
                )
            groups.setdefault(str(entry[key]), []).append(entry)
        size = max(len(g) for g in groups.values())
        entries = [e for g in groups.values() for e in (g * (size // len(g) + 1))[:size]]
        return PromptSet(f"{self.source} (balanced by {key})", entries)


def _entry(obj: object, where: str) -> dict:
    if isinstance(obj, str):
        return {"prompt": obj}
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
        return dict(obj)
    raise ValueError(f"{where}: expected a prompt string or an object with a 'prompt' string, got {str(obj)[:80]!r}.")


def _read_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err}).") from err
        if not isinstance(data, list):
            raise ValueError(f"{path}: a .json prompt file must hold a list of prompts or of objects.")
        return [_entry(obj, f"{path}[{i}]") for i, obj in enumerate(data)]
    if suffix == ".jsonl":
        entries = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append(_entry(json.loads(line), f"{path}:{lineno}"))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not JSON ({err}).") from err
        return entries
    if suffix not in TEXT_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported prompt file type {suffix!r}; give a .txt (one prompt a line), .jsonl (a 'prompt' "
            f"key a line) or .json (a list) file."
        )
    lines = (line.strip() for line in text.splitlines())
    return [{"prompt": line} for line in lines if line and not line.startswith("#")]


def load_prompt_set(
    source: str, limit: int | None = None, balance_by: str | None = None, key: str = "data.prompts"
) -> PromptSet:
    """Reads a prompt set (see the module docstring for the sources).

    Args:
        source: A registered name, a file path or an import path.
        limit: Keep only the first ``limit`` prompts (before balancing).
        balance_by: Balance the set over the values of this metadata key (:meth:`PromptSet.balanced`).
        key: The config key that named ``source``, for error messages.

    Raises:
        ValueError: Unknown source, missing file, malformed line or an empty set; the message names ``key``.
    """
    path = Path(source)
    if source in PROMPT_SETS or (looks_like_import_path(source) and not path.exists()):
        items = PROMPT_SETS.resolve(source)
        items = items() if callable(items) else items
        entries = [_entry(obj, f"{key}={source}[{i}]") for i, obj in enumerate(items)]
    elif path.is_file():
        entries = _read_file(path)
    else:
        raise ValueError(
            f"{key}={source!r}: no such file or prompt set. Give a .txt (one prompt a line), .jsonl (a 'prompt' key "
            f"a line, GenEval metadata works) or .json file, a registered set ({', '.join(PROMPT_SETS.names())}), "
            f"or an import path such as 'my_pkg.prompts:load'."
        )
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"{key}={source!r}: the prompt set is empty (it holds no prompt).")
    prompt_set = PromptSet(source, entries)
    return prompt_set.balanced(balance_by) if balance_by else prompt_set


def load_prompts(source: str, balance_by: str | None = None, key: str = "data.prompts") -> list[str]:
    """The prompt strings of :func:`load_prompt_set` (``source``, optionally balanced by a metadata key)."""
    return load_prompt_set(source, balance_by=balance_by, key=key).prompts


PROMPT_SETS.register("builtin:tiny", lambda: TINY_PROMPTS, "8 short prompts for smoke tests")
PROMPT_SETS.register(
    "builtin:eval32",
    lambda: _read_file(PROMPT_FILE_DIR / "eval32.txt"),
    "32 evaluation prompts written for leapalign in HPDv2's style (photo, anime, concept art, painting)",
)


class PromptSampler:
    """Draws micro-batches of prompts uniformly with replacement from a per-rank generator.

    With ``group_size = G > 1`` (the policy-gradient methods) a micro-batch is ``batch_size / G`` prompts, each
    repeated ``G`` times in a row: a group of samples of one prompt, whole on one rank. The generator state is part
    of every checkpoint, so a resumed run draws the same prompts.
    """

    def __init__(self, prompts: list[str], batch_size: int, generator: torch.Generator, group_size: int = 1) -> None:
        if group_size < 1 or batch_size % group_size:
            raise ValueError(
                f"data.batch_size={batch_size} is not a multiple of method.group_size={group_size}; a micro-batch "
                f"holds whole groups of samples of one prompt."
            )
        self.prompts = prompts
        self.batch_size = batch_size
        self.generator = generator
        self.group_size = group_size

    def next(self) -> list[str]:
        """The next ``batch_size`` prompts (``batch_size / G`` prompts, each repeated ``G`` times)."""
        idx = torch.randint(len(self.prompts), (self.batch_size // self.group_size,), generator=self.generator)
        return [self.prompts[int(i)] for i in idx for _ in range(self.group_size)]
