"""Overrides that go through a list index (``reward.terms.0.weight=2``)."""

from __future__ import annotations

import pytest

from leapalign.config import ConfigError, load_config


def test_list_item_overrides_set_the_item_in_place() -> None:
    cfg = load_config("shapes/leapalign", ["reward.terms.0.args.path=runs/x", "reward.terms.0.weight=2"])
    assert cfg.reward.terms[0].weight == 2.0 and cfg.reward.terms[0].args == {"path": "runs/x"}
    assert cfg.reward.terms[0].name == "shapes_layout"


@pytest.mark.parametrize(
    "override, message",
    [
        ("reward.terms.3.weight=1", "has 1 entries"),
        ("reward.terms.0.weight=abc", "could not be converted"),
        ("reward.terms.0.bogus=1", "bogus"),
    ],
)
def test_bad_list_item_overrides_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("shapes/leapalign", [override])
