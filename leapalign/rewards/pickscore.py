"""PickScore (Kirstain et al., 2023): a CLIP-H model fine-tuned on Pick-a-Pic preferences.

Needs the model ``yuvalkirstain/PickScore_v1`` and the processor (tokenizer + image processor)
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, as folders or hub ids. The score is the official one,
``logit_scale.exp() * cos(image, prompt)`` (about 18 to 24 on typical images), times ``scale``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from leapalign.rewards.clip_common import ClipReward, ClipScorer
from leapalign.rewards.clip_score import load_clip_folder
from leapalign.rewards.weights import check_local

PICKSCORE_MODEL = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(ClipReward):
    """PickScore: ``scale * logit_scale.exp() * cos(image, prompt)``.

    Args:
        model: Folder or hub id of the PickScore CLIP model.
        processor: Folder or hub id holding the tokenizer and ``preprocessor_config.json``.
        scale: Multiplier of the official score (some training code uses ``1/26`` or ``1/100``).
        dtype: ``fp32``, ``bf16`` or ``fp16`` weights.
    """

    name = "pickscore"

    def __init__(
        self,
        model: str = PICKSCORE_MODEL,
        processor: str = PICKSCORE_PROCESSOR,
        scale: float = 1.0,
        dtype: str = "fp32",
    ) -> None:
        super().__init__(dtype)
        check_local(model, what="PickScore model", arg="pickscore.model")
        check_local(processor, what="PickScore processor", arg="pickscore.processor")
        self.model_id, self.processor_id, self.scale = model, processor, float(scale)

    def _load(self) -> None:
        clip, tokenizer, spec = load_clip_folder(self.model_id, self.processor_id, "PickScore", "pickscore.model")
        self.scorer = ClipScorer(clip, tokenizer, spec)

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.scale * self.scorer.logit_scale * self.scorer.cosine(images, prompts)
