r"""ShapesLayout, under research (issue 16, item 3; not registered yet): a differentiable reward that reads layout,
the ShapesWorld analogue of training on GenEval's rules (as Flow-GRPO does), where ShapesScore is the analogue of
HPS. It moves into the package once it meets its targets (held-out ranking >= 0.95 per kind of negative, ROC AUC
>= 0.90 against ShapesEval on the base model's samples); the first trainings do not (docs: the issue's note).

It reads the prompt's structure from its GenEval-style metadata (objects, colours, counts, relations; looked up by
the prompt's text) and the image through :mod:`research.shapesworld.perception` (learned per-pixel shapes and
densities, analytic colours; no code in common with ShapesEval), and scores soft versions of GenEval's rules:

* **count** of an entry (shape ``s``, colour ``k`` if given): :math:`N = \sum_p d_s(p)\,m_k(p)`, the density of
  shape ``s`` weighted by colour ``k``'s membership; its rule is :math:`1 / (1 + ((N - n) / \tau)^2)` for
  ``count`` ``n`` (a soft presence for ``n = 1``, and a soft "exactly" with the prompt's exclusion of ``n + 1``;
  heavy-tailed, so that a count far off still has a gradient);
* **relation** of an entry to another: the centroids of their object maps :math:`A(p) = P(s \mid p)\,m_k(p)`
  (the other entry's shape and colour), and a sigmoid of the centroid offset along the relation's axis minus
  :data:`MIN_OFFSET` pixels, less the offset across it.

The reward is the mean of the rules' scores, in ``[0, 1]`` (1 for a scene that satisfies every rule clearly).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from leapalign.worlds.shapes.prompts import load_metadata
from leapalign.worlds.shapes.scenes import COLORS
from research.shapesworld.perception import CLASSES, ScenePerception, colour_maps

logger = logging.getLogger(__name__)

COUNT_TAU = 0.25  # width of the soft count rule, in objects (1 object off scores 0.06)
MIN_OFFSET = 2.0  # pixels between centroids along a relation's axis, as ShapesEval's rule
RELATION_TAU = 1.0  # pixels: the softness of the relation rule
_COLOUR_INDEX = {c: i for i, c in enumerate(COLORS)}
_AXES = {"left of": (0, -1.0), "right of": (0, 1.0), "above": (1, -1.0), "below": (1, 1.0)}


def entry_maps(shapes: Tensor, density: Tensor, colours: Tensor, entry: dict) -> tuple[Tensor, Tensor]:
    """The object map ``(H, W)`` and soft count (a scalar) of one metadata entry in one image.

    Args:
        shapes: Class probabilities ``(5, H, W)`` (:data:`~research.shapesworld.perception.CLASSES`).
        density: Per-shape densities ``(3, H, W)``.
        colours: Colour memberships ``(C, H, W)``.
        entry: ``{"class": shape, "count": n, "color": optional colour}``.
    """
    s = CLASSES.index(entry["class"])
    colour = colours[_COLOUR_INDEX[entry["color"]]] if entry.get("color") else colours.sum(0)
    return shapes[s] * colour, (density[s - 1] * colour).sum()


def centroid(weights: Tensor) -> Tensor:
    """``(x, y)`` centroid in pixel coordinates (pixel ``i`` spans ``[i, i + 1]``) of a map ``(H, W)``."""
    h, w = weights.shape
    ys = torch.arange(h, device=weights.device, dtype=weights.dtype) + 0.5
    xs = torch.arange(w, device=weights.device, dtype=weights.dtype) + 0.5
    mass = weights.sum().clamp_min(1e-4)
    return torch.stack([(weights.sum(0) * xs).sum() / mass, (weights.sum(1) * ys).sum() / mass])


def rule_scores(shapes: Tensor, density: Tensor, colours: Tensor, metadata: dict) -> Tensor:
    """The soft rules of one image and one prompt, each in ``[0, 1]``: one count rule per ``include`` entry and
    one relation rule per entry with a ``position``."""
    scores, maps = [], []
    for entry in metadata.get("include", []):
        area, count = entry_maps(shapes, density, colours, entry)
        maps.append(area)
        scores.append(1.0 / (1.0 + ((count - float(entry.get("count", 1))) / COUNT_TAU) ** 2))
        if entry.get("position"):
            relation, target = entry["position"][0], int(entry["position"][1])
            axis, sign = _AXES[relation]
            offset = centroid(area) - centroid(maps[target])
            along, across = sign * offset[axis], offset[1 - axis].abs()
            scores.append(torch.sigmoid((along - MIN_OFFSET - across) / RELATION_TAU))
    return torch.stack(scores)


class ShapesLayout:
    """The layout-reading reward (see the module docstring), differentiable with respect to the images.

    Args:
        path: A perception weights folder (``python -m research.shapesworld.layout_train --out DIR``).
    """

    name = "shapes_layout"
    differentiable = True

    def __init__(self, path: str) -> None:
        self.model = ScenePerception.load(Path(path)).requires_grad_(False)
        self.metadata = {m["prompt"]: m for split in ("train", "eval") for m in load_metadata(split)}

    def __call__(self, images: Tensor, prompts: Sequence[str]) -> Tensor:
        """Scores ``(B, 3, 32, 32)`` images in ``[0, 1]`` against ShapesWorld prompts; returns ``(B,)``."""
        unknown = [p for p in prompts if p not in self.metadata]
        if unknown:
            raise ValueError(
                f"reward shapes_layout reads ShapesWorld prompts only (their metadata); unknown prompt {unknown[0]!r}."
            )
        model = self.model.to(images.device)
        with torch.autocast(images.device.type, enabled=False):
            x = images.float()
            logits, density = model(x)
            shapes, colours = logits.softmax(1), colour_maps(x)
            return torch.stack(
                [rule_scores(shapes[i], density[i], colours[i], self.metadata[p]).mean() for i, p in enumerate(prompts)]
            )
