"""SM3 (https://arxiv.org/abs/1901.11150) with Trax's arguments, from `optax.scale_by_sm3`."""

from __future__ import annotations

import enum

import gin
import optax

from trax_sl.optimizers import base


class MomentumType(enum.IntEnum):
    """How SM3 averages its preconditioned gradients (Trax's enum)."""

    EMA = 1
    HEAVY_BALL = 2
    NESTEROV = 3


# optax adds its epsilon under the square root, Trax adds 1e-16 to the root:
# 1e-32 under the root keeps Trax's regularization.
_EPSILON = 1e-32


@gin.configurable(module="trax_sl.optimizers")
class SM3(base.Optimizer):
    """SM3 as in Trax: `optax.scale_by_sm3`, then weight decay, momentum and the learning rate.

    With `p` the SM3-preconditioned gradient and `d = p + weight_decay * w`,
    the momentum buffer is `m <- (1 - momentum) * d + momentum * m` (EMA) or
    `m <- d + momentum * m` (HEAVY_BALL, NESTEROV); the step is
    `w <- w - learning_rate * u` with `u = m`, or `u = d + momentum * m` for
    NESTEROV (with momentum 0, `u = d`).

    Difference from Trax: with `second_moment_averaging != 1` Trax also
    grafts AdaGrad's step size onto the update; optax has no grafting, so the
    update here is plain SM3 with averaged second moments.
    """

    _INJECTED = ("weight_decay",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        momentum: float = 0.9,
        second_moment_averaging: float = 1.0,
        weight_decay: float = 0.0,
        momentum_type: MomentumType = MomentumType.EMA,
    ):
        """Creates an SM3 optimizer.

        Args:
            learning_rate: Step size.
            momentum: Momentum coefficient; 0 disables momentum.
            second_moment_averaging: Decay of the second-moment accumulators;
                1.0 adds squared gradients from the start, like AdaGrad.
            weight_decay: Coefficient of the weights added to the
                preconditioned gradient.
            momentum_type: `MomentumType.EMA`, `HEAVY_BALL` or `NESTEROV`.
        """
        for name, value in (
            ("momentum", momentum),
            ("second_moment_averaging", second_moment_averaging),
            ("weight_decay", weight_decay),
        ):
            base.check_number("SM3", name, value)
        if momentum_type not in tuple(MomentumType):
            raise ValueError(
                f"SM3: momentum_type must be one of {[t.name for t in MomentumType]}, got {momentum_type!r}"
            )
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            second_moment_averaging=second_moment_averaging,
            weight_decay=weight_decay,
        )
        self._momentum_type = MomentumType(momentum_type)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, momentum_type={self._momentum_type.name})"

    def _transform(self, learning_rate, weight_decay):
        p = self._opt_params
        # b1=0: optax's own EMA off; Trax's momentum goes after the weight decay.
        parts = [
            optax.scale_by_sm3(b1=0.0, b2=p["second_moment_averaging"], eps=_EPSILON),
            optax.add_decayed_weights(weight_decay),
        ]
        if p["momentum"] > 0:
            if self._momentum_type == MomentumType.EMA:
                parts.append(optax.ema(p["momentum"], debias=False))
            else:
                parts.append(
                    optax.trace(p["momentum"], nesterov=self._momentum_type == MomentumType.NESTEROV)
                )
        parts.append(optax.scale(learning_rate))
        return base.trax_step(optax.chain(*parts))
