"""Trax's pooling layers (MaxPool, SumPool, AvgPool), streaming along time.

Windows cover every axis but the first and the last: `[batch, time, channels]`
inputs take a `pool_size` of one entry (time), `[batch, time, width,
channels]` two. Time (axis 1) pads and streams as a convolution's time axis
does (see streaming/window.py: paddings, masks, latencies): 'VALID' and 'SAME'
are Trax's (lax's rules), and SequenceLayers' streaming modes ('causal',
'reverse_causal', 'semicausal', 'causal_valid', 'reverse_causal_valid') are
accepted too, for every windowed axis or one per axis.

Padding never enters a result, as in Trax: max pooling pads with -inf,
sums with 0, and averages divide by the number of real steps in the window.
Invalid steps count as padding (so on plain arrays AvgPool is Trax's, and
on Sequences it is SequenceLayers' AveragePooling1D with
masked_average=True), and invalid output steps hold 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming


def _lowest(dtype):
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating) or dtype == jnp.bfloat16:
        return -np.inf
    return False if dtype == np.bool_ else np.iinfo(dtype).min


class _Pool(base.Layer):
    """A windowed reduction along every axis but the first and the last; see the module docstring."""

    _kind = ""
    handles_sequences = True

    def __init__(self, pool_size=(2, 2), strides=None, padding="VALID", *, mode: str = "train"):
        layer_name = self._kind + "Pool"
        if isinstance(pool_size, (int, np.integer)):
            pool_size = (pool_size,)
        n = len(tuple(pool_size))
        self._pool_size = checks.positive_ints(layer_name, "pool_size", pool_size, n)
        self._strides = checks.positive_ints(
            layer_name, "strides", (1,) * n if strides is None else strides, n
        )
        self._paddings = streaming.window.normalize_padding(layer_name, padding, n, trax_same=True)
        super().__init__(name=f"{layer_name}{self._pool_size}".replace(" ", ""))
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return self.window.spec()

    @property
    def window(self) -> streaming.TimeWindow:
        """The window along time (the first windowed axis)."""
        return streaming.TimeWindow(self._pool_size[0], self._strides[0], 1, self._paddings[0])

    # --- The computation. ----------------------------------------------------------------

    def _pad_value(self, dtype):
        return 0

    def _reduce(self, values, init_value, computation, other_pads):
        n = len(self._pool_size)
        return jax.lax.reduce_window(
            values,
            np.asarray(init_value, values.dtype),
            computation,
            (1,) + self._pool_size + (1,),
            (1,) + self._strides + (1,),
            [(0, 0), (0, 0)] + list(other_pads) + [(0, 0)] * (values.ndim - n - 1),
        )

    def _pool(self, values, real_mask, other_pads):
        raise NotImplementedError

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict" or not self.supports_step:
            return (), ()
        values = seq.values_of(input_signature)
        checks.check_rank(self.name, values, len(self._pool_size) + 2)
        return (), self.window.initial_state(values, self._pad_value(values.dtype))

    def forward(self, x, weights, state, rng):
        if self._mode == "predict":
            streaming.check_steps(self)
        x, was_sequence = seq.as_sequence(x)
        checks.check_rank(self.name, x, len(self._pool_size) + 2)
        pad_value = self._pad_value(x.dtype)
        valid = seq.expand_mask(x.mask, x.ndim)
        x = seq.Sequence(jnp.where(valid, x.values, jnp.asarray(pad_value, x.dtype)), x.mask)
        stream, front, state = self.window.stream(x, state, self._mode, pad_value)
        # Steps that hold real, valid inputs: not padding (which 'causal_valid' marks valid).
        real = stream.mask
        if self._mode != "predict" and self.window.front_valid:
            real = jnp.pad(x.mask, [(0, 0), (front, stream.shape[1] - front - x.shape[1])])
        other_pads = [
            streaming.window.explicit_padding(p, k, s, 1, length)
            for p, k, s, length in zip(
                self._paddings[1:], self._pool_size[1:], self._strides[1:], x.shape[2:]
            )
        ]
        y = self._pool(stream.values, real, other_pads)
        mask = self.window.output_mask(stream.mask, y.shape[1], front)
        y = jnp.where(seq.expand_mask(mask, y.ndim), y, jnp.zeros((), y.dtype))
        return seq.like_input(seq.Sequence(y, mask), was_sequence), state


class MaxPool(_Pool):
    """Trax's MaxPool: the max of each window (padding never wins).

    n_in=1, n_out=1; `[batch, time, ..., channels]` -> `[batch, time /
    strides[0], ..., channels]`, windows over every axis but the first and
    the last (`pool_size` has one entry per axis).

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    _kind = "Max"

    def _pad_value(self, dtype):
        return _lowest(dtype)

    def _pool(self, values, real_mask, other_pads):
        return self._reduce(values, _lowest(values.dtype), jax.lax.max, other_pads)


class SumPool(_Pool):
    """Trax's SumPool: the sum of each window (padding adds nothing).

    n_in=1, n_out=1; shapes as MaxPool.

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    _kind = "Sum"

    def _pool(self, values, real_mask, other_pads):
        return self._reduce(values, 0, jax.lax.add, other_pads)


class AvgPool(_Pool):
    """Trax's AvgPool: the mean of each window's real (not padding, valid) entries.

    n_in=1, n_out=1; shapes as MaxPool. 'causal_valid' does not stream here
    (its front padding counts as valid for the mask but not in the mean).

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    _kind = "Avg"

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        spec = self.window.spec()
        if self.window.front_valid:
            return spec.not_streaming(
                "its 'causal_valid' front padding counts as valid for the mask but not in the mean"
            )
        return spec

    def _pool(self, values, real_mask, other_pads):
        if not jnp.issubdtype(values.dtype, jnp.inexact):
            values = values.astype(jnp.float32)
        total = self._reduce(values, 0, jax.lax.add, other_pads)
        # The count is separable: real time steps times real (unpadded) positions on the other axes.
        n = len(self._pool_size)
        time_count = jax.lax.reduce_window(
            real_mask.astype(values.dtype),
            np.asarray(0, values.dtype),
            jax.lax.add,
            (1, self._pool_size[0]),
            (1, self._strides[0]),
            [(0, 0), (0, 0)],
        )
        ones = jnp.ones((1, 1) + tuple(values.shape[2 : n + 1]) + (1,) * (values.ndim - n - 1), values.dtype)
        other_count = jax.lax.reduce_window(
            ones,
            np.asarray(0, values.dtype),
            jax.lax.add,
            (1, 1) + self._pool_size[1:] + (1,) * (values.ndim - n - 1),
            (1, 1) + self._strides[1:] + (1,) * (values.ndim - n - 1),
            [(0, 0), (0, 0)] + list(other_pads) + [(0, 0)] * (values.ndim - n - 1),
        )
        count = jnp.reshape(time_count, time_count.shape + (1,) * (total.ndim - 2)) * other_count
        return total / jnp.where(count > 0, count, jnp.ones((), count.dtype))
