"""Near-miss prompts of a ShapesWorld prompt, for the contrastive form of ShapesScore.

A dual-encoder reward scores an image against one prompt; a generator can raise that score with an image that is
*closer to a near miss* of the prompt ("a square and a circle" drawn as two circles still shares most features
with the prompt). Scoring the prompt against its near misses, as CLIP does in zero-shot classification, removes
that loophole: the contrastive reward is the probability the reward model gives the prompt among the prompt and
its near misses (:class:`research.shapesworld.score_variants.ResearchShapesScore` with ``negatives > 0``).

The near misses are text edits of the prompt's own metadata, never a look at an image:

- one attribute changed (:func:`leapalign.worlds.shapes.negatives.mismatch`: a colour, a count, a relation, a shape);
- for prompts that name two objects, the *collapse* edits: both objects given the first one's shape or the
  second one's shape, or (with colours) the same colour, the mistakes of a generator that merges the two.

``kinds`` restricts the edits to some of :data:`NEAR_MISS_KINDS`. With colour and count edits only, every
candidate names the same shapes as the prompt, so the softmax over candidates cancels most of the shape
evidence: the reward then asks for the right colours and numbers and gives little gradient towards morphing
one shape into another, the move that produces hybrid shapes (``docs/shapesworld.md``).

Results: ``research/shapesworld/results/shapes_score_audit_contrastive.json`` (written by
:mod:`research.shapesworld.score_audit` with ``--negatives 0 8``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from functools import cache

from leapalign.worlds.shapes.negatives import KINDS, _fix_articles, mismatch
from leapalign.worlds.shapes.prompts import metadata_by_prompt

NEAR_MISS_KINDS: tuple[str, ...] = (*KINDS, "collapse")
"""Edits a near miss can make: one attribute (:data:`leapalign.worlds.shapes.negatives.KINDS`) or a collapse."""


def parse_kinds(kinds: str | Sequence[str] | None) -> tuple[str, ...]:
    """Normalises ``kinds`` (None: all; a comma-separated string or a sequence) and checks every name.

    Raises:
        ValueError: an unknown kind, or none at all.
    """
    if kinds is None:
        return NEAR_MISS_KINDS
    names = tuple(k.strip() for k in kinds.split(",")) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in names if k not in NEAR_MISS_KINDS]
    if unknown or not names:
        raise ValueError(
            f"near-miss kinds {list(names)!r}: unknown {unknown!r}; choose from {', '.join(NEAR_MISS_KINDS)} "
            "(e.g. near_miss_kinds=color,count)."
        )
    return tuple(k for k in NEAR_MISS_KINDS if k in names)


@cache
def _known_metadata() -> dict[str, dict]:
    return metadata_by_prompt()


def metadata_of(prompt: str) -> dict:
    """The GenEval-style metadata of a shipped ShapesWorld prompt (train or held-out).

    Raises:
        KeyError: ``prompt`` is not one of the shipped ShapesWorld prompts.
    """
    try:
        return _known_metadata()[prompt]
    except KeyError:
        raise KeyError(
            f"{prompt!r} is not a ShapesWorld prompt (shapes:train / shapes:eval); the contrastive ShapesScore "
            "(negatives > 0) builds its near misses from the prompt's metadata. Use negatives=0 for other prompts."
        ) from None


def _substitute(prompt: str, old: str, new: str) -> str:
    """Replaces the first whole-word ``old`` by ``new``, fixing the article."""
    return _fix_articles(re.sub(rf"\b{re.escape(old)}\b", new, prompt, count=1))


def _collapses(meta: dict) -> list[str]:
    include = meta["include"]
    if len(include) != 2 or include[0]["class"] == include[1]["class"]:
        return []
    prompt = meta["prompt"]
    a, b = include[0]["class"], include[1]["class"]
    out = [_substitute(prompt, b, a), _substitute(prompt, a, b)]  # both as a, both as b
    ca, cb = include[0].get("color"), include[1].get("color")
    if ca and cb and ca != cb:
        out += [_substitute(prompt, cb, ca), _substitute(prompt, ca, cb)]
    return out


@cache
def near_misses(prompt: str, num: int, seed: int = 0, kinds: tuple[str, ...] = NEAR_MISS_KINDS) -> tuple[str, ...]:
    """Up to ``num`` distinct near misses of a shipped ShapesWorld ``prompt``, deterministic in ``seed``.

    The collapse edits come first (when the prompt names two objects and ``"collapse"`` is in ``kinds``), then
    single-attribute mismatches of every applicable kind of ``kinds`` in turn. A prompt no edit applies to
    (e.g. "a circle" with ``kinds=("color",)``) has none.
    """
    meta = metadata_of(prompt)
    rng = random.Random(f"{seed}:{prompt}")
    out: list[str] = []
    candidates = _collapses(meta) if "collapse" in kinds else []
    edits = [k for k in KINDS if k in kinds]
    for _round in range(8):
        candidates += [m["prompt"] for m in (mismatch(meta, kind, rng) for kind in edits) if m is not None]
    for c in candidates:
        if c != prompt and c not in out:
            out.append(c)
        if len(out) == num:
            break
    return tuple(out)
