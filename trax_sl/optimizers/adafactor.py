"""Adafactor (https://arxiv.org/abs/1804.04235) with Trax's arguments, from optax's parts."""

from __future__ import annotations

import gin
import jax.numpy as jnp
import optax

from trax_sl.optimizers import base


@gin.configurable(module="trax_sl.optimizers")
class Adafactor(base.Optimizer):
    """Adafactor as in Trax, chained from the transformations `optax.adafactor` uses.

    Per step t (from 0): second moments decay with `1 - (t + 1)**-decay_rate`
    (factored into row and column statistics for weights of rank >= 2); the
    scaled gradient is clipped to RMS `clipping_threshold`, multiplied by
    `learning_rate` (and by the weights' RMS, at least `epsilon2`), optionally
    averaged with momentum `beta1`, and
    `w <- (1 - weight_decay_rate) * w - update`.

    Differences from Trax, both from optax's factored statistics: weights of
    rank > 2 are factored over their two largest axes (Trax: the last two),
    and `epsilon1` is added to the squared gradients rather than to their
    averages (the same result for unfactored weights; for factored ones it
    changes only the regularizer of the row mean).
    """

    _INJECTED = ("weight_decay_rate",)

    def __init__(
        self,
        learning_rate: float = 0.05,
        factored: bool = True,
        multiply_by_parameter_scale: bool = True,
        do_clipping: bool = True,
        do_momentum: bool = False,
        momentum_in_bfloat16: bool = False,
        beta1: float = 0.0,
        decay_rate: float = 0.8,
        clipping_threshold: float = 1.0,
        weight_decay_rate: float = 1e-5,
        weight_decay_n_steps: int = 0,
        epsilon1: float = 1e-16,
        epsilon2: float = 1e-3,
    ):
        """Creates an Adafactor optimizer.

        Args:
            learning_rate: Step size (relative to the weights' RMS when
                `multiply_by_parameter_scale`).
            factored: Whether to factor second moments of weights of rank >= 2.
            multiply_by_parameter_scale: Whether to scale steps by the RMS of
                the weights (at least `epsilon2`).
            do_clipping: Whether to clip each update to RMS `clipping_threshold`.
            do_momentum: Whether to average updates with momentum `beta1`.
            momentum_in_bfloat16: Whether to store the momentum in bfloat16.
            beta1: Momentum coefficient, used when `do_momentum`.
            decay_rate: Exponent of the second-moment decay schedule.
            clipping_threshold: RMS bound of the updates, used when `do_clipping`.
            weight_decay_rate: Fraction of each weight subtracted every step.
            weight_decay_n_steps: If >= 1, the decay falls linearly to zero
                over this many steps; 0 keeps it constant.
            epsilon1: Regularizer of the squared gradients.
            epsilon2: Lower bound of the weights' RMS in parameter scaling.
        """
        for name, value in (
            ("beta1", beta1),
            ("decay_rate", decay_rate),
            ("clipping_threshold", clipping_threshold),
            ("weight_decay_rate", weight_decay_rate),
            ("weight_decay_n_steps", weight_decay_n_steps),
            ("epsilon1", epsilon1),
            ("epsilon2", epsilon2),
        ):
            base.check_number("Adafactor", name, value)
        super().__init__(
            learning_rate=learning_rate,
            beta1=beta1,
            decay_rate=decay_rate,
            clipping_threshold=clipping_threshold,
            weight_decay_rate=weight_decay_rate,
            weight_decay_n_steps=weight_decay_n_steps,
            epsilon1=epsilon1,
            epsilon2=epsilon2,
        )
        self._flags = {
            "factored": factored,
            "multiply_by_parameter_scale": multiply_by_parameter_scale,
            "do_clipping": do_clipping,
            "do_momentum": do_momentum,
            "momentum_in_bfloat16": momentum_in_bfloat16,
        }
        for name, value in self._flags.items():
            if not isinstance(value, bool):
                raise TypeError(f"Adafactor: {name} must be a bool, got {value!r}")

    def __repr__(self) -> str:
        flags = ", ".join(f"{k}={v}" for k, v in self._flags.items())
        return f"{super().__repr__()[:-1]}, {flags})"

    def _schedules(self, step_offset):
        n_steps = self._opt_params["weight_decay_n_steps"]
        if n_steps < 1:
            return {}
        rate = self._opt_params["weight_decay_rate"]
        return {
            "weight_decay_rate": lambda count: (
                rate * jnp.maximum(n_steps - (count + step_offset), 0) / n_steps
            )
        }

    def _transform(self, learning_rate, weight_decay_rate):
        p, flags = self._opt_params, self._flags
        # Trax factors every weight of rank >= 2, whatever its size.
        parts = [
            optax.scale_by_factored_rms(
                factored=flags["factored"],
                decay_rate=p["decay_rate"],
                min_dim_size_to_factor=1,
                epsilon=p["epsilon1"],
            )
        ]
        if flags["do_clipping"]:
            parts.append(optax.clip_by_block_rms(p["clipping_threshold"]))
        if flags["multiply_by_parameter_scale"]:
            parts.append(optax.scale_by_param_block_rms(min_scale=p["epsilon2"]))
        # Momentum averages whole steps (learning rate included), as in Trax.
        parts.append(optax.scale(learning_rate))
        if flags["do_momentum"]:
            dtype = jnp.bfloat16 if flags["momentum_in_bfloat16"] else None
            parts.append(optax.ema(p["beta1"], debias=False, accumulator_dtype=dtype))
        return base.trax_step(optax.chain(*parts), weight_decay_rate)
