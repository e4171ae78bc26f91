"""Momentum SGD, plain or Nesterov, with Trax's per-step weight decay."""

from __future__ import annotations

import gin
import optax

from trax_sl.optimizers import base


@gin.configurable(module="trax_sl.optimizers")
class Momentum(base.Optimizer):
    """Momentum SGD as in Trax, built from `optax.trace`.

    With velocity `v` (initially zero) and mass `mu`:
    `v <- mu * v + g`; the step direction is `mu * v + g` (Nesterov) or `v`;
    `w <- (1 - weight_decay_rate) * w - learning_rate * direction`.
    The velocity holds no learning rate, so a schedule acts on each step.
    """

    _INJECTED = ("weight_decay_rate",)

    def __init__(
        self,
        learning_rate: float = 0.01,
        mass: float = 0.9,
        weight_decay_rate: float = 1e-5,
        nesterov: bool = True,
    ):
        """Creates a momentum optimizer.

        Args:
            learning_rate: Step size.
            mass: Momentum (decay) coefficient mu of the velocity.
            weight_decay_rate: Fraction of each weight subtracted every step.
            nesterov: Whether to use the Nesterov correction (Trax's default).
        """
        for name, value in (("mass", mass), ("weight_decay_rate", weight_decay_rate)):
            base.check_number("Momentum", name, value)
        if not isinstance(nesterov, bool):
            raise TypeError(f"Momentum: nesterov must be a bool, got {nesterov!r}")
        super().__init__(learning_rate=learning_rate, mass=mass, weight_decay_rate=weight_decay_rate)
        self._nesterov = nesterov

    @property
    def nesterov(self) -> bool:
        return self._nesterov

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, nesterov={self._nesterov})"

    def _transform(self, learning_rate, weight_decay_rate):
        direction = optax.trace(decay=self._opt_params["mass"], nesterov=self._nesterov)
        return base.trax_step(optax.chain(direction, optax.scale(learning_rate)), weight_decay_rate)
