r"""Gradient-path operators: scaled gradients and straight-through connectors.

Two operations express every gradient path in this library:

* :func:`scale_grad` -- identity in the forward pass, gradient multiplied by ``factor`` in the backward
  pass. ``factor = 0`` is ``detach`` (DRTune's stop-gradient at the model input), ``factor = alpha`` is
  LeapAlign's discount of the nested gradient (Eq. 9: :math:`\alpha x + (1-\alpha)\,\mathrm{sg}(x)`),
  ``factor = 1`` is the identity.
* :func:`straight_through` -- the latent connector of LeapAlign (Eqs. 6-7):
  :math:`\hat x + \mathrm{sg}(x - \hat x)`, whose value is the real latent ``x`` and whose gradient flows
  into the prediction :math:`\hat x`.
"""

from __future__ import annotations

from torch import Tensor


def scale_grad(x: Tensor, factor: float) -> Tensor:
    r"""Identity forward, gradient scaled by ``factor`` backward: :math:`f x + (1 - f)\,\mathrm{sg}(x)`.

    Args:
        x: Any tensor, shape ``(...)``.
        factor: Backward scale in ``[0, 1]``. ``0`` returns ``x.detach()`` (no graph at all), ``1`` returns
            ``x`` itself.

    Returns:
        A tensor equal to ``x`` whose gradient with respect to ``x`` is ``factor``.
    """
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"gradient scale factor must lie in [0, 1], got {factor}.")
    if factor == 0.0:
        return x.detach()
    if factor == 1.0:
        return x
    return factor * x + (1.0 - factor) * x.detach()


def straight_through(prediction: Tensor, actual: Tensor) -> Tensor:
    r"""Latent connector :math:`\hat x + \mathrm{sg}(x - \hat x)`.

    Args:
        prediction: Differentiable prediction :math:`\hat x`, shape ``(B, ...)``.
        actual: The real rollout latent :math:`x` (its gradient is ignored), same shape.

    Returns:
        A tensor with the value of ``actual`` and the gradient path of ``prediction``.
    """
    return prediction + (actual - prediction).detach()
