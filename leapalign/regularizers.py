"""Pretraining-loss replay: the rectified-flow loss on real data, added to the reward loss as a regulariser.

ImageReward's ReFL (Xu et al., 2023) keeps the fine-tuned model on the data manifold by adding the
pretraining loss on (image, caption) pairs to the reward loss, :math:`L = L_{reward} + \\lambda L_{FM}`. A
direct-gradient method with a learned reward otherwise drifts towards what the reward over-values (textures,
tints, one layout per prompt): the replay term pulls it back towards images that really occur. It is the same
loss the base model was trained with (conditional velocity, no guidance, 10% prompt dropout so the
unconditional velocity that classifier-free guidance uses stays anchored too), at logit-normal sigmas.

The data come from a :class:`ReplaySource` named by ``train.replay_source``:

- a folder of images (``.png``, ``.jpg``, ``.jpeg``, ``.webp``), each captioned by a ``.txt`` file of the same
  stem, or a ``.jsonl`` file of ``{"image": path, "prompt": caption}`` lines (paths relative to the file);
  images are resized and centre-cropped to the sampler's resolution and encoded with the model's VAE
  (``encode_pixels``);
- a source registered in :data:`REPLAY_SOURCES` by a plugin (e.g. a world that renders its scenes), or an import
  path to a builder ``(seed, batch_size, height, width) -> ReplaySource``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from leapalign.flow import interpolate, velocity_target
from leapalign.models.base import FlowModel
from leapalign.registry import REPLAY_SOURCES, looks_like_import_path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@runtime_checkable
class ReplaySource(Protocol):
    """Real (caption, image) pairs, a deterministic function of the draw index."""

    def batch(self, index: int) -> tuple[list[str], Tensor]:
        """Captions and images ``(B, 3, H, W)`` in ``[0, 1]`` of draw ``index`` (optimiser step x micro-batch)."""
        ...


ReplayBuilder = Callable[[int, int, int, int], ReplaySource]


def _captioned_files(path: Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of a folder (``.txt`` sidecars) or of a ``.jsonl`` list."""
    pairs: list[tuple[Path, str]] = []
    if path.is_dir():
        for image in sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            caption = image.with_suffix(".txt")
            if not caption.is_file():
                raise ValueError(
                    f"train.replay_source={str(path)!r}: {image.name} has no caption file {caption.name}; every "
                    f"image needs a same-named .txt caption (or give a .jsonl list of image/prompt pairs)."
                )
            pairs.append((image, caption.read_text(encoding="utf-8").strip()))
    else:
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                image, caption = path.parent / item["image"], str(item.get("prompt", item.get("caption")))
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: expected {{'image': path, 'prompt': caption}} ({err}).") from err
            if not image.is_file():
                raise ValueError(f"{path}:{lineno}: image {image} does not exist.")
            pairs.append((image, caption))
    if not pairs:
        raise ValueError(f"train.replay_source={str(path)!r} holds no captioned image.")
    return pairs


def load_image(path: Path, height: int, width: int) -> Tensor:
    """An RGB image resized (shorter side, bicubic) and centre-cropped to ``(3, height, width)`` in ``[0, 1]``."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = max(height / img.height, width / img.width)
        size = (max(width, round(img.width * scale)), max(height, round(img.height * scale)))
        img = img.resize(size, Image.BICUBIC)
        left, top = (img.width - width) // 2, (img.height - height) // 2
        arr = np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.float32) / 255.0
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


class ImageFolderReplay:
    """Captioned images from a folder or a ``.jsonl`` list, drawn uniformly with replacement per draw index.

    Args:
        path: The folder or ``.jsonl`` file.
        seed: Seed of the draws (a rank's draws differ from another's through its seed).
        batch_size: Images per draw.
        height: Image height the model is trained at.
        width: Image width.
    """

    def __init__(self, path: Path, seed: int, batch_size: int, height: int, width: int) -> None:
        self.pairs = _captioned_files(path)
        self.seed, self.batch_size, self.height, self.width = seed, batch_size, height, width

    def batch(self, index: int) -> tuple[list[str], Tensor]:
        rng = np.random.default_rng([self.seed, index])
        picks = rng.integers(len(self.pairs), size=self.batch_size)
        images = torch.stack([load_image(self.pairs[i][0], self.height, self.width) for i in picks])
        return [self.pairs[i][1] for i in picks], images


def build_replay(source: str, seed: int, batch_size: int, height: int, width: int) -> ReplaySource:
    """The replay source ``source``: a registered name, a folder / ``.jsonl`` path, or an import path.

    Raises:
        ValueError: Unknown source, or a folder / list without captioned images.
    """
    path = Path(source)
    if source and source not in REPLAY_SOURCES and (path.is_dir() or (path.is_file() and path.suffix == ".jsonl")):
        return ImageFolderReplay(path, seed, batch_size, height, width)
    if not source or (source not in REPLAY_SOURCES and not looks_like_import_path(source)):
        raise ValueError(
            f"train.replay_source={source!r}: not a folder of captioned images, a .jsonl list of image/prompt "
            f"pairs, nor a registered source ({', '.join(REPLAY_SOURCES.names()) or 'none'}); or set "
            f"train.replay_weight=0 to train without replay."
        )
    return REPLAY_SOURCES.resolve(source)(seed, batch_size, height, width)


@contextmanager
def guidance_off(model: FlowModel) -> Iterator[FlowModel]:
    """Within the block, ``model.velocity`` is the plain conditional velocity (guidance scale 1)."""
    scale = model.guidance_scale
    model.guidance_scale = 1.0
    try:
        yield model
    finally:
        model.guidance_scale = scale


def flow_matching_loss(
    model: FlowModel, images: Tensor, prompts: list[str], generator: torch.Generator, dropout: float = 0.1
) -> Tensor:
    """The rectified-flow loss of ``model`` on real ``images``.

    Args:
        model: The flow model being fine-tuned (must offer ``encode_pixels``: a VAE encoder or pixel space).
        images: Real images ``(B, 3, H, W)`` in ``[0, 1]``.
        prompts: Their ``B`` captions.
        generator: CPU generator of the noise, sigmas and prompt dropout.
        dropout: Share of captions replaced by the empty prompt.

    Returns:
        Scalar mean squared error between the velocity and its target ``noise - x0``.
    """
    encode = getattr(model, "encode_pixels", None)
    if encode is None:
        raise ValueError(f"{type(model).__name__} cannot encode images (no encode_pixels); replay needs it.")
    b = images.shape[0]
    drop = torch.rand(b, generator=generator) < dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    x0 = encode(images.to(model.device))
    noise = torch.randn(x0.shape, generator=generator).to(x0)
    sigma = torch.sigmoid(torch.randn(b, generator=generator)).to(x0)  # logit-normal(0, 1), as pretraining
    x = interpolate(x0, noise, sigma.view(b, *[1] * (x0.ndim - 1)))
    with guidance_off(model):
        v = model.velocity(x, sigma, model.encode_prompts(prompts))
    return (v.float() - velocity_target(x0, noise).float()).pow(2).mean()
