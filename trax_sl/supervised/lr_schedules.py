r"""Learning-rate schedules: functions step -> learning rate, as in Trax.

`constant(0.001)` returns a function that gives 0.001 from step 1 on. Every
schedule here is written with `jax.numpy`, so the step may be a traced array
(e.g. optax's update count inside a jitted update); results are float32
scalars, except that `BodyAndTail` and its tails given a Python step compute
in float64 as Trax's do (`BodyAndTail(.3, ...)(180) == .3`). All are gin-configurable (`trax_sl.supervised.lr_schedules.multifactor`,
or `multifactor` for short).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np

Schedule = Callable[[jax.Array], jax.Array]
TailFn = Callable[[jax.Array, int, float], jax.Array]

_FACTORS = (
    "constant",
    "two_constants",
    "linear_warmup",
    "rsqrt_decay",
    "rsqrt_normalized_decay",
    "decay_every",
    "cosine_decay",
)


@gin.configurable
def constant(value: float) -> Schedule:
    """A schedule that is `value` from step 1 on (0 at step 0, as in Trax)."""
    return BodyAndTail(value, body_start=1)


@gin.configurable
def warmup(n_warmup_steps: int, max_value: float) -> Schedule:
    """Linear warm-up, then constant.

    Args:
        n_warmup_steps: Steps over which the rate rises on the line through
            (0, 0) and (n_warmup_steps + 1, max_value).
        max_value: The rate after warm-up.
    """
    return BodyAndTail(max_value, body_start=n_warmup_steps + 1)


@gin.configurable
def warmup_and_rsqrt_decay(n_warmup_steps: int, max_value: float) -> Schedule:
    """Linear warm-up, then decay with the reciprocal square root of the step."""
    return BodyAndTail(max_value, tail_start=n_warmup_steps + 1, tail_fn=_rsqrt)


@gin.configurable
def multifactor(
    factors: str = "constant * linear_warmup * rsqrt_decay",
    constant: float = 0.1,
    warmup_steps: int = 400,
    decay_factor: float = 0.5,
    steps_per_decay: int = 20000,
    steps_per_cycle: int = 100000,
    second_constant: float = 0.01,
    second_constant_step: int = 10000,
    minimum: float = 0,
) -> Schedule:
    """Factor-based schedule: the product of the factors named in `factors`.

    Factors (separated by `*`):

    * `constant`: `constant`.
    * `two_constants`: `constant` before `second_constant_step`, then
      `second_constant`.
    * `linear_warmup`: `min(1, step / warmup_steps)`.
    * `rsqrt_decay`: `1 / sqrt(max(step, warmup_steps))`.
    * `rsqrt_normalized_decay`: `sqrt(warmup_steps) / sqrt(max(step, warmup_steps))`.
    * `decay_every`: `decay_factor ** (step // steps_per_decay)`.
    * `cosine_decay`: `0.5 * (1 + cos(pi * (p % 1)))` with
      `p = max(0, (step - warmup_steps) / steps_per_cycle)`.

    Args:
        factors: Factor names separated by `*`.
        constant: The starting constant.
        warmup_steps: Steps of warm-up (also where the decays start).
        decay_factor: Factor of each `decay_every` decay.
        steps_per_decay: Steps between `decay_every` decays.
        steps_per_cycle: Steps per `cosine_decay` cycle.
        second_constant: The constant of `two_constants` after the switch.
        second_constant_step: The step where `two_constants` switches.
        minimum: The rate never goes below this.

    Returns:
        A function step -> learning rate.
    """
    names = [name.strip() for name in factors.split("*")]
    unknown = [name for name in names if name not in _FACTORS]
    if unknown:
        raise ValueError(
            f"multifactor: unknown factor(s) {unknown} in factors={factors!r}; "
            f"known factors are {list(_FACTORS)}"
        )
    if {"linear_warmup", "rsqrt_normalized_decay"} & set(names) and warmup_steps <= 0:
        raise ValueError(f"multifactor: warmup_steps must be > 0 for {factors!r}, got {warmup_steps}")

    def learning_rate(step):
        ret = jnp.float32(1.0)
        for name in names:
            if name == "constant":
                ret *= constant
            elif name == "two_constants":
                ret *= jnp.where(step < second_constant_step, constant, second_constant)
            elif name == "linear_warmup":
                ret *= jnp.minimum(1.0, step / warmup_steps)
            elif name == "rsqrt_decay":
                ret /= jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "rsqrt_normalized_decay":
                ret *= jnp.sqrt(warmup_steps) / jnp.sqrt(jnp.maximum(step, warmup_steps))
            elif name == "decay_every":
                ret *= decay_factor ** (step // steps_per_decay)
            else:  # cosine_decay
                progress = jnp.maximum(0.0, (step - warmup_steps) / float(steps_per_cycle))
                ret *= 0.5 * (1.0 + jnp.cos(jnp.pi * (progress % 1.0)))
        return jnp.maximum(ret, minimum).astype(jnp.float32)

    return learning_rate


@gin.configurable
class BodyAndTail:
    """A curve over steps: linear warm-up, a constant body, and an optional tail.

    Steps before `body_start` lie on the line through (0, 0) and
    (body_start, body_value); from `tail_start` on, `tail_fn(step,
    tail_start, body_value)` gives the rate; in between it is `body_value`.
    (Trax's `_BodyAndTail`.)
    """

    def __init__(
        self,
        body_value: float,
        body_start: int | None = None,
        tail_start: int | None = None,
        tail_fn: TailFn | None = None,
    ):
        """Specifies the curve.

        Args:
            body_value: The rate of the body; also the reference value of the
                warm-up and the tail.
            body_start: The step where the body starts; None means at
                `tail_start` (no body).
            tail_start: The step where the tail starts; None for no tail.
            tail_fn: Function (step, tail_start, body_value) -> rate.
        """
        if body_start is None and tail_start is None:
            raise ValueError("BodyAndTail: body_start and tail_start are both None; set at least one")
        if tail_start is not None and tail_fn is None:
            raise ValueError(f"BodyAndTail: tail_start={tail_start} but tail_fn is None")
        self._body_value = body_value
        self._body_start = tail_start if body_start is None else body_start
        self._tail_start = tail_start
        self._tail_fn = tail_fn

    def __call__(self, step_number) -> jax.Array:
        """The learning rate at `step_number` (float64 for a Python step, as Trax's; else float32)."""
        if _array_module(step_number) is np:  # A concrete step: one branch, in float64.
            if step_number < self._body_start:
                return np.float64(step_number / self._body_start * self._body_value)
            if self._tail_start is not None and step_number >= self._tail_start:
                return np.float64(self._tail_fn(step_number, self._tail_start, self._body_value))
            return np.float64(self._body_value)
        step = jnp.asarray(step_number)
        ret = jnp.where(
            step < self._body_start, (step / self._body_start) * self._body_value, self._body_value
        )
        if self._tail_start is not None:
            # Both branches are computed; the tail is only taken where it is finite.
            tail = self._tail_fn(jnp.maximum(step, self._tail_start), self._tail_start, self._body_value)
            ret = jnp.where(step >= self._tail_start, tail, ret)
        return ret.astype(jnp.float32)


def _array_module(step_number):
    """numpy for a concrete Python step (exact float64, as Trax's Python arithmetic), else jax.numpy."""
    return np if isinstance(step_number, (numbers.Number, np.generic, np.ndarray)) else jnp


def _rsqrt(step_number, tail_start: int, body_value: float) -> jax.Array:
    """A tail falling as 1/sqrt(step), joining the body at `tail_start`."""
    return body_value * (math.sqrt(tail_start) / _array_module(step_number).sqrt(step_number))


@gin.configurable
class CosineSawtoothTail:
    """A tail of half-cosine cycles from `body_value` down to `min_value` (warm restarts).

    See Loshchilov & Hutter (2017), https://arxiv.org/abs/1608.03983. (Trax's
    `_CosineSawtoothTail`.)
    """

    def __init__(self, steps_per_cycle: int, min_value: float = 1e-5):
        """Configures the cycles.

        Args:
            steps_per_cycle: Steps per cycle; the rate is highest at the start
                of each cycle and lowest at its end.
            min_value: The rate at the end of each cycle.
        """
        self._steps_per_cycle = steps_per_cycle
        self._min_value = min_value

    def __call__(self, step_number, tail_start: int, body_value: float) -> jax.Array:
        """The learning rate at `step_number` (in the tail)."""
        position_in_cycle = ((step_number - tail_start) / self._steps_per_cycle) % 1.0
        theta = math.pi * position_in_cycle
        return self._min_value + (body_value - self._min_value) * 0.5 * (1 + _array_module(theta).cos(theta))


# Trax's private names, which Trax code and tests reach for.
_BodyAndTail = BodyAndTail
_CosineSawtoothTail = CosineSawtoothTail
