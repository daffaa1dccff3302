"""Z-Image's frozen Qwen3 text encoder, as ``ZImagePipeline._encode_prompt`` runs it.

Each prompt is wrapped in the tokenizer's chat template as one user turn with the generation prompt
(``apply_chat_template(..., add_generation_prompt=True, enable_thinking=True)``; for Qwen3 this renders
``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``), tokenized with ``padding="max_length"`` and
truncation to ``max_sequence_length`` tokens, and encoded with the attention mask; the token embeddings are the
**penultimate** hidden state (``hidden_states[-2]``), trimmed per prompt to its real tokens. The pipeline hands the
transformer that list of variable-length embeddings; here they come back right-padded with a ``(B, L)`` mask, which
:class:`~leapalign.models.z_image.ZImageAdapter` turns back into the list.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from leapalign.models.text import stack_padded


class ZImageTextEncoder:
    """Qwen3 token embeddings of Z-Image prompts.

    Args:
        model: The Qwen3 text encoder (``Qwen3Model``, or any model whose output has ``hidden_states``).
        tokenizer: Its tokenizer, with the chat template the pipeline applies.
        max_sequence_length: Token budget per prompt, chat template included (512 in ``ZImagePipeline``).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, max_sequence_length: int = 512) -> None:
        if max_sequence_length < 1:
            raise ValueError(f"model.max_sequence_length={max_sequence_length} must be >= 1 (Z-Image uses 512).")
        self.model = model.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_sequence_length = int(max_sequence_length)

    def format_prompt(self, prompt: str) -> str:
        """The chat-formatted text the pipeline tokenizes for ``prompt``."""
        messages = [{"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
        )

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Encodes ``prompts`` as the pipeline does.

        Returns:
            Embeddings ``(B, L, D)`` in the encoder's dtype and a boolean mask ``(B, L)`` of the real tokens, where
            ``L`` is the longest prompt's token count; shorter prompts are right-padded with zeros (mask ``False``).
            For one prompt nothing is padded: ``(1, L_prompt, D)`` and an all-true mask.
        """
        device = next(self.model.parameters()).device
        dtype = next(self.model.parameters()).dtype
        inputs = self.tokenizer(
            [self.format_prompt(p) for p in prompts],
            padding="max_length",
            max_length=self.max_sequence_length,
            truncation=True,
            return_tensors="pt",
        )
        ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device).bool()
        hidden = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
        rows = [hidden[i][mask[i]].to(dtype) for i in range(len(prompts))]
        return stack_padded(rows), stack_padded([torch.ones(r.shape[0], dtype=torch.bool, device=device) for r in rows])

    def to(self, device: torch.device | str) -> ZImageTextEncoder:
        """Moves the encoder to ``device``."""
        self.model.to(device)
        return self
