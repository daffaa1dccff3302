"""The ShapesWorld base model: a small ``FluxTransformer2DModel`` in pixel space, conditioned on MiniLM.

32x32 RGB images are folded 2x2 space-to-depth (12 channels at 16x16) and packed by Flux into 8x8 = 64
tokens of 48 features, i.e. 4x4-pixel patches. There is no guidance embedding: classifier-free guidance is
true CFG against the empty prompt (the model is trained with prompt dropout), so the leaps see the velocity
after guidance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import FluxTransformer2DModel

from leapalign.models import FluxAdapter, ModelConfig
from leapalign.worlds.shapes.text import EMBED_DIM, MiniLMEncoder

PIXEL_FOLD = 2  # space-to-depth factor: tokens are 2 * PIXEL_FOLD pixels wide
RESOLUTION = 32
DEFAULT_GUIDANCE = 3.0


@dataclass
class ShapesArch:
    """Architecture of the ShapesWorld transformer (a FluxTransformer2DModel config)."""

    num_layers: int = 2
    num_single_layers: int = 4
    num_attention_heads: int = 4
    attention_head_dim: int = 32
    axes_dims_rope: tuple[int, int, int] = (8, 12, 12)

    def build(self) -> FluxTransformer2DModel:
        return FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * 3 * PIXEL_FOLD**2,
            num_layers=self.num_layers,
            num_single_layers=self.num_single_layers,
            attention_head_dim=self.attention_head_dim,
            num_attention_heads=self.num_attention_heads,
            joint_attention_dim=EMBED_DIM,
            pooled_projection_dim=EMBED_DIM,
            axes_dims_rope=tuple(self.axes_dims_rope),
            guidance_embeds=False,
        )

    def to_dict(self) -> dict:
        return asdict(self)


def shapes_adapter(
    transformer: FluxTransformer2DModel, guidance_scale: float = DEFAULT_GUIDANCE, encoder: MiniLMEncoder | None = None
) -> FluxAdapter:
    """Wraps a ShapesWorld transformer with the MiniLM encoder in a pixel-space :class:`FluxAdapter`."""
    return FluxAdapter(
        transformer,
        None,
        encoder or MiniLMEncoder(),
        guidance_scale=guidance_scale,
        vae_scale_factor=PIXEL_FOLD,
        max_cached_prompts=None,
    )


def load_base_transformer(path: Path) -> FluxTransformer2DModel:
    """Loads shipped base weights (a diffusers model folder with config.json and safetensors)."""
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no ShapesWorld base model (config.json missing).")
    return FluxTransformer2DModel.from_pretrained(str(path), torch_dtype=torch.float32)


def base_weights() -> Path:
    """Directory of the shipped ShapesWorld base model."""
    return Path(__file__).parent / "assets" / "base"


def build_shapes_model(cfg: ModelConfig) -> FluxAdapter:
    """The ShapesWorld base model (shipped weights, or ``cfg.path``) with true CFG at ``cfg.guidance_scale``."""
    path = Path(cfg.path) if cfg.path else base_weights()
    return shapes_adapter(load_base_transformer(path), guidance_scale=cfg.guidance_scale)
