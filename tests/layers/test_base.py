"""The Layer contract (DESIGN §3): packaging, init, pure_fn, the interactive cache,
signatures, weight sharing, modes, files, flattening, sharding and streaming defaults."""

import fractions
import io
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.shapes import ShapeDtype

# --- Small layers for the tests --------------------------------------------------------------


def _bias_like(b, x):
    """Reshapes a [n] bias to add to x [..., n] without rank promotion."""
    return jnp.reshape(b, (1,) * (x.ndim - 1) + tuple(b.shape))


class Affine(tl.Layer):
    """x @ w + b with random normal weights."""

    def __init__(self, n_units, name=None):
        super().__init__(name=name or f"Affine_{n_units}")
        self._n_units = n_units

    def init_weights_and_state(self, input_signature, rng):
        rng_w, rng_b = jax.random.split(rng)
        w = jax.random.normal(rng_w, (input_signature.shape[-1], self._n_units))
        b = jax.random.normal(rng_b, (self._n_units,))
        return (w, b), ()

    def forward(self, x, weights, state, rng):
        w, b = weights
        return x @ w + _bias_like(b, x), state


def affine(x, weights):
    w, b = weights
    return x @ w + _bias_like(b, x)


class Counter(tl.Layer):
    """Weightless; returns x + count and increments its int32 count (the state)."""

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((), jnp.int32)

    def forward(self, x, weights, state, rng):
        return x + state.astype(x.dtype), state + 1


class Noise(tl.Layer):
    """Weightless; adds standard normal noise drawn from rng."""

    def forward(self, x, weights, state, rng):
        return x + jax.random.normal(rng, x.shape), state


class Recorder(tl.Layer):
    """Records what forward receives (type and whether traced), for packaging tests."""

    def __init__(self, n_in=1, n_out=1, outputs=None):
        super().__init__(n_in=n_in, n_out=n_out, name="Recorder")
        self.seen = []
        self._outputs = outputs

    def forward(self, inputs, weights, state, rng):
        self.seen.append(inputs)
        return self._outputs(inputs), state


def _x(shape=(2, 3)):
    return jnp.asarray(np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 10.0)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.shape(p) == np.shape(q) and np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(la, lb)
    )


# --- n_in / n_out packaging -----------------------------------------------------------------------


def test_one_input_is_bare_and_one_output_is_bare():
    layer = Recorder(outputs=lambda x: x * 2)
    x = _x()
    y, _ = layer.pure_fn(x, (), (), None)
    assert not isinstance(layer.seen[0], tuple)
    np.testing.assert_allclose(y, 2 * x)


def test_several_inputs_and_outputs_are_tuples():
    layer = Recorder(n_in=2, n_out=2, outputs=lambda xs: (xs[0] + xs[1], xs[0] - xs[1]))
    a, b = _x(), 2 * _x()
    (s, d), _ = layer.pure_fn((a, b), (), (), None)
    assert isinstance(layer.seen[0], tuple) and len(layer.seen[0]) == 2
    np.testing.assert_allclose(s, 3 * a)
    np.testing.assert_allclose(d, -a)


def test_zero_inputs_and_zero_outputs_are_empty_tuples():
    make = Recorder(n_in=0, n_out=1, outputs=lambda xs: jnp.ones((2,)))
    y, _ = make.pure_fn((), (), (), None)
    assert make.seen == [()]
    np.testing.assert_array_equal(y, [1.0, 1.0])
    sink = Recorder(n_in=1, n_out=0, outputs=lambda x: ())
    out, _ = sink.pure_fn(_x(), (), (), None)
    assert out == ()


def test_wrong_number_of_inputs_is_a_layer_error():
    layer = tl.Fn("Add2", lambda a, b: a + b)
    with pytest.raises(tl.LayerError, match="takes 2 inputs") as info:
        layer.pure_fn(_x(), (), (), None)
    assert isinstance(info.value.__cause__, ValueError)
    with pytest.raises(tl.LayerError, match="got 3"):
        layer.pure_fn((_x(), _x(), _x()), (), (), None)


def test_forward_returning_wrong_number_of_outputs_is_a_layer_error():
    layer = tl.Fn("Liar", lambda x: x, n_out=2)
    with pytest.raises(tl.LayerError, match="n_out=2") as info:
        layer.pure_fn(_x(), (), (), None)
    assert isinstance(info.value.__cause__, ValueError)


def test_negative_n_in_raises():
    with pytest.raises(ValueError, match="n_in"):
        tl.Layer(n_in=-1)


def test_layer_description_members():
    layer = tl.Layer(n_in=3, n_out=2, name="Thing")
    assert (layer.n_in, layer.n_out, layer.name, layer.sublayers) == (3, 2, "Thing", ())
    assert tl.Layer().name == "Layer"
    assert Affine(4).name == "Affine_4"
    assert repr(Affine(4)) == "Affine_4"
    serial = tl.Serial(Affine(2), tl.Dup())
    assert len(serial.sublayers) == 2
    assert "Affine_2" in repr(serial) and "Dup" in repr(serial)


def test_base_forward_must_be_overridden():
    with pytest.raises(tl.LayerError) as info:
        tl.Layer().pure_fn(_x(), (), (), None)
    assert isinstance(info.value.__cause__, NotImplementedError)


def test_fn_counts_positional_args_and_n_out():
    f = tl.Fn("SumAndMax", lambda x0, x1: (x0 + x1, jnp.maximum(x0, x1)), n_out=2)
    assert (f.n_in, f.n_out, f.name) == (2, 2, "SumAndMax")
    a = jnp.array([1.0, 5.0])
    b = jnp.array([3.0, 2.0])
    s, m = f((a, b))
    np.testing.assert_array_equal(s, [4.0, 7.0])
    np.testing.assert_array_equal(m, [3.0, 5.0])
    assert tl.Fn("Zero", lambda: jnp.zeros(1)).n_in == 0


def test_fn_rejects_defaults_and_keyword_args():
    with pytest.raises(ValueError, match="positional"):
        tl.Fn("Bad", lambda x, y=1: x)
    with pytest.raises(ValueError, match="positional"):
        tl.Fn("Bad", lambda *xs: xs[0])


def test_pure_layer():
    layer = tl.PureLayer(lambda xs: xs[0] * xs[1], n_in=2, n_out=1, name="Mul")
    assert (layer.n_in, layer.n_out, layer.name) == (2, 1, "Mul")
    y, state = layer.pure_fn((jnp.array([2.0]), jnp.array([3.0])), (), (), None)
    np.testing.assert_array_equal(y, [6.0])
    assert state == ()


# --- init ------------------------------------------------------------------------------------------------


def test_init_is_deterministic_for_a_given_rng_and_differs_for_another():
    sig = ShapeDtype((2, 3))
    w1, s1 = Affine(4).init(sig, rng=jax.random.PRNGKey(1))
    w2, _ = Affine(4).init(sig, rng=jax.random.PRNGKey(1))
    w3, _ = Affine(4).init(sig, rng=jax.random.PRNGKey(2))
    assert _leaves_equal(w1, w2)
    assert not np.allclose(w1[0], w3[0])
    assert s1 == ()
    assert w1[0].shape == (3, 4) and w1[1].shape == (4,)


