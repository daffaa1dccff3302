"""Tiny random-init reward models saved in each official format (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _openclip_ref import OpenClipReference
from _tiny_clip import CONTEXT, make_clip_tokenizer, save_tiny_clip_folder


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clip_tokenizer")
    make_clip_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> Path:
    """A Hugging Face CLIP folder: model, tokenizer and a 32-pixel CLIP image processor (Pillow path)."""
    return save_tiny_clip_folder(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="session")
def hps_checkpoint(tmp_path_factory) -> tuple[Path, OpenClipReference]:
    """An OpenCLIP ViT CLIP saved like the HPSv2 checkpoints: ``{'state_dict': {'module.' + key: tensor}}``."""
    torch.manual_seed(1)
    ref = OpenClipReference(vocab=len(make_clip_tokenizer()), context=CONTEXT).eval()
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": {f"module.{k}": v.half() for k, v in ref.state_dict().items()}}, path)
    ref.load_state_dict({k: v.half().float() for k, v in ref.state_dict().items()})  # the fp16 round trip
    return path, ref
