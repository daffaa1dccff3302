"""The model families as data: config validation, pipeline-folder checks, the ``leapalign models`` listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leapalign.cli import main
from leapalign.families import FAMILIES, check_pretrained_path, family_of, memory_estimate_gb
from leapalign.models.config import ModelConfig
from leapalign.registry import MODELS


def _folder(root: Path, class_name: str) -> Path:
    (root / "transformer").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return root


def test_every_family_and_its_tiny_twin_is_registered() -> None:
    for family in FAMILIES.values():
        assert MODELS.is_known(family.name) and MODELS.is_known(family.tiny)
        assert family_of(family.name) is family and family_of(family.tiny) is family


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_real_model_without_model_path_is_refused_with_an_example(name: str) -> None:
    with pytest.raises(ValueError, match=f"model.name={name} needs model.path.*{FAMILIES[name].hub_ids[0]}"):
        ModelConfig(name=name)


def test_a_folder_of_another_family_is_refused_naming_the_model_that_loads_it(tmp_path: Path) -> None:
    folder = _folder(tmp_path / "qwen", "QwenImagePipeline")
    with pytest.raises(ValueError, match="holds a QwenImagePipeline folder.*set model.name=qwen-image"):
        check_pretrained_path(folder, "flux2")
    assert check_pretrained_path(folder, "qwen-image") == str(folder)
    klein = _folder(tmp_path / "klein", "Flux2KleinPipeline")
    with pytest.raises(ValueError, match="model.name=flux2-klein"):
        check_pretrained_path(klein, "flux2")
    other = _folder(tmp_path / "other", "StableDiffusionXLPipeline")
    with pytest.raises(ValueError, match="not a pipeline leapalign adapts"):
        check_pretrained_path(other, "z-image")


def test_a_folder_without_a_transformer_or_a_malformed_hub_id_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no transformer/ subfolder.*Tongyi-MAI/Z-Image-Turbo"):
        check_pretrained_path(tmp_path, "z-image")
    with pytest.raises(ValueError, match="does not look like a hub id"):
        check_pretrained_path("not a hub id", "qwen-image")
    assert check_pretrained_path("Qwen/Qwen-Image", "qwen-image") == "Qwen/Qwen-Image"


def test_lora_targets_default_to_the_family_and_bad_values_are_refused() -> None:
    assert ModelConfig().lora_targets is None
    with pytest.raises(ValueError, match="lora_targets is empty"):
        ModelConfig(lora_targets=[])
    with pytest.raises(ValueError, match="text_encoder_device='cuda'.*use cpu"):
        ModelConfig(text_encoder_device="cuda")


def test_memory_estimates_grow_with_resolution_and_full_fine_tuning() -> None:
    for family in FAMILIES.values():
        lora_512, lora_1024 = (memory_estimate_gb(family, "lora", r) for r in (512, 1024))
        assert 0 < lora_512 < lora_1024 < memory_estimate_gb(family, "full", 512)
        saved = lora_512 - memory_estimate_gb(family, "lora", 512, text_encoder_on_gpu=False)
        assert saved == pytest.approx(2 * family.text_encoder_params)


def test_models_lists_every_family_with_what_it_needs(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for family in FAMILIES.values():
        assert f"{family.name}  (" in out and family.tiny in out and family.hub_ids[0] in out
        assert family.text_encoder in out
    assert out.count("(estimate)") == 2 * len(FAMILIES)