def test_init_without_rng_is_deterministic():
    sig = ShapeDtype((2, 3))
    assert _leaves_equal(Affine(4).init(sig)[0], Affine(4).init(sig)[0])


def test_init_returns_weights_and_fills_the_cache():
    layer = Affine(4)
    weights, state = layer.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(0))
    assert layer.weights is weights
    assert layer.state is state


def test_init_accepts_example_inputs():
    layer = Affine(4)
    w_from_x, _ = layer.init(jnp.zeros((2, 3)), rng=jax.random.PRNGKey(0))
    w_from_sig, _ = Affine(4).init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(0))
    assert _leaves_equal(w_from_x, w_from_sig)


def test_combinator_weights_are_one_entry_per_sublayer_with_distinct_rngs():
    model = tl.Serial(Affine(3), tl.Fn("Relu", jax.nn.relu), Affine(3), Counter())
    weights, state = model.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(0))
    assert isinstance(weights, tuple) and len(weights) == 4
    assert weights[1] == () and weights[3] == ()
    assert not np.allclose(weights[0][0], weights[2][0])
    assert state[:3] == ((), (), ())
    assert int(state[3]) == 0


def test_init_threads_signatures_through_the_stack():
    model = tl.Serial(Affine(5), Affine(2))
    weights, _ = model.init(ShapeDtype((4, 3)))
    assert weights[0][0].shape == (3, 5)
    assert weights[1][0].shape == (5, 2)


# --- pure_fn ----------------------------------------------------------------------------------------------------


def test_pure_fn_computes_with_the_weights_passed():
    layer = Affine(2)
    weights, _ = layer.init(ShapeDtype((2, 3)))
    x = _x()
    y, state = layer.pure_fn(x, weights, (), None)
    np.testing.assert_allclose(y, affine(x, weights), rtol=1e-6)
    assert state == ()


def test_pure_fn_does_not_read_the_interactive_cache():
    layer = Affine(2)
    layer.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(0))
    other = (jnp.ones((3, 2)), jnp.zeros((2,)))
    layer.weights = (jnp.full((3, 2), 100.0), jnp.full((2,), 100.0))  # Garbage in the cache.
    y, _ = layer.pure_fn(_x(), other, (), None)
    np.testing.assert_allclose(y, _x() @ jnp.ones((3, 2)), rtol=1e-6)


def test_pure_fn_runs_on_a_never_initialized_layer():
    layer = Affine(2)
    weights = (jnp.eye(3)[:, :2], jnp.array([1.0, -1.0]))
    y, _ = layer.pure_fn(_x(), weights, (), None)
    np.testing.assert_allclose(y, _x()[:, :2] + jnp.array([[1.0, -1.0]]), rtol=1e-6)


def test_pure_fn_does_not_write_the_interactive_cache():
    layer = Counter()
    layer.init(ShapeDtype((2, 3)))
    cached_state = layer.state
    y, new_state = layer.pure_fn(_x(), (), jnp.asarray(5, jnp.int32), None)
    np.testing.assert_allclose(y, _x() + 5.0)
    assert int(new_state) == 6
    assert layer.state is cached_state
    assert int(layer.state) == 0


def test_pure_fn_rng_is_used():
    layer = Noise()
    x = jnp.zeros((2, 3))
    a, _ = layer.pure_fn(x, (), (), jax.random.PRNGKey(0))
    b, _ = layer.pure_fn(x, (), (), jax.random.PRNGKey(0))
    c, _ = layer.pure_fn(x, (), (), jax.random.PRNGKey(1))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


# --- Interactive use ------------------------------------------------------------------------------------


def test_call_without_init_for_weightless_layers():
    layer = tl.Fn("Double", lambda x: 2 * x)
    np.testing.assert_allclose(layer(_x()), 2 * _x())
    serial = tl.Serial(tl.Dup(), tl.Add())
    np.testing.assert_allclose(serial(_x()), 2 * _x())


def test_call_without_init_for_weightless_stateful_layer_keeps_state_in_the_cache():
    layer = Counter()
    x = jnp.zeros((2,))
    np.testing.assert_array_equal(layer(x), [0.0, 0.0])
    np.testing.assert_array_equal(layer(x), [1.0, 1.0])
    assert int(layer.state) == 2


def test_call_without_init_for_layer_with_weights_raises_clear_layer_error():
    layer = Affine(4)
    with pytest.raises(tl.LayerError) as info:
        layer(_x())
    message = str(info.value)
    assert "Affine_4" in message
    assert "init" in message
    assert "f32[2,3]" in message
    # Still not initialized: a second call fails the same way, pure_fn aside.
    with pytest.raises(tl.LayerError):
        layer(_x())
    assert layer.weights == ()


def test_call_without_init_inside_serial_raises_layer_error():
    model = tl.Serial(tl.Dup(), tl.Parallel(Affine(3), None), tl.Add())
    with pytest.raises(tl.LayerError, match="init"):
        model(_x())


def test_call_uses_cached_weights_and_weight_assignment():
    layer = Affine(2)
    weights, _ = layer.init(ShapeDtype((2, 3)))
    np.testing.assert_allclose(layer(_x()), affine(_x(), weights), rtol=1e-6)
    new_weights = (jnp.ones((3, 2)), jnp.array([1.0, 2.0]))
    layer.weights = new_weights
    assert layer.weights is new_weights
    np.testing.assert_allclose(layer(_x()), affine(_x(), new_weights), rtol=1e-6)


def test_weights_assignment_makes_a_fresh_layer_callable():
    layer = Affine(2)
    layer.weights = (jnp.ones((3, 2)), jnp.zeros((2,)))
    np.testing.assert_allclose(layer(_x()), _x() @ jnp.ones((3, 2)), rtol=1e-6)


def test_call_with_explicit_weights_keeps_cached_weights():
    layer = Affine(2)
    weights, _ = layer.init(ShapeDtype((2, 3)))
    explicit = (jnp.zeros((3, 2)), jnp.array([7.0, 8.0]))
    np.testing.assert_allclose(layer(_x(), weights=explicit), jnp.tile(jnp.array([[7.0, 8.0]]), (2, 1)))
    assert layer.weights is weights


def test_call_updates_the_cached_state_and_state_assignment():
    layer = Counter()
    layer.init(ShapeDtype((2,)))
    layer(jnp.zeros((2,)))
    assert int(layer.state) == 1
    layer.state = jnp.asarray(10, jnp.int32)
    np.testing.assert_array_equal(layer(jnp.zeros((2,))), [10.0, 10.0])
    assert int(layer.state) == 11
    # An explicit state is used and the new state goes to the cache.
    np.testing.assert_array_equal(layer(jnp.zeros((2,)), state=jnp.asarray(3, jnp.int32)), [3.0, 3.0])
    assert int(layer.state) == 4


