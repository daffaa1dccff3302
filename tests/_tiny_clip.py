"""Tiny random-init CLIP pieces shared by the reward and evaluation tests (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

CONTEXT = 16


def make_clip_tokenizer() -> CLIPTokenizer:
    """Byte-level CLIP BPE without merges; start/end of text are the two highest ids, as in the real vocabulary."""
    vocab: dict[str, int] = {}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], pad_token="<|endoftext|>", model_max_length=CONTEXT)


def tiny_clip_model(vocab: int, seed: int = 0) -> CLIPModel:
    torch.manual_seed(seed)
    text = dict(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=CONTEXT, bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1,
        hidden_act="gelu",
    )  # fmt: skip
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
        hidden_act="gelu",
    )  # fmt: skip
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()


def save_tiny_clip_folder(path: Path) -> Path:
    """A Hugging Face CLIP folder: model, tokenizer and a 32-pixel CLIP image processor (Pillow path)."""
    tok = make_clip_tokenizer()
    tiny_clip_model(len(tok)).save_pretrained(path)
    tok.save_pretrained(path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path
