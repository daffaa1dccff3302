"""The collect-then-update shape of a method, shared by the policy-gradient family (Flow-GRPO, DanceGRPO,
MixGRPO). Each method file only says which steps are stochastic, which are trained, and whether a group shares
its initial noise; the sampling, scoring, advantages and PPO step loss are here and in :mod:`.grpo`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor

from leapalign.flow import sample_sde
from leapalign.methods.base import Batch, velocity_fn
from leapalign.methods.grpo import Experience, Gather, GRPOOptions, group_advantages, ppo_step_loss
from leapalign.methods.reference import ReferencePolicy
from leapalign.models.base import FlowModel
from leapalign.rewards.base import RewardFn


class PolicyGradientMethod(ABC):
    """Base of the policy-gradient methods: ``collect`` experience without gradients, then ``step_loss`` per
    (minibatch, recorded step) with gradients. Subclasses set :attr:`schedule` and override :meth:`plan`."""

    name = ""
    schedule = "flow-grpo"
    requires_differentiable_reward = False

    def __init__(self, cfg: GRPOOptions) -> None:
        self.cfg = cfg  # validated by the config dataclass (GRPOOptions.__post_init__)
        self.reference: ReferencePolicy | None = None

    def prepare(self, model: FlowModel) -> None:
        """Called once with the model at its initial weights, before any update or resume: sets up the KL
        reference (:class:`ReferencePolicy`) when ``kl_weight > 0``."""
        if self.cfg.kl_weight > 0 and self.reference is None:
            self.reference = ReferencePolicy(model)

    @property
    def group_size(self) -> int:
        return self.cfg.group_size

    @abstractmethod
    def plan(self, num_steps: int, iteration: int, batch: Batch) -> tuple[list[int], bool]:
        """The stochastic steps of this rollout, and whether a group shares its initial noise."""

    def trained(self, sde_steps: list[int], num_samples: int, num_steps: int, batch: Batch) -> Tensor:
        """``(B, len(sde_steps))`` bool: which recorded steps each sample is trained on (default: all)."""
        return torch.ones(num_samples, len(sde_steps), dtype=torch.bool)

    @torch.no_grad()
    def collect(self, model: FlowModel, batch: Batch, reward: RewardFn, gather: Gather, iteration: int) -> Experience:
        """Samples the groups with the planned stochastic steps, scores them and computes the advantages."""
        g = self.cfg.group_size
        if len(batch.prompts) % g:
            raise ValueError(f"the batch of {len(batch.prompts)} samples is not a whole number of groups of {g}.")
        sde_steps, shared_noise = self.plan(batch.num_steps, iteration, batch)
        noise = batch.noise[::g].repeat_interleave(g, dim=0) if shared_noise else batch.noise
        traj = sample_sde(
            velocity_fn(model, batch.cond),
            noise,
            batch.sigmas,
            sde_steps,
            self.schedule,
            self.cfg.noise_level,
            batch.generator,
        )
        recorded = [s.index for s in traj.steps]
        rewards = reward(model.decode(traj.final, batch.height, batch.width), batch.prompts).detach().float()
        advantages, metrics = group_advantages(rewards, self.cfg, gather)
        trained = self.trained(recorded, len(batch.prompts), batch.num_steps, batch)
        metrics.update({"trained_steps": trained.sum(1).float().mean().item(), "sde_steps": float(len(recorded))})
        if recorded:
            metrics["sde_first_step"] = float(recorded[0])
        return Experience(
            batch.prompts,
            batch.cond,
            batch.sigmas,
            traj.steps,
            trained,
            rewards,
            advantages,
            self.schedule,
            self.cfg.noise_level,
            metrics,
        )

    def step_loss(self, model: FlowModel, exp: Experience, idx: Tensor, k: int) -> tuple[Tensor | None, dict]:
        """The PPO-clip loss of recorded step ``k`` for samples ``idx`` (``None`` if none trains on it)."""
        return ppo_step_loss(model, exp, idx, k, self.cfg, self.reference)

    def state_dict(self) -> dict[str, Any]:
        """The method's own state for checkpoints (these methods derive everything from the iteration)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (nothing to restore here: the state is empty)."""
        return None
