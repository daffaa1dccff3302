"""The ShapesWorld prompt grammar over GenEval's six categories, with disjoint train / held-out sets.

Every prompt carries GenEval-style metadata (``tag``, ``include``, ``exclude``, ``prompt``) in which the
object ``class`` is a shape::

    {"tag": "position", "prompt": "a photo of a circle left of a square",
     "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}

Held-out prompts are combinations never seen in training: held-out (count, shape), (colour, shape),
(shape, relation, shape) and (colour, shape, colour, shape) combinations, plus held-out phrasings for the
single- and two-object categories, which have too few combinations to hold any out. The split is fixed by a
seed and shipped as JSONL files (:func:`write_prompt_files`; ``python -m leapalign.worlds.shapes.prompts``).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from leapalign.worlds.shapes.scenes import COLORS, RELATIONS, SHAPES

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
SPLIT_SEED = 20261125

# (train templates, held-out templates); {a}/{b} are noun phrases.
TEMPLATES: dict[str, tuple[list[str], list[str]]] = {
    "single_object": (["a photo of {a}", "{a}", "a picture of {a}"], ["an image of {a}", "a drawing of {a}"]),
    "two_object": (["a photo of {a} and {b}", "{a} and {b}", "a picture of {a} and {b}"], ["an image of {a} and {b}"]),
    "counting": (["a photo of {a}", "{a}", "a picture of {a}"], ["an image of {a}"]),
    "colors": (["a photo of {a}", "{a}", "a picture of {a}"], ["an image of {a}"]),
    "position": (
        ["a photo of {a} {rel} {b}", "{a} {rel} {b}", "a picture of {a} {rel} {b}"],
        ["an image of {a} {rel} {b}"],
    ),
    "color_attr": (["a photo of {a} and {b}", "{a} and {b}", "a picture of {a} and {b}"], ["an image of {a} and {b}"]),
}


def _article(noun: str) -> str:
    return f"an {noun}" if noun[0] in "aeiou" else f"a {noun}"


def _count_phrase(n: int, shape: str) -> str:
    return f"{NUMBERS[n]} {shape}" + ("s" if n > 1 else "")


def _combos() -> dict[str, list[tuple]]:
    pairs = [(a, b) for a, b in itertools.permutations(SHAPES, 2)]
    return {
        "single_object": [(s,) for s in SHAPES],
        "two_object": pairs,
        "counting": [(n, s) for n in NUMBERS for s in SHAPES],
        "colors": [(c, s) for c in COLORS for s in SHAPES],
        "position": [(a, rel, b) for a, b in pairs for rel in RELATIONS],
        "color_attr": [(c1, a, c2, b) for a, b in pairs for c1, c2 in itertools.permutations(COLORS, 2)],
    }


def _metadata(category: str, combo: tuple, template: str) -> dict:
    if category == "single_object":
        (s,) = combo
        return {"prompt": template.format(a=_article(s)), "include": [{"class": s, "count": 1}]}
    if category == "two_object":
        a, b = combo
        prompt = template.format(a=_article(a), b=_article(b))
        return {"prompt": prompt, "include": [{"class": a, "count": 1}, {"class": b, "count": 1}]}
    if category == "counting":
        n, s = combo
        return {
            "prompt": template.format(a=_count_phrase(n, s)),
            "include": [{"class": s, "count": n}],
            "exclude": [{"class": s, "count": n + 1}],
        }
    if category == "colors":
        c, s = combo
        return {"prompt": template.format(a=_article(f"{c} {s}")), "include": [{"class": s, "count": 1, "color": c}]}
    if category == "position":
        a, rel, b = combo
        return {
            "prompt": template.format(a=_article(a), rel=rel, b=_article(b)),
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
        }
    if category == "color_attr":
        c1, a, c2, b = combo
        return {
            "prompt": template.format(a=_article(f"{c1} {a}"), b=_article(f"{c2} {b}")),
            "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
        }
    raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}.")


HELD_OUT_FRACTION = {"counting": 1 / 3, "colors": 1 / 3, "position": 1 / 3, "color_attr": 0.2}
EVAL_LIMIT = {"color_attr": 24}  # held-out binding combinations used for evaluation


def build_prompt_sets(seed: int = SPLIT_SEED) -> tuple[list[dict], list[dict]]:
    """Builds the (train, held-out) prompt metadata lists; the split is a deterministic function of ``seed``."""
    rng = random.Random(seed)
    train: list[dict] = []
    held: list[dict] = []
    for category, combos in _combos().items():
        train_tpl, eval_tpl = TEMPLATES[category]
        combos = list(combos)
        rng.shuffle(combos)
        n_held = round(len(combos) * HELD_OUT_FRACTION.get(category, 0.0))
        held_combos, train_combos = combos[:n_held], combos[n_held:]
        for combo in sorted(train_combos, key=str):
            train.extend({"tag": category, **_metadata(category, combo, t)} for t in train_tpl)
        if n_held:  # held-out combinations, in GenEval's phrasing and in a held-out phrasing
            for combo in sorted(held_combos, key=str)[: EVAL_LIMIT.get(category, n_held)]:
                held.extend({"tag": category, **_metadata(category, combo, t)} for t in (train_tpl[0], eval_tpl[0]))
        else:  # too few combinations: held-out phrasings of every combination
            for combo in sorted(combos, key=str):
                held.extend({"tag": category, **_metadata(category, combo, t)} for t in eval_tpl)
    overlap = {m["prompt"] for m in train} & {m["prompt"] for m in held}
    assert not overlap, f"train and held-out prompts overlap: {sorted(overlap)[:3]}"
    return train, held


def prompts_dir() -> Path:
    """Directory holding the shipped prompt files."""
    return Path(__file__).parent / "assets"


def load_metadata(split: str) -> list[dict]:
    """The shipped prompt metadata of ``split`` (``train`` or ``eval``)."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown ShapesWorld prompt split {split!r}; use train or eval.")
    with (prompts_dir() / f"{split}_prompts.jsonl").open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_prompt_files(directory: Path | None = None) -> tuple[Path, Path]:
    """Writes ``train_prompts.jsonl`` and ``eval_prompts.jsonl`` (one GenEval-style record a line)."""
    directory = directory or prompts_dir()
    train, held = build_prompt_sets()
    paths = []
    for name, records in (("train", train), ("eval", held)):
        path = directory / f"{name}_prompts.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        paths.append(path)
    return paths[0], paths[1]


if __name__ == "__main__":
    for p in write_prompt_files():
        print(p, sum(1 for _ in p.open()))  # noqa: T201
