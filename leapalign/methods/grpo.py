r"""What the policy-gradient family shares: experience, group advantages, the PPO-clip step loss, the reference.

A policy-gradient method has two calls instead of one. ``collect`` samples a group of ``G`` trajectories per
prompt with stochastic steps (:func:`leapalign.flow.sample_sde`, no gradients), scores the final images with any
reward (differentiable or not) and turns the rewards into advantages. ``step_loss`` then recomputes, with
gradients, the log-probability of one recorded step under the current policy and returns the PPO-clip loss

.. math::

    A_i = \frac{r_i - \operatorname{mean}_{g(i)} r}{\operatorname{std} + \epsilon},\qquad
    \rho = e^{\log\pi_\theta(x'|x) - \log\pi_{old}(x'|x)},\qquad
    L = \operatorname{mean}_i \max\big(-A'_i\rho,\ -A'_i \operatorname{clip}(\rho, 1-\varepsilon, 1+\varepsilon)\big)
        + \beta\, \mathrm{KL},

with :math:`A' = \operatorname{clip}(A, \pm a_{max})` and the KL of the step's Gaussian to the reference policy's,
:math:`\operatorname{mean}_{dims}(\mu_\theta - \mu_{ref})^2 / (2 s^2)` (Flow-GRPO's code form, without the paper's
:math:`\Delta t`). The trainer runs the updates (:mod:`leapalign.policy_updates`): ``inner_epochs`` passes over the
experience, ``updates_per_epoch`` optimiser steps per pass, one backward per trained step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from leapalign.flow import SDEStep, step_log_prob
from leapalign.methods.reference import ReferencePolicy
from leapalign.models.base import Conditioning, FlowModel

Gather = Callable[[Tensor], Tensor]
"""``gather(t)``: ``t`` of every rank concatenated along dim 0 (the identity on one process)."""


@dataclass
class GRPOOptions:
    """Options every policy-gradient method shares (``method.*`` keys).

    Attributes:
        group_size: Samples per prompt ``G`` (``data.batch_size`` must be a multiple of it).
        noise_level: The SDE noise level (``a`` of Flow-GRPO, ``eta`` of DanceGRPO).
        clip_range: PPO clip range ``epsilon`` of the ratio.
        adv_clip: Advantages are clipped to ``[-adv_clip, adv_clip]``.
        adv_eps: Added to the std in the advantage's denominator.
        global_std: Normalise advantages by the std of every reward of the iteration (all ranks) instead of the
            group's.
        threshold: Rewards above it count as it in the advantages (``None``: as they are). This is the objective
            of the direct methods' hinge, E[min(r, threshold)]: a group whose samples all pass gets advantage 0
            instead of having its rounding-level differences scaled up to unit advantages by its tiny std.
        kl_weight: Weight ``beta`` of the KL to the reference policy (:class:`.reference.ReferencePolicy`: the
            adapter-disabled base under LoRA, a frozen copy of the initial transformer under full fine-tuning).
        inner_epochs: Passes over each rollout's experience.
        updates_per_epoch: Optimiser steps per pass (the samples are split into this many minibatches).
    """

    group_size: int = 4
    noise_level: float = 0.7
    clip_range: float = 1e-4
    adv_clip: float = 5.0
    adv_eps: float = 1e-4
    global_std: bool = False
    threshold: float | None = None
    kl_weight: float = 0.0
    inner_epochs: int = 1
    updates_per_epoch: int = 1

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raises a ``ValueError`` naming the key and the allowed values."""
        checks = [
            (self.group_size >= 2, "method.group_size", "an integer >= 2 (advantages compare samples of a group)"),
            (0 < self.noise_level <= 10, "method.noise_level", "a number in (0, 10] (0: deterministic steps)"),
            (self.clip_range > 0, "method.clip_range", "a number > 0"),
            (self.adv_clip > 0, "method.adv_clip", "a number > 0"),
            (self.adv_eps > 0, "method.adv_eps", "a number > 0"),
            (self.kl_weight >= 0, "method.kl_weight", "a number >= 0"),
            (self.inner_epochs >= 1, "method.inner_epochs", "an integer >= 1"),
            (self.updates_per_epoch >= 1, "method.updates_per_epoch", "an integer >= 1"),
        ]
        for ok, key, allowed in checks:
            if not ok:
                raise ValueError(f"invalid value for {key}: it must be {allowed}.")


@dataclass
class Experience:
    """One rollout's experience, all detached.

    Attributes:
        prompts: ``B`` prompts (``B / G`` groups of ``G`` consecutive samples).
        cond: Their conditioning.
        sigmas: The schedule ``(T + 1,)``.
        steps: The recorded stochastic steps (batch ``B`` each).
        trained: ``(B, len(steps))`` bool: which recorded steps each sample is trained on.
        rewards: ``(B,)`` rewards of the final samples.
        advantages: ``(B,)`` group advantages (before clipping).
        schedule: The SDE schedule the steps were sampled with.
        level: Its noise level.
        metrics: Diagnostics of the rollout (reward and advantage statistics, zero-spread groups, ...).
    """

    prompts: list[str]
    cond: Conditioning
    sigmas: Tensor
    steps: list[SDEStep]
    trained: Tensor
    rewards: Tensor
    advantages: Tensor
    schedule: str
    level: float
    metrics: dict[str, float] = field(default_factory=dict)

    def minibatches(self, count: int, generator: torch.Generator) -> Iterator[Tensor]:
        """Sample indices of ``count`` random, disjoint, near-equal minibatches (whole groups are not required)."""
        order = torch.randperm(len(self.prompts), generator=generator) if count > 1 else torch.arange(len(self.prompts))
        yield from (chunk for chunk in order.chunk(count) if chunk.numel())


