"""Frozen text encoders for Flux and SD3 and a per-prompt embedding cache.

The encoders reproduce ``FluxPipeline.encode_prompt`` and ``StableDiffusion3Pipeline.encode_prompt`` (without
LoRA scaling, textual inversion or ``num_images_per_prompt``) and always run under ``torch.no_grad()``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)


@runtime_checkable
class TextEncoder(Protocol):
    """Maps prompts to a tuple of batch-first tensors: ``(token embeddings (B, L, D), pooled embedding (B, P))`` for
    Flux and SD3; other families return what their transformer needs (e.g. token embeddings and a ``(B, L)`` mask)."""

    def __call__(self, prompts: list[str]) -> tuple[Tensor, ...]:
        """Encodes ``prompts`` (no gradients).

        Returns:
            Tensors with batch ``B = len(prompts)`` first, e.g. token embeddings ``(B, L, D)`` and pooled
            embeddings ``(B, P)``.
        """
        ...

    def to(self, device: torch.device | str) -> TextEncoder:
        """Moves the encoder to ``device`` and returns ``self``."""
        ...


def _freeze(*modules: nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            module.requires_grad_(False)
            module.eval()


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _dtype_of(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _token_ids(tokenizer: Any, prompts: list[str], max_length: int, device: torch.device) -> Tensor:
    """Token ids ``(B, max_length)``: ``padding="max_length"`` and truncation, as the diffusers pipelines."""
    ids = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return ids.to(device)


class FluxTextEncoder:
    """FLUX.1 text conditioning: CLIP pooled output plus T5 token embeddings (as ``FluxPipeline``).

    Args:
        clip: A ``CLIPTextModel``; its ``pooler_output`` is the pooled embedding ``(B, P)``.
        clip_tokenizer: Its tokenizer; prompts are padded to ``clip_tokenizer.model_max_length`` (77).
        t5: A ``T5EncoderModel``; its last hidden state is the token embedding ``(B, L, D)``.
        t5_tokenizer: Its tokenizer; prompts are padded to ``max_sequence_length`` tokens.
        max_sequence_length: T5 token budget ``L`` (at most 512 for FLUX.1).
    """

    def __init__(
        self,
        clip: nn.Module,
        clip_tokenizer: Any,
        t5: nn.Module,
        t5_tokenizer: Any,
        max_sequence_length: int = 512,
    ) -> None:
        if max_sequence_length > 512:
            raise ValueError(f"model.max_sequence_length={max_sequence_length} must be <= 512 for Flux.")
        self.clip, self.clip_tokenizer = clip, clip_tokenizer
        self.t5, self.t5_tokenizer = t5, t5_tokenizer
        self.max_sequence_length = max_sequence_length
        self.clip_max_length = int(getattr(clip_tokenizer, "model_max_length", 77) or 77)
        _freeze(clip, t5)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Returns T5 token embeddings ``(B, max_sequence_length, D)`` and CLIP pooled ``(B, P)``."""
        clip_ids = _token_ids(self.clip_tokenizer, prompts, self.clip_max_length, _device_of(self.clip))
        pooled = self.clip(clip_ids, output_hidden_states=False).pooler_output.to(_dtype_of(self.clip))
        t5_ids = _token_ids(self.t5_tokenizer, prompts, self.max_sequence_length, _device_of(self.t5))
        embeds = self.t5(t5_ids, output_hidden_states=False)[0].to(_dtype_of(self.t5))
        return embeds, pooled.to(embeds.device)

    def to(self, device: torch.device | str) -> FluxTextEncoder:
        """Moves both encoders to ``device``."""
        self.clip.to(device)
        self.t5.to(device)
        return self


