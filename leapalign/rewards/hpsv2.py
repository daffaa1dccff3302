"""HPSv2 / HPSv2.1 (Wu et al., 2023): an OpenCLIP ViT-H-14 fine-tuned on human preferences (HPDv2).

Needs the official checkpoint (``HPS_v2.1_compressed.pt`` or ``HPS_v2_compressed.pt`` from the hub repository
``xswu/HPSv2``) and a CLIP tokenizer (default ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``; every OpenAI/LAION CLIP
tokenizer shares the same BPE vocabulary). The checkpoint is converted to ``transformers.CLIPModel``
(:mod:`leapalign.rewards.openclip_convert`), so neither OpenCLIP nor torchvision is needed.

Score (as ``hpsv2.score``): the cosine similarity between the image and prompt embeddings, without the logit
scale (about 0.2 to 0.4). Preprocessing is HPSv2's scoring transform (:data:`~leapalign.rewards.preprocess.HPSV2`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from torch import Tensor

from leapalign.rewards.clip_common import ClipReward, ClipScorer
from leapalign.rewards.openclip_convert import load_openclip_state_dict, openclip_to_transformers
from leapalign.rewards.preprocess import HPSV2
from leapalign.rewards.weights import check_local, load_pretrained, resolve_file

HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
HPS_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class HPSv2(ClipReward):
    """HPSv2 score ``cos(image, prompt)`` of the HPS-fine-tuned OpenCLIP ViT-H-14.

    Args:
        checkpoint: The ``.pt`` file, a folder holding it, or a hub repository (default: ``xswu/HPSv2``).
        version: ``v2.1`` (default, the paper's reward) or ``v2.0``; picks the file name.
        tokenizer: Folder or hub id of a CLIP tokenizer.
        dtype: ``fp32``, ``bf16`` or ``fp16`` weights.
        vision_heads: Image-tower heads, for non-ViT-H checkpoints (default: from the width).
        text_heads: Text-tower heads, likewise.
    """

    name = "hpsv2"

    def __init__(
        self,
        checkpoint: str | None = None,
        version: str = "v2.1",
        tokenizer: str = HPS_TOKENIZER,
        dtype: str = "fp32",
        vision_heads: int | None = None,
        text_heads: int | None = None,
    ) -> None:
        super().__init__(dtype)
        if version not in HPS_FILES:
            raise ValueError(f"hpsv2 version={version!r} is invalid; allowed: {', '.join(HPS_FILES)}.")
        check_local(checkpoint, what="HPSv2 checkpoint", arg="hpsv2.checkpoint")
        check_local(tokenizer, what="HPSv2 tokenizer", arg="hpsv2.tokenizer")
        self.checkpoint, self.version, self.tokenizer_id = checkpoint, version, tokenizer
        self.heads = dict(vision_heads=vision_heads, text_heads=text_heads)

    def _load(self) -> None:
        from transformers import AutoTokenizer

        path = resolve_file(
            self.checkpoint,
            filename=HPS_FILES[self.version],
            repo_id=HPS_REPO,
            what=f"HPS{self.version}",
            arg="hpsv2.checkpoint",
        )
        tokenizer = load_pretrained(
            AutoTokenizer.from_pretrained, self.tokenizer_id, what="HPSv2 tokenizer", arg="hpsv2.tokenizer"
        )
        model = openclip_to_transformers(
            load_openclip_state_dict(path),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **self.heads,
        )
        # HPSv2's transform resizes to the model's input size (224 for ViT-H-14).
        self.scorer = ClipScorer(model, tokenizer, replace(HPSV2, size=int(model.config.vision_config.image_size)))

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.scorer.cosine(images, prompts)
