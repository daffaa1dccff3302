r"""ShapesLayout (reward ``shapes_layout``): a differentiable reward that reads layout, the ShapesWorld analogue of
training on GenEval's rules (as Flow-GRPO does), where ShapesScore is the analogue of HPS.

It reads the prompt's structure from its GenEval-style metadata (objects, colours, counts, relations; looked up by
the prompt's text) and the image through :mod:`leapalign.worlds.shapes.perception` (learned per-pixel shapes and
object areas, analytic colours; no code in common with ShapesEval), and scores soft versions of GenEval's rules:

* **count** of an entry (shape ``s``, colour ``k`` if given): :math:`N = \sum_p P(s \mid p)\,m_k(p) / a(p)`,
  shape ``s``'s probability weighted by colour ``k``'s membership and divided by the area :math:`a(p)` of the
  object under the pixel (so that each object adds one). As in GenEval, an ``include`` entry of count ``n``
  needs *at least* ``n`` objects, :math:`\sigma((N - n + 1/2) / \tau)`, and an ``exclude`` entry of count
  ``m`` (a counting prompt's "exactly") *fewer than* ``m``, :math:`\sigma((m - 1/2 - N) / \tau)`;
* **relation** of an entry to another, between the centroids of their object maps
  :math:`A(p) = P(s \mid p)\,m_k(p)`: as GenEval's rule (the offset along the relation's axis exceeds
  :data:`MIN_OFFSET` pixels and the offset across it), a soft AND, the product of two sigmoids.

The reward is the mean of the rules' scores, in ``[0, 1]`` (1 for a scene that satisfies every rule clearly); the
mean rather than the product, so that each rule keeps its gradient while another fails. What it shares with
ShapesEval is the *rules* (GenEval's, as both read the same metadata), not the perception; its model card
(``assets/shapes_layout/README.md``) gives its ranking accuracy on held-out renders and its agreement with ShapesEval
on the base model's samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from leapalign.worlds.shapes.perception import CLASSES, ScenePerception, colour_maps
from leapalign.worlds.shapes.prompts import metadata_by_prompt
from leapalign.worlds.shapes.scenes import COLORS

COUNT_TAU = 0.15  # softness of the count rules, in objects (exactly at the bound: 0.96; one object short: 0.04)
MIN_OFFSET = 2.0  # pixels between centroids along a relation's axis, as ShapesEval's rule
RELATION_TAU = 1.0  # pixels: the softness of the relation rule
_COLOUR_INDEX = {c: i for i, c in enumerate(COLORS)}
_AXES = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}


def entry_maps(shapes: Tensor, area: Tensor, colours: Tensor, entry: dict) -> tuple[Tensor, Tensor]:
    """The object map ``(H, W)`` and soft count (a scalar) of one metadata entry in one image.

    Args:
        shapes: Class probabilities ``(5, H, W)`` (:data:`~leapalign.worlds.shapes.perception.CLASSES`).
        area: Per-pixel object areas ``(H, W)`` in pixels.
        colours: Colour memberships ``(C, H, W)``.
        entry: ``{"class": shape, "count": n, "color": optional colour}``.
    """
    s = CLASSES.index(entry["class"])
    colour = colours[_COLOUR_INDEX[entry["color"]]] if entry.get("color") else colours.sum(0)
    mass = shapes[s] * colour
    return mass, (mass / area.clamp_min(1.0)).sum()


def centroid(weights: Tensor) -> Tensor:
    """``(x, y)`` centroid in pixel coordinates (pixel ``i`` spans ``[i, i + 1]``) of a map ``(H, W)``."""
    h, w = weights.shape
    ys = torch.arange(h, device=weights.device, dtype=weights.dtype) + 0.5
    xs = torch.arange(w, device=weights.device, dtype=weights.dtype) + 0.5
    mass = weights.sum().clamp_min(1e-4)
    return torch.stack([(weights.sum(0) * xs).sum() / mass, (weights.sum(1) * ys).sum() / mass])


def rule_scores(shapes: Tensor, area: Tensor, colours: Tensor, metadata: dict) -> Tensor:
    """The soft rules of one image and one prompt, each in ``[0, 1]``: one count rule per ``include`` and
    ``exclude`` entry and one relation rule per entry with a ``position``."""
    scores, maps = [], []
    for entry in metadata.get("include", []):
        mass, count = entry_maps(shapes, area, colours, entry)
        maps.append(mass)
        scores.append(torch.sigmoid((count - float(entry.get("count", 1)) + 0.5) / COUNT_TAU))
        if entry.get("position"):
            relation, target = entry["position"][0], int(entry["position"][1])
            axis, sign = _AXES[relation]
            offset = centroid(mass) - centroid(maps[target])
            along, across = sign * offset[axis], offset[1 - axis].abs()
            scores.append(
                torch.sigmoid((along - MIN_OFFSET) / RELATION_TAU) * torch.sigmoid((along - across) / RELATION_TAU)
            )
    for entry in metadata.get("exclude", []):
        _, count = entry_maps(shapes, area, colours, entry)
        scores.append(torch.sigmoid((float(entry["count"]) - 0.5 - count) / COUNT_TAU))
    return torch.stack(scores)


def default_weights() -> Path:
    """Directory of the shipped perception weights."""
    return Path(__file__).parent / "assets" / "shapes_layout"


class ShapesLayout:
    """The layout-reading reward (see the module docstring) as a :class:`leapalign.rewards.RewardFn`:
    differentiable with respect to the images, weights frozen.

    Args:
        path: A perception weights folder (default: the shipped one; make one with
            ``python -m leapalign.worlds.shapes.layout_train --out DIR``). Loaded on first use.
    """

    name = "shapes_layout"
    differentiable = True

    def __init__(self, path: str | None = None) -> None:
        self.path = Path(path) if path else default_weights()
        self._model: ScenePerception | None = None
        self.metadata = metadata_by_prompt()

    @property
    def model(self) -> ScenePerception:
        if self._model is None:
            self._model = ScenePerception.load(self.path).requires_grad_(False)
        return self._model

    def load(self, device: torch.device | str) -> None:
        """Loads the weights now (a missing folder fails before any image is generated)."""
        self.model.to(device)

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores ``(B, 3, 32, 32)`` images in ``[0, 1]`` against ShapesWorld prompts; returns ``(B,)``."""
        unknown = [p for p in prompts if p not in self.metadata]
        if unknown:
            raise ValueError(
                f"reward shapes_layout reads ShapesWorld prompts only (their metadata); unknown prompt {unknown[0]!r}."
            )
        if images.shape[-2:] != (32, 32):
            raise ValueError(
                f"reward shapes_layout reads 32x32 ShapesWorld images, got {tuple(images.shape[-2:])}; "
                f"set sampler.height=sampler.width=32."
            )
        model = self.model.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            logits, area = model(x)
            shapes, colours = logits.softmax(1), colour_maps(x)
            return torch.stack(
                [rule_scores(shapes[i], area[i], colours[i], self.metadata[p]).mean() for i, p in enumerate(prompts)]
            )
