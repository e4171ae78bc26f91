"""Shifting sequences in time: SequenceLayers' Delay and Lookahead (Trax's ShiftRight is in attention.py)."""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.sequence import as_sequence, like_input  # noqa: F401  (their old home; users' code imports them here)


def _check_length(layer_name: str, length: int) -> None:
    if length < 0:
        raise ValueError(f"{layer_name}: length must be >= 0, got length={length}")


def _time_shifted_buffer(buffer: seq.Sequence, x: seq.Sequence, length: int):
    """(first x.shape[1] steps of buffer+x, the last `length` steps as the new buffer)."""
    joined = seq.Sequence.concatenate_sequences([buffer, x])
    block = x.shape[1]
    return joined[:, :block], joined[:, block:]


class Delay(base.Layer):
    """Delays a sequence by `length` steps: `y[t] = x[t - length]`.

    n_in=1, n_out=1; `[batch, time, ...]` -> `[batch, time, ...]`. With
    `delay_layer_output=True` (the default) the layer-wise output is delayed
    too, starting with `length` valid zero steps (output_latency = 0);
    otherwise only the step-wise output is delayed and its first `length`
    steps are invalid (output_latency = length). input_latency = length.

    Layer-wise the last `length` input steps fall off the end (the length is
    kept), so a layer that looks ahead (Lookahead, lookahead attention or
    convolution) placed after a Delay sees different steps when more padding
    follows: put Delay after lookahead layers, not before (as in SequenceLayers).

    Predict mode: the state holds the last `length` input steps and their mask.
    """

    handles_sequences = True

    def __init__(self, length: int, delay_layer_output: bool = True, mode: str = "train"):
        _check_length("Delay", length)
        super().__init__(name=f"Delay_{length}")
        self._length = length
        self._delay_layer_output = delay_layer_output
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        if self._delay_layer_output:
            return streaming.StreamingSpec(
                input_latency=self._length, receptive_field=(self._length, -self._length)
            )
        return streaming.StreamingSpec(input_latency=self._length, output_latency=self._length)

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        values = seq.values_of(input_signature)
        shape = (values.shape[0], self._length) + tuple(values.shape[2:])
        valid = self._delay_layer_output
        buffer = seq.Sequence(jnp.zeros(shape, values.dtype), jnp.full(shape[:2], valid, dtype=jnp.bool_))
        return (), buffer

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        if self._length == 0:
            return seq.like_input(x, was_sequence), state
        if self._mode == "predict":
            y, buffer = _time_shifted_buffer(state, x.mask_invalid(), self._length)
            return seq.like_input(y, was_sequence), buffer
        if not self._delay_layer_output:
            return seq.like_input(x, was_sequence), state
        y = x.mask_invalid().pad_time(self._length, 0, valid=True)[:, : x.shape[1]]
        return seq.like_input(y, was_sequence), state


class Lookahead(base.Layer):
    """Looks `length` steps ahead: `y[t] = x[t + length]`, the end padded invalid.

    n_in=1, n_out=1. Layer-wise the first `length` steps are dropped; step-wise
    the output is the input with the first `length` steps of the stream marked
    invalid (input_latency = 0, output_latency = length).

    Predict mode: the state holds the number of steps seen per row (int32).
    """

    handles_sequences = True

    def __init__(self, length: int, mode: str = "train"):
        _check_length("Lookahead", length)
        super().__init__(name=f"Lookahead_{length}")
        self._length = length
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.StreamingSpec(
            output_latency=self._length, receptive_field=(-self._length, self._length)
        )

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        values = seq.values_of(input_signature)
        return (), jnp.zeros((values.shape[0],), jnp.int32)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        if self._length == 0:
            return seq.like_input(x, was_sequence), state
        if self._mode == "predict":
            steps = state.reshape((-1, 1)) + jnp.arange(x.shape[1]).reshape((1, -1))
            y = seq.Sequence(x.values, x.mask & (steps >= self._length))
            return seq.like_input(y, was_sequence), state + x.shape[1]
        y = x[:, self._length :].pad_time(0, min(self._length, x.shape[1]), valid=False)
        return seq.like_input(y, was_sequence), state
