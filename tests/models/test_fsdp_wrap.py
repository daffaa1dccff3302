"""The shipped FSDP config wraps every family's transformer blocks (accelerate's auto-wrap policy, no GPU needed)."""

from __future__ import annotations

import pytest
import yaml
from accelerate.utils import FullyShardedDataParallelPlugin

from leapalign.cli import PACKAGE
from leapalign.families import FAMILIES
from leapalign.models import build_model
from leapalign.models.config import ModelConfig
from leapalign.models.finetune import unwrap_model


@pytest.mark.parametrize("tiny", sorted(f.tiny for f in FAMILIES.values()))
def test_the_fsdp_config_wraps_the_blocks_the_transformer_declares(tiny: str, monkeypatch) -> None:
    fsdp = yaml.safe_load((PACKAGE / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    # accelerate launch exports the config as environment variables, which the plugin reads
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", fsdp["fsdp_auto_wrap_policy"])
    if "fsdp_transformer_layer_cls_to_wrap" in fsdp:
        monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", fsdp["fsdp_transformer_layer_cls_to_wrap"])
    transformer = unwrap_model(build_model(ModelConfig(name=tiny, max_sequence_length=16)).transformer)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=fsdp["fsdp_version"])
    plugin.set_auto_wrap_policy(transformer)  # raises when a listed block class is not in the model
    wrapped = set(plugin.auto_wrap_policy.keywords["transformer_layer_cls"])
    assert {cls.__name__ for cls in wrapped} == set(type(transformer)._no_split_modules)
