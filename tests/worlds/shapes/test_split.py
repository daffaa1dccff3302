"""The held-out split measures generalisation, not recall: relations and bindings are held out with their twins,
and a bag-of-words nearest-training-prompt baseline scores at chance on held-out position prompts (while the same
baseline, given a training set that holds the held-out prompts' word-swapped twins, falls below chance)."""

from __future__ import annotations

from collections import Counter

import pytest

from leapalign.worlds.shapes.prompts import _AXIS, load_metadata, twin_group

CONTENT = {"circle", "square", "triangle", "left", "right", "above", "below"}


def layout(meta: dict) -> tuple[tuple[str, str], str, bool]:
    """``((p, q), axis, p_first)``: the unordered shapes, the axis and whether ``p`` comes first (left / above)."""
    ref, other = meta["include"][0], meta["include"][1]
    rel = other["position"][0]
    first, second = (other["class"], ref["class"]) if rel in ("left of", "above") else (ref["class"], other["class"])
    pair = tuple(sorted((first, second)))
    return pair, _AXIS[rel], first == pair[0]


def words(meta: dict) -> Counter:
    return Counter(w for w in meta["prompt"].split() if w in CONTENT)


def recall_baseline(held: list[dict], train: list[dict]) -> float:
    """Mean score of answering each held-out position prompt with the layout of its nearest training prompts (most
    shared content words, a multiset overlap), where those name the same two shapes on the same axis; 0.5 (a coin)
    where none does, and for ties between layouts."""
    scores = []
    for h in held:
        pair, axis, truth = layout(h)
        overlap = [(sum((words(h) & words(t)).values()), t) for t in train]
        best = max(o for o, _ in overlap)
        votes = [layout(t)[2] for o, t in overlap if o == best and layout(t)[:2] == (pair, axis)]
        scores.append(sum(v == truth for v in votes) / len(votes) if votes else 0.5)
    return sum(scores) / len(scores)


def position(split: str) -> list[dict]:
    return [m for m in load_metadata(split) if m["tag"] == "position"]


def test_nearest_training_prompt_is_at_chance_on_held_out_positions() -> None:
    assert recall_baseline(position("eval"), position("train")) == pytest.approx(0.5)


def test_the_baseline_sees_recall_when_the_twins_are_in_training() -> None:
    """The word-swapped twin of each held-out prompt ("a square left of a circle" for "a circle left of a
    square") asks for the opposite layout with the same words: in training, it drags the baseline below chance.
    (Of each held-out twin pair, one word order is the held-out prompt and the other joins the training set.)"""
    held = [h for h in position("eval") if h["include"][1]["class"] < h["include"][0]["class"]]
    twins = []
    for h in held:
        ref, other = h["include"][0], h["include"][1]
        prompt = (
            h["prompt"].replace(ref["class"], "@").replace(other["class"], ref["class"]).replace("@", other["class"])
        )
        swapped = [
            {"class": other["class"], "count": 1},
            {"class": ref["class"], "count": 1, "position": other["position"]},
        ]
        twins.append({**h, "prompt": prompt, "include": swapped})
    assert recall_baseline(held, position("train") + twins) < 0.25


def test_twins_are_held_out_together_and_every_trained_pair_has_both_word_orders() -> None:
    train, held = load_metadata("train"), load_metadata("eval")

    def combos(records: list[dict], tag: str) -> set[tuple]:
        out = set()
        for m in (r for r in records if r["tag"] == tag):
            if tag == "position":
                ref, other = m["include"][0], m["include"][1]
                out.add((other["class"], other["position"][0], ref["class"]))
            elif tag == "color_attr":
                a, b = m["include"]
                out.add((a["color"], a["class"], b["color"], b["class"]))
        return out

    for tag in ("position", "color_attr"):
        trained = {twin_group(tag, c) for c in combos(train, tag)}
        held_out = {twin_group(tag, c) for c in combos(held, tag)}
        assert trained.isdisjoint(held_out), tag
    in_training = combos(train, "position")
    for a, rel, b in in_training:  # the same pair on the same axis in the other word order is trained on too
        assert (b, rel, a) in in_training
    assert len({twin_group("position", c) for c in combos(held, "position")}) == 2
