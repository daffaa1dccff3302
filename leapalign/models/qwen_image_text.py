"""The frozen Qwen-Image text encoder: Qwen2.5-VL's text path behind the pipeline's prompt template.

Reproduces ``QwenImagePipeline.encode_prompt`` (``_get_qwen_prompt_embeds``) for ``num_images_per_prompt=1``: each
prompt is put in the chat template :data:`PROMPT_TEMPLATE`, tokenized (truncated to ``1024 + 34`` tokens), run through
the Qwen2.5-VL language model, and the last hidden state of its real (attention-mask) tokens is kept without the
first :data:`TEMPLATE_START_IDX` tokens (the template's system prefix), then cut to ``max_sequence_length``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

#: ``QwenImagePipeline.prompt_template_encode``: the chat template each prompt is put in.
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
#: ``QwenImagePipeline.prompt_template_encode_start_idx``: tokens of the template prefix dropped from the embeddings.
TEMPLATE_START_IDX = 34
#: ``QwenImagePipeline.tokenizer_max_length``: prompt tokens kept by the tokenizer (after the prefix).
TOKENIZER_MAX_LENGTH = 1024
#: ``QwenImagePipeline`` refuses a larger ``max_sequence_length``.
MAX_SEQUENCE_LENGTH = 1024


class QwenImageTextEncoder:
    """Qwen-Image text conditioning: per-prompt token embeddings ``(B, L, D)`` and their ``(B, L)`` mask.

    Args:
        text_encoder: A ``Qwen2_5_VLForConditionalGeneration`` (only its language model runs).
        tokenizer: Its ``Qwen2Tokenizer`` (with ``<|im_start|>``/``<|im_end|>``).
        max_sequence_length: Embedding tokens kept per prompt after the template prefix (the pipeline's
            ``max_sequence_length``, default 512, at most 1024).
        template: The prompt template (``QwenImagePipeline.prompt_template_encode``).
        template_start_idx: Template tokens dropped (``QwenImagePipeline.prompt_template_encode_start_idx``).
    """

    def __init__(
        self,
        text_encoder: nn.Module,
        tokenizer: Any,
        max_sequence_length: int = 512,
        template: str = PROMPT_TEMPLATE,
        template_start_idx: int = TEMPLATE_START_IDX,
    ) -> None:
        if not 1 <= max_sequence_length <= MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"model.max_sequence_length={max_sequence_length} is not supported by Qwen-Image: set it between 1 "
                f"and {MAX_SEQUENCE_LENGTH} (the pipeline's default is 512)."
            )
        self.model = text_encoder.requires_grad_(False).eval()
        self.tokenizer = tokenizer
        self.max_sequence_length = max_sequence_length
        self.template = template
        self.template_start_idx = template_start_idx

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Encodes ``prompts`` as ``QwenImagePipeline.encode_prompt`` does.

        Returns:
            Token embeddings ``(B, L, D)`` in the encoder's dtype, right-padded with zeros to the longest prompt of
            the batch, and the mask ``(B, L)`` (int64, 1 for a real token), as the pipeline builds them (a single
            prompt is therefore never padded).
        """
        param = next(self.model.parameters())
        tokens = self.tokenizer(
            [self.template.format(p) for p in prompts],
            max_length=TOKENIZER_MAX_LENGTH + self.template_start_idx,
            padding=True,
            truncation=True,
            return_tensors="pt",
        ).to(param.device)
        # The pipeline calls the whole model with output_hidden_states; its logits are not used, so only the last
        # position's are computed (logits_to_keep) and no KV cache is built: the hidden states are the same.
        out = self.model(
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            output_hidden_states=True,
            use_cache=False,
            logits_to_keep=1,
        )
        hidden = out.hidden_states[-1]
        mask = tokens.attention_mask.bool()
        rows = [h[m][self.template_start_idx :][: self.max_sequence_length] for h, m in zip(hidden, mask, strict=True)]
        longest = max(r.shape[0] for r in rows)
        embeds = torch.stack([torch.cat([r, r.new_zeros(longest - r.shape[0], r.shape[1])]) for r in rows])
        keep = torch.stack(
            [(torch.arange(longest, device=param.device) < r.shape[0]).long() for r in rows],
        )
        return embeds.to(param.dtype), keep

    def to(self, device: torch.device | str) -> QwenImageTextEncoder:
        """Moves the Qwen2.5-VL model to ``device``."""
        self.model.to(device)
        return self
