"""CLIP score: cosine similarity between a Hugging Face CLIP model's image and prompt embeddings.

Needs a ``transformers`` CLIP folder or hub id (default ``openai/clip-vit-large-patch14``) holding the model,
its tokenizer and its ``preprocessor_config.json``. Preprocessing follows that image processor (Pillow path).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from leapalign.rewards.clip_common import ClipReward, ClipScorer
from leapalign.rewards.preprocess import ImageSpec, spec_from_hf_processor
from leapalign.rewards.weights import check_local, load_pretrained


def load_clip_folder(model: str, processor: str | None, what: str, arg: str) -> tuple:
    """Loads ``(CLIPModel, tokenizer, ImageSpec)`` from a folder or hub id (``processor``: where the tokenizer
    and ``preprocessor_config.json`` live, default ``model``)."""
    from transformers import AutoTokenizer, CLIPModel

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor  # transformers >= 5: the Pillow path
    except ImportError:  # transformers 4.x: the default processor is the Pillow path
        from transformers import CLIPImageProcessor as ImageProcessor

    clip = load_pretrained(CLIPModel.from_pretrained, model, what=what, arg=arg)
    source, source_arg = (processor, arg.rsplit(".", 1)[0] + ".processor") if processor else (model, arg)
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, source, what=f"{what} tokenizer", arg=source_arg)
    image_processor = load_pretrained(
        ImageProcessor.from_pretrained, source, what=f"{what} image processor", arg=source_arg
    )
    return clip, tokenizer, spec_from_hf_processor(image_processor)


class ClipScore(ClipReward):
    """``scale * cos(image, prompt)`` with any Hugging Face CLIP model.

    Args:
        model: Folder or hub id of a ``transformers`` CLIP model (with tokenizer and image processor).
        scale: Multiplier of the cosine (1: the raw cosine in ``[-1, 1]``; 2.5 with a clamp at 0 is Hessel et
            al.'s CLIPScore, 100 is the logit scale of most CLIP models).
        dtype: ``fp32``, ``bf16`` or ``fp16`` weights.
    """

    name = "clip_score"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", scale: float = 1.0, dtype: str = "fp32") -> None:
        super().__init__(dtype)
        check_local(model, what="CLIP score model", arg="clip_score.model")
        self.model_id, self.scale = model, float(scale)

    def _load(self) -> None:
        clip, tokenizer, spec = load_clip_folder(self.model_id, None, "CLIP score", "clip_score.model")
        self.scorer = ClipScorer(clip, tokenizer, spec)

    @property
    def spec(self) -> ImageSpec:
        return self.scorer.spec

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.scale * self.scorer.cosine(images, prompts)
