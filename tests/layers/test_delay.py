"""Delay and Lookahead: exact values, and the SequenceLayers notebook's latency examples."""

import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.shapes import ShapeDtype

X = jnp.arange(1.0, 19.0).reshape((1, 18, 1))  # The notebook's 18 steps, values 1..18.


def step_by_step(layer, x: Sequence, flush: int = 0, drop: int = 0) -> Sequence:
    """Feeds x one step at a time (after `flush` invalid steps are appended), drops `drop` outputs."""
    predict, state = tl.start_stream(layer, x[:, :1], layer.weights)
    x = x.pad_time(0, flush, valid=False)
    outputs = []
    for t in range(x.shape[1]):
        y, state = predict.pure_fn(x[:, t : t + 1], layer.weights, state, None)
        outputs.append(y)
    return Sequence.concatenate_sequences(outputs)[:, drop:]


def valid_values(y: Sequence):
    return np.asarray(y.mask_invalid().values[0, :, 0])


def test_delay_latencies_and_values_as_in_the_notebook():
    layer = tl.Delay(3, mode="eval")
    layer.init(ShapeDtype((1, 18, 1)))
    assert (layer.input_latency, layer.output_latency) == (3, 0)
    x = Sequence.from_values(X)
    y = layer(x)
    np.testing.assert_array_equal(valid_values(y), [0, 0, 0] + list(range(1, 16)))
    assert bool(y.mask.all())
    # Without flushing, the step-wise output is the layer-wise one; its inputs' last steps are still inside.
    np.testing.assert_array_equal(valid_values(step_by_step(layer, x)), valid_values(y))
    # Flushing input_latency invalid steps releases the last inputs.
    flushed = step_by_step(layer, x, flush=3)
    np.testing.assert_array_equal(valid_values(flushed)[:18], valid_values(y))
    np.testing.assert_array_equal(valid_values(flushed)[18:], [16, 17, 18])


def test_lookahead_latencies_and_values_as_in_the_notebook():
    layer = tl.Lookahead(3, mode="eval")
    layer.init(ShapeDtype((1, 18, 1)))
    assert (layer.input_latency, layer.output_latency) == (0, 3)
    x = Sequence.from_values(X)
    y = layer(x)
    np.testing.assert_array_equal(valid_values(y), list(range(4, 19)) + [0, 0, 0])
    np.testing.assert_array_equal(y.mask[0], [True] * 15 + [False] * 3)
    step = step_by_step(layer, x)
    np.testing.assert_array_equal(step.mask[0, :3], [False] * 3)  # The dropped outputs are invalid.
    trimmed = step[:, 3:]
    np.testing.assert_array_equal(valid_values(trimmed), valid_values(y)[:15])


def test_delay_without_delaying_the_layer_output():
    layer = tl.Delay(2, delay_layer_output=False, mode="eval")
    layer.init(ShapeDtype((1, 18, 1)))
    assert (layer.input_latency, layer.output_latency) == (2, 2)
    x = Sequence.from_values(X)
    np.testing.assert_array_equal(valid_values(layer(x)), np.arange(1, 19))
    step = step_by_step(layer, x, flush=2)
    np.testing.assert_array_equal(step.mask[0, :2], [False, False])
    np.testing.assert_array_equal(valid_values(step[:, 2:]), np.arange(1, 19))


def test_plain_arrays_in_plain_arrays_out():
    assert isinstance(tl.Delay(1)(X), jnp.ndarray) and not isinstance(tl.Delay(1)(X), Sequence)
    np.testing.assert_array_equal(np.asarray(tl.Lookahead(1)(X))[0, :, 0], list(range(2, 19)) + [0])


@pytest.mark.parametrize("layer", [tl.Delay, tl.Lookahead])
def test_negative_length_is_refused(layer):
    with pytest.raises(ValueError, match="length must be >= 0, got length=-1"):
        layer(-1)
