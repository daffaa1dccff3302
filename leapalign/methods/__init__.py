"""Methods: one small file each over the shared rollout engine, selected by ``method.name``.

=============  ==========================================================================
name           gradient path
=============  ==========================================================================
leapalign      two random steps k < j, two leaps + straight-through connectors (Eq. 4-13)
refl           one random late step, reward on its one-step estimate
draft-k        the last K steps, detached entry, real x_0
draft-lv       the last step plus n re-noised one-step copies
alignprop      a random-length final window, checkpointed, real x_0
drtune         K evenly spaced steps, stop-gradient at every model input, early stop
flow-grpo      policy gradient: PPO-clip on SDE step likelihoods, group advantages (Fast: a window)
dance-grpo     policy gradient: constant-eta SDE, shared group noise, random trained steps
mix-grpo       policy gradient: a sliding SDE window in an ODE trajectory, only the window trained
=============  ==========================================================================

Direct-gradient methods have one call (``step``); the policy-gradient ones collect experience without gradients
and then take optimiser steps over it (``collect`` and ``step_loss``, :mod:`leapalign.methods.policy`).
"""

from __future__ import annotations

from typing import Any

from leapalign.methods.alignprop import AlignProp, AlignPropConfig
from leapalign.methods.base import Batch, Method, MethodOutput, check_differentiable
from leapalign.methods.dance_grpo import DanceGRPO, DanceGRPOConfig
from leapalign.methods.draft import DRaFTK, DRaFTKConfig, DRaFTLV, DRaFTLVConfig
from leapalign.methods.drtune import DRTune, DRTuneConfig
from leapalign.methods.flow_grpo import FlowGRPO, FlowGRPOConfig
from leapalign.methods.leapalign import LeapAlign, LeapAlignConfig
from leapalign.methods.mix_grpo import MixGRPO, MixGRPOConfig
from leapalign.methods.policy import PolicyGradientMethod
from leapalign.methods.refl import ReFL, ReFLConfig

METHODS: dict[str, tuple[type, type]] = {
    "leapalign": (LeapAlignConfig, LeapAlign),
    "refl": (ReFLConfig, ReFL),
    "draft-k": (DRaFTKConfig, DRaFTK),
    "draft-lv": (DRaFTLVConfig, DRaFTLV),
    "alignprop": (AlignPropConfig, AlignProp),
    "drtune": (DRTuneConfig, DRTune),
    "flow-grpo": (FlowGRPOConfig, FlowGRPO),
    "dance-grpo": (DanceGRPOConfig, DanceGRPO),
    "mix-grpo": (MixGRPOConfig, MixGRPO),
}


def method_config_class(name: str) -> type:
    """The config dataclass of method ``name``; raises a ``ValueError`` listing the known methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed values: {', '.join(METHODS)}.")
    return METHODS[name][0]


def build_method(cfg: Any) -> Method | PolicyGradientMethod:
    """Instantiates the method whose config dataclass is ``cfg`` (selected by ``cfg.name``)."""
    return METHODS[cfg.name][1](cfg)


def is_policy_gradient(method: Any) -> bool:
    """Whether ``method`` has the collect-then-update shape (:class:`PolicyGradientMethod`)."""
    return isinstance(method, PolicyGradientMethod)


__all__ = [
    "METHODS",
    "AlignProp",
    "Batch",
    "DRTune",
    "DRaFTK",
    "DRaFTLV",
    "DanceGRPO",
    "FlowGRPO",
    "LeapAlign",
    "Method",
    "MethodOutput",
    "MixGRPO",
    "PolicyGradientMethod",
    "ReFL",
    "build_method",
    "check_differentiable",
    "is_policy_gradient",
    "method_config_class",
]
