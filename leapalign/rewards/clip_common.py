"""Shared machinery of the model-based rewards: lazy loading onto the images' device, frozen weights, and a
CLIP scorer (differentiable image features, cached text features) over ``transformers.CLIPModel``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from leapalign.rewards.base import check_images
from leapalign.rewards.preprocess import ImageSpec, preprocess

logger = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def parse_dtype(dtype: str) -> torch.dtype:
    """Maps ``fp32`` / ``bf16`` / ``fp16`` to a torch dtype; raises naming the allowed values."""
    if dtype not in DTYPES:
        raise ValueError(f"reward dtype={dtype!r} is invalid; allowed: {', '.join(DTYPES)}.")
    return DTYPES[dtype]


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (gradients still flow to the inputs)."""
    module.eval()
    module.requires_grad_(False)
    return module


class LazyReward:
    """A reward whose weights load on the first call, onto the device of the images it is given.

    Subclasses implement :meth:`_load` (build the model on the CPU) and :meth:`_score`.

    Attributes:
        name: Log name.
        differentiable: Gradients flow from the score to the images.
    """

    name = "lazy"
    differentiable = True

    def __init__(self, dtype: str = "fp32") -> None:
        self.dtype = parse_dtype(dtype)
        self._device: torch.device | None = None
        self._loaded = False

    def _load(self) -> None:
        raise NotImplementedError

    def _modules(self) -> list[nn.Module]:
        """The loaded modules to move between devices."""
        raise NotImplementedError

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        raise NotImplementedError

    def load(self, device: torch.device | str = "cpu") -> LazyReward:
        """Loads the weights now (otherwise the first call does) and moves them to ``device``."""
        if not self._loaded:
            self._load()
            for module in self._modules():
                freeze(module)
            self._loaded = True
            logger.info("loaded reward %s", self.name)
        device = torch.device(device)
        if self._device != device:
            for module in self._modules():
                module.to(device=device, dtype=self.dtype)
            self._device = device
            self._on_device_change()
        return self

    def _on_device_change(self) -> None:
        """Hook for caches that hold device tensors."""

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        check_images(images)
        if len(prompts) != images.shape[0]:
            raise ValueError(f"{self.name}: {images.shape[0]} images but {len(prompts)} prompts.")
        self.load(images.device)
        return self._score(images, prompts).float()


class ClipScorer:
    """Image and text embeddings of a ``transformers.CLIPModel`` with a differentiable image path.

    Args:
        model: The CLIP model.
        tokenizer: Its tokenizer (a ``CLIPTokenizer``-like callable).
        spec: The model's image preprocessing.
        cache_size: Text embeddings kept (prompts repeat across training steps).
    """

    def __init__(self, model: nn.Module, tokenizer, spec: ImageSpec, cache_size: int = 4096) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec
        self.max_length = int(model.config.text_config.max_position_embeddings)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    def clear_cache(self) -> None:
        self._cache.clear()

    def image_embeds(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings ``(B, D)`` of images ``(B, 3, H, W)`` in ``[0, 1]``, with gradients."""
        param = next(self.model.parameters())
        pixels = preprocess(images, self.spec).to(device=param.device, dtype=param.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``(B, D)`` (cached per prompt, no gradients)."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            device = next(self.model.parameters()).device
            tok = self.tokenizer(
                missing, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            pooled = self.model.text_model(
                input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
            ).pooler_output
            feats = F.normalize(self.model.text_projection(pooled).float(), dim=-1)
            for prompt, feat in zip(missing, feats, strict=True):
                self._cache[prompt] = feat
        out = torch.stack([self._cache[p] for p in prompts])
        for p in prompts:
            self._cache.move_to_end(p)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return out

    def cosine(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Cosine similarity ``(B,)`` between each image and its prompt."""
        img = self.image_embeds(images)
        return (img * self.text_embeds(prompts).to(img)).sum(dim=-1)

    @property
    def logit_scale(self) -> Tensor:
        return self.model.logit_scale.exp().float()


class ClipReward(LazyReward):
    """Base of the CLIP-family rewards: subclasses set ``self.scorer`` in :meth:`_load`."""

    scorer: ClipScorer

    def _modules(self) -> list[nn.Module]:
        return [self.scorer.model]

    def _on_device_change(self) -> None:
        self.scorer.clear_cache()

    def embed(self, images: Tensor) -> Tensor:
        """Normalised image embeddings ``(B, D)``, e.g. for feature-space diversity."""
        check_images(images)
        self.load(images.device)
        return self.scorer.image_embeds(images)
