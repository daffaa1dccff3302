"""LAION aesthetic predictor v2 ("improved aesthetic predictor", Schuhmann): a linear MLP head on the
L2-normalised CLIP ViT-L/14 image embedding, scoring roughly 1 to 10.

Needs the head ``sac+logos+ava1-l14-linearMSE.pth`` (from github.com/christophschuhmann/improved-aesthetic-predictor)
and the CLIP model ``openai/clip-vit-large-patch14`` (the Hugging Face port of OpenAI's ViT-L/14). Preprocessing
is OpenAI CLIP's (:data:`~leapalign.rewards.preprocess.OPENAI_CLIP`), which the predictor was trained with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor, nn

from leapalign.rewards.clip_common import LazyReward
from leapalign.rewards.preprocess import OPENAI_CLIP, preprocess
from leapalign.rewards.weights import check_local, load_pretrained, resolve_file

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
AESTHETIC_CLIP = "openai/clip-vit-large-patch14"


class AestheticHead(nn.Module):
    """The predictor's MLP: 768 -> 1024 -> 128 -> 64 -> 16 -> 1, no activations, dropout between the first four
    layers (inactive at inference). Parameter names match the official file (``layers.{0,2,4,6,7}``)."""

    def __init__(self, input_size: int = 768) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeds: Tensor) -> Tensor:
        """Scores ``(B,)`` of normalised embeddings ``(B, input_size)``."""
        return self.layers(embeds).squeeze(-1)


def load_aesthetic_head(path: str | Path) -> AestheticHead:
    """Reads the official ``.pth`` (a state dict, loaded with ``weights_only=True``) or a ``.safetensors`` head."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        sd: Mapping[str, Tensor] = load_file(str(path))
    else:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, Mapping) else sd
    if not isinstance(sd, Mapping) or "layers.0.weight" not in sd:
        raise ValueError(f"{path} is not an aesthetic predictor head (no 'layers.0.weight').")
    head = AestheticHead(input_size=sd["layers.0.weight"].shape[1])
    try:
        head.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the aesthetic predictor v2 head: {err}") from err
    return head


class LaionAesthetic(LazyReward):
    """LAION aesthetic predictor v2 score of each image (the prompt is ignored).

    Args:
        head: The head file ``sac+logos+ava1-l14-linearMSE.pth`` or a folder holding it (default: looked up in
            ``$LEAPALIGN_REWARD_DIR``).
        clip_model: Folder or hub id of ``openai/clip-vit-large-patch14``.
        dtype: ``fp32``, ``bf16`` or ``fp16`` CLIP weights (the head always runs in float32).
    """

    name = "aesthetic"

    def __init__(self, head: str | None = None, clip_model: str = AESTHETIC_CLIP, dtype: str = "fp32") -> None:
        super().__init__(dtype)
        check_local(head, what="aesthetic head", arg="aesthetic.head")
        check_local(clip_model, what="aesthetic CLIP model", arg="aesthetic.clip_model")
        self.head_path, self.clip_id = head, clip_model

    def _load(self) -> None:
        from transformers import CLIPModel

        path = resolve_file(
            self.head_path,
            filename=AESTHETIC_FILE,
            repo_id=None,
            what="LAION aesthetic predictor v2",
            arg="aesthetic.head",
            url=AESTHETIC_URL,
        )
        self.head = load_aesthetic_head(path)
        clip = load_pretrained(
            CLIPModel.from_pretrained, self.clip_id, what="aesthetic CLIP ViT-L/14", arg="aesthetic.clip_model"
        )
        if clip.config.projection_dim != self.head.layers[0].in_features:
            raise ValueError(
                f"aesthetic: the head takes {self.head.layers[0].in_features}-d embeddings but {self.clip_id} makes "
                f"{clip.config.projection_dim}-d ones; the v2 head needs CLIP ViT-L/14 (openai/clip-vit-large-patch14)."
            )
        self.vision, self.projection = clip.vision_model, clip.visual_projection  # the text tower is not needed
        self.spec = replace(OPENAI_CLIP, size=int(clip.config.vision_config.image_size))

    def _modules(self) -> list[nn.Module]:
        return [self.vision, self.projection, self.head]

    def load(self, device: torch.device | str = "cpu") -> LaionAesthetic:
        super().load(device)
        self.head.float()
        return self

    def embed(self, images: Tensor) -> Tensor:
        """L2-normalised CLIP ViT-L/14 image embeddings ``(B, 768)``, with gradients."""
        self.load(images.device)
        param = next(self.projection.parameters())
        pixels = preprocess(images, self.spec).to(device=param.device, dtype=param.dtype)
        embeds = self.projection(self.vision(pixel_values=pixels).pooler_output).float()
        return embeds / embeds.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return self.head(self.embed(images))
