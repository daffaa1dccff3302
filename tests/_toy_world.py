"""A toy world defined by the tests, registered through the public API only, as a third party would: its own
pixel-space model, a differentiable reward, an evaluator reading prompt metadata, a prompt set and replay data.

Load it with ``plugins: [_toy_world]`` (a module whose import registers) or ``plugins: [_toy_world:register]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from leapalign.data import PROMPT_SETS
from leapalign.eval import EVALUATORS
from leapalign.eval.stats import category_accuracy
from leapalign.flow import flux_sigmas
from leapalign.models import MODELS, Conditioning, ModelConfig
from leapalign.regularizers import REPLAY_SOURCES
from leapalign.rewards import REWARDS

COLORS = {"red": 0, "green": 1, "blue": 2}
ENTRIES = [{"prompt": f"a {c} square", "color": c, "tag": "color"} for c in COLORS] + [
    {"prompt": "a red and blue square", "color": "red", "tag": "two colors"}
]


class ToyVelocity(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3 + 1 + 3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 3, 3, padding=1))

    def forward(self, x: Tensor, sigma: Tensor, emb: Tensor) -> Tensor:
        b, _, h, w = x.shape
        extra = torch.cat([sigma.reshape(-1, 1, 1, 1).expand(b, 1, h, w), emb.view(b, 3, 1, 1).expand(b, 3, h, w)], 1)
        return self.net(torch.cat([x, extra], dim=1))


class ToyModel:
    """Pixel space: latents are images in ``[-1, 1]``; the prompt is a one-hot of its colour words."""

    resolutions_multiple = 4

    def __init__(self, cfg: ModelConfig) -> None:
        torch.manual_seed(cfg.seed)
        self.transformer = ToyVelocity()
        self.guidance_scale = cfg.guidance_scale

    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        emb = torch.tensor([[float(c in p) for c in COLORS] for p in prompts])
        return Conditioning(prompt_embeds=emb[:, None, :], pooled=emb)

    def latent_shape(self, height: int, width: int) -> tuple[int, ...]:
        return (3, height, width)

    def sigmas(self, num_steps: int, height: int, width: int) -> Tensor:
        return flux_sigmas(num_steps, height * width // 4)

    def velocity(self, x: Tensor, sigma: Tensor, cond: Conditioning) -> Tensor:
        return self.transformer(x, sigma.reshape(-1).expand(x.shape[0]), cond.pooled.to(x))

    def decode(self, latents: Tensor, height: int, width: int) -> Tensor:
        return (latents * 0.5 + 0.5).clamp(0, 1)

    def encode_pixels(self, images: Tensor) -> Tensor:
        return images * 2 - 1

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    def to(self, device: torch.device | str) -> ToyModel:
        self.transformer.to(device)
        return self


class Redness:
    """Differentiable: mean red minus mean of the other channels."""

    name = "toy_redness"
    differentiable = True

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


class DominantColor:
    """1 when the image's dominant channel is the colour its metadata asks for."""

    name = "toy_color"

    def check(self, entries: Sequence[dict]) -> None:
        bad = [e["prompt"] for e in entries if e.get("color") not in COLORS]
        if bad:
            raise ValueError(f"toy_color needs a 'color' among {list(COLORS)} in every entry; missing in {bad[:3]}.")

    def __call__(self, images: Tensor, entries: Sequence[dict]) -> list[float]:
        dominant = images.mean((2, 3)).argmax(1).tolist()
        return [float(d == COLORS[e["color"]]) for d, e in zip(dominant, entries, strict=True)]

    def summarize(self, values: Sequence[float], entries: Sequence[dict]) -> dict[str, float]:
        return category_accuracy(values, [e["tag"] for e in entries])


class SolidColors:
    """Replay data: solid squares of each prompt's colour."""

    def __init__(self, seed: int, batch_size: int, height: int, width: int) -> None:
        self.seed, self.batch_size, self.size = seed, batch_size, (height, width)

    def batch(self, index: int) -> tuple[list[str], Tensor]:
        picks = torch.randint(3, (self.batch_size,), generator=torch.Generator().manual_seed(self.seed * 997 + index))
        images = torch.zeros(self.batch_size, 3, *self.size)
        for i, c in enumerate(picks.tolist()):
            images[i, c] = 1.0
        return [ENTRIES[c]["prompt"] for c in picks.tolist()], images


def register() -> None:
    MODELS.register("toy", ToyModel, "the tests' toy pixel-space model", replace=True)
    REWARDS.register("toy_redness", Redness, "the tests' toy reward", replace=True)
    EVALUATORS.register("toy_color", DominantColor, "the tests' toy evaluator", replace=True)
    PROMPT_SETS.register("toy:colors", lambda: ENTRIES, "the tests' toy prompts", replace=True)
    REPLAY_SOURCES.register("toy:solid", SolidColors, "the tests' toy replay data", replace=True)


register()