def test_call_rng():
    layer = Noise()
    x = jnp.zeros((3,))
    np.testing.assert_array_equal(layer(x), layer(x))  # Default rng: a fixed key.
    a = layer(x, rng=jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a, layer(x, rng=jax.random.PRNGKey(5)))
    assert not np.allclose(a, layer(x, rng=jax.random.PRNGKey(6)))


def test_call_is_compiled_once_per_input_signature():
    traces = []

    def f(x):
        traces.append(x.shape)
        return x + 1

    layer = tl.Fn("Count", f)
    np.testing.assert_array_equal(layer(jnp.zeros((2,))), [1.0, 1.0])
    first = len(traces)
    layer(jnp.zeros((2,)))
    layer(jnp.zeros((2,)))
    assert len(traces) == first
    np.testing.assert_array_equal(layer(jnp.zeros((4,))), np.ones(4))
    assert len(traces) == first + 1
    for _ in range(3):
        layer(jnp.zeros((2,)))
        layer(jnp.zeros((4,)))
    assert len(traces) == first + 1


def test_call_on_sequence_returns_sequence():
    layer = tl.Fn("Double", lambda x: 2 * x)
    s = Sequence.from_lengths(_x((2, 3)), [1, 3])
    out = layer(s)
    assert isinstance(out, Sequence)
    np.testing.assert_allclose(out.values, 2 * s.mask_invalid().values)  # Invalid steps zeroed first.
    np.testing.assert_array_equal(out.mask, s.mask)


# --- jit / grad / vmap over pure_fn --------------------------------------------------------------------------


def test_jit_of_pure_fn_matches_eager():
    model = tl.Serial(Affine(4), tl.Fn("Tanh", jnp.tanh), Affine(2))
    weights, state = model.init(ShapeDtype((2, 3)))
    eager, _ = model.pure_fn(_x(), weights, state, None)
    jitted, _ = jax.jit(model.pure_fn)(_x(), weights, state, None)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5)


def test_grad_of_pure_fn_wrt_weights_and_inputs():
    layer = Affine(2)
    weights, _ = layer.init(ShapeDtype((2, 3)))
    x = _x()

    def loss(w, x):
        y, _ = layer.pure_fn(x, w, (), None)
        return jnp.sum(y)

    (gw, gb), gx = jax.grad(loss, argnums=(0, 1))(weights, x)
    np.testing.assert_allclose(gw, jnp.tile(jnp.sum(x, axis=0).reshape((3, 1)), (1, 2)), rtol=1e-6)
    np.testing.assert_allclose(gb, [2.0, 2.0])
    np.testing.assert_allclose(gx, jnp.tile(jnp.sum(weights[0], axis=1).reshape((1, 3)), (2, 1)), rtol=1e-6)


def test_vmap_of_pure_fn_over_inputs_and_over_weights():
    layer = Affine(2)
    weights, _ = layer.init(ShapeDtype((3,)))
    xs = _x((5, 3))
    ys, _ = jax.vmap(layer.pure_fn, in_axes=(0, None, None, None))(xs, weights, (), None)
    for i in range(5):
        np.testing.assert_allclose(ys[i], affine(xs[i], weights), rtol=1e-6)
    ensemble = jax.tree.map(lambda w: jnp.stack([w, 2 * w]), weights)
    ys, _ = jax.vmap(layer.pure_fn, in_axes=(None, 0, None, None))(xs, ensemble, (), None)
    np.testing.assert_allclose(ys[1], affine(xs, jax.tree.map(lambda w: 2 * w, weights)), rtol=1e-6)


def test_jit_of_pure_fn_with_state_and_rng():
    model = tl.Serial(Counter(), Noise())
    weights, state = model.init(ShapeDtype((3,)))
    fn = jax.jit(model.pure_fn)
    y1, state = fn(jnp.zeros((3,)), weights, state, jax.random.PRNGKey(0))
    y2, state = fn(jnp.zeros((3,)), weights, state, jax.random.PRNGKey(0))
    np.testing.assert_allclose(y2 - y1, jnp.ones((3,)), rtol=1e-5)
    assert int(state[0]) == 2


# --- Signatures ------------------------------------------------------------------------------------------------


class Spy(tl.Layer):
    """Affine-like layer recording whether it saw concrete values."""

    def __init__(self):
        super().__init__(n_out=2, name="Spy")
        self.concrete = []

    def init_weights_and_state(self, input_signature, rng):
        self.concrete.append(not isinstance(rng, jax.core.Tracer))
        return jnp.ones((input_signature.shape[-1], 7)), jnp.zeros((), jnp.int32)

    def forward(self, x, weights, state, rng):
        self.concrete.append(not isinstance(x, jax.core.Tracer))
        return (x @ weights, jnp.sum(x, axis=-1)), state + 1


def test_output_signature_and_weights_and_state_signature_are_abstract():
    spy = Spy()
    model = tl.Serial(spy, tl.Parallel(tl.Fn("Sum", lambda x: jnp.sum(x, axis=-1)), None))
    sig = ShapeDtype((4096, 4096))
    out = model.output_signature(sig)
    assert out == (ShapeDtype((4096,)), ShapeDtype((4096,)))
    weights_sig, state_sig = model.weights_and_state_signature(sig)
    assert weights_sig[0] == ShapeDtype((4096, 7))
    assert weights_sig[1] == ((), ())
    assert state_sig[0] == ShapeDtype((), np.int32)
    assert spy.concrete and not any(spy.concrete)
    # The interactive cache is untouched: no weights anywhere (as in Trax, an uninitialized
    # combinator's weights are its sublayers', here all empty).
    assert model.weights == ((), ((), ())) and spy.weights == ()


def test_output_signature_of_sequences_and_tuples():
    layer = tl.Fn("Split", lambda x: (x[..., :1], x.astype(jnp.int32)), n_out=2)
    seq_sig = Sequence(ShapeDtype((2, 5, 3)), ShapeDtype((2, 5), np.bool_))
    out = layer.output_signature(seq_sig)
    assert isinstance(out[0], Sequence) and isinstance(out[1], Sequence)
    assert out[0].values == ShapeDtype((2, 5, 1))
    assert out[1].values == ShapeDtype((2, 5, 3), np.int32)
    assert out[0].mask == ShapeDtype((2, 5), np.bool_)
    add = tl.Add()
    assert add.output_signature((ShapeDtype((2, 3)), ShapeDtype((2, 3)))) == ShapeDtype((2, 3))


def test_output_signature_accepts_example_inputs():
    assert Affine(5).output_signature(jnp.zeros((2, 3))) == ShapeDtype((2, 5))


# --- Weight sharing --------------------------------------------------------------------------------------


def test_shared_layer_second_occurrence_is_shared_marker():
    d = Affine(3)
    model = tl.Serial(d, d)
    weights, _ = model.init(ShapeDtype((2, 3)))
    assert weights[1] is tl.SHARED
    assert weights[0][0].shape == (3, 3)
    assert repr(tl.SHARED) == "SHARED"
    assert jax.tree.leaves(tl.SHARED) == []