def select(cond: Conditioning, idx: Tensor) -> Conditioning:
    """The conditioning of samples ``idx`` (batch-indexed tensors are indexed, the rest kept)."""
    values = {}
    for f in fields(cond):
        value = getattr(cond, f.name)
        if isinstance(value, Tensor) and value.shape[:1] == (cond.batch_size,):
            value = value[idx.to(value.device)]
        values[f.name] = value
    return Conditioning(**values)


def group_advantages(rewards: Tensor, opts: GRPOOptions, gather: Gather) -> tuple[Tensor, dict[str, float]]:
    """Advantages ``(r - mean_group) / (std + eps)`` of ``r = min(reward, opts.threshold)``, and their diagnostics.

    Args:
        rewards: ``(B,)`` rewards of this rank, groups of ``G`` consecutive samples.
        opts: The shared options (group size, global std, eps).
        gather: Concatenates a tensor over every rank (for the global std and the logged statistics).

    Returns:
        ``(advantages (B,), metrics)``; a group whose rewards are all equal gets advantage 0.
    """
    raw = rewards.detach().float()
    r = raw if opts.threshold is None else raw.clamp(max=opts.threshold)
    groups = r.view(-1, opts.group_size)
    centred = groups - groups.mean(1, keepdim=True)
    every = gather(r)
    std = every.std() if opts.global_std else groups.std(1, keepdim=True)
    adv = (centred / (std + opts.adv_eps)).flatten()
    spread = groups.max(1).values - groups.min(1).values
    metrics = {
        "adv_mean": adv.mean().item(),
        "adv_abs_mean": adv.abs().mean().item(),
        "adv_clipped_frac": (adv.abs() > opts.adv_clip).float().mean().item(),
        "zero_std_groups": (spread == 0).float().mean().item(),
    }
    if opts.threshold is not None:
        metrics["above_threshold"] = (raw >= opts.threshold).float().mean().item()
    return adv, metrics


def ppo_step_loss(
    model: FlowModel,
    exp: Experience,
    idx: Tensor,
    k: int,
    opts: GRPOOptions,
    reference: ReferencePolicy | None = None,
) -> tuple[Tensor | None, dict[str, float]]:
    """The PPO-clip loss of recorded step ``k`` over the samples ``idx`` that train on it.

    ``reference`` is required when ``opts.kl_weight > 0``.

    Returns:
        ``(loss or None, metrics)``; ``None`` when no sample of ``idx`` trains on step ``k``.
    """
    step = exp.steps[k]
    idx = idx[exp.trained[idx, k].cpu()]
    if idx.numel() == 0:
        return None, {}
    dev = step.latent.device
    sub = SDEStep(
        step.index,
        step.latent[idx.to(dev)],
        step.next_latent[idx.to(dev)],
        step.mean[idx.to(dev)],
        step.std if step.std.shape[:1] != step.latent.shape[:1] else step.std[idx.to(dev)],
        step.log_prob[idx.to(dev)],
    )
    sigma, sigma_next = exp.sigmas[step.index], exp.sigmas[step.index + 1]
    cond = select(exp.cond, idx)
    v = model.velocity(sub.latent, sigma, cond)
    log_prob, mean = step_log_prob(v, sub, sigma, sigma_next, exp.schedule, exp.level)
    adv = exp.advantages[idx.to(exp.advantages.device)].to(log_prob.device).clamp(-opts.adv_clip, opts.adv_clip)
    log_ratio = log_prob - sub.log_prob.to(log_prob.device)
    ratio = torch.exp(log_ratio)
    clipped = ratio.clamp(1.0 - opts.clip_range, 1.0 + opts.clip_range)
    loss = torch.maximum(-adv * ratio, -adv * clipped).mean()
    metrics = {
        "ratio_mean": ratio.mean().item(),
        "ratio_min": ratio.min().item(),
        "ratio_max": ratio.max().item(),
        "clip_frac": ((ratio - 1.0).abs() > opts.clip_range).float().mean().item(),
        "approx_kl": 0.5 * log_ratio.detach().pow(2).mean().item(),
    }
    if opts.kl_weight > 0:
        if reference is None:
            raise ValueError("method.kl_weight > 0 needs a reference policy: call method.prepare(model) first.")
        v_ref = reference.velocity(model, sub.latent, sigma, cond)
        _, mean_ref = step_log_prob(v_ref, sub, sigma, sigma_next, exp.schedule, exp.level)
        kl = ((mean - mean_ref).pow(2) / (2 * sub.std.float().pow(2))).flatten(1).mean(1).mean()
        loss = loss + opts.kl_weight * kl
        metrics["kl_ref"] = kl.item()
    return loss, metrics
