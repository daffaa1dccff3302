"""OpenCLIP -> transformers CLIP conversion: every key mapped, and the forward of an independent OpenCLIP
reference (tests/rewards/_openclip_ref.py, loaded with strict=True) reproduced."""

from __future__ import annotations

import pytest
import torch
from _tiny_clip import make_clip_tokenizer
from transformers import CLIPModel

from leapalign.rewards.openclip_convert import (
    convert_openclip_state_dict,
    load_openclip_state_dict,
    openclip_config,
    openclip_to_transformers,
)


def hf_embeds(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
    txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    return torch.nn.functional.normalize(img, dim=-1), torch.nn.functional.normalize(txt, dim=-1)


def test_checkpoint_loads_and_every_key_is_mapped(hps_checkpoint) -> None:
    path, ref = hps_checkpoint
    sd = load_openclip_state_dict(path)
    assert set(sd) == set(ref.state_dict()) and all(v.dtype == torch.float32 for v in sd.values())
    converted = convert_openclip_state_dict(sd)
    model = CLIPModel(openclip_config(sd, vision_heads=3, text_heads=2))
    assert set(converted) == set(model.state_dict())
    # in_proj is split in three, every other key maps one to one
    n_in_proj = sum(k.endswith("attn.in_proj_weight") or k.endswith("attn.in_proj_bias") for k in sd)
    assert len(converted) == len(sd) + 2 * n_in_proj


@torch.no_grad()
def test_converted_model_reproduces_the_openclip_forward(hps_checkpoint) -> None:
    path, ref = hps_checkpoint
    tok = make_clip_tokenizer()
    model = openclip_to_transformers(
        load_openclip_state_dict(path), vision_heads=3, text_heads=2, eos_token_id=tok.eos_token_id
    )
    pixels = torch.randn(3, 3, 32, 32)
    prompts = ["a red", "two blue squares on white", "x"]  # the second is truncated, keeping its end-of-text token
    ids = tok(prompts, padding="max_length", truncation=True, max_length=16, return_tensors="pt")["input_ids"]
    oc_ids = ids.clone()  # OpenCLIP's tokenizer pads with 0 after the end-of-text token
    for row in oc_ids:
        end = int((row == tok.eos_token_id).nonzero()[0])
        row[end + 1 :] = 0
    img, txt = hf_embeds(model, pixels, ids)
    torch.testing.assert_close(img, ref.encode_image(pixels), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(txt, ref.encode_text(oc_ids), atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(model.logit_scale, ref.logit_scale)
    assert model.config.vision_config.image_size == 32 and model.config.projection_dim == 24


def test_unmapped_and_missing_keys_are_named(hps_checkpoint) -> None:
    path, _ = hps_checkpoint
    sd = load_openclip_state_dict(path)
    extra = dict(sd, **{"visual.transformer.resblocks.0.ls_1.gamma": torch.ones(48)})
    with pytest.raises(ValueError, match=r"ls_1\.gamma"):
        convert_openclip_state_dict(extra)
    sd_with_mask = dict(sd, attn_mask=torch.zeros(16, 16))  # saved by older OpenCLIP; a constant, ignored
    assert convert_openclip_state_dict(sd_with_mask).keys() == convert_openclip_state_dict(sd).keys()
    partial = {k: v for k, v in sd.items() if k != "ln_final.bias"}
    with pytest.raises(ValueError, match=r"final_layer_norm\.bias"):
        openclip_to_transformers(partial, vision_heads=3, text_heads=2)
    with pytest.raises(ValueError, match="pass vision_heads"):
        openclip_config(sd)


def test_non_checkpoint_files_are_rejected(tmp_path) -> None:
    path = tmp_path / "bad.pt"
    torch.save({"state_dict": {"a": 1}}, path)
    with pytest.raises(ValueError, match="not an OpenCLIP checkpoint"):
        load_openclip_state_dict(path)
