"""ShapesWorld scenes and prompts: determinism, grammar coverage, disjoint splits, metadata consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leapalign.data import load_prompts
from leapalign.worlds.shapes.prompts import CATEGORIES, build_prompt_sets, load_metadata, prompts_dir
from leapalign.worlds.shapes.scenes import COLORS, RELATIONS, SHAPES, Obj, Scene, render, scene_for


def test_render_is_deterministic_and_in_range() -> None:
    meta = load_metadata("eval")[10]
    a = render(scene_for(meta, np.random.default_rng(3)))
    b = render(scene_for(meta, np.random.default_rng(3)))
    c = render(scene_for(meta, np.random.default_rng(4)))
    assert a.shape == (3, 32, 32) and a.dtype == np.float32
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0


def test_shapes_have_their_expected_fill_ratios() -> None:
    for shape, ratio in (("square", 1.0), ("circle", np.pi / 4), ("triangle", 0.5)):
        img = render(Scene((Obj(shape, "red", 16.0, 16.0, 16.0),)))
        assert img[0].sum() / 0.95 / 256 == pytest.approx(ratio, abs=0.03)


def test_grammar_covers_every_category_shape_colour_and_relation() -> None:
    train, held = build_prompt_sets()
    for records in (train, held):
        assert {m["tag"] for m in records} == set(CATEGORIES)
    words = " ".join(m["prompt"] for m in train)
    assert all(s in words for s in SHAPES) and all(c in words for c in COLORS) and all(r in words for r in RELATIONS)
    counts = {e["count"] for m in train if m["tag"] == "counting" for e in m["include"]}
    assert counts == {1, 2, 3, 4}
    for cat in CATEGORIES:  # several phrasings per category
        assert len({" ".join(m["prompt"].split()[:2]) for m in train if m["tag"] == cat}) >= 3


def test_splits_are_disjoint_and_held_out_combinations_are_unseen() -> None:
    train, held = load_metadata("train"), load_metadata("eval")
    assert {m["prompt"] for m in train}.isdisjoint({m["prompt"] for m in held})

    def combo(m: dict) -> str:
        return json.dumps([m["tag"], m["include"], m.get("exclude")], sort_keys=True)

    train_combos = {combo(m) for m in train}
    for m in held:
        if m["tag"] in ("counting", "colors", "position", "color_attr"):
            assert combo(m) not in train_combos, m["prompt"]


def test_shipped_files_match_the_grammar() -> None:
    train, held = build_prompt_sets()
    assert load_metadata("train") == train and load_metadata("eval") == held
    assert (prompts_dir() / "train_prompts.jsonl").is_file()


def test_scene_for_places_the_requested_objects() -> None:
    rng = np.random.default_rng(0)
    for meta in load_metadata("eval"):
        scene = scene_for(meta, rng)
        want = sorted((e["class"], e.get("color")) for e in meta["include"] for _ in range(e["count"]))
        got = sorted(
            (o.shape, o.color if any(e.get("color") for e in meta["include"]) else None) for o in scene.objects
        )
        assert got == want, meta["prompt"]
        rel = next((e["position"][0] for e in meta["include"] if e.get("position")), None)
        if rel is not None:
            ref, obj = (o for o in scene.objects if o.shape == meta["include"][0]["class"]), None
            ref = next(ref)
            obj = next(o for o in scene.objects if o.shape == meta["include"][1]["class"])
            dx, dy = obj.cx - ref.cx, obj.cy - ref.cy
            assert {"left of": dx < -6, "right of": dx > 6, "above": dy < -6, "below": dy > 6}[rel], meta["prompt"]


def test_category_balanced_prompt_loader() -> None:
    prompts = load_prompts("shapes:train", balance_by="tag")
    tags = {m["prompt"]: m["tag"] for m in load_metadata("train")}
    per_cat = {c: sum(tags[p] == c for p in prompts) for c in CATEGORIES}
    assert len(set(per_cat.values())) == 1


def test_pixel_space_adapter_round_trip_and_layout() -> None:
    import torch

    from leapalign.worlds.shapes.model import ShapesArch, shapes_adapter

    model = shapes_adapter(ShapesArch().build(), guidance_scale=3.0)
    assert model.latent_shape(32, 32) == (8, 8, 48) and model.resolutions_multiple == 4
    images = torch.rand(2, 3, 32, 32)
    latents = model.encode_pixels(images)
    assert latents.shape == (2, 8, 8, 48)
    assert torch.allclose(model.decode(latents, 32, 32), images, atol=1e-6)
    # one token is a 4x4 pixel patch: changing one pixel changes exactly one token
    bumped = images.clone()
    bumped[0, :, 5, 9] = 0.5
    changed = (model.encode_pixels(bumped) != latents).any(dim=-1)
    assert changed.sum() == 1 and changed[0, 5 // 4, 9 // 4]
