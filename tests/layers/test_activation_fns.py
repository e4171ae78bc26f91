"""Exact values of the activation layers on small hand-checked inputs."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
from trax_sl.layers import activation_fns as af
from trax_sl.layers import base

X = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 2.0], np.float32)
E = math.e


def _erf_gelu(x):
    return x / 2 * (1 + math.erf(x / math.sqrt(2)))


def _sigmoid(x):
    return 1 / (1 + math.exp(-x))


# (layer factory, expected outputs on X), computed by hand or with Python's math.
CASES = {
    "Relu": (af.Relu, [0.0, 0.0, 0.0, 0.0, 0.5, 2.0]),
    "ParametricRelu": (lambda: af.ParametricRelu(a=0.25), [0.0, 0.0, 0.0, 0.0, 0.125, 0.5]),
    "ParametricRelu_default": (af.ParametricRelu, [0.0, 0.0, 0.0, 0.0, 0.5, 2.0]),
    "LeakyRelu": (lambda: af.LeakyRelu(a=0.125), [-0.25, -0.125, -0.0625, 0.0, 0.5, 2.0]),
    "LeakyRelu_default": (af.LeakyRelu, [-0.02, -0.01, -0.005, 0.0, 0.5, 2.0]),
    "Elu": (af.Elu, [E**-2 - 1, E**-1 - 1, E**-0.5 - 1, 0.0, 0.5, 2.0]),
    "Elu_a": (lambda: af.Elu(a=2.0), [2 * (E**-2 - 1), 2 * (E**-1 - 1), 2 * (E**-0.5 - 1), 0, 0.5, 2]),
    "Selu": (
        af.Selu,
        [1.0507009873554805 * 1.6732632423543772 * (math.exp(v) - 1) for v in (-2, -1, -0.5, 0)]
        + [1.0507009873554805 * 0.5, 1.0507009873554805 * 2.0],
    ),
    "Selu_args": (
        lambda: af.Selu(alpha=2.0, lmbda=3.0),
        [6 * (E**-2 - 1), 6 * (E**-1 - 1), 6 * (E**-0.5 - 1), 0, 1.5, 6],
    ),
    "Gelu": (af.Gelu, [_erf_gelu(v) for v in X.tolist()]),
    "FastGelu": (
        af.FastGelu,
        [v / 2 * (1 + math.tanh(0.7978845608 * v + 0.7978845608 * 0.044715 * v**3)) for v in X.tolist()],
    ),
    "Sigmoid": (af.Sigmoid, [_sigmoid(v) for v in X.tolist()]),
    "Tanh": (af.Tanh, [math.tanh(v) for v in X.tolist()]),
    "HardSigmoid": (af.HardSigmoid, [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]),
    "HardTanh": (af.HardTanh, [-1.0, -1.0, -0.5, 0.0, 0.5, 1.0]),
    "Softplus": (af.Softplus, [math.log1p(math.exp(v)) for v in X.tolist()]),
    "Exp": (af.Exp, [math.exp(v) for v in X.tolist()]),
    "Swish": (af.Swish, [v * _sigmoid(v) for v in X.tolist()]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_values(name):
    make, expected = CASES[name]
    y = make()(X)
    assert y.shape == X.shape and y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.array(expected, np.float32), rtol=2e-6, atol=1e-7)


def test_exact_piecewise_values():
    # Piecewise-linear layers are exact, not merely close.
    assert base.to_list(af.Relu()(np.array([-2.0, 0.0, 3.0]))) == [0.0, 0.0, 3.0]
    assert base.to_list(af.HardSigmoid()(np.array([-1.5, -0.5, -0.25, 0.0, 0.25, 1.5]))) == [
        0.0,
        0.5,
        0.75,
        1.0,
        1.0,
        1.0,
    ]
    assert base.to_list(af.HardTanh()(np.array([-1.5, -0.25, 0.0, 0.25, 1.5]))) == [
        -1.0,
        -0.25,
        0.0,
        0.25,
        1.0,
    ]
    assert base.to_list(af.LeakyRelu(a=0.5)(np.array([-4.0, 0.0, 4.0]))) == [-2.0, 0.0, 4.0]


def test_parametric_relu_negative_slope_follows_formula():
    # f(x) = 0 for x <= 0 and a * x otherwise, whatever the sign of a.
    y = af.ParametricRelu(a=-2.0)(np.array([-3.0, 0.0, 1.5]))
    assert base.to_list(y) == [0.0, 0.0, -3.0]


def test_log():
    y = af.Log()(np.array([1.0, E, 0.25, 0.0], np.float32))
    np.testing.assert_allclose(np.asarray(y), [0.0, 1.0, math.log(0.25), -np.inf], rtol=1e-6)


def test_softplus_does_not_overflow():
    y = af.Softplus()(np.array([-200.0, 200.0], np.float32))
    np.testing.assert_allclose(np.asarray(y), [0.0, 200.0], atol=1e-30)


def test_gelu_is_exact_and_fast_gelu_approximate():
    x = np.array([1.0], np.float32)
    gelu, fast = float(af.Gelu()(x)[0]), float(af.FastGelu()(x)[0])
    assert gelu == pytest.approx(0.8413447460685429, rel=1e-6)  # 1 * Phi(1)
    assert fast == pytest.approx(0.8411919906082768, rel=1e-6)
    assert gelu != fast


def test_glu_splits_last_axis():
    x = np.array([[1.0, 2.0, 0.0, -1.0], [3.0, -4.0, 2.0, 0.0]], np.float32)
    y = af.Glu()(x)
    expected = [[1.0 * _sigmoid(0.0), 2.0 * _sigmoid(-1.0)], [3.0 * _sigmoid(2.0), -4.0 * _sigmoid(0.0)]]
    assert y.shape == (2, 2)
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-6)


def test_glu_rejects_odd_depth():
    with pytest.raises(base.LayerError, match="even size"):
        af.Glu()(np.zeros((2, 3), np.float32))


def test_names_and_arity():
    for make in [c[0] for c in CASES.values()] + [af.Log, af.Glu, af.ThresholdedLinearUnit]:
        layer = make()
        assert (layer.n_in, layer.n_out) == (1, 1)
        assert layer.block_size == 1 and layer.output_latency == 0 and layer.input_latency == 0
    assert af.Relu().name == "Relu"
    assert af.ParametricRelu(0.5).name == "ParametricRelu"
    assert af.ThresholdedLinearUnit().name == "ThresholdedLinearUnit"


def test_selu_defaults_are_trax_constants():
    y = af.Selu()(np.array([1.0, -100.0], np.float32))
    np.testing.assert_allclose(
        np.asarray(y), [1.0507009873554805, -1.0507009873554805 * 1.6732632423543772], rtol=1e-6
    )


def test_bfloat16_keeps_dtype():
    x = jnp.array([-1.0, 0.5], jnp.bfloat16)
    for make in (af.Gelu, af.FastGelu, af.HardSigmoid, af.Swish, af.Selu, af.ThresholdedLinearUnit):
        layer = make()
        weights, _ = layer.init(x)
        assert layer(x, weights=weights).dtype == jnp.bfloat16, layer.name


# --- ThresholdedLinearUnit ----------------------------------------------------


def test_tlu_weight_is_a_zero_scalar():
    layer = af.ThresholdedLinearUnit()
    weights, state = layer.init(np.zeros((2, 3), np.float32))
    assert weights.shape == () and weights.dtype == jnp.float32 and float(weights) == 0.0
    assert state == ()


def test_tlu_values():
    layer = af.ThresholdedLinearUnit()
    layer.init(np.zeros((3,), np.float32))
    x = np.array([-1.0, 0.25, 2.0], np.float32)
    assert base.to_list(layer(x)) == [0.0, 0.25, 2.0]
    assert base.to_list(layer(x, weights=jnp.array(0.5))) == [0.5, 0.5, 2.0]
    assert base.to_list(layer(x, weights=jnp.array(-0.5))) == [-0.5, 0.25, 2.0]


def test_tlu_threshold_gradient():
    layer = af.ThresholdedLinearUnit()
    x = jnp.array([-1.0, 0.25, 2.0])

    def loss(threshold):
        return jnp.sum(layer.pure_fn(x, threshold, (), None)[0])

    # Two of the three outputs sit at the threshold 0.5.
    assert float(jax.grad(loss)(jnp.array(0.5))) == 2.0


# --- Sequences ----------------------------------------------------------------


def _all_layers():
    return {name: make for name, (make, _) in CASES.items()} | {
        "Log": af.Log,
        "Glu": af.Glu,
        "ThresholdedLinearUnit": af.ThresholdedLinearUnit,
    }


@pytest.mark.parametrize("name", sorted(_all_layers()))
def test_sequence_in_sequence_out(name):
    layer = _all_layers()[name]()
    values = jnp.linspace(0.1, 2.0, 2 * 3 * 4, dtype=jnp.float32).reshape((2, 3, 4))
    x = trax_sl.Sequence.from_lengths(values, jnp.array([1, 3]))
    weights, _ = layer.init(x)
    y = layer(x, weights=weights)
    plain = layer(values, weights=weights)
    assert isinstance(y, trax_sl.Sequence)
    assert base.to_list(y.mask) == [[True, False, False], [True, True, True]]
    valid = np.asarray(y.mask)[..., None]  # Invalid steps are zeroed before the math.
    np.testing.assert_array_equal(np.where(valid, y.values, 0), np.where(valid, plain, 0))
    assert y.shape == ((2, 3, 2) if name == "Glu" else (2, 3, 4))
    assert layer.output_signature(x).shape == y.shape


def test_sequence_garbage_in_padding_stays_out_of_valid_steps():
    values = jnp.array([[[1.0, -1.0], [jnp.nan, jnp.inf]]], jnp.float32)
    x = trax_sl.Sequence.from_lengths(values, jnp.array([1]))
    y = af.Relu()(x)
    assert base.to_list(y.values[:, :1]) == [[[1.0, 0.0]]]
    assert base.to_list(y.mask) == [[True, False]]


def test_jit_and_grad_through_pure_fn():
    layer = af.Swish()

    def f(x):
        return jnp.sum(layer.pure_fn(x, (), (), None)[0])

    g = jax.jit(jax.grad(f))(jnp.array([0.0, 1.0]))
    # d/dx x sigmoid(x) = sigmoid(x) (1 + x (1 - sigmoid(x))).
    s1 = _sigmoid(1.0)
    np.testing.assert_allclose(np.asarray(g), [0.5, s1 * (1 + (1 - s1))], rtol=1e-6)