class SD3TextEncoder:
    """SD3 / SD3.5 text conditioning, as ``StableDiffusion3Pipeline.encode_prompt`` (``clip_skip=None``).

    Token embeddings: the penultimate hidden states of both CLIP encoders, concatenated on the feature
    dimension, zero-padded to the T5 width and concatenated with the T5 tokens on the sequence dimension, i.e.
    ``(B, 77 + max_sequence_length, D_t5)``. Pooled: the concatenated ``text_embeds`` ``(B, P1 + P2)``.

    Args:
        clip: First ``CLIPTextModelWithProjection``.
        clip_tokenizer: Its tokenizer (``model_max_length`` 77).
        clip_2: Second ``CLIPTextModelWithProjection``.
        clip_tokenizer_2: Its tokenizer.
        t5: ``T5EncoderModel`` or ``None`` (then zeros of width ``joint_attention_dim``, as in diffusers).
        t5_tokenizer: Its tokenizer, or ``None``.
        max_sequence_length: T5 token budget.
        joint_attention_dim: Width of the zero T5 embeddings when ``t5`` is ``None``.
    """

    def __init__(
        self,
        clip: nn.Module,
        clip_tokenizer: Any,
        clip_2: nn.Module,
        clip_tokenizer_2: Any,
        t5: nn.Module | None,
        t5_tokenizer: Any | None,
        max_sequence_length: int = 256,
        joint_attention_dim: int | None = None,
    ) -> None:
        if t5 is None and joint_attention_dim is None:
            raise ValueError("SD3TextEncoder without a T5 encoder needs joint_attention_dim.")
        self.clips = [(clip, clip_tokenizer), (clip_2, clip_tokenizer_2)]
        self.t5, self.t5_tokenizer = t5, t5_tokenizer
        self.max_sequence_length = max_sequence_length
        self.joint_attention_dim = joint_attention_dim
        self.clip_max_length = int(getattr(clip_tokenizer, "model_max_length", 77) or 77)
        _freeze(clip, clip_2, t5)

    @torch.no_grad()
    def __call__(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Returns token embeddings ``(B, 77 + max_sequence_length, D_t5)`` and pooled ``(B, P1 + P2)``."""
        hidden, pooled = [], []
        for model, tokenizer in self.clips:
            ids = _token_ids(tokenizer, prompts, self.clip_max_length, _device_of(model))
            out = model(ids, output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2])
        device, dtype = hidden[0].device, _dtype_of(self.clips[0][0])
        clip_embeds = torch.cat([h.to(device, dtype) for h in hidden], dim=-1)
        pooled_embeds = torch.cat([p.to(device, dtype) for p in pooled], dim=-1)
        if self.t5 is None:
            t5_embeds = clip_embeds.new_zeros(len(prompts), self.max_sequence_length, self.joint_attention_dim)
        else:
            ids = _token_ids(self.t5_tokenizer, prompts, self.max_sequence_length, _device_of(self.t5))
            t5_embeds = self.t5(ids)[0].to(device, dtype)
        clip_embeds = F.pad(clip_embeds, (0, t5_embeds.shape[-1] - clip_embeds.shape[-1]))
        return torch.cat([clip_embeds, t5_embeds], dim=-2), pooled_embeds

    def to(self, device: torch.device | str) -> SD3TextEncoder:
        """Moves the three encoders to ``device``."""
        for model, _ in self.clips:
            model.to(device)
        if self.t5 is not None:
            self.t5.to(device)
        return self


def stack_padded(rows: list[Tensor]) -> Tensor:
    """Stacks per-prompt tensors into a batch, right-padding the first dimension with zeros where lengths differ.

    Args:
        rows: One tensor per prompt, shapes ``(L_i, *rest)`` with equal ``rest``.

    Returns:
        Shape ``(B, max L_i, *rest)``; a padded token's embedding and mask entry are 0, as the pipelines of models
        with variable-length prompts (Qwen-Image, Z-Image) pad a batch.
    """
    if all(r.shape == rows[0].shape for r in rows):
        return torch.stack(rows)
    longest = max(r.shape[0] for r in rows)
    return torch.stack([F.pad(r, (0, 0) * (r.dim() - 1) + (0, longest - r.shape[0])) for r in rows])


class PromptCache:
    """Encodes each distinct prompt once and keeps its embeddings (least recently used entries are evicted).

    The encoder returns a tuple of batch-first tensors (token embeddings and pooled embeddings for Flux and SD3;
    token embeddings and a token mask for variable-length encoders). Each prompt's tensors are cached without the
    batch dimension and stacked per batch with :func:`stack_padded`.

    Args:
        encoder: The frozen text encoder.
        max_entries: Most prompts kept (``None``: unbounded). Real Flux embeddings are about 4 MB per prompt
            in bf16, so an unbounded cache over a large prompt set can exhaust accelerator memory.
        encoder_device: Where the encoder stays when the cache moves (``"cpu"`` keeps a large text encoder, such as
            FLUX.2-dev's 24B Mistral, off the accelerator: each prompt is encoded once there and its embeddings
            are moved to the cache's device); ``None``: the encoder moves with the cache.
    """

    NEGATIVE_PROMPT = ""

    def __init__(
        self, encoder: TextEncoder, max_entries: int | None = 1024, encoder_device: str | torch.device | None = None
    ) -> None:
        self.encoder = encoder
        self.max_entries = max_entries
        self.encoder_device = encoder_device
        self.device: torch.device | None = None  # where the embeddings go; None: where the encoder puts them
        self._entries: OrderedDict[str, tuple[Tensor, ...]] = OrderedDict()
        self._negative: tuple[Tensor, ...] | None = None
        self.num_encoded = 0  # prompts sent through the encoder, for tests and logging

    def __len__(self) -> int:
        return len(self._entries)

    def encode(self, prompts: list[str]) -> tuple[Tensor, ...]:
        """Embeddings of ``prompts``: the encoder's tensors with batch ``B`` (e.g. ``(B, L, D)`` and ``(B, P)``)."""
        if not prompts:
            raise ValueError("encode_prompts needs at least one prompt.")
        for p in dict.fromkeys(p for p in prompts if p not in self._entries):
            # One prompt at a time: a batched encoder forward may round differently with the batch size (the
            # matmul kernels change with the number of rows), which would make an embedding depend on which
            # prompts happened to be encoded with it, and a resumed run (with a cold cache) drift from the
            # uninterrupted one. Each prompt is encoded once, so this costs little.
            self._entries[p] = tuple(self._place(t[0]) for t in self.encoder([p]))
            self.num_encoded += 1
        rows = [self._entries[p] for p in prompts]
        for p in prompts:
            self._entries.move_to_end(p)
        self._evict()
        return tuple(stack_padded([r[i] for r in rows]) for i in range(len(rows[0])))

    def negative(self, batch: int) -> tuple[Tensor, ...]:
        """Empty-prompt tensors expanded (not copied) to batch ``batch`` (e.g. ``(batch, L, D)``, ``(batch, P)``)."""
        if self._negative is None:
            self._negative = tuple(self._place(t[0]) for t in self.encoder([self.NEGATIVE_PROMPT]))
            self.num_encoded += 1
        return tuple(t.expand(batch, *t.shape) for t in self._negative)

    def clear(self) -> None:
        """Drops every cached embedding."""
        self._entries.clear()
        self._negative = None

    def _place(self, tensor: Tensor) -> Tensor:
        return tensor if self.device is None else tensor.to(self.device)

    def to(self, device: torch.device | str) -> PromptCache:
        """Moves every cached embedding to ``device``, and the encoder too unless ``encoder_device`` pins it."""
        self.encoder.to(device if self.encoder_device is None else self.encoder_device)
        self.device = torch.device(device)
        for key, tensors in self._entries.items():
            self._entries[key] = tuple(t.to(device) for t in tensors)
        if self._negative is not None:
            self._negative = tuple(t.to(device) for t in self._negative)
        return self

    def _evict(self) -> None:
        if self.max_entries is None:
            return
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
