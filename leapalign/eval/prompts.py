"""Prompt sets for evaluation: plain text, JSON / JSONL (GenEval metadata included) and ShapesWorld's sets.

Every entry is a dict with at least ``prompt``; other keys (GenEval's ``tag``, ``include``, ``exclude``) are kept
as metadata and written next to the images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class PromptSet:
    """An ordered list of prompt entries.

    Attributes:
        source: Where it came from (a path or ``shapes:eval`` ...).
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
        """SHA-1 of the entries: identifies the set in ``settings.json`` (resumption checks)."""
        return hashlib.sha1(json.dumps(self.entries, sort_keys=True).encode()).hexdigest()

    def is_shapes(self) -> bool:
        """Whether every entry is ShapesWorld GenEval-style metadata (so ShapesEval can judge the images)."""
        from leapalign.worlds.shapes.prompts import CATEGORIES
        from leapalign.worlds.shapes.scenes import SHAPES

        def ok(entry: dict) -> bool:
            objects = entry.get("include", []) + entry.get("exclude", [])
            return entry.get("tag") in CATEGORIES and bool(objects) and all(o.get("class") in SHAPES for o in objects)

        return bool(self.entries) and all(ok(e) for e in self.entries)


def _entry(obj: object, where: str) -> dict:
    if isinstance(obj, str):
        return {"prompt": obj}
    if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
        return dict(obj)
    raise ValueError(f"{where}: expected a prompt string or an object with a 'prompt' string, got {str(obj)[:80]!r}.")


def load_prompt_set(source: str, limit: int | None = None) -> PromptSet:
    """Reads a prompt set.

    Args:
        source: ``shapes:eval`` / ``shapes:train`` (ShapesWorld metadata, file order), ``builtin:<name>``, a
            ``.txt`` file (one prompt a line; blank lines and ``#`` comments skipped), a ``.jsonl`` file (one JSON
            object with a ``prompt`` key a line, e.g. GenEval's ``evaluation_metadata.jsonl``) or a ``.json`` file
            holding a list of prompt strings or of objects with a ``prompt`` key (HPDv2's ``test.json``, the HPS
            benchmark files).
        limit: Keep only the first ``limit`` prompts.

    Raises:
        ValueError: Unknown source, missing file, malformed line or an empty set.
    """
    if source in ("shapes:eval", "shapes:train"):
        from leapalign.worlds.shapes.prompts import load_metadata

        entries = [dict(m) for m in load_metadata(source.removeprefix("shapes:"))]
    elif source.startswith("builtin:"):
        from leapalign.data.prompts import load_prompts

        entries = [{"prompt": p} for p in load_prompts(source)]
    else:
        path = Path(source)
        if not path.is_file():
            raise ValueError(
                f"--prompts {source!r}: no such file. Give a .txt (one prompt a line), .jsonl (a 'prompt' key a "
                f"line, GenEval metadata works) or .json file, or shapes:eval / shapes:train."
            )
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            data = json.loads(text)
            if not isinstance(data, list):
                raise ValueError(f"{path}: a .json prompt file must hold a list of prompts or of objects.")
            entries = [_entry(obj, f"{path}[{i}]") for i, obj in enumerate(data)]
        elif path.suffix == ".jsonl":
            entries = []
            for lineno, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        entries.append(_entry(json.loads(line), f"{path}:{lineno}"))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{path}:{lineno}: not JSON ({err}).") from err
        else:
            lines = (line.strip() for line in text.splitlines())
            entries = [{"prompt": line} for line in lines if line and not line.startswith("#")]
    if limit is not None:
        entries = entries[:limit]
    if not entries:
        raise ValueError(f"--prompts {source!r}: the prompt set is empty.")
    return PromptSet(source, entries)
