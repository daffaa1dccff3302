"""Evaluators: judges of each image against its prompt's metadata (GenEval-style), behind one protocol.

A reward scores an (image, prompt) pair on a continuous scale and may be differentiable; an evaluator reads the
prompt's *metadata* (e.g. GenEval's ``tag``, ``include``, ``exclude``) and gives each image a value, usually 1
(correct) or 0, plus a summary over the whole set. ShapesWorld's exact evaluator implements it; so can a
GenEval-style detector, an OCR check or a VLM judge.

Register with ``EVALUATORS.register(name, builder, description)``, or name a class by import path in
``evaluation.evaluators``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from leapalign.registry import EVALUATORS  # builder(**args) -> Evaluator


@runtime_checkable
class Evaluator(Protocol):
    """Judges images against their prompt entries.

    Attributes:
        name: Prefix of its metrics (``<name>.overall``, ``<name>.<key>``) and of its per-image column.
    """

    name: str

    def check(self, entries: Sequence[dict]) -> None:
        """Raises a ``ValueError`` naming the problem if the prompt entries lack the metadata it reads (called
        before any image is generated)."""
        ...

    def __call__(self, images: Tensor, entries: Sequence[dict]) -> list[float]:
        """One value per image.

        Args:
            images: ``(B, 3, H, W)`` in ``[0, 1]`` (8-bit values, as the stored PNGs hold them), on the CPU.
            entries: The ``B`` prompt entries, one per image.

        Returns:
            ``B`` floats (1.0 / 0.0 for a correct / wrong image).
        """
        ...

    def summarize(self, values: Sequence[float], entries: Sequence[dict]) -> dict[str, float]:
        """The summary of a whole evaluation: ``overall`` (its headline number) and any breakdown."""
        ...


def build_evaluator(name: str, args: dict[str, Any] | None = None) -> Evaluator:
    """Builds the evaluator registered as ``name`` (or at that import path) with ``args``.

    Raises:
        ValueError: Unknown name, or the object built lacks the :class:`Evaluator` methods.
    """
    evaluator = EVALUATORS.resolve(name)(**(args or {}))
    missing = [m for m in ("name", "check", "summarize") if not hasattr(evaluator, m)]
    if missing or not callable(evaluator):
        raise ValueError(
            f"evaluator {name!r} built a {type(evaluator).__name__}, which lacks {missing or ['__call__']}; an "
            f"evaluator has a name, check(entries), __call__(images, entries) and summarize(values, entries)."
        )
    return evaluator
