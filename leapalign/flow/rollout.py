"""The shared sampling engine: an Euler rollout in which a method decides where gradients flow.

Every direct-gradient method in :mod:`leapalign.methods` is written against :class:`Rollout`: it advances
the deterministic ODE trajectory without gradients (:meth:`Rollout.run_to`) and, at the steps its recipe
names, calls the model *with* gradients on an input of its choosing (:meth:`Rollout.grad_step`). The
trajectory itself always advances with the detached velocity, so its latents are exactly those of plain
no-grad sampling, whatever the method does with the differentiable velocity. No extra model forwards are
spent: a grad step replaces the no-grad forward at that index.

Example:
    >>> ro = Rollout(velocity_fn, noise, sigmas)      # velocity_fn(x, sigma) -> v
    >>> ro.run_to(k)                                   # no-grad Euler steps 0..k-1
    >>> v_k = ro.grad_step(ro.latent)                  # forward with grad at step k; trajectory advances
    >>> ro.run_to(ro.num_steps)                        # finish: ro.latent is the final x_0
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from leapalign.flow.leap import euler_step

VelocityFn = Callable[[Tensor, Tensor], Tensor]
"""``velocity_fn(x, sigma) -> v``: ``x`` of shape ``(B, ...)``, ``sigma`` a scalar tensor, ``v`` like ``x``."""


class Rollout:
    """An Euler trajectory from noise (``sigma = 1``) to data (``sigma = 0``), advanced step by step.

    Attributes:
        sigmas: Schedule of shape ``(T + 1,)``, decreasing from 1 to 0.
        latents: Detached latents visited so far; ``latents[i]`` lies at ``sigmas[i]``.
        velocities: Detached velocities used so far; ``velocities[i]`` moved ``latents[i]`` to ``latents[i+1]``.
        grad_steps: Indices at which the model was called with gradients, in call order.
    """

    def __init__(self, velocity_fn: VelocityFn, noise: Tensor, sigmas: Tensor) -> None:
        """Starts a rollout.

        Args:
            velocity_fn: The (guided) velocity field.
            noise: Initial latents at ``sigma = 1``, shape ``(B, ...)``.
            sigmas: Schedule of shape ``(T + 1,)``, ``sigmas[0] = 1`` and ``sigmas[-1] = 0``.
        """
        if sigmas.ndim != 1 or sigmas.numel() < 2:
            raise ValueError(f"sigmas must be a 1-D schedule with at least 2 entries, got shape {tuple(sigmas.shape)}.")
        self.velocity_fn = velocity_fn
        self.sigmas = sigmas.to(noise.device)
        self.latents: list[Tensor] = [noise.detach()]
        self.velocities: list[Tensor] = []
        self.grad_steps: list[int] = []

    @property
    def num_steps(self) -> int:
        """Number of Euler steps ``T``."""
        return self.sigmas.numel() - 1

    @property
    def index(self) -> int:
        """Index of the current latent (``0`` at noise, ``T`` when finished)."""
        return len(self.latents) - 1

    @property
    def latent(self) -> Tensor:
        """The current (detached) latent, shape ``(B, ...)``."""
        return self.latents[-1]

    def sigma(self, index: int) -> Tensor:
        """``sigmas[index]`` as a scalar tensor."""
        return self.sigmas[index]

    def run_to(self, index: int) -> Tensor:
        """Advances without gradients until ``latents[index]`` exists; returns it (detached).

        Args:
            index: Target step index in ``[current index, T]``.
        """
        if not self.index <= index <= self.num_steps:
            raise ValueError(f"cannot run from step {self.index} to step {index} (T={self.num_steps}).")
        with torch.no_grad():
            while self.index < index:
                i = self.index
                v = self.velocity_fn(self.latent, self.sigmas[i])
                self._advance(v)
        return self.latent

    def grad_step(self, model_input: Tensor, *, use_checkpoint: bool = False) -> Tensor:
        """Calls the model with gradients at the current step, then advances the trajectory one Euler step.

        The trajectory advances from the real (detached) latent with the detached velocity, so the rollout
        is unchanged by whatever differentiable ``model_input`` the method passes (its value must equal the
        current latent for the rollout to stay on-policy; the gradient path is the method's business).

        Args:
            model_input: What the model sees at this step, shape ``(B, ...)``: usually ``self.latent``
                (detached), or a connected / gradient-scaled version with the same value.
            use_checkpoint: Recompute this forward in the backward pass instead of storing activations.

        Returns:
            The velocity at this step *with* its autograd graph, shape ``(B, ...)``.
        """
        i = self.index
        if i >= self.num_steps:
            raise ValueError("the rollout is finished; there is no step left to take with gradients.")
        sigma = self.sigmas[i]
        with torch.enable_grad():
            if use_checkpoint:
                v = checkpoint(self.velocity_fn, model_input, sigma, use_reentrant=False)
            else:
                v = self.velocity_fn(model_input, sigma)
        self.grad_steps.append(i)
        self._advance(v.detach())
        return v

    def _advance(self, v: Tensor) -> None:
        i = self.index
        self.velocities.append(v)
        self.latents.append(euler_step(self.latent, v, self.sigmas[i], self.sigmas[i + 1]))


def sample(velocity_fn: VelocityFn, noise: Tensor, sigmas: Tensor) -> Rollout:
    """Plain no-grad sampling: a finished :class:`Rollout` whose ``latent`` is the final sample."""
    ro = Rollout(velocity_fn, noise, sigmas)
    ro.run_to(ro.num_steps)
    return ro
