"""Adam (with Trax's per-step weight decay) and AdamW (decay scaled by the learning rate)."""

from __future__ import annotations

import gin
import optax

from trax_sl.optimizers import base


@gin.configurable(module="trax_sl.optimizers")
class Adam(base.Optimizer):
    r"""Adam, as in Trax (https://arxiv.org/abs/1412.6980), with Trax's weight decay.

    With `m`, `v` the bias-corrected moment estimates at step t:
    `w <- (1 - weight_decay_rate) * w - learning_rate * m / (sqrt(v) + eps)`.
    The decay is not scaled by the learning rate (use `AdamW` for that).
    Built from `optax.scale_by_adam`.
    """

    _INJECTED = ("weight_decay_rate",)

    def __init__(
        self,
        learning_rate: float = 0.0001,
        weight_decay_rate: float = 1e-5,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-5,
        clip_grad_norm: float | None = None,
    ):
        """Creates an Adam optimizer.

        Args:
            learning_rate: Step size alpha (the paper's "stepsize").
            weight_decay_rate: Fraction of each weight subtracted every step
                (not part of Adam itself).
            b1: Decay rate of the first-moment estimates.
            b2: Decay rate of the second-moment estimates.
            eps: Added to sqrt(v) for numerical stability.
            clip_grad_norm: If set, the global gradient norm is clipped to it.
        """
        for name, value in (("weight_decay_rate", weight_decay_rate), ("b1", b1), ("b2", b2), ("eps", eps)):
            base.check_number("Adam", name, value)
        super().__init__(
            learning_rate=learning_rate,
            clip_grad_norm=clip_grad_norm,
            weight_decay_rate=weight_decay_rate,
            b1=b1,
            b2=b2,
            eps=eps,
        )

    def _transform(self, learning_rate, weight_decay_rate):
        p = self._opt_params
        step = optax.chain(
            optax.scale_by_adam(b1=p["b1"], b2=p["b2"], eps=p["eps"]), optax.scale(learning_rate)
        )
        return base.trax_step(step, weight_decay_rate)


@gin.configurable(module="trax_sl.optimizers")
class AdamW(base.Optimizer):
    """AdamW (https://arxiv.org/abs/1711.05101): `optax.adamw` with Trax-style arguments.

    `w <- w - learning_rate * (m / (sqrt(v) + eps) + weight_decay_rate * w)`:
    unlike `Adam`, the decay is scaled by the learning rate (and so follows
    its schedule). Not in Trax; the defaults are Trax's Adam's, except the
    decay rate, which is optax's.
    """

    _INJECTED = ("weight_decay_rate",)

    def __init__(
        self,
        learning_rate: float = 0.0001,
        weight_decay_rate: float = 1e-4,
        b1: float = 0.9,
        b2: float = 0.999,
        eps: float = 1e-5,
        clip_grad_norm: float | None = None,
    ):
        """Creates an AdamW optimizer.

        Args:
            learning_rate: Step size.
            weight_decay_rate: Decoupled weight decay, multiplied by the
                learning rate.
            b1: Decay rate of the first-moment estimates.
            b2: Decay rate of the second-moment estimates.
            eps: Added to sqrt(v) for numerical stability.
            clip_grad_norm: If set, the global gradient norm is clipped to it.
        """
        for name, value in (("weight_decay_rate", weight_decay_rate), ("b1", b1), ("b2", b2), ("eps", eps)):
            base.check_number("AdamW", name, value)
        super().__init__(
            learning_rate=learning_rate,
            clip_grad_norm=clip_grad_norm,
            weight_decay_rate=weight_decay_rate,
            b1=b1,
            b2=b2,
            eps=eps,
        )

    def _transform(self, learning_rate, weight_decay_rate):
        p = self._opt_params
        return optax.adamw(
            learning_rate, b1=p["b1"], b2=p["b2"], eps=p["eps"], weight_decay=weight_decay_rate
        )
