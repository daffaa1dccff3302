"""Frozen FLUX.2 text encoders: Mistral Small 3.1 for [dev], Qwen3 for [klein].

Both reproduce their pipeline's ``encode_prompt`` (without ``num_images_per_prompt``, caption upsampling or
precomputed embeddings): the prompt is wrapped in the model's chat template, padded (and truncated) to exactly
``max_sequence_length`` tokens, run through the language model with its attention mask, and three intermediate
hidden states are concatenated on the feature axis, so the embedding is ``(B, max_sequence_length, 3 x hidden)``.
Padding tokens are part of the embedding: the FLUX.2 transformer attends to all ``max_sequence_length`` text tokens
without a mask, as the pipelines call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers.pipelines.flux2.pipeline_flux2 import format_input
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from torch import Tensor, nn

#: Hidden states stacked by ``Flux2Pipeline`` (Mistral Small 3.1, 40 layers) and ``Flux2KleinPipeline`` (Qwen3,
#: 36 layers): the defaults of their ``text_encoder_out_layers``.
DEV_TEXT_LAYERS = (10, 20, 30)
KLEIN_TEXT_LAYERS = (9, 18, 27)


def _check(model: nn.Module, layers: Sequence[int], max_sequence_length: int) -> tuple[int, ...]:
    if max_sequence_length < 1:
        raise ValueError(f"model.max_sequence_length={max_sequence_length} must be >= 1 (FLUX.2 uses 512).")
    depth = int(model.config.get_text_config().num_hidden_layers)
    layers = tuple(int(i) for i in layers)
    if not layers or max(layers) > depth or min(layers) < -depth - 1:
        raise ValueError(
            f"text encoder hidden-state layers {layers} do not exist in a {depth}-layer text encoder: pass "
            f"text_encoder_out_layers with indices in [0, {depth}] (the published FLUX.2 encoders use "
            f"{DEV_TEXT_LAYERS} for [dev] and {KLEIN_TEXT_LAYERS} for [klein])."
        )
    model.requires_grad_(False).eval()
    return layers


def _stacked_hidden_states(model: nn.Module, ids: Tensor, mask: Tensor, layers: tuple[int, ...]) -> Tensor:
    """``(B, L, len(layers) x D)``: the chosen hidden states concatenated per token, in the model's dtype."""
    device = next(model.parameters()).device
    out = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True, use_cache=False)
    stacked = torch.stack([out.hidden_states[k] for k in layers], dim=1)  # (B, n, L, D)
    b, n, length, dim = stacked.shape
    dtype = next(model.parameters()).dtype
    return stacked.to(dtype).permute(0, 2, 1, 3).reshape(b, length, n * dim)


