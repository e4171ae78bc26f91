"""Shifting sequences in time: SequenceLayers' Delay and Lookahead (Trax's ShiftRight is in attention.py).

Both keep SequenceLayers' semantics (sequence_layers/jax/dsp.py): layer-wise,
`Delay(length)` inserts `length` invalid steps in front (the sequence gets
longer) and `Lookahead(length)` drops the first `length` steps (it gets
shorter). Their streaming latencies say so: a stream of `T` steps, flushed
with `input_latency` more and with the first `output_latency` outputs
dropped, gives the layer-wise `T + length` (Delay) or `T - length`
(Lookahead) steps.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.sequence import as_sequence, like_input  # noqa: F401  (their old home; users' code imports them here)


class Delay(base.Layer):
    """Delays a sequence by `length` steps: `y[t] = x[t - length]`, the first `length` steps invalid.

    n_in=1, n_out=1; `[batch, time, ...]` -> `[batch, time + length, ...]`
    with `delay_layer_output=True` (the default): layer-wise the output is the
    input after `length` invalid steps (SequenceLayers' `x.pad_time(length,
    0, valid=False)`), and step-wise equals it with no output latency
    (input_latency = length flushes the last inputs out). With
    `delay_layer_output=False` the layer-wise output is the input as it is and
    only the step-wise output is delayed (output_latency = length): the delay
    that lines up a branch with another one's step-wise latency.

    Predict mode: the state holds the last `length` input steps and their
    mask (invalid at the start of a stream).
    """

    handles_sequences = True

    def __init__(self, length: int, delay_layer_output: bool = True, mode: str = "train"):
        checks.check_non_negative("Delay", length=length)
        checks.check_mode("Delay", mode)
        super().__init__(name=f"Delay_{length}")
        self._length = int(length)
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
        if self._mode != "predict" or not self._length:
            return (), ()
        values = seq.values_of(input_signature)
        shape = (values.shape[0], self._length) + tuple(values.shape[2:])
        return (), seq.Sequence(jnp.zeros(shape, values.dtype), jnp.zeros(shape[:2], jnp.bool_))

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        if not self._length:
            return seq.like_input(x, was_sequence), state
        if self._mode == "predict":
            joined = seq.Sequence.concatenate_sequences([state, x.mask_invalid()])
            block = x.shape[1]
            return seq.like_input(joined[:, :block], was_sequence), joined[:, block:]
        if not self._delay_layer_output:
            return seq.like_input(x, was_sequence), state
        return seq.like_input(x.mask_invalid().pad_time(self._length, 0, valid=False), was_sequence), state


class Lookahead(base.Layer):
    """Looks `length` steps ahead: `y[t] = x[t + length]`.

    n_in=1, n_out=1; `[batch, time, ...]` -> `[batch, time - length, ...]`:
    layer-wise the first `length` steps are dropped (SequenceLayers'
    Lookahead); with `preserve_length_in_layer=True` invalid steps are padded
    at the end to keep the length. Step-wise the output is the input with the
    first `length` steps of the stream marked invalid (input_latency = 0,
    output_latency = length).

    Predict mode: the state holds the number of steps seen per row (int32).
    SequenceLayers counts valid steps there; counting time steps, as
    layer-wise does, gives the same result for rows that start valid and
    keeps the two modes equal for any row.
    """

    handles_sequences = True

    def __init__(self, length: int, preserve_length_in_layer: bool = False, mode: str = "train"):
        checks.check_non_negative("Lookahead", length=length)
        checks.check_mode("Lookahead", mode)
        super().__init__(name=f"Lookahead_{length}")
        self._length = int(length)
        self._preserve_length = preserve_length_in_layer
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
        if not self._length:
            return seq.like_input(x, was_sequence), state
        if self._mode == "predict":
            steps = state.reshape((-1, 1)) + jnp.arange(x.shape[1]).reshape((1, -1))
            y = seq.Sequence(x.values, x.mask & (steps >= self._length))
            return seq.like_input(y, was_sequence), state + x.shape[1]
        y = x[:, self._length :]
        if self._preserve_length:
            y = y.pad_time(0, x.shape[1] - y.shape[1], valid=False)
        return seq.like_input(y, was_sequence), state
