"""ShapesWorld as a plugin: what it registers, its replay source (rendered scenes, pixel space), its evaluator
behind the library's protocol, and the demo config's prompt sampling, unchanged by the move to a plugin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leapalign.data import PROMPT_SETS, load_prompt_set
from leapalign.eval import EVALUATORS, build_evaluator
from leapalign.models import MODELS, ModelConfig, build_model
from leapalign.regularizers import REPLAY_SOURCES, build_replay, flow_matching_loss
from leapalign.rewards import REWARDS, RewardTermConfig, build_reward_term
from leapalign.worlds.shapes.evaluator import evaluate
from leapalign.worlds.shapes.prompts import load_metadata
from leapalign.worlds.shapes.scenes import render, scene_for


def test_the_plugin_registers_everything_through_the_entry_point() -> None:
    assert "shapes" in MODELS and "shapes_score" in REWARDS and "shapes_eval" in EVALUATORS
    assert {"shapes:train", "shapes:eval"} <= set(PROMPT_SETS) and "shapes:train" in REPLAY_SOURCES


def test_balanced_training_prompts_are_those_the_demo_always_drew() -> None:
    by_cat: dict[str, list[str]] = {}  # the loader ShapesWorld had before it became a plugin
    for meta in load_metadata("train"):
        by_cat.setdefault(meta["tag"], []).append(meta["prompt"])
    size = max(len(v) for v in by_cat.values())
    before = [p for prompts in by_cat.values() for p in (prompts * (size // len(prompts) + 1))[:size]]
    assert load_prompt_set("shapes:train", balance_by="tag").prompts == before


def test_evaluator_protocol_matches_shapes_eval() -> None:
    metadata = load_metadata("eval")[::8]
    rng = torch.Generator().manual_seed(0)
    images = torch.stack(
        [torch.from_numpy(render(scene_for(m, np.random.default_rng(i)))) for i, m in enumerate(metadata)]
    )
    images[::3] = torch.rand(images[::3].shape, generator=rng)  # some wrong images
    evaluator = build_evaluator("shapes_eval")
    values = evaluator(images, metadata)
    direct = evaluate(images, metadata)
    assert values == [float(ok) for ok in direct.correct]
    summary = evaluator.summarize(values, metadata)
    assert (
        summary["overall"] == pytest.approx(direct.overall)
        and summary.keys() - {"overall"} == direct.by_category.keys()
    )
    with pytest.raises(ValueError, match="shapes_eval judges ShapesWorld prompts only"):
        evaluator.check([{"prompt": "a photo of a cat"}])


def test_rendered_replay_trains_the_pixel_space_model() -> None:
    source = build_replay("shapes:train", seed=0, batch_size=3, height=32, width=32)
    prompts, images = source.batch(0)
    assert images.shape == (3, 3, 32, 32) and len(prompts) == 3
    again = build_replay("shapes:train", 0, 3, 32, 32).batch(0)
    assert again[0] == prompts and torch.equal(again[1], images)
    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    loss = flow_matching_loss(model, images, prompts, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and model.guidance_scale == 3.0
    # the shipped base was trained with this loss: it fits real scenes far better than noise images
    with torch.no_grad():
        worse = flow_matching_loss(model, torch.rand_like(images), prompts, torch.Generator().manual_seed(0))
    assert loss.item() < worse.item()
    with pytest.raises(ValueError, match="renders 32x32 scenes"):
        build_replay("shapes:train", 0, 3, 64, 64)


def test_replay_from_a_folder_of_rendered_scenes_stays_in_pixel_space(tmp_path) -> None:
    from PIL import Image

    metadata = load_metadata("train")[:6]
    for i, meta in enumerate(metadata):  # a user's own folder of captioned images, here ShapesWorld renders
        arr = render(scene_for(meta, np.random.default_rng(i)))
        Image.fromarray((arr.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(tmp_path / f"{i}.png")
        (tmp_path / f"{i}.txt").write_text(meta["prompt"])
    prompts, images = build_replay(str(tmp_path), seed=0, batch_size=4, height=32, width=32).batch(0)
    assert images.shape == (4, 3, 32, 32) and set(prompts) <= {m["prompt"] for m in metadata}
    model = build_model(ModelConfig(name="shapes", finetune="full", guidance_scale=3.0))
    assert model.vae is None and torch.allclose(model.decode(model.encode_pixels(images), 32, 32), images, atol=1e-6)
    with torch.no_grad():
        loss = flow_matching_loss(model, images, prompts, torch.Generator().manual_seed(0))
        worse = flow_matching_loss(model, torch.rand_like(images), prompts, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss.item() < worse.item()


def test_shapes_eval_is_a_non_differentiable_training_reward() -> None:
    reward = build_reward_term(RewardTermConfig("shapes_eval"))
    metadata = load_metadata("train")[:4]
    images = torch.stack(
        [torch.from_numpy(render(scene_for(m, np.random.default_rng(i)))) for i, m in enumerate(metadata)]
    )
    images[1] = 0.0  # an empty image is wrong
    scores = reward(images, [m["prompt"] for m in metadata])
    assert (
        not reward.differentiable
        and scores[1] == 0.0
        and scores.tolist() == [float(ok) for ok in evaluate(images, metadata).correct]
    )
    with pytest.raises(ValueError, match="judges ShapesWorld prompts only"):
        reward(images[:1], ["a photo of a cat"])