class Flux2DevTextEncoder:
    """FLUX.2 [dev] text conditioning, as ``Flux2Pipeline.encode_prompt``.

    Each prompt (``[IMG]`` removed) becomes a conversation of the system message and the user prompt, which the
    processor's chat template tokenises (``add_generation_prompt=False``).

    Args:
        model: A ``Mistral3ForConditionalGeneration`` (only its language path runs).
        tokenizer: Its processor (``PixtralProcessor``) or a tokenizer with the same chat template.
        max_sequence_length: Tokens per prompt ``L`` (512 in the pipeline).
        system_message: The pipeline's system message (``Flux2Pipeline.system_message``).
        layers: Hidden states to stack (``text_encoder_out_layers``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_sequence_length: int = 512,
        system_message: str = SYSTEM_MESSAGE,
        layers: Sequence[int] = DEV_TEXT_LAYERS,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.layers = _check(model, layers, max_sequence_length)
        self.max_sequence_length = max_sequence_length
        self.system_message = system_message

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor]:
        """Returns the prompt embeddings ``(B, max_sequence_length, 3 x hidden)`` as a 1-tuple."""
        inputs = self.tokenizer.apply_chat_template(
            format_input(prompts=list(prompts), system_message=self.system_message),
            add_generation_prompt=False,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            padding="max_length",
            truncation=True,
            max_length=self.max_sequence_length,
        )
        return (_stacked_hidden_states(self.model, inputs["input_ids"], inputs["attention_mask"], self.layers),)

    @classmethod
    def from_pipeline(cls, pipe: Any, max_sequence_length: int, layers: Sequence[int] | None) -> Flux2DevTextEncoder:
        """The encoder of a ``Flux2Pipeline`` (its text encoder, processor and ``system_message``)."""
        return cls(
            pipe.text_encoder, pipe.tokenizer, max_sequence_length, pipe.system_message, layers or DEV_TEXT_LAYERS
        )

    @classmethod
    def from_pretrained(
        cls, source: str, dtype: torch.dtype, max_sequence_length: int, layers: Sequence[int] | None
    ) -> Flux2DevTextEncoder:
        """Loads ``text_encoder/`` (``Mistral3ForConditionalGeneration``) and ``tokenizer/`` (its processor)."""
        from transformers import AutoProcessor, Mistral3ForConditionalGeneration

        model = Mistral3ForConditionalGeneration.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        processor = AutoProcessor.from_pretrained(source, subfolder="tokenizer")
        return cls(model, processor, max_sequence_length, layers=layers or DEV_TEXT_LAYERS)

    def to(self, device: torch.device | str) -> Flux2DevTextEncoder:
        """Moves the encoder to ``device``."""
        self.model.to(device)
        return self


class Flux2KleinTextEncoder:
    """FLUX.2 [klein] text conditioning, as ``Flux2KleinPipeline.encode_prompt``.

    Each prompt is one user turn rendered by the chat template with ``add_generation_prompt=True`` and
    ``enable_thinking=False`` (the empty ``<think>`` block), then tokenised on its own.

    Args:
        model: A ``Qwen3ForCausalLM``.
        tokenizer: Its ``Qwen2TokenizerFast``.
        max_sequence_length: Tokens per prompt ``L`` (512 in the pipeline).
        layers: Hidden states to stack (``text_encoder_out_layers``).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        max_sequence_length: int = 512,
        layers: Sequence[int] = KLEIN_TEXT_LAYERS,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.layers = _check(model, layers, max_sequence_length)
        self.max_sequence_length = max_sequence_length

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor]:
        """Returns the prompt embeddings ``(B, max_sequence_length, 3 x hidden)`` as a 1-tuple."""
        ids, masks = [], []
        for prompt in prompts:
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=False,
                add_generation_prompt=True,
                enable_thinking=False,
            )
            enc = self.tokenizer(
                text, return_tensors="pt", padding="max_length", truncation=True, max_length=self.max_sequence_length
            )
            ids.append(enc["input_ids"])
            masks.append(enc["attention_mask"])
        return (_stacked_hidden_states(self.model, torch.cat(ids), torch.cat(masks), self.layers),)

    @classmethod
    def from_pipeline(cls, pipe: Any, max_sequence_length: int, layers: Sequence[int] | None) -> Flux2KleinTextEncoder:
        """The encoder of a ``Flux2KleinPipeline`` (its text encoder and tokenizer)."""
        return cls(pipe.text_encoder, pipe.tokenizer, max_sequence_length, layers or KLEIN_TEXT_LAYERS)

    @classmethod
    def from_pretrained(
        cls, source: str, dtype: torch.dtype, max_sequence_length: int, layers: Sequence[int] | None
    ) -> Flux2KleinTextEncoder:
        """Loads ``text_encoder/`` (``Qwen3ForCausalLM``) and ``tokenizer/`` (``Qwen2TokenizerFast``)."""
        from transformers import AutoTokenizer, Qwen3ForCausalLM

        model = Qwen3ForCausalLM.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        return cls(model, tokenizer, max_sequence_length, layers=layers or KLEIN_TEXT_LAYERS)

    def to(self, device: torch.device | str) -> Flux2KleinTextEncoder:
        """Moves the encoder to ``device``."""
        self.model.to(device)
        return self
