"""Layers that reduce or normalize along one axis: Mean, Sum, Min, Max, ArgMax, Softmax and friends.

Names, arguments, defaults and results are Trax's (`trax.layers.core`). On a
`[batch, time, ...]` Sequence, along a channel axis they are pointwise in
time and keep the mask; along the time (or batch) axis only valid steps take
part, so padding never changes a result.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl.layers import streaming
from trax_sl.layers.base import Layer
from trax_sl.layers.distributions import log_softmax


def _axes(axis, ndim: int) -> tuple[int, ...]:
    if axis is None:
        return tuple(range(ndim))
    axes = axis if isinstance(axis, (tuple, list)) else (axis,)
    return tuple(a % ndim for a in axes)


def _lowest(dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    if dtype == jnp.bool_:
        return False
    return jnp.iinfo(dtype).min


def _highest(dtype):
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.inf
    if dtype == jnp.bool_:
        return True
    return jnp.iinfo(dtype).max


class _AlongAxis(Layer):
    """An array function along `axis`; on a Sequence it masks where the axis mixes rows or steps.

    `fn(values)` runs when the axis is a channel axis (pointwise in time: the
    output keeps the mask). When the axis includes batch (0) or time (1),
    `masked_fn(values, valid)` runs instead, with `valid` the mask broadcast
    to the values' shape; its output is a Sequence with the input's mask if
    `keeps_shape`, else a plain array.
    """

    handles_sequences = True

    def __init__(self, name: str, axis, fn, masked_fn, keeps_shape: bool = False):
        super().__init__(name=name)
        self._axis = axis
        self._fn = fn
        self._masked_fn = masked_fn
        self._keeps_shape = keeps_shape

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        # Negative axes count from the channels; None, 0 and 1 take in batch or time.
        axes = self._axis if isinstance(self._axis, (tuple, list)) else (self._axis,)
        if all(a is not None and (a < 0 or a >= 2) for a in axes):
            return streaming.POINTWISE
        return streaming.NOT_STREAMING.not_streaming(
            f"it reduces over axis {self._axis}, which takes in time"
        )

    def forward(self, x, weights, state, rng):
        if not isinstance(x, seq.Sequence):
            return self._fn(x), state
        if not set(_axes(self._axis, x.ndim)) & {0, 1}:
            return seq.Sequence(self._fn(x.values), x.mask), state
        valid = jnp.broadcast_to(seq.expand_mask(x.mask, x.ndim), x.shape)
        y = self._masked_fn(x.values, valid)
        return (seq.Sequence(y, x.mask) if self._keeps_shape else y), state


def _fill(values, valid, fill):
    return jnp.where(valid, values, jnp.asarray(fill, values.dtype))


def _masked_log_softmax(values, valid, axis):
    lse = jax.nn.logsumexp(values, axis=axis, keepdims=True, where=valid)
    return jnp.where(valid, values - lse, jnp.zeros((), values.dtype))


def LogSoftmax(axis: int = -1) -> Layer:  # noqa: N802
    """Returns a layer that applies log softmax (x - logsumexp(x)) along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> same. Along the time (or
    batch) axis of a Sequence only valid steps take part; invalid ones are 0.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "LogSoftmax",
        axis,
        lambda x: log_softmax(x, axis=axis),
        lambda v, valid: _masked_log_softmax(v, valid, axis),
        keeps_shape=True,
    )


def LogSumExp(axis: int = -1) -> Layer:  # noqa: N802
    """Returns a layer that computes log(sum(exp(x))) along `axis`, keeping it as size 1.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[batch, time, 1]`. Along the
    time (or batch) axis of a Sequence only valid steps count, and the result
    is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "LogSumExp",
        axis,
        lambda x: jax.scipy.special.logsumexp(x, axis=axis, keepdims=True),
        lambda v, valid: jax.nn.logsumexp(v, axis=axis, keepdims=True, where=valid),
    )


def Softmax(axis: int = -1) -> Layer:  # noqa: N802
    """Returns a layer that applies softmax along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> same. Along the time (or
    batch) axis of a Sequence only valid steps take part; invalid ones are 0.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "Softmax",
        axis,
        lambda x: jnp.exp(log_softmax(x, axis=axis)),
        lambda v, valid: jnp.where(valid, jnp.exp(_masked_log_softmax(v, valid, axis)), 0),
        keeps_shape=True,
    )


def Mean(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Returns a layer that computes the mean along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[batch, time]` (axis=-1;
    keepdims=True keeps a size-1 axis). Over the time (or batch) axis of a
    Sequence the mean is over valid steps only (0 where none is valid), and
    the result is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """

    def masked(v, valid):
        total = jnp.sum(jnp.where(valid, v, jnp.zeros((), v.dtype)), axis=axis, keepdims=keepdims)
        count = jnp.sum(valid, axis=axis, keepdims=keepdims)
        return total / jnp.maximum(count, 1).astype(total.dtype)

    return _AlongAxis("Mean", axis, lambda x: jnp.mean(x, axis=axis, keepdims=keepdims), masked)


def Min(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Returns a layer that computes the minimum along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[batch, time]` (axis=-1;
    keepdims=True keeps a size-1 axis). Over the time (or batch) axis of a
    Sequence invalid steps are ignored (the dtype's largest value where none
    is valid), and the result is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "Min",
        axis,
        lambda x: jnp.min(x, axis=axis, keepdims=keepdims),
        lambda v, valid: jnp.min(_fill(v, valid, _highest(v.dtype)), axis=axis, keepdims=keepdims),
    )


def Max(axis: int = -1, keepdims: bool = False) -> Layer:  # noqa: N802
    """Returns a layer that computes the maximum along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[batch, time]` (axis=-1;
    keepdims=True keeps a size-1 axis). Over the time (or batch) axis of a
    Sequence invalid steps are ignored (the dtype's lowest value where none
    is valid), and the result is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "Max",
        axis,
        lambda x: jnp.max(x, axis=axis, keepdims=keepdims),
        lambda v, valid: jnp.max(_fill(v, valid, _lowest(v.dtype)), axis=axis, keepdims=keepdims),
    )


def Sum(axis: int | None = None, keepdims: bool = False) -> Layer:  # noqa: N802
    """Returns a layer that computes the sum along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[]` (axis=None: all values;
    keepdims=True keeps size-1 axes). Over the time (or batch) axis of a
    Sequence invalid steps count as 0, and the result is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "Sum",
        axis,
        lambda x: jnp.sum(x, axis=axis, keepdims=keepdims),
        lambda v, valid: jnp.sum(_fill(v, valid, 0), axis=axis, keepdims=keepdims),
    )


def ArgMax(axis: int = -1) -> Layer:  # noqa: N802
    """Returns a layer that computes the index of the maximum along `axis`.

    n_in=1, n_out=1. `[batch, time, depth]` -> `[batch, time]` int32. Over
    the time (or batch) axis of a Sequence invalid steps are ignored, and the
    result is a plain array.

    Predict mode: stateless; streams with block_size 1 (along a channel axis).
    """
    return _AlongAxis(
        "ArgMax",
        axis,
        lambda x: jnp.argmax(x, axis=axis),
        lambda v, valid: jnp.argmax(_fill(v, valid, _lowest(v.dtype)), axis=axis),
    )