def test_shared_layer_computes_with_the_same_weights_twice():
    d = Affine(3)
    model = tl.Serial(d, d)
    weights, state = model.init(ShapeDtype((2, 3)))
    y, _ = model.pure_fn(_x(), weights, state, None)
    np.testing.assert_allclose(y, affine(affine(_x(), weights[0]), weights[0]), rtol=1e-5)
    np.testing.assert_allclose(model(_x()), y, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(model.pure_fn)(_x(), weights, state, None)[0], y, rtol=1e-5)


def test_shared_layer_gradient_is_the_sum_of_both_uses():
    d = Affine(3)
    model = tl.Serial(d, d)
    weights, state = model.init(ShapeDtype((2, 3)))
    x = _x()

    def model_loss(w):
        return jnp.sum(model.pure_fn(x, w, state, None)[0] ** 2)

    def manual_loss(w):
        return jnp.sum(affine(affine(x, w), w) ** 2)

    def first_use_only(w):  # Gradient through the first use only.
        return jnp.sum(affine(affine(x, w), jax.lax.stop_gradient(w)) ** 2)

    g = jax.grad(model_loss)(weights)
    assert g[1] is tl.SHARED or jax.tree.leaves(g[1]) == []
    expected = jax.grad(manual_loss)(weights[0])
    for got, want in zip(g[0], expected):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    partial = jax.grad(first_use_only)(weights[0])
    assert not np.allclose(g[0][0], partial[0])


def test_sharing_across_branches_and_nesting():
    d = Affine(3)
    model = tl.Serial(d, tl.Branch(d, tl.Serial(d, tl.Fn("Neg", lambda x: -x))), tl.Add())
    weights, state = model.init(ShapeDtype((2, 3)))
    flat_w, _ = tl.flatten_weights_and_state(weights, state)
    assert len(flat_w) == 2  # w and b, once.
    w = weights[0]
    h = affine(_x(), w)
    expected = affine(h, w) - affine(h, w)
    y, _ = model.pure_fn(_x(), weights, state, None)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_shared_layer_in_parallel():
    d = Affine(2)
    model = tl.Parallel(d, d)
    weights, state = model.init((ShapeDtype((1, 3)), ShapeDtype((1, 3))))
    assert weights[1] is tl.SHARED
    (a, b), _ = model.pure_fn((_x((1, 3)), 2 * _x((1, 3))), weights, state, None)
    np.testing.assert_allclose(a, affine(_x((1, 3)), weights[0]), rtol=1e-6)
    np.testing.assert_allclose(b, affine(2 * _x((1, 3)), weights[0]), rtol=1e-6)


# --- with_mode -------------------------------------------------------------------------------------------------------


def _all_layers(layer):
    out = [layer]
    for sub in layer.sublayers:
        out.extend(_all_layers(sub))
    return out


def test_with_mode_sets_mode_everywhere_and_keeps_sharing():
    d = Affine(3)
    model = tl.Serial(
        d, tl.Branch(tl.Serial(d, Counter()), None), tl.Add(), tl.Scan(tl.Fn("Id", lambda x: x), n_carry=0)
    )
    twin = model.with_mode("predict")
    twin_layers = _all_layers(twin)
    original_layers = _all_layers(model)
    assert len(twin_layers) == len(original_layers)
    assert all(layer.mode == "predict" for layer in twin_layers)
    assert all(layer.mode == "train" for layer in original_layers)
    assert not {id(layer) for layer in twin_layers} & {id(layer) for layer in original_layers}
    # Sharing preserved: the twin of d appears in both places.
    twin_d = twin.sublayers[0]
    assert twin_d is not d
    branch_layers = _all_layers(twin.sublayers[1])
    assert any(layer is twin_d for layer in branch_layers)
    weights, _ = twin.init(ShapeDtype((2, 3)))
    assert any(w is tl.SHARED for w in jax.tree.leaves(weights, is_leaf=lambda w: w is tl.SHARED))


def test_with_mode_keeps_the_weights_tree_and_outputs():
    model = tl.Serial(Affine(3), Counter(), Affine(2))
    weights, state = model.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(3))
    twin = model.with_mode("eval")
    twin_weights, _ = twin.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(3))
    assert jax.tree.structure(twin_weights) == jax.tree.structure(weights)
    assert _leaves_equal(twin_weights, weights)
    y, _ = model.pure_fn(_x(), weights, state, None)
    y_twin, _ = twin.pure_fn(_x(), weights, state, None)
    np.testing.assert_allclose(y_twin, y, rtol=1e-6)


def test_with_mode_carries_the_interactive_cache():
    layer = Affine(2)
    layer.init(ShapeDtype((2, 3)))
    twin = layer.with_mode("predict")
    np.testing.assert_allclose(twin(_x()), layer(_x()), rtol=1e-6)


def _conv_attention_lm(max_len=16):
    return tl.Serial(
        tl.Embedding(10, 8),
        tl.CausalConv(8, kernel_width=3),
        tl.PositionalEncoding(max_len=max_len),
        tl.CausalAttention(8, n_heads=2, max_inference_length=64),
        tl.Dense(10),
    )


def test_a_predict_twin_of_a_trained_model_streams_call_by_call_as_in_trax():
    model = _conv_attention_lm()
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 12), 0, 10)
    model.init(tokens, rng=jax.random.PRNGKey(1))
    whole = model.with_mode("eval")(tokens)
    streaming = model.with_mode("predict")
    blocks = [streaming(tokens[:, :4]), streaming(tokens[:, 4:5]), streaming(tokens[:, 5:12])]
    np.testing.assert_allclose(np.concatenate(blocks, axis=1), whole, atol=1e-5)
    # Setting the state (or init) starts a new stream.
    streaming.state = tl.start_stream(model, tokens[:, :1], model.weights)[1]
    np.testing.assert_allclose(streaming(tokens[:, :4]), whole[:, :4], atol=1e-5)


def test_a_predict_mode_model_initialised_on_a_block_streams_call_by_call():
    model = _conv_attention_lm()
    tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 6), 0, 10)
    weights, _ = model.init(tokens, rng=jax.random.PRNGKey(1))
    predict = _conv_attention_lm().with_mode("predict")
    predict.init(ShapeDtype((2, 1), jnp.int32))
    predict.weights = weights
    steps = [predict(tokens[:, t : t + 1]) for t in range(6)]
    np.testing.assert_allclose(np.concatenate(steps, axis=1), model.with_mode("eval")(tokens), atol=1e-5)


