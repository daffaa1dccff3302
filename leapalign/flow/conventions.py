r"""The one time convention of ``leapalign``: **sigma**, with :math:`\sigma = 1` noise and :math:`\sigma = 0` data.

This is the direction of diffusers and of the LeapAlign paper (whose :math:`t` is our :math:`\sigma`).
facebookresearch/flow_matching and lucidrains/rectified-flow-pytorch use the opposite direction; never mix
them. No variable in this library is called ``t``.

Rectified-flow interpolation between data :math:`x_0` and noise :math:`\varepsilon \sim \mathcal N(0, I)`:

.. math::

    x_\sigma = (1 - \sigma)\, x_0 + \sigma\, \varepsilon, \qquad v = \frac{d x_\sigma}{d\sigma} = \varepsilon - x_0 .

Sampling integrates from :math:`\sigma = 1` down to :math:`\sigma = 0` with Euler steps

.. math::

    x_{\sigma'} = x_\sigma + (\sigma' - \sigma)\, v_\theta(x_\sigma, \sigma), \qquad \sigma' < \sigma ,

which is exactly ``FlowMatchEulerDiscreteScheduler.step``. A *leap* is the same formula across a large gap
(:func:`leapalign.flow.leap.leap`), and the one-step data estimate is
:math:`\hat x_0 = x_\sigma - \sigma\, v_\theta(x_\sigma)`.

Step indices run forward in sampling order: index ``0`` is :math:`\sigma = 1` (noise) and index ``T`` is the
final :math:`\sigma = 0`. "Step k earlier than step j" therefore means ``k < j`` as indices and
:math:`\sigma_k > \sigma_j`.
"""

from __future__ import annotations

from torch import Tensor


def interpolate(x0: Tensor, noise: Tensor, sigma: Tensor | float) -> Tensor:
    """Forward process :math:`x_\\sigma = (1-\\sigma) x_0 + \\sigma \\varepsilon`.

    Args:
        x0: Clean data, shape ``(B, ...)``.
        noise: Standard normal noise, same shape as ``x0``.
        sigma: Noise level in ``[0, 1]``: a float, a scalar tensor, or shape ``(B,)``.

    Returns:
        The noised sample, same shape as ``x0``.
    """
    s = _broadcast(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """Rectified-flow velocity target :math:`v = \\varepsilon - x_0`, same shape as ``x0``."""
    return noise - x0


def _broadcast(sigma: Tensor | float, like: Tensor) -> Tensor | float:
    """Reshapes a per-sample ``sigma`` of shape ``(B,)`` to ``(B, 1, ..., 1)`` to broadcast against ``like``."""
    if isinstance(sigma, Tensor) and sigma.ndim == 1:
        return sigma.view(-1, *([1] * (like.ndim - 1)))
    return sigma
