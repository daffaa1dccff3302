"""ShapesWorld as a plugin: it registers its model, reward, evaluator, prompt sets and replay data through the
library's public registries, as a third-party package would (entry point ``leapalign.plugins: shapes``).

=====================  =============================================================================
``model.name``         ``shapes``: the shipped base model (or the transformer folder in ``model.path``)
``reward``             ``shapes_score``: the learned, differentiable CLIP-style reward (the HPS analogue);
                       ``shapes_layout``: soft GenEval rules on a learned perception, differentiable (the
                       analogue of training on GenEval's rules); ``shapes_eval``: ShapesEval as a 0/1 reward (not
                       differentiable: the policy-gradient methods)
``evaluators``         ``shapes_eval``: the exact GenEval-style evaluator (per-category accuracy)
prompt sets            ``shapes:train``, ``shapes:eval`` (GenEval-style metadata with a ``tag`` each)
``replay_source``      ``shapes:train``: scenes of the training prompts rendered on the fly
=====================  =============================================================================

This module imports nothing heavy: it declares each entry by the import path of its object in
:mod:`leapalign.worlds.shapes.builders`, with its description, so loading the plugin (which every ``leapalign
list`` does) costs no torch import; the builders' module is imported the first time one of the names is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from leapalign.registry import EVALUATORS, MODELS, PROMPT_SETS, REPLAY_SOURCES, REWARDS

BUILDERS = "leapalign.worlds.shapes.builders"
_MOVED = ("ShapesEvaluator", "ShapesReplay", "ShapesEvalReward")  # once defined here; still importable from here


def register() -> None:
    """Registers everything ShapesWorld offers (called once, through the ``leapalign.plugins`` entry point)."""
    MODELS.register(
        "shapes", f"{BUILDERS}:shapes_model", "ShapesWorld's shipped 32x32 Flux-architecture base model (CPU)"
    )
    REWARDS.register(
        "shapes_score",
        f"{BUILDERS}:shapes_score",
        "ShapesWorld's learned CLIP-style reward (shipped weights; args: path); cosine similarity in [-1, 1]",
    )
    REWARDS.register(
        "shapes_layout",
        f"{BUILDERS}:shapes_layout",
        "ShapesWorld's layout reward: soft GenEval rules (presence, counts, colours, relations) on a learned "
        "perception (shipped weights; args: path); in [0, 1], differentiable",
    )
    REWARDS.register(
        "shapes_eval",
        f"{BUILDERS}:ShapesEvalReward",
        "ShapesEval as a reward: 1 if the exact evaluator accepts the image, else 0; NOT differentiable",
    )
    EVALUATORS.register("shapes_eval", f"{BUILDERS}:ShapesEvaluator", "ShapesWorld's exact GenEval-style evaluator")
    for split in ("train", "eval"):
        PROMPT_SETS.register(
            f"shapes:{split}",
            f"{BUILDERS}:{split}_prompts",
            f"ShapesWorld's {split} prompts with GenEval-style metadata (tag, include, exclude)",
        )
    REPLAY_SOURCES.register(
        "shapes:train", f"{BUILDERS}:ShapesReplay", "ShapesWorld scenes of the training prompts, rendered"
    )


def __getattr__(name: str) -> Any:
    """The classes that moved to :mod:`leapalign.worlds.shapes.builders`, imported from there on first use."""
    if name in _MOVED:
        return getattr(importlib.import_module(BUILDERS), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