def test_an_interactive_stream_past_its_cache_raises_for_arrays_and_masks_sequences():
    model = _conv_attention_lm(max_len=6)
    tokens = jnp.ones((1, 8), jnp.int32)
    model.init(tokens[:, :6])
    assert model.stream_capacity == 6
    streaming = model.with_mode("predict")
    streaming(tokens[:, :4])
    with pytest.raises(ValueError) as caught:
        streaming(tokens[:, :4])
    assert str(caught.value) == (
        "Serial: this predict-mode stream has taken 4 steps and the block has 4, but the stream holds "
        "6 steps (PositionalEncoding max_len=6); start a new stream (layer.init, or set layer.state) "
        "or build the model with a larger cache"
    )
    assert np.isfinite(streaming(tokens[:, :2])).all()  # The refused block changed nothing.
    # A Sequence's steps past the cache come out invalid (never NaN).
    fresh = model.with_mode("predict")
    out = fresh(Sequence.from_values(tokens))
    np.testing.assert_array_equal(out.mask, [[True] * 6 + [False] * 2])
    assert np.isfinite(out.values).all()


def test_init_given_a_tuple_of_ints_says_what_to_pass():
    with pytest.raises(tl.LayerError) as caught:
        tl.Dense(3).init((4, 5))
    assert "cause: TypeError: expected a ShapeDtype or example inputs, got the tuple of ints (4, 5); " in str(
        caught.value
    )
    assert "pass tl.ShapeDtype((4, 5)) (float32) or an example array such as jnp.zeros((4, 5))" in str(
        caught.value
    )


def test_with_mode_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        Affine(2).with_mode("inference")


# --- Files ----------------------------------------------------------------------------------------------------------


def _stateful_model():
    return tl.Serial(Affine(4), Counter(), Affine(2))


def _trained_model(sig=ShapeDtype((2, 3))):
    model = _stateful_model()
    model.init(sig, rng=jax.random.PRNGKey(7))
    model(_x())
    model(_x())  # Counter state is now 2.
    return model


def test_save_and_init_from_file_round_trip(tmp_path):
    sig = ShapeDtype((2, 3))
    model = _trained_model(sig)
    path = tmp_path / "model.weights"
    model.save_to_file(path, input_signature=sig)
    fresh = _stateful_model()
    weights, state = fresh.init_from_file(path)
    assert _leaves_equal(weights, model.weights)
    assert _leaves_equal(state, model.state)
    assert int(state[1]) == 2
    assert fresh.weights is weights and fresh.state is state
    np.testing.assert_allclose(fresh(_x()), model(_x()), rtol=1e-6)


def test_save_and_load_weights_only(tmp_path):
    sig = ShapeDtype((2, 3))
    model = _trained_model(sig)
    path = tmp_path / "w.weights"
    model.save_to_file(path, weights_only=True, input_signature=sig)
    fresh = _stateful_model()
    weights, state = fresh.init_from_file(path, weights_only=True)
    assert _leaves_equal(weights, model.weights)
    assert int(state[1]) == 0  # Fresh state, not the saved model's.
    with pytest.raises(ValueError, match="weights only"):
        _stateful_model().init_from_file(path)


class Bf16Scale(tl.Layer):
    """x * w with bfloat16 weights (Trax's use_bfloat16 layers keep such weights)."""

    def init_weights_and_state(self, input_signature, rng):
        return jax.random.normal(rng, input_signature.shape[-1:], jnp.bfloat16), ()

    def forward(self, x, weights, state, rng):
        return x * _bias_like(weights, x), state


def test_save_and_load_bfloat16_weights(tmp_path):
    sig = ShapeDtype((2, 3), jnp.bfloat16)
    layer = Bf16Scale()
    layer.init(sig)
    path = tmp_path / "bf16.weights"
    layer.save_to_file(path, input_signature=sig)
    weights, _ = Bf16Scale().init_from_file(path)
    assert weights.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(weights, np.float32), np.asarray(layer.weights, np.float32))


def test_init_from_file_with_explicit_signature(tmp_path):
    model = _trained_model()
    path = tmp_path / "m.weights"
    model.save_to_file(path)  # No signature stored.
    with pytest.raises(ValueError, match="input_signature"):
        _stateful_model().init_from_file(path)
    weights, _ = _stateful_model().init_from_file(path, input_signature=ShapeDtype((5, 3)))
    assert _leaves_equal(weights, model.weights)


def test_file_stores_a_sequence_signature(tmp_path):
    sig = Sequence(ShapeDtype((2, 4, 3)), ShapeDtype((2, 4), np.bool_))
    model = tl.Serial(Affine(2))
    model.init(sig)
    path = tmp_path / "s.weights"
    model.save_to_file(path, input_signature=sig)
    weights, _ = tl.Serial(Affine(2)).init_from_file(path)
    assert _leaves_equal(weights, model.weights)


def test_saved_file_is_a_zip_of_npy_and_json_without_pickle(tmp_path):
    model = _trained_model()
    path = tmp_path / "m.weights"
    model.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        assert "header.json" in names
        arrays = [n for n in names if n.endswith(".npy")]
        assert len(arrays) == 5  # Two (w, b) pairs and one state scalar.
        for name in arrays:
            np.lib.format.read_array(io.BytesIO(z.read(name)), allow_pickle=False)
    assert [f for f in os.listdir(tmp_path) if f != "m.weights"] == []  # No temp files left.


def test_save_overwrites_atomically(tmp_path):
    path = tmp_path / "m.weights"
    first = _trained_model()
    first.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    second = _stateful_model()
    second.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(99))
    second.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    weights, _ = _stateful_model().init_from_file(path)
    assert _leaves_equal(weights, second.weights)
    assert os.listdir(tmp_path) == ["m.weights"]


def test_save_and_load_a_model_with_shared_weights(tmp_path):
    def build():
        d = Affine(3)
        return tl.Serial(d, Counter(), d)

    sig = ShapeDtype((2, 3))
    model = build()
    model.init(sig, rng=jax.random.PRNGKey(4))
    path = tmp_path / "shared.weights"
    model.save_to_file(path, input_signature=sig)
    with zipfile.ZipFile(path) as z:
        assert len([n for n in z.namelist() if n.startswith("weights")]) == 2  # Stored once.
    fresh = build()
    weights, _ = fresh.init_from_file(path)
    assert weights[2] is tl.SHARED
    np.testing.assert_allclose(fresh(_x()), model(_x()), rtol=1e-6)


def _rewrite_zip(src, dst, replace=None, order=None):
    """Copies zip src to dst, replacing members' bytes and/or reordering them."""
    replace = replace or {}
    with zipfile.ZipFile(src) as z:
        members = {name: z.read(name) for name in z.namelist()}
    names = order(list(members)) if order else list(members)
    with zipfile.ZipFile(dst, "w") as z:
        for name in names:
            z.writestr(name, replace.get(name, members[name]))


def test_loading_matches_arrays_by_path_name_not_position(tmp_path):
    model = _trained_model()
    path = tmp_path / "m.weights"
    model.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    shuffled = tmp_path / "shuffled.weights"
    _rewrite_zip(path, shuffled, order=lambda names: list(reversed(names)))
    weights, state = _stateful_model().init_from_file(shuffled)
    assert _leaves_equal(weights, model.weights)
    assert _leaves_equal(state, model.state)


