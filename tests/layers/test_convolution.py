"""Convolutions: hand-checked values, SequenceLayers 0.2 golden numbers, streaming, Trax compatibility."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, streaming, test_utils
from trax_sl.layers import convolution as conv
from trax_sl.shapes import ShapeDtype

STREAMING_PADDINGS = (
    "causal",
    "reverse_causal",
    "semicausal",
    "SAME",
    "causal_valid",
    "reverse_causal_valid",
)


def _conv1d_123(padding, length=4, stride=1, dilation_rate=1):
    """Conv1d with kernel [1, 2, 3] and no bias, run on a unit impulse of `length` steps."""
    layer = conv.Conv1d(1, 3, stride=stride, padding=padding, use_bias=False, dilation_rate=dilation_rate)
    x = np.zeros((1, length, 1), np.float32)
    x[0, 0, 0] = 1.0
    w = jnp.asarray([1.0, 2.0, 3.0]).reshape((3, 1, 1))
    return np.asarray(layer(jnp.asarray(x), weights=w))[0, :, 0]


@pytest.mark.parametrize(
    "padding, stride, dilation_rate, length, expected",
    [
        # y[t] = sum_j w[j] x[t - front + j * dilation]: the impulse at 0 meets w[front - t].
        ("causal", 1, 1, 4, [3, 2, 1, 0]),
        ("reverse_causal", 1, 1, 4, [1, 0, 0, 0]),
        ("SAME", 1, 1, 4, [2, 1, 0, 0]),
        ("same", 1, 1, 4, [2, 1, 0, 0]),
        ("semicausal", 1, 1, 4, [3, 2, 1, 0]),
        ("VALID", 1, 1, 4, [1, 0]),
        ("causal", 2, 1, 4, [3, 1]),
        ("semicausal", 2, 1, 4, [2, 0]),  # Front padding eff - s = 1.
        ("SAME", 2, 1, 4, [1, 0]),  # lax: (eff - s) = 1 step of padding, at the back.
        ("causal", 1, 2, 6, [3, 0, 2, 0, 1, 0]),
        ("reverse_causal", 1, 2, 6, [1, 0, 0, 0, 0, 0]),
        ("causal", 3, 1, 6, [3, 0]),
    ],
)
def test_hand_checked_values(padding, stride, dilation_rate, length, expected):
    np.testing.assert_allclose(_conv1d_123(padding, length, stride, dilation_rate), expected)


def test_hand_checked_masks():
    x = seq.Sequence.from_lengths(jnp.ones((2, 6, 1)), jnp.asarray([6, 4]))
    w = jnp.ones((3, 1, 1))

    def mask(padding, stride=1):
        layer = conv.Conv1d(1, 3, stride=stride, padding=padding, use_bias=False)
        return np.asarray(layer(x, weights=w).mask).astype(int).tolist()

    assert mask("VALID") == [[1, 1, 1, 1], [1, 1, 0, 0]]  # Whole window valid.
    assert mask("causal") == [[1] * 6, [1, 1, 1, 1, 0, 0]]  # Its own step valid.
    assert mask("causal", stride=2) == [[1, 1, 1], [1, 1, 0]]  # mask[:, ::2]
    assert mask("causal_valid", stride=2) == [[1, 1, 1], [1, 1, 0]]
    assert mask("reverse_causal_valid") == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]


def test_invalid_steps_never_leak():
    x = np.arange(12, dtype=np.float32).reshape((1, 6, 2))
    garbage = x.copy()
    garbage[0, 4:] = np.nan
    layer = conv.Conv1d(3, 3, padding="reverse_causal")
    layer.init(ShapeDtype((1, 6, 2)))
    y = layer(seq.Sequence.from_lengths(jnp.asarray(x), jnp.asarray([4])))
    y_nan = layer(seq.Sequence.from_lengths(jnp.asarray(garbage), jnp.asarray([4])))
    x[0, 4:] = 0.0
    y_zero = layer(jnp.asarray(x))
    np.testing.assert_allclose(y_nan.values[0, :4], y_zero[0, :4], rtol=1e-6)
    np.testing.assert_allclose(y.values[0, :4], y_zero[0, :4], rtol=1e-6)


def test_output_kind_follows_input_kind():
    layer = conv.Conv1d(2, 3, padding="causal")
    layer.init(ShapeDtype((1, 5, 3)))
    assert not isinstance(layer(jnp.ones((1, 5, 3))), seq.Sequence)
    assert isinstance(layer(seq.Sequence.from_values(jnp.ones((1, 5, 3)))), seq.Sequence)


# --- Golden numbers from SequenceLayers 0.2 (sl.Conv1D, sl.DepthwiseConv1D, sl.Conv2D .layer()) --------
# Inputs and weights are the formulas below; outputs are SL's, with invalid steps zeroed:
# name: (output shape, output mask, output values flattened, (SL input_latency, SL output_latency)).


def _golden_input(shape, lengths):
    values = np.sin(0.7 * np.arange(np.prod(shape)) + 0.3).reshape(shape).astype(np.float32)
    return seq.Sequence.from_lengths(jnp.asarray(values), jnp.asarray(lengths))


def _golden_weights(shape):
    return jnp.asarray(
        (0.5 * np.cos(0.37 * np.arange(np.prod(shape)) + 0.1)).reshape(shape).astype(np.float32)
    )


# fmt: off
GOLDEN = {
    'CONV1D_CAUSAL': (
        (2, 8, 2),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [0.77961, 0.66119, -1.15431, -1.21337, 0.18039, -0.9071, 2.05326, 2.04667, -1.95258, -1.76135,
        0.21921, -0.87019, 2.03221, 2.03804, -1.97015, -1.78954, -0.21405, -0.81641, 1.6815, 1.61937,
        -1.98714, -1.81727, 0.29675, -0.79582, 1.98848, 2.01887, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (0, 0),
    ),
    'CONV1D_REVERSE_CAUSAL': (
        (2, 8, 2),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [0.18039, -0.9071, 2.05326, 2.04667, -1.95258, -1.76135, 0.21921, -0.87019, 2.03221, 2.03804,
        -1.97015, -1.78954, 0.57206, -0.21669, 0.42911, 0.2094, -1.98714, -1.81727, 0.29675, -0.79582,
        1.98848, 2.01887, -1.6227, -1.56558, 0.56643, -0.06687, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (2, 2),
    ),
    'CONV1D_SEMICAUSAL': (
        (2, 4, 2),
        [[1, 1, 1, 1], [1, 1, 1, 0]],
        [1.20206, 1.09444, 0.27993, -1.1501, -2.47264, -1.95633, 2.4426, 2.47222, -0.09639, -1.04715, -2.5129,
        -2.02521, 1.98848, 2.01887, 0.0, 0.0],
        (0, 0),
    ),
    'CONV1D_VALID': (
        (2, 6, 2),
        [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]],
        [0.18039, -0.9071, 2.05326, 2.04667, -1.95258, -1.76135, 0.21921, -0.87019, 2.03221, 2.03804,
        -1.97015, -1.78954, -1.98714, -1.81727, 0.29675, -0.79582, 1.98848, 2.01887, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0],
        (0, 0),
    ),
    'CONV1D_CAUSAL_S2_D2': (
        (2, 4, 2),
        [[1, 1, 1, 1], [1, 1, 1, 0]],
        [0.77961, 0.66119, -1.1463, -1.63017, 1.0923, 0.62078, 0.00892, -0.00228, -0.21405, -0.81641, 0.63138,
        0.48217, 0.04553, 0.03301, 0.0, 0.0],
        (0, 0),
    ),
    'CONV1D_SAME': (
        (2, 8, 2),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [-1.67129, -1.40179, 0.27993, -1.1501, 2.46974, 2.48045, -2.47264, -1.95633, 0.32783, -1.1071, 2.4426,
        2.47222, -1.97015, -1.78954, 0.57206, -0.21669, 2.08568, 2.05383, -2.5129, -2.02521, 0.42343,
        -1.02033, 1.98848, 2.01887, -1.6227, -1.56558, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (0, 0),
    ),
    'CONV1D_REVERSE_CAUSAL_VALID': (
        (2, 4, 2),
        [[1, 1, 1, 0], [1, 1, 0, 0]],
        [0.18039, -0.9071, -1.95258, -1.76135, 2.03221, 2.03804, 0.0, 0.0, -1.98714, -1.81727, 1.98848,
        2.01887, 0.0, 0.0, 0.0, 0.0],
        (2, 1),
    ),
    'CONV1D_CAUSAL_VALID': (
        (2, 8, 2),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [-0.81216, -0.99225, 0.09124, -0.36589, 1.44428, 0.85646, -0.46843, -0.58146, -0.67034, -0.87131,
        1.44624, 0.85927, -0.48894, -0.59823, -0.65158, -0.85718, 1.00271, 0.74679, -0.83841, -1.02429,
        -0.63262, -0.84287, 1.44901, 0.86399, -0.52947, -0.63143, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (0, 0),
    ),
    'DEPTHWISE_CAUSAL': (
        (2, 8, 6),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [-0.02535, 0.12901, 0.4262, 0.63917, 0.87876, 0.99301, -0.15857, 0.03336, -0.20816, -0.0866, -0.28758,
        -0.06013, 0.00085, -0.16809, 0.22262, 0.0725, 0.45692, 0.28849, 0.6422, 0.87146, 0.88274, 1.07361,
        1.02832, 1.2016, -0.64927, -0.41084, -0.51198, -0.25361, -0.29133, 0.0031, 0.01337, -0.15567, 0.23614,
        0.08536, 0.46971, 0.30011, 0.63578, 0.86899, 0.87549, 1.07033, 1.02095, 1.19872, -0.65531, -0.42077,
        -0.51818, -0.26315, -0.29667, -0.00561, 0.0844, 0.0034, -0.03311, -0.04955, 0.23466, 0.32974, 0.30566,
        0.57641, 0.86539, 1.06542, 1.01046, 1.07754, -0.66115, -0.43056, -0.52417, -0.27254, -0.30182,
        -0.01417, 0.03839, -0.1306, 0.26314, 0.11127, 0.49522, 0.32351, 0.6224, 0.86339, 0.86042, 1.0631,
        1.00567, 1.19238, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0],
        (0, 0),
    ),
    'DEPTHWISE_SAME_S2': (
        (2, 4, 3),
        [[1, 1, 1, 1], [1, 1, 1, 0]],
        [-0.17785, 0.07742, 0.32136, 0.05741, -0.25999, -0.42803, 0.60605, 0.87284, 0.82439, -0.65166,
        -0.2978, 0.2158, -0.29061, -0.28634, -0.22693, 0.61938, 0.87313, 0.81162, -0.42762, -0.28683,
        -0.09054, 0.0, 0.0, 0.0],
        (0, 0),
    ),
    'DEPTHWISE_REVERSE_CAUSAL_D2': (
        (2, 8, 3),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]],
        [-0.02552, 0.47918, 0.60015, 0.39103, 0.11462, -0.18732, -0.3693, -0.29394, 0.19092, -0.01815,
        0.48314, 0.59648, 0.38763, 0.10709, -0.19125, -0.37324, -0.2903, 0.19856, 0.16292, 0.483, 0.52932,
        0.32352, 0.10355, -0.01296, -0.37706, -0.28654, 0.20619, -0.0034, 0.49073, 0.58882, 0.3805, 0.09202,
        -0.19878, -0.49099, -0.2828, 0.09099, 0.17863, 0.49045, 0.52731, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0],
        (2, 2),
    ),
    'CONV2D_CAUSAL': (
        (2, 4, 5, 3),
        [[1, 1, 1, 1], [1, 1, 1, 0]],
        [0.34786, 0.49401, 0.57329, -0.9213, -1.02016, -0.98095, -0.2767, -0.82373, -1.25927, 0.99325,
        0.74015, 0.38688, 0.05578, 0.29278, 0.49015, -1.88138, -1.32701, -0.59303, -1.33694, -2.56854,
        -3.4525, 2.33045, 1.27296, 0.04318, 2.29514, 3.00126, 3.30117, -2.29536, -1.66055, -0.801, -2.14661,
        -2.70405, -2.8955, 2.39115, 1.36726, 0.15832, 2.23053, 2.97353, 3.31409, -1.46691, -0.35645, 0.80225,
        -1.50345, -2.10369, -2.41921, 1.46699, 0.58752, -0.37147, 2.16351, 2.94245, 3.32314, -1.5478,
        -0.45977, 0.69048, -2.52365, -3.09874, -3.25443, 2.05686, 1.08525, -0.03324, 0.84046, 0.87861,
        0.79784, -0.6639, -0.52624, -0.31735, -0.72805, -1.16865, -1.45107, 0.58242, 0.12897, -0.34193,
        0.51148, 0.62302, 0.65023, -0.55037, 0.19591, 0.91567, -2.43575, -3.0963, -3.33777, 1.04192, -0.3878,
        -1.76503, 2.95594, 2.96447, 2.57177, -1.27201, -0.42878, 0.47248, -2.69831, -2.81114, -2.5435,
        1.13337, -0.28418, -1.66327, 2.93875, 2.99322, 2.64256, 0.03162, 1.30168, 2.39557, -2.41381, -2.51774,
        -2.28091, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        (0, 0),
    ),
    'CONV2D_REVERSE': (
        (2, 8, 3, 3),
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]],
        [-0.03412, -0.37033, -0.65641, 0.67502, 0.71692, 0.66179, -0.495, -0.69888, -0.80818, -0.2307,
        -0.56948, -0.83118, 0.42917, 0.49463, 0.49315, -0.37681, -0.64146, -0.8193, -0.2645, -0.48833,
        -0.64607, 0.02131, 0.02889, 0.03256, -0.02395, -0.26832, -0.47638, -0.1189, -0.16683, -0.19218,
        -0.34782, -0.45107, -0.49327, 0.38993, 0.23689, 0.05179, 0.13444, 0.23678, 0.30708, -0.49654,
        -0.70902, -0.82554, 0.6611, 0.6255, 0.50524, 0.37083, 0.52386, 0.60597, -0.35164, -0.61799, -0.8007,
        0.6561, 0.70625, 0.66081, 0.47392, 0.55309, 0.55739, 0.01555, -0.22279, -0.43098, 0.37739, 0.43938,
        0.4419, 0.50579, 0.47371, 0.37751, -0.1328, -0.47644, -0.7556, 0.65712, 0.73181, 0.70745, 0.16782,
        -0.08553, -0.3273, 0.67345, 0.64809, 0.53503, -0.38524, -0.50534, -0.55705, -0.09072, -0.43905,
        -0.72797, 0.64033, 0.69513, 0.65585, -0.4938, -0.71821, -0.84542, -0.25538, -0.57648, -0.81955,
        0.34127, 0.40003, 0.40464, -0.31009, -0.57758, -0.76689, -0.24512, -0.43016, -0.55698, -0.07655,
        -0.09197, -0.09495, 0.07546, -0.15267, -0.36013, -0.065, -0.07212, -0.06948, -0.40747, -0.5387,
        -0.59702, 0.47309, 0.34739, 0.17467, 0.53922, 0.39491, 0.19715, -0.73104, -0.58344, -0.35687, 0.67644,
        0.29029, -0.13514, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0,
        0.0, 0.0],
        (1, 1),
    ),
}
# fmt: on

_BIAS2 = jnp.asarray([0.1, -0.2])
_BIAS3 = jnp.asarray([0.1, 0.0, -0.1])
_X3 = ((2, 8, 3), [8, 5])
_X4 = ((2, 8, 5, 2), [8, 6])
GOLDEN_LAYERS = {
    "CONV1D_CAUSAL": (lambda: conv.Conv1d(2, 3, padding="causal"), _X3, (3, 3, 2), _BIAS2),
    "CONV1D_REVERSE_CAUSAL": (lambda: conv.Conv1d(2, 3, padding="reverse_causal"), _X3, (3, 3, 2), _BIAS2),
    "CONV1D_SEMICAUSAL": (lambda: conv.Conv1d(2, 4, stride=2, padding="semicausal"), _X3, (4, 3, 2), _BIAS2),
    "CONV1D_VALID": (lambda: conv.Conv1d(2, 3, padding="VALID"), _X3, (3, 3, 2), _BIAS2),
    "CONV1D_CAUSAL_S2_D2": (
        lambda: conv.Conv1d(2, 3, stride=2, dilation_rate=2, padding="causal"),
        _X3,
        (3, 3, 2),
        _BIAS2,
    ),
    "CONV1D_SAME": (lambda: conv.Conv1d(2, 4, padding="SAME"), _X3, (4, 3, 2), _BIAS2),
    "CONV1D_REVERSE_CAUSAL_VALID": (
        lambda: conv.Conv1d(2, 3, stride=2, padding="reverse_causal_valid"),
        _X3,
        (3, 3, 2),
        _BIAS2,
    ),
    "CONV1D_CAUSAL_VALID": (
        lambda: conv.Conv1d(2, 2, dilation_rate=2, padding="causal_valid"),
        _X3,
        (2, 3, 2),
        _BIAS2,
    ),
    "DEPTHWISE_CAUSAL": (
        lambda: conv.DepthwiseConv1D(3, depth_multiplier=2, padding="causal"),
        _X3,
        (3, 1, 6),
        0.1 * jnp.arange(6.0),
    ),
    "DEPTHWISE_SAME_S2": (
        lambda: conv.DepthwiseConv1D(3, strides=2, padding="same"),
        _X3,
        (3, 1, 3),
        0.1 * jnp.arange(3.0),
    ),
    "DEPTHWISE_REVERSE_CAUSAL_D2": (
        lambda: conv.DepthwiseConv1D(2, dilation_rate=2, padding="reverse_causal"),
        _X3,
        (2, 1, 3),
        0.1 * jnp.arange(3.0),
    ),
    "CONV2D_CAUSAL": (
        lambda: conv.Conv2D(3, (3, 3), strides=(2, 1), time_padding="causal", spatial_padding="same"),
        _X4,
        (3, 3, 2, 3),
        _BIAS3,
    ),
    "CONV2D_REVERSE": (
        lambda: conv.Conv2D(3, (2, 2), strides=(1, 2), time_padding="reverse_causal", spatial_padding=(1, 0)),
        _X4,
        (2, 2, 2, 3),
        _BIAS3,
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_LAYERS))
def test_golden_numbers_from_sequence_layers(name):
    make, (shape, lengths), kernel_shape, bias = GOLDEN_LAYERS[name]
    out_shape, out_mask, out_values, sl_latencies = GOLDEN[name]
    layer = make()
    weights, _ = layer.init(ShapeDtype(shape))
    assert weights[0].shape == kernel_shape and weights[1].shape == bias.shape  # SL's parameter shapes.
    y = layer(_golden_input(shape, lengths), weights=(_golden_weights(kernel_shape), bias))
    assert y.shape == out_shape
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(out_mask, bool))
    valid = np.asarray(y.mask).reshape(y.mask.shape + (1,) * (y.ndim - 2))
    np.testing.assert_allclose(np.where(valid, y.values, 0).reshape(-1), out_values, atol=2e-5)
    if layer.supports_step and name != "CONV1D_SAME":  # SL does not step 'same'; here it streams.
        assert (layer.input_latency, layer.output_latency) == sl_latencies


# --- Streaming --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "padding, kernel_size, stride, dilation_rate, expected",
    [
        # (block_size, output_ratio, input_latency, output_latency, receptive_field, buffer_width)
        ("causal", 3, 1, 1, (1, 1, 0, 0, (2, 0), 2)),
        ("causal", 3, 2, 2, (2, fractions.Fraction(1, 2), 0, 0, (4, 0), 4)),
        ("reverse_causal", 5, 1, 1, (1, 1, 4, 4, (0, 4), 4)),
        ("reverse_causal", 5, 2, 1, (2, fractions.Fraction(1, 2), 4, 2, (0, 4), 4)),
        ("reverse_causal", 4, 3, 1, (3, fractions.Fraction(1, 3), 3, 1, (0, 3), 3)),
        ("semicausal", 4, 2, 1, (2, fractions.Fraction(1, 2), 0, 0, (2, 1), 2)),
        ("semicausal", 2, 3, 1, (3, fractions.Fraction(1, 3), 0, 0, (0, 1), 0)),
        ("SAME", 3, 1, 1, (1, 1, 1, 1, (1, 1), 2)),
        ("SAME", 3, 2, 1, (2, fractions.Fraction(1, 2), 2, 1, (0, 2), 2)),
        ("causal_valid", 3, 1, 2, (1, 1, 0, 0, (4, 0), 4)),
        ("reverse_causal_valid", 3, 2, 1, (2, fractions.Fraction(1, 2), 2, 1, (0, 2), 2)),
        ("VALID", 2, 2, 1, (2, fractions.Fraction(1, 2), 0, 0, (0, 1), 0)),
    ],
)
def test_streaming_properties(padding, kernel_size, stride, dilation_rate, expected):
    layer = conv.Conv1d(2, kernel_size, stride=stride, padding=padding, dilation_rate=dilation_rate)
    got = (
        layer.block_size,
        layer.output_ratio,
        layer.input_latency,
        layer.output_latency,
        layer.receptive_field,
        layer.window.buffer_width,
    )
    assert layer.supports_step and got == expected


# Every padding that streams, with strides 1, 2, 3 and dilations 1, 2 (a covering set of pairs).
CONTRACT_CASES = [
    (padding, kernel_size, stride, dilation_rate)
    for padding in STREAMING_PADDINGS
    for kernel_size, stride, dilation_rate in (
        (3, 1, 1),
        (3, 1, 2),
        (4, 2, 1),
        (3, 2, 2),
        (3, 3, 1),
        (4, 3, 2),
    )
] + [("VALID", 1, 1, 1), ("VALID", 2, 2, 1), ("VALID", 3, 3, 1), ("same", 4, 1, 1)]


@pytest.mark.parametrize("padding, kernel_size, stride, dilation_rate", CONTRACT_CASES)
def test_conv1d_contract(padding, kernel_size, stride, dilation_rate):
    report = test_utils.verify_contract(
        lambda mode: conv.Conv1d(
            2, kernel_size, stride=stride, padding=padding, dilation_rate=dilation_rate, mode=mode
        ),
        ShapeDtype((2, 12, 3)),
    )
    assert report.block_size == stride


@pytest.mark.parametrize(
    "make, signature",
    [
        (lambda mode: conv.CausalConv(3, kernel_width=4, mode=mode), (2, 8, 2)),
        (lambda mode: conv.CausalDepthwiseConv(3, mode=mode), (2, 8, 3)),
        (lambda mode: conv.Conv(2, (3, 3), padding=("causal", "SAME"), mode=mode), (2, 8, 5, 2)),
        (
            lambda mode: conv.Conv(2, (3, 2), strides=(2, 2), padding="reverse_causal", mode=mode),
            (2, 8, 5, 2),
        ),
        (lambda mode: conv.DepthwiseConv1D(3, depth_multiplier=2, padding="causal", mode=mode), (2, 9, 2)),
        (
            lambda mode: conv.DepthwiseConv1D(
                3, strides=3, dilation_rate=2, padding="reverse_causal", mode=mode
            ),
            (2, 9, 2),
        ),
        (lambda mode: conv.DepthwiseConv1D(4, strides=2, padding="semicausal", mode=mode), (2, 8, 2)),
        (lambda mode: conv.DepthwiseConv1D(3, strides=2, padding="same", mode=mode), (2, 8, 2)),
        (lambda mode: conv.Conv2D(2, (3, 3), strides=(2, 1), time_padding="causal", mode=mode), (2, 8, 5, 2)),
        (
            lambda mode: conv.Conv2D(
                2,
                (3, 2),
                strides=(1, 2),
                dilation_rate=(2, 1),
                time_padding="reverse_causal",
                spatial_padding=(1, 0),
                mode=mode,
            ),
            (2, 8, 5, 2),
        ),
        (
            lambda mode: conv.Conv2D(
                2, 3, strides=3, time_padding="semicausal", spatial_padding="valid", groups=2, mode=mode
            ),
            (2, 9, 5, 4),
        ),
    ],
)
def test_other_layers_contract(make, signature):
    test_utils.verify_contract(make, ShapeDtype(signature))


def _serial_of_two_convs(mode="train"):
    return combinators.Serial(
        conv.Conv1d(8, 4, stride=2, padding="causal", mode=mode),
        conv.Conv1d(8, 6, stride=4, padding="causal", mode=mode),
    )


def test_notebook_block_size_and_output_ratio():
    model = _serial_of_two_convs()
    assert model.block_size == 8 and model.output_ratio == fractions.Fraction(1, 8)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 5)).astype(np.float32))
    weights, _ = model.init(ShapeDtype(x.shape))
    y = model(x)
    assert y.shape == (2, 4, 8)
    predict = model.with_mode("predict")
    step = jax.jit(lambda x, state: predict.pure_fn(x, weights, state, None))
    for block in (8, 16):
        _, stream_state = streaming.start_stream(predict, ShapeDtype((2, block, 5)), weights)
        outputs = []
        for start in range(0, 32, block):
            y_block, stream_state = step(x[:, start : start + block], stream_state)
            assert y_block.shape == (2, block // 8, 8)
            outputs.append(y_block)
        np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), y, rtol=1e-5, atol=1e-6)
    _, stream_state = streaming.start_stream(predict, ShapeDtype((2, 8, 5)), weights)
    with pytest.raises(base.LayerError) as error:
        predict.pure_fn(x[:, :23], weights, stream_state, None)
    assert isinstance(error.value.__cause__, ValueError)
    assert "23" in str(error.value) and "block_size=8" in str(error.value)


def test_notebook_reverse_causal_kernel_5_has_lookahead_4():
    layer = conv.Conv1d(1, 5, padding="reverse_causal")
    assert (layer.input_latency, layer.output_latency) == (4, 4)
    x = seq.Sequence.from_values(
        jnp.asarray(np.random.default_rng(1).normal(size=(2, 18, 1)).astype(np.float32))
    )
    weights, _ = layer.init(ShapeDtype((2, 18, 1)))
    y = layer(x)
    predict = layer.with_mode("predict")
    _, state = streaming.start_stream(predict, ShapeDtype((2, 1, 1)), weights)
    padded = x.pad_time(0, 4, valid=False)
    step = jax.jit(lambda x, state: predict.pure_fn(x, weights, state, None))
    steps = []
    for t in range(22):
        y_t, state = step(padded[:, t : t + 1], state)
        steps.append(y_t)
    y_step = seq.Sequence.concatenate_sequences(steps)
    assert not np.asarray(y_step.mask[:, :4]).any()  # The first 4 step-wise outputs are invalid.
    np.testing.assert_allclose(y_step.values[:, 4:], y.values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y_step.mask[:, 4:], y.mask)


@pytest.mark.parametrize("padding, kernel_size, stride", [("VALID", 3, 1), ("VALID", 3, 2), ("VALID", 4, 3)])
def test_valid_longer_than_stride_does_not_stream(padding, kernel_size, stride):
    layer = conv.Conv1d(2, kernel_size, stride=stride, padding=padding, mode="predict")
    assert not layer.supports_step
    with pytest.raises(base.LayerError, match="Conv1d does not stream .*shortens the sequence"):
        layer.init(ShapeDtype((1, 6, 3)))
    weights, _ = layer.with_mode("eval").init(ShapeDtype((1, 6, 3)))
    with pytest.raises(base.LayerError, match="does not stream"):
        layer.pure_fn(jnp.ones((1, 6, 3)), weights, (), None)


# --- Trax compatibility -----------------------------------------------------------------------------


@pytest.mark.parametrize("padding", ["VALID", "SAME"])
@pytest.mark.parametrize("strides", [(1, 1), (2, 2), (3, 2)])
def test_conv_on_images_is_lax(padding, strides):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 7, 6, 3)).astype(np.float32))
    layer = conv.Conv(4, (3, 2), strides=strides, padding=padding)
    (w, b), _ = layer.init(ShapeDtype(x.shape))
    assert w.shape == (3, 2, 3, 4) and b.shape == (4,)
    expected = jax.lax.conv_general_dilated(
        x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    np.testing.assert_allclose(layer(x), expected + b.reshape((1, 1, 1, 4)), rtol=1e-5, atol=1e-5)


def test_conv_other_layouts_and_ranks():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 7, 6)).astype(np.float32))
    layer = conv.Conv(4, (3, 3), padding="SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    (w, b), _ = layer.init(ShapeDtype(x.shape))
    assert w.shape == (4, 3, 3, 3) and b.shape == (4, 1, 1)  # Trax's bias shape for NCHW.
    assert not layer.supports_step
    expected = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    np.testing.assert_allclose(layer(x), expected + b.reshape((1, 4, 1, 1)), rtol=1e-5, atol=1e-5)
    # Rank 5 NHWC: leading axes fold into the batch, as in Trax.
    frames = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 5, 4, 2)).astype(np.float32))
    layer = conv.Conv(3, (2, 2))
    layer.init(ShapeDtype(frames.shape))
    y = layer(frames)
    assert y.shape == (2, 3, 4, 3, 3)
    np.testing.assert_allclose(y[1, 2], layer(frames[1:2, 2])[0], rtol=1e-5, atol=1e-6)


def test_causal_conv_is_conv1d_causal():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 7, 3)).astype(np.float32))
    causal = conv.CausalConv(4, kernel_width=3)
    weights, _ = causal.init(ShapeDtype(x.shape))
    assert weights[0].shape == (3, 3, 4)
    np.testing.assert_allclose(causal(x), conv.Conv1d(4, 3, padding="causal")(x, weights=weights), rtol=1e-6)
    # Trax's definition: left-pad kernel_width - 1 zeros, then a VALID convolution.
    padded = jnp.pad(x, [(0, 0), (2, 0), (0, 0)])
    expected = jax.lax.conv_general_dilated(
        padded, weights[0], (1,), "VALID", dimension_numbers=("NWC", "WIO", "NWC")
    )
    np.testing.assert_allclose(causal(x), expected + weights[1].reshape((1, 1, 4)), rtol=1e-5, atol=1e-6)


def test_causal_depthwise_conv_is_trax():
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 6, 3)).astype(np.float32))
    layer = conv.CausalDepthwiseConv(kernel_size=3)
    w, _ = layer.init(ShapeDtype(x.shape))
    assert w.shape == (3, 3)
    # Trax: res = x * w[k-1] + sum_i shift(x, i) * w[k-1-i].
    expected = x * w[2].reshape((1, 1, 3))
    for i in (1, 2):
        shifted = jnp.pad(x, [(0, 0), (i, 0), (0, 0)])[:, :6]
        expected = expected + shifted * w[2 - i].reshape((1, 1, 3))
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
    assert conv.CausalDepthwiseConv(use_bfloat16=True).init(ShapeDtype(x.shape))[0].dtype == jnp.bfloat16


def test_same_is_lax_in_trax_layers_and_sequence_layers_in_sl_layers():
    # Stride 2, kernel 3: lax pads (0, 1), SequenceLayers (1, 1).
    assert conv.Conv1d(1, 3, stride=2, padding="same").receptive_field == (0, 2)
    assert conv.DepthwiseConv1D(3, strides=2, padding="same").receptive_field == (1, 1)


def test_weights_tree_is_the_same_in_every_mode():
    for make in (
        lambda mode: conv.Conv1d(2, 3, padding="causal", mode=mode),
        lambda mode: conv.Conv2D(2, 3, time_padding="reverse_causal", use_bias=False, mode=mode),
    ):
        shape = (2, 4, 3) if make("train").name == "Conv1d" else (2, 4, 5, 3)
        trees = {
            mode: jax.tree.structure(make(mode).weights_and_state_signature(ShapeDtype(shape))[0])
            for mode in ("train", "eval", "predict")
        }
        assert trees["train"] == trees["eval"] == trees["predict"]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: conv.Conv1d(2, 0), "Conv1d: kernel_size must be an integer >= 1, got kernel_size=0"),
        (lambda: conv.Conv1d(2, 3, stride=0), "Conv1d: stride must be an integer >= 1, got stride=0"),
        (lambda: conv.Conv1d(0, 3), "Conv1d: filters must be an integer >= 1, got filters=0"),
        (lambda: conv.Conv1d(2, 3, padding="full"), "Conv1d: padding must be one of 'valid', 'same'"),
        (
            lambda: conv.Conv1d(2, 3, padding=((1, 2, 3),)),
            "Conv1d: an explicit padding must be a (front, back)",
        ),
        (lambda: conv.Conv(2, (3, 3), strides=(1,)), "Conv: strides must have 2 entries"),
        (
            lambda: conv.Conv(2, (3,)),
            "Conv: dimension_numbers ('NHWC', 'HWIO', 'NHWC') do not fit a kernel with 1",
        ),
        (lambda: conv.Conv(2, (3, 3), dimension_numbers=("NHWC", "HWIO")), "Conv: dimension_numbers"),
        (lambda: conv.CausalConv(2, kernel_width=0), "CausalConv: kernel_width must be an integer >= 1"),
        (lambda: conv.DepthwiseConv1D(3, depth_multiplier=0), "DepthwiseConv1D: depth_multiplier must be"),
        (lambda: conv.Conv2D(2, (3, 3, 3)), "Conv2D: kernel_size must have 2 entries"),
        (lambda: conv.Conv2D(2, 3, time_padding=(1, 1)), "Conv2D: time_padding must be a mode name"),
        (lambda: conv.DepthwiseConv1D(3, padding=(1, 1)), "DepthwiseConv1D: padding must be a mode name"),
    ],
)
def test_constructor_errors(make, message):
    with pytest.raises((ValueError, TypeError)) as error:
        make()
    assert message in str(error.value)


def test_input_errors_name_the_layer():
    layer = conv.Conv1d(2, 3, padding="causal")
    with pytest.raises(base.LayerError, match=r"Conv1d: expected inputs of rank 3"):
        layer.init(ShapeDtype((2, 4)))
    layer.init(ShapeDtype((2, 4, 3)))
    with pytest.raises(
        base.LayerError, match=r"Conv1d: inputs with 5 channels need a kernel of shape \(3, 5, 2\)"
    ):
        layer(jnp.ones((2, 4, 5)))
    with pytest.raises(
        base.LayerError, match="Conv2D: input channels \\(3\\) must be divisible by groups \\(2\\)"
    ):
        conv.Conv2D(4, 3, groups=2).init(ShapeDtype((1, 4, 5, 3)))
