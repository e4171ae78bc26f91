"""RMSProp as in Trax: `optax.rmsprop` with Trax's initial scale and eps placement."""

from __future__ import annotations

import gin
import optax

from trax_sl.optimizers import base


@gin.configurable(module="trax_sl.optimizers")
class RMSProp(base.Optimizer):
    """RMSProp: `w <- w - learning_rate * g / (sqrt(a) + eps)`.

    `a` is a decaying average of squared gradients, `a <- gamma * a +
    (1 - gamma) * g**2`, starting (as in Trax) at one, not zero.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        gamma: float = 0.9,
        eps: float = 1e-8,
        clip_grad_norm: float | None = None,
    ):
        """Creates an RMSProp optimizer.

        Args:
            learning_rate: Step size.
            gamma: Decay rate of the average of squared gradients.
            eps: Added to the root mean square for numerical stability.
            clip_grad_norm: If set, the global gradient norm is clipped to it.
        """
        for name, value in (("gamma", gamma), ("eps", eps)):
            base.check_number("RMSProp", name, value)
        super().__init__(learning_rate=learning_rate, clip_grad_norm=clip_grad_norm, gamma=gamma, eps=eps)

    def _transform(self, learning_rate):
        p = self._opt_params
        return optax.rmsprop(
            learning_rate, decay=p["gamma"], eps=p["eps"], initial_scale=1.0, eps_in_sqrt=False
        )