def test_loading_into_a_different_layout_names_the_missing_array(tmp_path):
    model = tl.Serial(Affine(3), Affine(3))
    model.init(ShapeDtype((2, 3)))
    path = tmp_path / "m.weights"
    model.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    other = tl.Serial(Affine(3), tl.Fn("Id", lambda x: x), Affine(3))
    with pytest.raises(ValueError, match=r"weights\[2\]"):
        other.init_from_file(path)


def test_loading_with_a_shape_mismatch_raises_clearly(tmp_path):
    model = tl.Serial(Affine(3))
    model.init(ShapeDtype((2, 3)))
    path = tmp_path / "m.weights"
    model.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    with pytest.raises(ValueError) as info:
        tl.Serial(Affine(5)).init_from_file(path)
    message = str(info.value)
    assert "weights[0][0]" in message
    assert "[3, 3]" in message and "[3, 5]" in message


class _CreatesMarker:
    """Unpickling this calls open(path, 'w'): a visible side effect of running code."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _object_npy(marker):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.array([_CreatesMarker(marker)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _saved_model_file(tmp_path):
    model = _trained_model()
    path = tmp_path / "good.weights"
    model.save_to_file(path, input_signature=ShapeDtype((2, 3)))
    with zipfile.ZipFile(path) as z:
        first_array = next(n for n in z.namelist() if n.startswith("weights"))
    return path, first_array


def test_payload_used_by_the_pickle_tests_is_live(tmp_path):
    # Guards the next tests: if loaded with pickle, these payloads do create the marker.
    marker = tmp_path / "control_marker"
    np.lib.format.read_array(io.BytesIO(_object_npy(marker)), allow_pickle=True)
    assert marker.exists()
    marker.unlink()
    pickle.loads(pickle.dumps(_CreatesMarker(marker)))
    assert marker.exists()


def test_object_npy_inside_the_file_is_not_unpickled(tmp_path):
    marker = tmp_path / "marker"
    good, member = _saved_model_file(tmp_path)
    evil = tmp_path / "evil.weights"
    _rewrite_zip(good, evil, replace={member: _object_npy(marker)})
    with pytest.raises(ValueError):
        _stateful_model().init_from_file(evil)
    assert not marker.exists()


def test_pickle_member_inside_the_file_is_not_executed(tmp_path):
    marker = tmp_path / "marker"
    good, member = _saved_model_file(tmp_path)
    evil = tmp_path / "evil.weights"
    _rewrite_zip(good, evil, replace={member: pickle.dumps(_CreatesMarker(marker))})
    with pytest.raises(ValueError):
        _stateful_model().init_from_file(evil)
    assert not marker.exists()


def test_a_pickle_file_instead_of_a_zip_is_not_executed(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"flat_weights": [_CreatesMarker(marker)]}))
    with pytest.raises(ValueError, match="corrupt"):
        _stateful_model().init_from_file(evil, input_signature=ShapeDtype((2, 3)))
    with pytest.raises(ValueError):
        tl.np_from_file(evil)
    assert not marker.exists()


def test_np_from_file_does_not_unpickle(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "arrays.npz"
    tl.np_to_file([np.zeros(3)], path)
    evil = tmp_path / "evil.npz"
    _rewrite_zip(path, evil, replace={"arr_0.npy": _object_npy(marker)})
    with pytest.raises(ValueError):
        tl.np_from_file(evil)
    assert not marker.exists()


def test_truncated_file_raises_value_error(tmp_path):
    good, _ = _saved_model_file(tmp_path)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt"):
        _stateful_model().init_from_file(truncated)
    empty = tmp_path / "empty.weights"
    empty.write_bytes(b"")
    with pytest.raises(ValueError):
        _stateful_model().init_from_file(empty)


def _flip_bytes(path, dst, start, n=16):
    data = bytearray(path.read_bytes())
    for i in range(start, start + n):
        data[i] ^= 0xFF
    dst.write_bytes(bytes(data))


def _member_data_offset(path, name):
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    # Local file header: 30 bytes + file name + extra field.
    data = path.read_bytes()
    name_len = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def test_corrupt_array_data_raises_value_error(tmp_path):
    good, member = _saved_model_file(tmp_path)
    start, size = _member_data_offset(good, member)
    bad = tmp_path / "bad.weights"
    _flip_bytes(good, bad, start + size - 8, n=8)  # Inside the array's values.
    with pytest.raises(ValueError):
        _stateful_model().init_from_file(bad)


def test_corrupt_header_raises_value_error(tmp_path):
    good, _ = _saved_model_file(tmp_path)
    start, size = _member_data_offset(good, "header.json")
    bad = tmp_path / "bad.weights"
    _flip_bytes(good, bad, start + size // 2, n=4)
    with pytest.raises(ValueError):
        _stateful_model().init_from_file(bad)


def test_file_of_another_format_raises_value_error(tmp_path):
    path = tmp_path / "arrays.npz"
    tl.np_to_file([np.zeros(3)], path)
    with pytest.raises(ValueError, match="format"):
        _stateful_model().init_from_file(path, input_signature=ShapeDtype((2, 3)))


# --- np_to_file / np_from_file ----------------------------------------------------------------------------------


def test_np_to_file_round_trip(tmp_path):
    arrays = [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([True, False]),
        np.array(7, dtype=np.int8),
        np.zeros((0, 2), np.float64),
    ]
    path = tmp_path / "arrays.npz"
    tl.np_to_file(arrays, path, compresslevel=2)
    loaded = tl.np_from_file(path, compresslevel=2)
    assert len(loaded) == len(arrays)
    for got, want in zip(loaded, arrays):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    tl.np_to_file([], path)
    assert tl.np_from_file(path) == []


def test_np_to_file_accepts_jax_arrays_and_no_compression(tmp_path):
    path = tmp_path / "a.npz"
    tl.np_to_file([jnp.ones((2, 2)), jnp.arange(3)], path, compresslevel=0)
    with zipfile.ZipFile(path) as z:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in z.infolist())
    a, b = tl.np_from_file(path)
    np.testing.assert_array_equal(a, np.ones((2, 2)))
    np.testing.assert_array_equal(b, [0, 1, 2])


def test_np_to_file_round_trips_bfloat16(tmp_path):
    path = tmp_path / "bf16.npz"
    values = jnp.array([1.0, -2.5, 0.15625], jnp.bfloat16)
    tl.np_to_file([values], path)
    (loaded,) = tl.np_from_file(path)
    assert loaded.dtype == jnp.bfloat16
    np.testing.assert_array_equal(loaded.astype(np.float32), np.asarray(values, np.float32))


def test_np_from_file_on_corrupt_compressed_data_raises_value_error(tmp_path):
    path = tmp_path / "a.npz"
    tl.np_to_file([np.arange(1000.0)], path, compresslevel=2)
    start, size = _member_data_offset(path, "arr_0.npy")
    for offset in (8, size // 2, size - 12):
        bad = tmp_path / f"bad{offset}.npz"
        _flip_bytes(path, bad, start + offset, n=8)
        with pytest.raises(ValueError):
            tl.np_from_file(bad)


def test_np_from_file_on_a_foreign_zip_raises_value_error(tmp_path):
    path = tmp_path / "foreign.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("something.txt", "hello")
    with pytest.raises(ValueError):
        tl.np_from_file(path)


def test_np_from_file_truncated_raises_value_error(tmp_path):
    path = tmp_path / "a.npz"
    tl.np_to_file([np.arange(100.0)], path)
    data = path.read_bytes()
    path.write_bytes(data[:-30])
    with pytest.raises(ValueError):
        tl.np_from_file(path)


# --- Flattening and to_list -----------------------------------------------------------------------------------------


def test_flatten_and_unflatten_weights_and_state():
    d = Affine(3)
    model = tl.Serial(d, tl.Fn("Id", lambda x: x), d, Counter())
    weights, state = model.init(ShapeDtype((2, 3)))
    flat_w, flat_s = tl.flatten_weights_and_state(weights, state)
    assert len(flat_w) == 2  # Shared and empty entries are skipped.
    np.testing.assert_array_equal(flat_w[0], weights[0][0])
    np.testing.assert_array_equal(flat_w[1], weights[0][1])
    assert len(flat_s) == 1 and int(flat_s[0]) == 0
    signature = model.weights_and_state_signature(ShapeDtype((2, 3)))
    new_w, new_s = tl.unflatten_weights_and_state([2 * a for a in flat_w], [flat_s[0] + 5], signature)
    assert jax.tree.structure(new_w) == jax.tree.structure(weights)
    assert new_w[2] is tl.SHARED and new_w[1] == ()
    np.testing.assert_array_equal(new_w[0][0], 2 * weights[0][0])
    assert int(new_s[3]) == 5
    y, _ = model.pure_fn(_x(), new_w, new_s, None)
    w2 = jax.tree.map(lambda a: 2 * a, weights[0])
    np.testing.assert_allclose(y, affine(affine(_x(), w2), w2) + 5.0, rtol=1e-5)


def test_unflatten_weights_only():
    model = tl.Serial(Affine(2), Counter())
    weights, state = model.init(ShapeDtype((1, 3)))
    flat_w, _ = tl.flatten_weights_and_state(weights, state)
    signature = model.weights_and_state_signature(ShapeDtype((1, 3)))
    new_w, new_s = tl.unflatten_weights_and_state(flat_w, None, signature, weights_only=True)
    assert new_s is None
    assert _leaves_equal(new_w, weights)


def test_to_list():
    a = jnp.array([[1.0, 2.0]])
    b = np.array([3, 4])
    assert tl.to_list(a) == [[1.0, 2.0]]
    assert tl.to_list((a, (b,))) == [[[1.0, 2.0]], [[3, 4]]]
    s = Sequence.from_lengths(jnp.array([[5, 6]]), [1])
    assert tl.to_list(s) == [[[5, 6]], [[True, False]]]
    assert tl.to_list(()) == []


# --- Sharding ----------------------------------------------------------------------------------------------------------


def test_shard_splits_over_all_local_devices():
    n = jax.local_device_count()
    assert n == 8
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    sharded = tl.shard(x)
    assert sharded.shape == (8, 2, 3)
    pieces = np.split(x, 8, axis=0)
    for i in range(8):
        np.testing.assert_array_equal(np.asarray(sharded[i]), pieces[i])
    devices = {shard.device for shard in sharded.addressable_shards}
    assert len(devices) == 8
    for shard in sharded.addressable_shards:
        assert shard.data.shape == (1, 2, 3)
    back = tl.unshard(sharded)
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, x)


def test_shard_fewer_pieces_than_devices_repeats_them():
    x = np.arange(8 * 2, dtype=np.float32).reshape(8, 2)
    sharded = tl.shard(x, n_shards=2)
    assert sharded.shape == (8, 4, 2)
    for i in range(8):
        np.testing.assert_array_equal(np.asarray(sharded[i]), x[4 * (i % 2) : 4 * (i % 2) + 4])
    np.testing.assert_array_equal(tl.unshard(sharded, n_shards=2), x)


def test_shard_large_arrays_on_the_last_axis_and_trees():
    y = np.arange(2 * 3 * 8, dtype=np.float32).reshape(2, 3, 8)
    tree = {"small": np.arange(8.0), "big": y}
    sharded = tl.shard(tree)
    assert sharded["big"].shape == (8, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(sharded["big"][5]), y[..., 5:6])
    back = tl.unshard(sharded)
    np.testing.assert_array_equal(back["big"], y)
    np.testing.assert_array_equal(back["small"], np.arange(8.0))


def test_shard_indivisible_raises():
    with pytest.raises(ValueError, match="cannot split"):
        tl.shard(np.zeros((6, 2)))


def test_unshard_in_pmap():
    x = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
    sharded = tl.shard(x, n_shards=4)
    out = jax.pmap(lambda t: tl.unshard_in_pmap(t, n_shards=4), axis_name="batch")(sharded)
    assert out.shape == (8, 8, 3)
    for i in range(8):
        np.testing.assert_array_equal(np.asarray(out[i]), x)


# --- Streaming defaults ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [tl.Layer, lambda: Affine(3), lambda: tl.Fn("F", lambda x: x)])
def test_streaming_property_defaults(make):
    layer = make()
    assert layer.block_size == 1
    assert layer.output_ratio == fractions.Fraction(1)
    assert isinstance(layer.output_ratio, fractions.Fraction)
    assert layer.input_latency == 0
    assert layer.output_latency == 0
    assert layer.receptive_field == (0, 0)
    assert layer.supports_step is True


def test_supports_step_follows_sublayers():
    class NoStep(tl.Layer):
        @property
        def supports_step(self):
            return False

    assert tl.Serial(Affine(2), tl.Dup()).supports_step is True
    assert tl.Serial(Affine(2), tl.Serial(NoStep())).supports_step is False


def test_default_mode_is_train():
    assert tl.Layer().mode == "train"
    assert Affine(2).mode == "train"


def test_the_base_layer_inits_empty_and_a_call_says_forward_is_missing():
    # Trax's base_test: Layer() initializes with empty weights and state; calling it is a LayerError.
    layer = tl.Layer()
    assert layer.init(ShapeDtype((2, 5))) == ((), ())
    with pytest.raises(tl.LayerError, match="NotImplementedError"):
        layer(np.ones((2, 5)))


def test_init_none_for_layers_whose_weights_do_not_depend_on_the_input():
    embedding = tl.Embedding(10, 4)
    weights, state = embedding.init(None)
    assert weights.shape == (10, 4) and state == ()
    assert embedding(np.array([[1, 2]])).shape == (1, 2, 4)
    assert tl.Dropout(0.1).init(None) == ((), ())
    with pytest.raises(tl.LayerError, match="its weights depend on the input signature: give it"):
        tl.Dense(3).init(None)
    with pytest.raises(tl.LayerError, match="init\\(None\\) needs a layer without sublayers"):
        tl.Serial(tl.Embedding(10, 4)).init(None)


# --- Trax's subclass API: forward(self, x) and init_weights_and_state(self, input_signature) ---------------


class TraxScale(tl.Layer):
    """Written as a Trax user writes a layer: it reads self.weights and assigns them in init."""

    def forward(self, x):
        return x * self.weights.reshape((1,) * (x.ndim - 1) + self.weights.shape)

    def init_weights_and_state(self, input_signature):
        self.weights = jnp.full(input_signature.shape[-1:], 2.0)


class TraxCounter(tl.Layer):
    def forward(self, x):
        self.state = self.state + 1
        return x + 0 * jax.random.uniform(self.rng, x.shape)

    def init_weights_and_state(self, input_signature):
        del input_signature
        self.state = jnp.zeros((), jnp.int32)


def test_a_trax_style_subclass_inits_runs_and_differentiates_purely():
    layer = TraxScale()
    weights, state = layer.init(ShapeDtype((2, 3)))
    np.testing.assert_array_equal(weights, [2, 2, 2]) and state == ()
    np.testing.assert_array_equal(layer(np.ones((2, 3))), np.full((2, 3), 2.0))
    # pure_fn stays pure: the weights given are the ones used, the cache is untouched.
    outputs, _ = layer.pure_fn(np.ones((1, 3)), jnp.array([1.0, 2.0, 3.0]), (), jax.random.PRNGKey(0))
    np.testing.assert_array_equal(outputs, [[1, 2, 3]])
    np.testing.assert_array_equal(layer.weights, [2, 2, 2])
    grad = jax.grad(lambda w: layer.pure_fn(np.ones((2, 3)), w, (), jax.random.PRNGKey(0))[0].sum())(weights)
    np.testing.assert_array_equal(grad, [2, 2, 2])
    # State a forward assigns is the new state; in a Serial too.
    model = tl.Serial(TraxScale(), tl.Relu(), TraxCounter())
    model.init(ShapeDtype((2, 3)))
    model(np.ones((2, 3)))
    model(np.ones((2, 3)))
    assert int(model.state[2]) == 2


class TraxWeightsPlusState(tl.Layer):
    """Trax's base_test MyLayer: its forward cannot run on its inputs' shape, and need not for init."""

    def init_weights_and_state(self, input_signature):
        self.weights = jnp.zeros((2, 3))
        self.state = jnp.ones(input_signature.shape)

    def forward(self, inputs):
        return self.weights + self.state


def test_a_trax_style_init_does_not_run_forward():
    layer = TraxWeightsPlusState()
    weights, state = layer.weights_and_state_signature(jnp.zeros((3, 4)))
    assert (weights.shape, state.shape) == ((2, 3), (3, 4))
    weights, state = layer.init(ShapeDtype((3, 4)))
    assert (weights.shape, state.shape) == ((2, 3), (3, 4))
    # Inside a combinator the output is needed, so the mismatch is found there.
    with pytest.raises(tl.LayerError, match="TraxWeightsPlusState"):
        tl.Serial(layer, tl.Relu()).init(ShapeDtype((3, 4)))


def test_setting_weighs_is_an_error_as_in_trax():
    layer = tl.Layer()
    layer.weights = 1.0
    with pytest.raises(ValueError, match="weighs"):
        layer.weighs = 1.0


def test_a_trax_style_backward_gives_the_gradient():
    # Trax's base_test: custom zero and identity gradients.
    class IdWithZeroGrad(tl.Layer):
        def forward(self, x):
            return x

        @property
        def has_backward(self):
            return True

        def backward(self, inputs, output, grad, weights, state, new_state, rng):
            return jnp.zeros_like(grad), ()

    class IdWithIdGrad(IdWithZeroGrad):
        def backward(self, inputs, output, grad, weights, state, new_state, rng):
            return inputs, ()

    x = jax.random.uniform(jax.random.PRNGKey(0), (9, 17), minval=-1.0, maxval=1.0)
    for layer, expected in ((IdWithZeroGrad(), jnp.zeros_like(x)), (IdWithIdGrad(), x)):
        layer.init(ShapeDtype((9, 17)))
        np.testing.assert_allclose(jax.grad(lambda x, layer=layer: jnp.mean(layer(x)))(x), expected)


def test_pure_layer_and_fn_forward_as_trax_calls_them():
    np.testing.assert_array_equal(tl.PureLayer(lambda x: 2 * x).forward(np.array([3, 4])), [6, 8])
    layer = tl.Fn("SumAndMax", lambda x0, x1: (x0 + x1, jnp.maximum(x0, x1)), n_out=2)
    total, largest = layer.forward((np.array([1, 2]), np.array([10, 20])))
    np.testing.assert_array_equal(total, [11, 22])
    np.testing.assert_array_equal(largest, [10, 20])
    layer.init_weights_and_state(None)
    assert layer.weights == () and layer.state == ()


def test_assigning_rng_seeds_the_next_init_as_in_trax():
    layer = tl.Dense(3)
    layer.rng = jax.random.PRNGKey(7)
    seeded, _ = layer.init(ShapeDtype((2, 4)))
    expected, _ = tl.Dense(3).init(ShapeDtype((2, 4)), rng=jax.random.PRNGKey(7))
    np.testing.assert_array_equal(seeded[0], expected[0])
    assert not np.array_equal(seeded[0], tl.Dense(3).init(ShapeDtype((2, 4)))[0][0])


def test_a_list_of_stack_items_is_their_tuple():
    # Trax's tests pass several inputs as a list: layer([x, y]).
    x, y = np.ones((2, 3)), np.zeros((2, 3))
    out = tl.Fn("Swap", lambda a, b: (b, a), n_out=2)([x, y])
    assert isinstance(out, tuple) and out[0] is not None and np.array_equal(out[0], y)
    np.testing.assert_array_equal(tl.Add()([x, y]), x + y)


def test_the_shared_marker_is_trax_marker_dict_and_survives_trax_nested_maps():
    from trax_sl import fastmath

    dense = tl.Dense(3)
    model = tl.Serial(dense, tl.Relu(), dense)
    weights, state = model.init(ShapeDtype((2, 3)))
    assert weights[2] is tl.SHARED and weights[2] == {"__marker_for_cached_weights_": ()}  # Trax's marker.
    assert hash(tl.SHARED) is not None and jax.tree.leaves(tl.SHARED) == []
    x = np.ones((2, 3), np.float32)
    grads = jax.grad(lambda w: model.pure_fn(x, w, state, None)[0].sum())(weights)
    # As Trax's terraformer_test: an SGD step by fastmath's nested map turns the marker into a plain dict.
    stepped = fastmath.nested_map_multiarg(lambda w, g: w - 0.5 * g, weights, grads)
    assert type(stepped[2]) is dict and tl.base.is_shared(stepped[2])
    expected = jax.tree.map(lambda w, g: w - 0.5 * g, weights, grads)
    np.testing.assert_allclose(
        model.pure_fn(x, stepped, state, None)[0], model.pure_fn(x, expected, state, None)[0]
    )
