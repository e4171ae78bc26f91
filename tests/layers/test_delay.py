"""Delay and Lookahead: SequenceLayers 0.2's values, layer-wise and step-wise, and the notebook's latencies."""

import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype

# The notebook's 18 steps (values 1..18) and a second row of 11 valid steps (19..29).
X = jnp.arange(1.0, 37.0).reshape((2, 18, 1))
LENGTHS = jnp.asarray([18, 11])

# sequence_layers.jax 0.2 on Sequence(X, lengths 18 and 11): layer-wise, and step-wise one step
# at a time after input_latency invalid steps (step outputs kept whole, output_latency included).
# DELAY3: latencies (3, 0)
SL_DELAY3 = {
    "layer_values": [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [0, 0, 0, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "layer_mask": [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_values": [
        [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [0, 0, 0, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_mask": [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
}
# DELAY2_STEP_ONLY: latencies (2, 2)
SL_DELAY2_STEP_ONLY = {
    "layer_values": [
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "layer_mask": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_values": [
        [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [0, 0, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_mask": [
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
}
# LOOKAHEAD3: latencies (0, 3)
SL_LOOKAHEAD3 = {
    "layer_values": [
        [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "layer_mask": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_values": [
        [0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [0, 0, 0, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_mask": [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
}
# LOOKAHEAD3_PRESERVE: latencies (0, 3)
SL_LOOKAHEAD3_PRESERVE = {
    "layer_values": [
        [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0, 0, 0],
        [22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    "layer_mask": [
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_values": [
        [0, 0, 0, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18],
        [0, 0, 0, 22, 23, 24, 25, 26, 27, 28, 29, 0, 0, 0, 0, 0, 0, 0],
    ],
    "step_mask": [
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    ],
}


def step_by_step(layer, x: Sequence, flush: int) -> Sequence:
    """Feeds x one step at a time after appending `flush` invalid steps (nothing dropped)."""
    predict, state = tl.start_stream(layer, x[:, :1], layer.weights)
    x = x.pad_time(0, flush, valid=False)
    outputs = []
    for t in range(x.shape[1]):
        y, state = predict.pure_fn(x[:, t : t + 1], layer.weights, state, None)
        outputs.append(y)
    return Sequence.concatenate_sequences(outputs)


@pytest.mark.parametrize(
    "make, latencies, expected",
    [
        (lambda: tl.Delay(3, mode="eval"), (3, 0), SL_DELAY3),
        (lambda: tl.Delay(2, delay_layer_output=False, mode="eval"), (2, 2), SL_DELAY2_STEP_ONLY),
        (lambda: tl.Lookahead(3, mode="eval"), (0, 3), SL_LOOKAHEAD3),
        (lambda: tl.Lookahead(3, preserve_length_in_layer=True, mode="eval"), (0, 3), SL_LOOKAHEAD3_PRESERVE),
    ],
    ids=["delay", "delay_step_only", "lookahead", "lookahead_preserving_length"],
)
def test_layer_wise_and_step_wise_match_sequence_layers(make, latencies, expected):
    """Delay(3): 18 steps in, 21 out, the first 3 invalid; Lookahead(3): the first 3 dropped."""
    layer = make()
    layer.init(ShapeDtype((2, 18, 1)))
    assert (layer.input_latency, layer.output_latency) == latencies
    x = Sequence.from_lengths(X, LENGTHS)
    for y, which in ((layer(x), "layer"), (step_by_step(layer, x, flush=latencies[0]), "step")):
        np.testing.assert_array_equal(np.asarray(y.mask).astype(int), expected[f"{which}_mask"])
        np.testing.assert_array_equal(
            np.asarray(y.mask_invalid().values[..., 0]), expected[f"{which}_values"]
        )


@pytest.mark.parametrize(
    "make",
    [
        lambda mode: tl.Delay(3, mode=mode),
        lambda mode: tl.Delay(2, delay_layer_output=False, mode=mode),
        lambda mode: tl.Lookahead(3, mode=mode),
        lambda mode: tl.Lookahead(2, preserve_length_in_layer=True, mode=mode),
        lambda mode: tl.Serial(tl.Lookahead(2, mode=mode), tl.Dense(3), tl.Delay(3, mode=mode)),
    ],
    ids=["delay", "delay_step_only", "lookahead", "lookahead_preserving_length", "serial"],
)
def test_contract(make):
    test_utils.verify_contract(make, ShapeDtype((2, 12, 3)))


def test_plain_arrays_in_plain_arrays_out():
    y = tl.Delay(1)(X)
    assert isinstance(y, jnp.ndarray) and not isinstance(y, Sequence) and y.shape == (2, 19, 1)
    np.testing.assert_array_equal(np.asarray(tl.Lookahead(1)(X))[0, :, 0], list(range(2, 19)))


@pytest.mark.parametrize("layer", [tl.Delay, tl.Lookahead])
def test_negative_length_is_refused(layer):
    with pytest.raises(ValueError, match="length must be an integer >= 0, got length=-1"):
        layer(-1)
