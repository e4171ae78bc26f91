"""Pooling: Trax's results on plain arrays, hand-checked masks and means, SequenceLayers golden numbers,
streaming."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, pooling, test_utils
from trax_sl.shapes import ShapeDtype


def _lax_pool(x, init, op, pool_size, strides, padding):
    return jax.lax.reduce_window(x, init, op, (1,) + pool_size + (1,), (1,) + strides + (1,), padding)


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("pool_size, strides", [((2, 2), (2, 2)), ((3, 2), (1, 1)), ((3, 3), (2, 1))])
def test_trax_results_on_images(padding, pool_size, strides):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32))
    np.testing.assert_allclose(
        pooling.MaxPool(pool_size, strides, padding)(x),
        _lax_pool(x, -jnp.inf, jax.lax.max, pool_size, strides, padding),
        rtol=1e-6,
    )
    total = _lax_pool(x, 0.0, jax.lax.add, pool_size, strides, padding)
    np.testing.assert_allclose(pooling.SumPool(pool_size, strides, padding)(x), total, rtol=1e-5, atol=1e-6)
    # Trax's AvgPool: padding is not counted.
    count = _lax_pool(jnp.ones_like(x), 0.0, jax.lax.add, pool_size, strides, padding)
    np.testing.assert_allclose(
        pooling.AvgPool(pool_size, strides, padding)(x), total / count, rtol=1e-5, atol=1e-6
    )


def test_trax_defaults_and_names():
    layer = pooling.MaxPool()
    assert layer.name == "MaxPool(2,2)" and pooling.AvgPool((3,)).name == "AvgPool(3,)"
    x = jnp.arange(16.0).reshape((1, 4, 4, 1))
    np.testing.assert_allclose(layer(x)[0, :, :, 0], [[5, 6, 7], [9, 10, 11], [13, 14, 15]])
    assert not layer.supports_step  # Stride 1 'VALID' shortens time.
    assert pooling.MaxPool(strides=(2, 2)).supports_step  # A window of 2 with stride 2 keeps time / 2.


X5 = jnp.asarray([1.0, 5.0, 2.0, 0.0, 3.0]).reshape((1, 5, 1))


@pytest.mark.parametrize(
    "layer, expected",
    [
        (pooling.MaxPool((3,), padding="causal"), [1, 5, 5, 5, 3]),
        (pooling.SumPool((3,), padding="reverse_causal"), [8, 7, 5, 3, 3]),
        (pooling.AvgPool((3,), padding="causal"), [1, 3, 8 / 3, 7 / 3, 5 / 3]),  # Padding not counted.
        (pooling.AvgPool((3,), padding="SAME"), [3, 8 / 3, 7 / 3, 5 / 3, 3 / 2]),
        (pooling.MaxPool((2,), (2,), padding="semicausal"), [5, 2, 3]),
        (pooling.SumPool((3,), (2,), padding="VALID"), [8, 5]),
    ],
)
def test_hand_checked_values(layer, expected):
    np.testing.assert_allclose(layer(X5)[0, :, 0], expected, rtol=1e-6)


def test_invalid_steps_are_not_counted_and_outputs_past_the_end_are_zero():
    x = jnp.asarray([1.0, 5.0, 2.0, np.nan, -np.inf]).reshape((1, 5, 1))
    x = seq.Sequence.from_lengths(x, jnp.asarray([3]))
    y = pooling.AvgPool((3,), padding="reverse_causal")(x)
    np.testing.assert_allclose(y.values[0, :, 0], [8 / 3, 3.5, 2, 0, 0], rtol=1e-6)
    np.testing.assert_array_equal(y.mask[0], [True, True, True, False, False])
    y = pooling.MaxPool((3,), padding="causal")(x)
    np.testing.assert_allclose(y.values[0, :, 0], [1, 5, 5, 0, 0])  # Not -inf past the end.
    y = pooling.MaxPool((2,), padding="causal_valid")(x)
    np.testing.assert_array_equal(y.mask[0], [True, True, True, False, False])
    y = pooling.MaxPool((2,), padding="reverse_causal_valid")(x)
    np.testing.assert_array_equal(y.mask[0], [True, True, False, False, False])


def test_integer_inputs():
    x = jnp.asarray([[3, -1, 4, 1]], jnp.int32).reshape((1, 4, 1))
    y = pooling.MaxPool((2,), padding="causal")(x)
    assert y.dtype == jnp.int32
    np.testing.assert_array_equal(y[0, :, 0], [3, 3, 4, 4])


# --- Golden numbers from SequenceLayers 0.2 (sl.MaxPooling1D, sl.AveragePooling1D(masked_average=True)) ---
# The input is the formula below, shape (2, 8, 3), lengths (8, 5); outputs are SL's, with invalid steps
# zeroed: name: (output shape, output mask, output values flattened, (SL input_latency, output_latency)).

# fmt: off
GOLDEN = {
    'MAXPOOL_SEMICAUSAL': (
        (2, 4, 3),
        [[1, 1, 1, 1], [1, 1, 1, 0]],
        [0.67546, 0.84147, 0.99166, 0.67546, 0.85044, 0.98936, 0.66297, 0.85044, 0.98936, 0.65029, 0.85916,
        0.98677, 0.34331, 0.86764, 0.98391, 0.63742, 0.86764, 0.98391, 0.35906, 0.87588, 0.98076, 0.0, 0.0,
        0.0],
        (0, 0),
    ),
    'MAXPOOL_REVERSE_CAUSAL': (
        (2, 8, 3),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [0.67546, 0.84147, 0.99166, 0.67546, 0.85044, 0.98936, 0.66297, 0.85044, 0.98936, 0.66297, 0.85044,
        0.98936, 0.66297, 0.85916, 0.98677, 0.65029, 0.85916, 0.98677, 0.65029, 0.85916, 0.98677, 0.65029,
        0.00796, -0.63811, 0.63742, 0.86764, 0.98391, 0.63742, 0.86764, 0.98391, 0.63742, 0.87588, 0.98076,
        0.35906, 0.87588, 0.98076, 0.35906, 0.87588, 0.98076, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (2, 2),
    ),
    'AVGPOOL_CAUSAL': (
        (2, 8, 3),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [0.29552, 0.84147, 0.99166, 0.48549, 0.44153, 0.1899, -0.00218, -0.00013, 0.00198, 0.00316, 0.00285,
        0.00121, -0.00101, -0.00275, -0.0032, -0.00214, -8e-05, 0.00202, 0.00317, 0.00283, 0.00116, -0.00106,
        -0.00278, -0.00319, -0.98406, -0.8672, -0.34248, -0.32038, 0.00022, 0.32071, -0.00111, -0.0028,
        -0.00318, -0.00206, 3e-05, 0.0021, 0.00319, 0.00277, 0.00106, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0],
        (0, 0),
    ),
    'AVGPOOL_VALID_S2': (
        (2, 4, 3),
        [[1, 1, 1, 1], [1, 1, 0, 0]],
        [0.48549, 0.44153, 0.1899, -0.33299, -0.01651, 0.30774, -0.15898, -0.42534, -0.49165, 0.48888,
        0.43356, 0.17433, -0.32038, 0.00022, 0.32071, -0.17475, -0.43378, -0.4888, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0],
        (0, 0),
    ),
}
# fmt: on

GOLDEN_LAYERS = {
    "MAXPOOL_SEMICAUSAL": lambda: pooling.MaxPool((3,), (2,), "semicausal"),
    "MAXPOOL_REVERSE_CAUSAL": lambda: pooling.MaxPool((3,), (1,), "reverse_causal"),
    "AVGPOOL_CAUSAL": lambda: pooling.AvgPool((3,), (1,), "causal"),
    "AVGPOOL_VALID_S2": lambda: pooling.AvgPool((2,), (2,), "VALID"),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_LAYERS))
def test_golden_numbers_from_sequence_layers(name):
    out_shape, out_mask, out_values, sl_latencies = GOLDEN[name]
    values = np.sin(0.7 * np.arange(48) + 0.3).reshape((2, 8, 3)).astype(np.float32)
    layer = GOLDEN_LAYERS[name]()
    y = layer(seq.Sequence.from_lengths(jnp.asarray(values), jnp.asarray([8, 5])))
    assert y.shape == out_shape
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(out_mask, bool))
    np.testing.assert_allclose(np.asarray(y.values).reshape(-1), out_values, atol=2e-5)
    assert (layer.input_latency, layer.output_latency) == sl_latencies


# --- Streaming --------------------------------------------------------------------------------------


def test_streaming_properties():
    layer = pooling.MaxPool((5,), (2,), "reverse_causal")
    assert (layer.block_size, layer.output_ratio, layer.input_latency, layer.output_latency) == (
        2,
        fractions.Fraction(1, 2),
        4,
        2,
    )
    assert layer.receptive_field == (0, 4) and layer.window.buffer_width == 4
    layer = pooling.AvgPool((4, 3), (2, 1), ("semicausal", "SAME"))
    assert (layer.block_size, layer.input_latency, layer.output_latency, layer.receptive_field) == (
        2,
        0,
        0,
        (2, 1),
    )


# Every padding that streams with strides 1, 2, 3, spread over the three pools.
CONTRACT_CASES = [
    (cls, padding, pool_size, stride)
    for padding in ("causal", "reverse_causal", "semicausal", "SAME", "causal_valid", "reverse_causal_valid")
    for cls, pool_size, stride in ((pooling.MaxPool, 3, 1), (pooling.AvgPool, 4, 2), (pooling.SumPool, 3, 3))
    if not (cls is pooling.AvgPool and padding == "causal_valid")
] + [
    (pooling.MaxPool, "causal_valid", 4, 2),
    (pooling.AvgPool, "VALID", 2, 2),
    (pooling.MaxPool, "VALID", 3, 3),
]


@pytest.mark.parametrize("cls, padding, pool_size, stride", CONTRACT_CASES)
def test_pool_1d_contract(cls, padding, pool_size, stride):
    test_utils.verify_contract(
        lambda mode: cls((pool_size,), (stride,), padding, mode=mode), ShapeDtype((2, 12, 3))
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda mode: pooling.MaxPool((2, 2), (2, 2), mode=mode),
        lambda mode: pooling.AvgPool((3, 3), (1, 2), ("causal", "SAME"), mode=mode),
        lambda mode: pooling.SumPool((3, 2), (2, 1), ("reverse_causal", "VALID"), mode=mode),
    ],
)
def test_pool_2d_contract(make):
    test_utils.verify_contract(make, ShapeDtype((2, 8, 5, 2)))


def test_avg_pool_causal_valid_refuses_predict_mode():
    layer = pooling.AvgPool((3,), padding="causal_valid", mode="predict")
    assert not layer.supports_step
    with pytest.raises(base.LayerError, match="AvgPool\\(3,\\) does not stream .*causal_valid"):
        layer.init(ShapeDtype((1, 6, 2)))


@pytest.mark.parametrize(
    "make, error, message",
    [
        (
            lambda: pooling.MaxPool((0, 2)),
            ValueError,
            "MaxPool: pool_size must be an integer >= 1, got pool_size=0",
        ),
        (lambda: pooling.AvgPool((2, 2), strides=(1,)), ValueError, "AvgPool: strides must have 2 entries"),
        (lambda: pooling.SumPool((2,), padding="full"), ValueError, "SumPool: padding must be one of"),
    ],
)
def test_constructor_errors(make, error, message):
    with pytest.raises(error) as e:
        make()
    assert message in str(e.value)


def test_input_rank_error_names_the_layer():
    with pytest.raises(base.LayerError, match=r"MaxPool\(2,2\): expected inputs of rank 4"):
        pooling.MaxPool()(jnp.ones((2, 8, 3)))
