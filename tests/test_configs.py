"""Configs are data: every shipped YAML loads and validates (torchtune's ``test_configs`` pattern), names only
registered models, rewards, evaluators and prompt sets, and survives a round trip through ``config.yaml``."""

from __future__ import annotations

from pathlib import Path

import pytest

from leapalign.config import list_configs, load_config, save_config
from leapalign.data import PROMPT_SETS
from leapalign.eval import EVALUATORS
from leapalign.models import MODELS
from leapalign.rewards import REWARDS

SHIPPED = list_configs()


def test_the_shipped_configs_are_the_expected_ones() -> None:
    assert {"shapes/leapalign", "tiny/leapalign", "flux/leapalign", "flux/leapalign_lora", "sd3/leapalign"} <= set(
        SHIPPED
    )


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_config_validates_and_round_trips(name: str, tmp_path: Path) -> None:
    cfg = load_config(name)
    assert cfg.model.name in MODELS
    assert all(t.name in REWARDS for t in [*cfg.reward.terms, *cfg.evaluation.rewards])
    assert all(e.name in EVALUATORS for e in cfg.evaluation.evaluators)
    assert cfg.evaluation.prompts in PROMPT_SETS or Path(cfg.evaluation.prompts).suffix in (".txt", ".jsonl", ".json")
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(str(tmp_path / "config.yaml")) == cfg


@pytest.mark.parametrize(
    "name", [n for n in SHIPPED if n.startswith(("flux/", "sd3/", "flux2/", "flux2-klein/", "qwen-image/", "z-image/"))]
)
def test_real_model_configs_evaluate_with_held_out_rewards(name: str) -> None:
    ev = load_config(name).evaluation
    train_reward = load_config(name).reward.terms[0].name
    assert ev.enabled and ev.every_n_steps > 0 and ev.prompts == "builtin:eval32"
    held_out = [t.name for t in ev.rewards if t.name != train_reward]
    assert len(held_out) >= 2 and train_reward in [t.name for t in ev.rewards]
