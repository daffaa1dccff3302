"""The ShapesWorld prompt grammar over GenEval's six categories, with disjoint train / held-out sets.

Every prompt carries GenEval-style metadata (``tag``, ``include``, ``exclude``, ``prompt``) in which the
object ``class`` is a shape::

    {"tag": "position", "prompt": "a photo of a circle left of a square",
     "include": [{"class": "square", "count": 1}, {"class": "circle", "count": 1, "position": ["left of", 0]}]}

Held-out prompts are combinations never seen in training: held-out (count, shape), (colour, shape),
(shape, relation, shape) and (colour, shape, colour, shape) combinations, plus held-out phrasings for the
single- and two-object categories, which have too few combinations to hold any out. The split is fixed by a
seed and shipped as JSONL files (:func:`write_prompt_files`; ``python -m leapalign.worlds.shapes.prompts``).

Relations and bindings are held out *with their twins*, so that no held-out prompt can be answered by recalling a
training prompt with the same words that asks for another scene. For position the unit held out is a pair of
shapes on an axis: "a circle left of a square", "a square right of a circle" (the same layout), "a square left of
a circle" and "a circle right of a square" (the opposite one, same words) are all held out or all trained on; in
training every trained pair appears on its axis in both word orders. For colour binding the unit is a scene and
its swapped binding: "a red circle and a blue square", "a blue square and a red circle", "a blue circle and a red
square", "a red square and a blue circle". :func:`twin_group` names the unit of a combination.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from leapalign.worlds.shapes.scenes import COLORS, RELATIONS, SHAPES

CATEGORIES: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}

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


SPLIT_SEED = 20261205
HELD_OUT_FRACTION = {"counting": 1 / 3, "colors": 1 / 3, "position": 1 / 3, "color_attr": 0.2}
EVAL_LIMIT = {"color_attr": 24}  # held-out binding combinations used for evaluation
_AXIS = {"left of": "x", "right of": "x", "above": "y", "below": "y"}


def twin_group(category: str, combo: tuple) -> tuple:
    """The unit a combination is held out with: itself, or for ``position`` the unordered pair of shapes and the
    axis, for ``color_attr`` the unordered pair of bindings together with its swap."""
    if category == "position":
        a, rel, b = combo
        return (tuple(sorted((a, b))), _AXIS[rel])
    if category == "color_attr":
        c1, a, c2, b = combo
        scenes = sorted([tuple(sorted([(c1, a), (c2, b)])), tuple(sorted([(c2, a), (c1, b)]))])
        return tuple(scenes)
    return combo


def build_prompt_sets(seed: int = SPLIT_SEED) -> tuple[list[dict], list[dict]]:
    """Builds the (train, held-out) prompt metadata lists; the split is a deterministic function of ``seed``."""
    rng = random.Random(seed)
    train: list[dict] = []
    held: list[dict] = []
    for category, combos in _combos().items():
        train_tpl, eval_tpl = TEMPLATES[category]
        groups: dict[tuple, list[tuple]] = {}
        for combo in combos:
            groups.setdefault(twin_group(category, combo), []).append(combo)
        units = sorted(groups, key=str)
        rng.shuffle(units)
        n_units = round(len(units) * HELD_OUT_FRACTION.get(category, 0.0))
        held_combos = [c for u in units[:n_units] for c in sorted(groups[u], key=str)]
        train_combos = [c for u in units[n_units:] for c in groups[u]]
        n_held = len(held_combos)
        for combo in sorted(train_combos, key=str):
            train.extend({"tag": category, **_metadata(category, combo, t)} for t in train_tpl)
        if n_held:  # held-out combinations, in GenEval's phrasing and in a held-out phrasing
            for combo in held_combos[: EVAL_LIMIT.get(category, n_held)]:  # whole twin groups first
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


def metadata_by_prompt() -> dict[str, dict]:
    """The metadata of every shipped prompt, training and held-out, by its text."""
    return {m["prompt"]: m for split in ("train", "eval") for m in load_metadata(split)}


def by_category(records: list[dict]) -> dict[str, list[dict]]:
    """``records`` grouped by their ``tag`` (every category a key, in :data:`CATEGORIES` order)."""
    out: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for r in records:
        out[r["tag"]].append(r)
    return out


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
