"""ImageReward (Xu et al., NeurIPS 2023): a BLIP ViT-L image encoder with a BERT cross-attention text encoder
and an MLP head, trained on human preferences. Runs through the official ``image-reward`` package.

The package is not a dependency (it pins old libraries and needs torchvision): install it where it fits
(``pip install image-reward``). Its own ``score`` takes PIL images; this reward feeds the model's
differentiable ``score_gard`` with torch preprocessing equal to the package's
(:data:`~leapalign.rewards.preprocess.OPENAI_CLIP`: Resize(224, bicubic), CenterCrop(224), OpenAI mean/std) and
the package's tokenisation (BERT, ``max_length=35``), so gradients reach the images.

Weights: ``ImageReward.pt`` and ``med_config.json`` from the hub repository ``THUDM/ImageReward`` (the package
downloads them when online), or local paths.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from torch import Tensor, nn

from leapalign.rewards.clip_common import LazyReward
from leapalign.rewards.preprocess import OPENAI_CLIP, preprocess
from leapalign.rewards.weights import check_local

INSTALL_HINT = (
    "ImageReward needs the `image-reward` package (import name `ImageReward`), which is not installed. Install it "
    "with `pip install image-reward` (it requires torchvision, so it cannot share an environment with a CPU-only "
    "torch build that has no matching torchvision)."
)


def import_image_reward():
    """Imports the ``ImageReward`` package or raises an ``ImportError`` naming the install."""
    try:
        return importlib.import_module("ImageReward")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err


class ImageReward(LazyReward):
    """ImageReward score (standardised by the package's mean and std; typical values -2 to 2).

    Args:
        model: ``ImageReward-v1.0`` (downloaded by the package into ``download_root``) or a path to
            ``ImageReward.pt``.
        med_config: Path to ``med_config.json`` (``None``: the package downloads it).
        download_root: The package's download folder (``None``: ``~/.cache/ImageReward``).
        max_length: Prompt token budget (35 in the package).
        dtype: ``fp32``, ``bf16`` or ``fp16`` weights.
    """

    name = "image_reward"

    def __init__(
        self,
        model: str = "ImageReward-v1.0",
        med_config: str | None = None,
        download_root: str | None = None,
        max_length: int = 35,
        dtype: str = "fp32",
    ) -> None:
        super().__init__(dtype)
        check_local(model, what="ImageReward checkpoint", arg="image_reward.model")
        check_local(med_config, what="ImageReward med_config.json", arg="image_reward.med_config")
        self.model_name, self.med_config, self.download_root = model, med_config, download_root
        self.max_length = max_length

    def _load(self) -> None:
        package = import_image_reward()
        try:
            self.model = package.load(
                self.model_name, device="cpu", download_root=self.download_root, med_config=self.med_config
            )
        except (RuntimeError, OSError) as err:
            raise FileNotFoundError(
                f"ImageReward: cannot load {self.model_name!r} ({err}). Download ImageReward.pt and med_config.json "
                f"from https://huggingface.co/THUDM/ImageReward and pass them as the reward's arguments: "
                f'"reward.terms=[{{name: image_reward, args: {{model: /path/ImageReward.pt, '
                f'med_config: /path/med_config.json}}}}]" (or the same under evaluation.rewards).'
            ) from err

    def _modules(self) -> list[nn.Module]:
        return [self.model]

    def _on_device_change(self) -> None:
        self.model.device = self._device  # score_gard builds its attention mask on model.device

    def _score(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        tok = self.model.blip.tokenizer(
            list(prompts), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        param = next(self.model.parameters())
        pixels = preprocess(images, OPENAI_CLIP).to(device=param.device, dtype=param.dtype)
        rewards = self.model.score_gard(tok.input_ids.to(param.device), tok.attention_mask.to(param.device), pixels)
        return rewards.reshape(-1)
