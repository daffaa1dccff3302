"""Prompt sets: the one loader for training and evaluation, the prompt-set registry, and per-rank sampling.

A prompt set is an ordered list of entries, each a dict with at least ``prompt``; other keys (GenEval's ``tag``,
``include``, ``exclude``) are kept as metadata for evaluators and for balanced sampling. Sources, tried in this
order:

1. a registered name (:data:`PROMPT_SETS`: ``builtin:tiny``, ``builtin:eval32``, and those of plugins);
2. a file: ``.txt`` (one prompt a line; blank lines and ``#`` comments skipped), ``.jsonl`` (one JSON object
   with a ``prompt`` key a line, e.g. GenEval's ``evaluation_metadata.jsonl``), ``.json`` (a list of prompt
   strings or of objects with a ``prompt`` key, e.g. HPDv2's ``test.json``) or ``.csv`` / ``.tsv`` (a header row
   with a ``prompt`` column; the other columns are kept as metadata);
3. an import path ``my_pkg.prompts:load`` to a function returning such a list (or the list itself).

Files are read by their content where the suffix could mislead: ``.json`` and ``.jsonl`` accept either JSON layout
(a list, or one object a line), and a text file whose first line opens a JSON list or object is read as JSON. A
text file whose first line is a CSV header (``prompt``, ``prompt,tag``) is refused rather than trained on, as are
empty files and unknown suffixes; every error names the accepted formats.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from leapalign.registry import PROMPT_SETS, looks_like_import_path

logger = logging.getLogger(__name__)


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
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
FORMATS = (
    "a .txt (one prompt a line), .jsonl (one object with a 'prompt' key a line), .json (a list of prompts or of "
    "such objects) or .csv/.tsv (a header row with a 'prompt' column) file"
)
_JSON_OPENINGS = ("[", "{")
_CSV_HEADERS = ("prompt", "prompts", "caption", "text")


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


def _json_lines(path: Path, text: str) -> list[dict]:
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                entries.append(_entry(json.loads(line), f"{path}:{lineno}"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON ({err}); give {FORMATS}.") from err
    return entries


def _read_json(path: Path, text: str) -> list[dict]:
    """A JSON list of prompts or entries, one entry object, or JSON lines, whatever the suffix says."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if text.lstrip().startswith("{"):  # objects, one a line (an error names the line)
            return _json_lines(path, text)
        raise ValueError(f"{path}: not valid JSON ({err}); give {FORMATS}.") from err
    if isinstance(data, dict):  # one entry (a JSON-lines file of one line)
        return [_entry(data, str(path))]
    if not isinstance(data, list):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not a list; give {FORMATS}.")
    return [_entry(obj, f"{path}[{i}]") for i, obj in enumerate(data)]


def _read_table(path: Path, text: str, delimiter: str) -> list[dict]:
    """The ``prompt`` column of a CSV/TSV file with a header row; the other non-empty columns become metadata."""
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    if "prompt" not in [c.lower() for c in columns]:
        raise ValueError(
            f"{path}: a {path.suffix} prompt file needs a header row with a 'prompt' column, but its header is "
            f"{columns}; name the prompt column 'prompt', or give {FORMATS}."
        )
    entries = []
    try:
        for row in reader:
            values = {k.strip(): v for k, v in row.items() if isinstance(k, str) and isinstance(v, str)}
            prompt = next((v for k, v in values.items() if k.lower() == "prompt"), "").strip()
            if prompt:
                meta = {k: v for k, v in values.items() if k.lower() != "prompt" and v != ""}
                entries.append({"prompt": prompt, **meta})
    except csv.Error as err:
        raise ValueError(f"{path}:{reader.line_num}: not valid {path.suffix} ({err}).") from err
    return entries


def _read_text(path: Path, text: str) -> list[dict]:
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    first = lines[0] if lines else ""
    if first in _JSON_OPENINGS or first.startswith(('["', "[{", '{"')):
        try:
            entries = _read_json(path, text)
        except ValueError as err:
            raise ValueError(
                f"{path}: its first line {first[:40]!r} opens JSON, but the file is not valid JSON ({err}); fix it, "
                f"or give {FORMATS}."
            ) from err
        logger.info("%s holds JSON: read as JSON, not as one prompt a line", path)
        return entries
    header = [f.strip().lower() for f in first.split(",")]
    if header[0] in _CSV_HEADERS and all(re.fullmatch(r"\w+", f) for f in header) and len(lines) > 1:
        raise ValueError(
            f"{path}: its first line {first[:40]!r} looks like a CSV header, not a prompt; name the file .csv to "
            f"read its 'prompt' column, or delete the line."
        )
    return [{"prompt": line} for line in lines]


def _read_file(path: Path) -> list[dict]:
    """The entries of a prompt file (see the module docstring for the formats)."""
    suffix = path.suffix.lower()
    if suffix not in (*TEXT_SUFFIXES, ".json", ".jsonl", *TABLE_DELIMITERS):
        raise ValueError(f"{path}: unsupported prompt file type {suffix!r}; give {FORMATS}.")
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark (spreadsheet exports) is dropped
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); give {FORMATS}.") from err
    if not text.strip():
        raise ValueError(f"{path}: the file is empty (it holds no prompt); give {FORMATS}.")
    if suffix in TABLE_DELIMITERS:
        return _read_table(path, text, TABLE_DELIMITERS[suffix])
    if suffix in (".json", ".jsonl"):
        return _read_json(path, text)
    return _read_text(path, text)


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
    elif path.is_dir():
        raise ValueError(f"{key}={source!r} is a folder; give {FORMATS}, or a registered prompt set.")
    else:
        raise ValueError(
            f"{key}={source!r}: no such file or prompt set. Give {FORMATS} (GenEval metadata works), a registered "
            f"set ({', '.join(PROMPT_SETS.names())}), or an import path such as 'my_pkg.prompts:load'."
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


# The built-in prompt sets, declared in PROMPT_SETS by import path (with their descriptions) in leapalign.registry.
def _tiny_prompts() -> list[str]:
    return TINY_PROMPTS


def _eval32_prompts() -> list[dict]:
    return _read_file(PROMPT_FILE_DIR / "eval32.txt")


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
