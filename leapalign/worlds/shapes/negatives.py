"""Mismatched prompts for ShapesWorld: a valid prompt that differs from a given one in exactly one attribute.

:func:`mismatch` edits GenEval-style prompt metadata (see :mod:`leapalign.worlds.shapes.prompts`) and rewrites the
prompt string by word substitution, so the phrasing of the original prompt is kept::

    "a photo of three circles"            --count-->    "a photo of two circles"
    "an image of a red circle and a blue square" --color--> "an image of a blue circle and a red square"
    "a circle left of a square"           --relation--> "a circle above a square"
    "a drawing of a triangle"             --shape-->    "a drawing of a square"

Mismatches serve as near-miss negatives: the evaluator must reject them on a render of the original prompt
(``tests/worlds/shapes/test_evaluator.py``), and ShapesScore trains on them as hard negatives
(:mod:`leapalign.worlds.shapes.score_train`).
"""

from __future__ import annotations

import copy
import random
import re

from leapalign.worlds.shapes.prompts import NUMBERS
from leapalign.worlds.shapes.scenes import COLORS, RELATIONS, SHAPES

KINDS: tuple[str, ...] = ("color", "count", "relation", "shape")

_WORD_TO_NUMBER = {word: n for n, word in NUMBERS.items()}
_ARTICLE = re.compile(r"\b(a|an) (\w+)")


def _fix_articles(prompt: str) -> str:
    """Makes every ``a``/``an`` agree with the word after it (a substituted word may change the article)."""
    return _ARTICLE.sub(lambda m: ("an " if m.group(2)[0] in "aeiou" else "a ") + m.group(2), prompt)


def _noun(shape: str, count: int) -> str:
    return shape + ("s" if count > 1 else "")


def _mismatch_color(meta: dict, rng: random.Random) -> dict | None:
    include = meta["include"]
    colored = [i for i, entry in enumerate(include) if entry.get("color")]
    if not colored:
        return None
    used = {include[i]["color"] for i in colored}
    prompt = meta["prompt"]
    pairs = [(i, j) for i in colored for j in colored if i < j and include[i]["color"] != include[j]["color"]]
    if pairs and rng.random() < 0.5:  # swap the colours of two objects: a binding negative
        i, j = rng.choice(pairs)
        ci, cj = include[i]["color"], include[j]["color"]
        include[i]["color"], include[j]["color"] = cj, ci
        pattern = re.compile(rf"\b({re.escape(ci)}|{re.escape(cj)})\b")
        meta["prompt"] = pattern.sub(lambda m: cj if m.group(1) == ci else ci, prompt)
        return meta
    i = rng.choice(colored)
    old, shape = include[i]["color"], include[i]["class"]
    new = rng.choice([c for c in COLORS if c not in used])
    include[i]["color"] = new
    pattern = re.compile(rf"\b{re.escape(old)} ({re.escape(shape)}s?)\b")
    meta["prompt"] = _fix_articles(pattern.sub(lambda m: f"{new} {m.group(1)}", prompt, count=1))
    return meta


def _mismatch_count(meta: dict, rng: random.Random) -> dict | None:
    include = meta["include"]
    if len(include) != 1:
        return None
    shape, old = include[0]["class"], int(include[0]["count"])
    words = "|".join(re.escape(w) for w in _WORD_TO_NUMBER)
    pattern = re.compile(rf"\b({words}) {re.escape(shape)}s?\b")
    match = pattern.search(meta["prompt"])
    if match is None or _WORD_TO_NUMBER[match.group(1)] != old:  # no explicit number (e.g. "a circle")
        return None
    new = rng.choice([n for n in NUMBERS if n != old])
    include[0]["count"] = new
    for entry in meta.get("exclude", []):  # "exactly n": the exclude bound moves with the count
        if entry["class"] == shape:
            entry["count"] = new + 1
    start, end = match.span()
    prompt = meta["prompt"]
    meta["prompt"] = prompt[:start] + f"{NUMBERS[new]} {_noun(shape, new)}" + prompt[end:]
    return meta


def _mismatch_relation(meta: dict, rng: random.Random) -> dict | None:
    related = [entry for entry in meta["include"] if entry.get("position")]
    if not related:
        return None
    entry = rng.choice(related)
    old = entry["position"][0]
    new = rng.choice([r for r in RELATIONS if r != old])
    pattern = re.compile(rf"\b{re.escape(old)}\b")
    if pattern.search(meta["prompt"]) is None:
        return None
    entry["position"] = [new, entry["position"][1]]
    meta["prompt"] = pattern.sub(new, meta["prompt"], count=1)
    return meta


def _mismatch_shape(meta: dict, rng: random.Random) -> dict | None:
    include = meta["include"]
    used = {entry["class"] for entry in include} | {entry["class"] for entry in meta.get("exclude", [])}
    free = [s for s in SHAPES if s not in used]
    if not free or not include:
        return None
    entry = rng.choice(include)
    old, new = entry["class"], rng.choice(free)
    pattern = re.compile(rf"\b{re.escape(old)}(s?)\b")
    if len(pattern.findall(meta["prompt"])) != 1:  # the shape must be named exactly once to substitute it
        return None
    for e in include + meta.get("exclude", []):
        if e["class"] == old:
            e["class"] = new
    meta["prompt"] = _fix_articles(pattern.sub(lambda m: new + m.group(1), meta["prompt"]))
    return meta


_MISMATCHERS = {
    "color": _mismatch_color,
    "count": _mismatch_count,
    "relation": _mismatch_relation,
    "shape": _mismatch_shape,
}


def mismatch(metadata: dict, kind: str, rng: random.Random) -> dict | None:
    """A different, valid prompt that disagrees with ``metadata`` in one attribute.

    Args:
        metadata: GenEval-style prompt metadata (``tag``, ``prompt``, ``include``, optional ``exclude``); it is
            not modified.
        kind: What to change, one of :data:`KINDS`:

            - ``color``: for a prompt with two differently coloured objects, swap their colours with probability
              1/2 (a binding negative); otherwise recolour one object with a colour the prompt does not use.
            - ``count``: change the number of a counting prompt ("three circles" -> "one circle"), moving the
              ``exclude`` bound with it so the new prompt still means "exactly n".
            - ``relation``: replace the spatial relation by one of the three others.
            - ``shape``: replace one shape by a shape the prompt does not mention (plural kept).
        rng: Source of the random choices.

    Returns:
        New metadata (same ``tag``; ``prompt`` rewritten by word substitution), or None when ``kind`` does not
        apply to the prompt (``color`` without colour words, ``count`` without a number word, ``relation``
        without a relation, ``shape`` when every shape is already named).

    Raises:
        ValueError: ``kind`` is not one of :data:`KINDS`.
    """
    if kind not in _MISMATCHERS:
        raise ValueError(f"unknown mismatch kind {kind!r}; known: {', '.join(KINDS)}.")
    result = _MISMATCHERS[kind](copy.deepcopy(metadata), rng)
    if result is None or result["prompt"] == metadata["prompt"]:
        return None
    return result
