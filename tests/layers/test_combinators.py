"""Combinators: exact values on small cases, Trax stack semantics, derived streaming properties."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence, shapes
from trax_sl.shapes import ShapeDtype

F = fractions.Fraction

# --- Small layers for the tests ------------------------------------------------------------------


def _bias_like(b, x):
    return jnp.reshape(b, (1,) * (x.ndim - 1) + tuple(b.shape))


class Affine(tl.Layer):
    """x @ w + b with random normal weights."""

    def __init__(self, n_units):
        super().__init__(name=f"Affine_{n_units}")
        self._n_units = n_units

    def init_weights_and_state(self, input_signature, rng):
        rng_w, rng_b = jax.random.split(rng)
        w = jax.random.normal(rng_w, (input_signature.shape[-1], self._n_units))
        return (w, jax.random.normal(rng_b, (self._n_units,))), ()

    def forward(self, x, weights, state, rng):
        w, b = weights
        return x @ w + _bias_like(b, x), state


def affine(x, weights):
    w, b = weights
    return x @ w + _bias_like(b, x)


class Rank2Affine(Affine):
    """Affine that insists on [batch, depth] inputs."""

    def forward(self, x, weights, state, rng):
        if x.ndim != 2:
            raise ValueError(f"Rank2Affine wants rank 2, got {x.shape}")
        return super().forward(x, weights, state, rng)


class Counter(tl.Layer):
    """Weightless; returns x + offset + count and increments its int32 count (the state)."""

    def __init__(self, offset=0.0, name="Counter"):
        super().__init__(name=name)
        self._offset = offset

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((), jnp.int32)

    def forward(self, x, weights, state, rng):
        return x + self._offset + state.astype(x.dtype), state + 1


class CumSum(tl.Layer):
    """Cumulative sum over time; masks invalid steps first (it mixes time steps)."""

    handles_sequences = True

    def forward(self, x, weights, state, rng):
        if isinstance(x, Sequence):
            m = x.mask_invalid()
            return Sequence(jnp.cumsum(m.values, axis=1), x.mask), state
        return jnp.cumsum(x, axis=1), state


class Streamer(tl.Layer):
    """Identity with the streaming properties given to its constructor."""

    def __init__(
        self, block_size=1, output_ratio=F(1), input_latency=0, output_latency=0, receptive_field=(0, 0)
    ):
        super().__init__(name="Streamer")
        self._props = (block_size, F(output_ratio), input_latency, output_latency, receptive_field)

    def forward(self, x, weights, state, rng):
        return x, state

    @property
    def block_size(self):
        return self._props[0]

    @property
    def output_ratio(self):
        return self._props[1]

    @property
    def input_latency(self):
        return self._props[2]

    @property
    def output_latency(self):
        return self._props[3]

    @property
    def receptive_field(self):
        return self._props[4]


def _x(shape=(2, 3), scale=1.0):
    return jnp.asarray(np.arange(1, 1 + np.prod(shape), dtype=np.float32).reshape(shape) * scale)


def _run(layer, x, rng=None):
    """init on x's signature, then pure_fn: returns outputs."""
    weights, state = layer.init(x)
    y, _ = layer.pure_fn(x, weights, state, rng)
    return y


def double():
    return tl.Fn("Double", lambda x: 2 * x)


def plus(c):
    return tl.Fn(f"Plus{c}", lambda x: x + c)


# --- Serial ------------------------------------------------------------------------------------------


def test_empty_serial_is_a_one_in_one_out_no_op():
    layer = tl.Serial()
    assert (layer.n_in, layer.n_out) == (1, 1)
    x = _x()
    y = layer(x)
    np.testing.assert_array_equal(y, x)
    assert layer.init(ShapeDtype((2, 3)))[0] == ()


def test_serial_composes_in_order():
    layer = tl.Serial(plus(1.0), double())
    np.testing.assert_array_equal(layer(_x()), 2 * (_x() + 1))
    layer = tl.Serial(double(), plus(1.0))
    np.testing.assert_array_equal(layer(_x()), 2 * _x() + 1)


def test_serial_drops_none_entries_and_flattens_nested_lists():
    layer = tl.Serial(None, plus(1.0), [double(), [None, plus(3.0)]], None)
    assert len(layer.sublayers) == 3
    assert [sub.name for sub in layer.sublayers] == ["Plus1.0", "Double", "Plus3.0"]
    np.testing.assert_array_equal(layer(_x()), 2 * (_x() + 1) + 3)


def test_serial_rejects_non_layers():
    with pytest.raises(TypeError, match="Layer"):
        tl.Serial(plus(1.0), lambda x: x)


@pytest.mark.parametrize(
    "make, n_in, n_out",
    [
        (lambda: tl.Serial(tl.Dup(), tl.Add(), tl.Add()), 2, 1),
        (lambda: tl.Serial(tl.Drop(), double()), 2, 1),
        (lambda: tl.Serial(tl.Add(), tl.Add()), 3, 1),
        (lambda: tl.Serial(tl.Dup(), tl.Dup()), 1, 3),
        (lambda: tl.Serial(tl.Fn("Const", lambda: jnp.ones((2, 3))), tl.Add()), 1, 1),
        (lambda: tl.Serial(double(), tl.Swap()), 2, 2),
        (lambda: tl.Serial(tl.Drop()), 1, 0),
        (lambda: tl.Serial(tl.Select([0, 1, 0, 1]), tl.Add(), tl.Add(), tl.Add()), 2, 1),
    ],
)
def test_serial_n_in_n_out_running_max(make, n_in, n_out):
    layer = make()
    assert (layer.n_in, layer.n_out) == (n_in, n_out)


def test_serial_stack_semantics_values():
    a, b, c = _x(), _x(scale=10.0), _x(scale=100.0)
    np.testing.assert_array_equal(tl.Serial(tl.Dup(), tl.Add(), tl.Add())((a, b)), 2 * a + b)
    np.testing.assert_array_equal(tl.Serial(tl.Drop(), double())((a, b)), 2 * b)
    np.testing.assert_array_equal(tl.Serial(tl.Add(), tl.Add())((a, b, c)), a + b + c)
    d1, d2, d3 = tl.Serial(tl.Dup(), tl.Dup())(a)
    for d in (d1, d2, d3):
        np.testing.assert_array_equal(d, a)
    const = tl.Serial(tl.Fn("Const", lambda: jnp.full((2, 3), 5.0)), tl.Add())
    np.testing.assert_array_equal(const(a), a + 5.0)
    first, second = tl.Serial(double(), tl.Swap())((a, b))
    np.testing.assert_array_equal(first, b)
    np.testing.assert_array_equal(second, 2 * a)
    assert tl.Serial(tl.Drop())(a) == ()
    four = tl.Serial(tl.Select([0, 1, 0, 1]), tl.Add(), tl.Add(), tl.Add())
    np.testing.assert_array_equal(four((a, b)), 2 * a + 2 * b)


def test_serial_with_zero_inputs():
    layer = tl.Serial(tl.Fn("Const", lambda: jnp.full((2,), 4.0)), double())
    assert (layer.n_in, layer.n_out) == (0, 1)
    np.testing.assert_array_equal(layer(()), [8.0, 8.0])


def test_serial_weights_and_state_one_entry_per_sublayer():
    model = tl.Serial(Affine(4), Counter(), tl.Serial(Affine(2), Counter(5.0)))
    weights, state = model.init(ShapeDtype((2, 3)))
    assert len(weights) == 3 and len(state) == 3
    assert weights[1] == ()
    assert len(weights[2]) == 2 and weights[2][1] == ()
    assert int(state[1]) == 0 and int(state[2][1]) == 0
    x = _x()
    y, new_state = model.pure_fn(x, weights, state, None)
    expected = affine(affine(x, weights[0]) + 0.0, weights[2][0]) + 5.0
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    assert int(new_state[1]) == 1 and int(new_state[2][1]) == 1


def test_serial_passes_sequences_through():
    s = Sequence.from_lengths(_x((2, 3, 2)), [1, 3])
    out = tl.Serial(double(), plus(1.0))(s)
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(out.mask, s.mask)
    valid = np.asarray(s.mask)[..., None]
    np.testing.assert_array_equal(np.where(valid, out.values, 0), np.where(valid, 2 * s.values + 1, 0))


def test_serial_name_and_sublayers_to_print():
    layer = tl.Serial(double(), name="MyNet", sublayers_to_print=[])
    assert layer.name == "MyNet"
    assert repr(layer) == "MyNet"
    assert tl.Serial(double()).name == "Serial"


# --- Parallel ---------------------------------------------------------------------------------------------


def test_parallel_reference_example_f_g_h():
    f = tl.Fn("F", lambda x: 10 * x)
    g = tl.Fn("G", lambda x, y, z: x + y + z)
    h = tl.Fn("H", lambda x, y: (x * y, x - y), n_out=2)
    layer = tl.Parallel(f, g, h)
    assert (layer.n_in, layer.n_out) == (6, 4)
    a, b, c, d, e, ff = (jnp.array([float(i)]) for i in range(1, 7))
    out = layer((a, b, c, d, e, ff))
    assert len(out) == 4
    np.testing.assert_array_equal(out[0], [10.0])
    np.testing.assert_array_equal(out[1], [2.0 + 3.0 + 4.0])
    np.testing.assert_array_equal(out[2], [5.0 * 6.0])
    np.testing.assert_array_equal(out[3], [5.0 - 6.0])


def test_parallel_none_is_a_one_arg_no_op():
    layer = tl.Parallel(None, double())
    assert (layer.n_in, layer.n_out) == (2, 2)
    a, b = _x(), _x(scale=3.0)
    y0, y1 = layer((a, b))
    np.testing.assert_array_equal(y0, a)
    np.testing.assert_array_equal(y1, 2 * b)
    y0, y1 = tl.Parallel(double(), None)((a, b))
    np.testing.assert_array_equal(y0, 2 * a)
    np.testing.assert_array_equal(y1, b)


def test_parallel_list_is_a_serial():
    layer = tl.Parallel([plus(1.0), double()], None)
    y0, y1 = layer((_x(), _x()))
    np.testing.assert_array_equal(y0, 2 * (_x() + 1))
    np.testing.assert_array_equal(y1, _x())


def test_parallel_weights_and_state():
    layer = tl.Parallel(Affine(2), Counter(), Affine(2))
    x = (_x((1, 3)), _x((1, 4)), _x((1, 5)))
    weights, state = layer.init(x)
    assert len(weights) == 3 and weights[1] == ()
    assert weights[0][0].shape == (3, 2) and weights[2][0].shape == (5, 2)
    (y0, y1, y2), new_state = layer.pure_fn(x, weights, state, None)
    np.testing.assert_allclose(y0, affine(x[0], weights[0]), rtol=1e-6)
    np.testing.assert_array_equal(y1, x[1])
    np.testing.assert_allclose(y2, affine(x[2], weights[2]), rtol=1e-6)
    assert int(new_state[1]) == 1


# --- Branch -------------------------------------------------------------------------------------------------


def test_branch_reference_example_f_g_h():
    f = tl.Fn("F", lambda x: 10 * x)
    g = tl.Fn("G", lambda x, y, z: x + 2 * y + 3 * z)
    h = tl.Fn("H", lambda x, y: (x * y, x - y), n_out=2)
    layer = tl.Branch(f, g, h)
    assert (layer.n_in, layer.n_out) == (3, 4)
    a, b, c = jnp.array([1.0]), jnp.array([2.0]), jnp.array([3.0])
    out = layer((a, b, c))
    np.testing.assert_array_equal(out[0], [10.0])
    np.testing.assert_array_equal(out[1], [1.0 + 4.0 + 9.0])
    np.testing.assert_array_equal(out[2], [2.0])
    np.testing.assert_array_equal(out[3], [-1.0])


def test_branch_none_copies_the_input():
    y0, y1 = tl.Branch(None, double())(_x())
    np.testing.assert_array_equal(y0, _x())
    np.testing.assert_array_equal(y1, 2 * _x())


def test_branch_of_one_layer_is_that_layer():
    f = double()
    assert tl.Branch(f) is f


def test_branch_leaves_the_rest_of_the_stack():
    model = tl.Serial(tl.Branch(double(), plus(1.0)), tl.Add(), tl.Add())
    a, b = _x(), _x(scale=10.0)
    np.testing.assert_array_equal(model((a, b)), 2 * a + (a + 1) + b)


def test_branch_copies_have_their_own_weights():
    layer = tl.Branch(Affine(2), Affine(2))
    weights, state = layer.init(ShapeDtype((1, 3)))
    flat, _ = tl.flatten_weights_and_state(weights, state)
    assert len(flat) == 4
    y0, y1 = layer.pure_fn(_x((1, 3)), weights, state, None)[0]
    w0, b0, w1, b1 = flat
    np.testing.assert_allclose(y0, affine(_x((1, 3)), (w0, b0)), rtol=1e-6)
    np.testing.assert_allclose(y1, affine(_x((1, 3)), (w1, b1)), rtol=1e-6)
    assert not np.allclose(y0, y1)


# --- Residual ------------------------------------------------------------------------------------------------


def test_residual_adds_the_input():
    np.testing.assert_array_equal(tl.Residual(double())(_x()), 3 * _x())


def test_residual_applies_several_layers_in_series():
    np.testing.assert_array_equal(tl.Residual(plus(1.0), double())(_x()), 2 * (_x() + 1) + _x())


def test_residual_with_shortcut():
    layer = tl.Residual(double(), shortcut=plus(100.0))
    np.testing.assert_array_equal(layer(_x()), 2 * _x() + _x() + 100.0)


def test_residual_with_weights():
    layer = tl.Residual(Affine(3))
    weights, state = layer.init(ShapeDtype((2, 3)))
    (w,) = [leaf for leaf in jax.tree.leaves(weights) if leaf.ndim == 2]
    (b,) = [leaf for leaf in jax.tree.leaves(weights) if leaf.ndim == 1]
    y, _ = layer.pure_fn(_x(), weights, state, None)
    np.testing.assert_allclose(y, affine(_x(), (w, b)) + _x(), rtol=1e-5)


def test_residual_of_two_input_layer():
    layer = tl.Residual(tl.Add())
    assert (layer.n_in, layer.n_out) == (2, 1)
    a, b = _x(), _x(scale=10.0)
    np.testing.assert_array_equal(layer((a, b)), (a + b) + a)


def test_residual_on_sequence():
    s = Sequence.from_lengths(_x((2, 3, 1)), [2, 3])
    out = tl.Residual(double())(s)
    assert isinstance(out, Sequence)
    valid = np.asarray(s.mask)[..., None]
    np.testing.assert_array_equal(np.where(valid, out.values, 0), np.where(valid, 3 * s.values, 0))
    np.testing.assert_array_equal(out.mask, s.mask)


# --- Select, Drop, Dup, Swap -------------------------------------------------------------------------------------


def test_select_default_n_in_is_max_index_plus_one():
    layer = tl.Select([0, 0])
    assert (layer.n_in, layer.n_out) == (1, 2)
    y0, y1 = layer(_x())
    np.testing.assert_array_equal(y0, _x())
    np.testing.assert_array_equal(y1, _x())
    layer = tl.Select([2, 0])
    assert (layer.n_in, layer.n_out) == (3, 2)
    a, b, c = _x(), _x(scale=2.0), _x(scale=3.0)
    y0, y1 = layer((a, b, c))
    np.testing.assert_array_equal(y0, c)
    np.testing.assert_array_equal(y1, a)


def test_select_explicit_n_in_deletes_items():
    layer = tl.Select([0], n_in=2)
    assert (layer.n_in, layer.n_out) == (2, 1)
    model = tl.Serial(layer, tl.Add())  # a b c -> a c -> a + c
    a, b, c = _x(), _x(scale=10.0), _x(scale=100.0)
    np.testing.assert_array_equal(model((a, b, c)), a + c)
    swap = tl.Select([1, 0], n_in=2)
    y0, y1 = swap((a, b))
    np.testing.assert_array_equal(y0, b)
    np.testing.assert_array_equal(y1, a)


def test_select_nothing_drops():
    layer = tl.Select([], n_in=1)
    assert (layer.n_in, layer.n_out) == (1, 0)
    np.testing.assert_array_equal(tl.Serial(layer, double())((_x(), _x(scale=5.0))), 2 * _x(scale=5.0))


def test_select_rejects_bad_indices():
    with pytest.raises(ValueError):
        tl.Select([0, 2], n_in=2)
    with pytest.raises(ValueError):
        tl.Select([-1])


def test_select_passes_sequences_as_they_are():
    s = Sequence.from_lengths(_x((2, 3)), [1, 2])
    y0, y1 = tl.Select([0, 0])(s)
    assert isinstance(y0, Sequence) and isinstance(y1, Sequence)
    np.testing.assert_array_equal(y1.values, s.values)
    np.testing.assert_array_equal(y1.mask, s.mask)


def test_drop_dup_swap():
    a, b = _x(), _x(scale=7.0)
    assert (tl.Drop().n_in, tl.Drop().n_out) == (1, 0)
    assert tl.Drop()(a) == ()
    assert (tl.Dup().n_in, tl.Dup().n_out) == (1, 2)
    d0, d1 = tl.Dup()(a)
    np.testing.assert_array_equal(d0, a)
    np.testing.assert_array_equal(d1, a)
    assert (tl.Swap().n_in, tl.Swap().n_out) == (2, 2)
    s0, s1 = tl.Swap()((a, b))
    np.testing.assert_array_equal(s0, b)
    np.testing.assert_array_equal(s1, a)


# --- Scan ----------------------------------------------------------------------------------------------------------


def cumulative_add():
    return tl.Fn("add", lambda x, carry: (x + carry, x + carry), n_out=2)


def test_scan_cumulative_sum_reference_example():
    layer = tl.Scan(cumulative_add())
    assert (layer.n_in, layer.n_out) == (2, 2)
    xs = jnp.array([1.0, 2.0, 3.0])
    carry = jnp.array(0.0)
    ys, final = _run(layer, (xs, carry))
    np.testing.assert_array_equal(ys, [1.0, 3.0, 6.0])
    np.testing.assert_array_equal(final, 6.0)


def test_scan_axis_1():
    layer = tl.Scan(cumulative_add(), axis=1)
    xs = jnp.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    ys, final = _run(layer, (xs, jnp.zeros((2,))))
    np.testing.assert_array_equal(ys, [[1.0, 3.0, 6.0], [10.0, 30.0, 60.0]])
    np.testing.assert_array_equal(final, [6.0, 60.0])
    sig = layer.output_signature((ShapeDtype((2, 3)), ShapeDtype((2,))))
    assert sig == (ShapeDtype((2, 3)), ShapeDtype((2,)))


def test_scan_over_time_in_predict_mode_carries_on_from_its_state():
    # Trax combinators_test ScanTest.test_predict: the second call's carry input is ignored.
    layer = tl.Scan(cumulative_add(), axis=1, mode="predict")
    assert isinstance(layer, tl.Scan) and layer.supports_step and layer.name == "Scan"
    ys, carry = layer([np.array([[0, 1, 2]]), np.array([90])])
    np.testing.assert_array_equal(ys, [[90, 91, 93]])
    np.testing.assert_array_equal(carry, [93])
    ys, carry = layer([np.array([[3, 4]]), np.array([90])])
    np.testing.assert_array_equal(ys, [[96, 100]])
    np.testing.assert_array_equal(carry, [100])
    assert not tl.Scan(cumulative_add(), axis=0, mode="predict").supports_step  # Not over time.


def test_scan_n_carry_0_maps_over_the_axis():
    layer = tl.Scan(tl.Fn("RowSum", lambda x: jnp.sum(x, axis=-1)), n_carry=0)
    xs = _x((3, 4))
    ys = _run(layer, xs)
    np.testing.assert_array_equal(ys, jnp.sum(xs, axis=-1))
    assert layer.output_signature(ShapeDtype((3, 4))) == ShapeDtype((3,))


def test_scan_n_carry_2():
    body = tl.Fn("Body", lambda x, s, p: (s + x - p * x, s + x, p * x), n_out=3)
    layer = tl.Scan(body, n_carry=2)
    assert (layer.n_in, layer.n_out) == (3, 3)
    xs = jnp.array([1.0, 2.0, 3.0, 4.0])
    ys, s, p = _run(layer, (xs, jnp.array(0.0), jnp.array(1.0)))
    expected, s_ref, p_ref = [], 0.0, 1.0
    for x in [1.0, 2.0, 3.0, 4.0]:
        expected.append(s_ref + x - p_ref * x)
        s_ref, p_ref = s_ref + x, p_ref * x
    np.testing.assert_allclose(ys, expected)
    np.testing.assert_allclose(s, s_ref)
    np.testing.assert_allclose(p, p_ref)


class DecayAdd(tl.Layer):
    """(x, carry) -> (a * carry + x, a * carry + x) with a learned scalar a."""

    def __init__(self):
        super().__init__(n_in=2, n_out=2, name="DecayAdd")

    def init_weights_and_state(self, input_signature, rng):
        return jnp.array(0.5), ()

    def forward(self, inputs, weights, state, rng):
        x, carry = inputs
        new = weights * carry + jnp.sin(x)
        return (new, new), state


def test_scan_with_weights_and_remat_gives_same_values_and_gradients():
    xs = jnp.array([[0.1, 0.2], [0.3, -0.4], [0.5, 0.6]])
    carry = jnp.array([1.0, 2.0])
    results = []
    for remat in (False, True):
        layer = tl.Scan(DecayAdd(), remat=remat)
        weights, state = layer.init((xs, carry))
        assert jax.tree.leaves(weights)[0].shape == ()

        def loss(w, xs, layer=layer, state=state):
            (ys, final), _ = layer.pure_fn((xs, carry), w, state, None)
            return jnp.sum(ys**2) + jnp.sum(final)

        value = loss(weights, xs)
        grads = jax.grad(loss, argnums=(0, 1))(weights, xs)
        results.append((value, grads))
    # Against a hand-written loop.
    a, c, ys = 0.5, carry, []
    for x in xs:
        c = a * c + jnp.sin(x)
        ys.append(c)
    np.testing.assert_allclose(results[0][0], jnp.sum(jnp.stack(ys) ** 2) + jnp.sum(c), rtol=1e-6)
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-6)
    for g_remat, g_plain in zip(jax.tree.leaves(results[1][1]), jax.tree.leaves(results[0][1])):
        np.testing.assert_allclose(g_remat, g_plain, rtol=1e-6)
    assert float(jnp.abs(jax.tree.leaves(results[0][1])[0])) > 0


class StepCounter(tl.Layer):
    """(x, c) -> (x + count, c + x); the state counts steps."""

    def __init__(self):
        super().__init__(n_in=2, n_out=2, name="StepCounter")

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((), jnp.int32)

    def forward(self, inputs, weights, state, rng):
        x, c = inputs
        return (x + state.astype(x.dtype), c + x), state + 1


def test_scan_threads_the_sublayer_state():
    layer = tl.Scan(StepCounter())
    xs = jnp.array([10.0, 20.0, 30.0, 40.0])
    weights, state = layer.init((xs, jnp.array(0.0)))
    (ys, c), new_state = layer.pure_fn((xs, jnp.array(0.0)), weights, state, None)
    np.testing.assert_array_equal(ys, [10.0, 21.0, 32.0, 43.0])
    np.testing.assert_array_equal(c, 100.0)
    assert int(jax.tree.leaves(new_state)[0]) == 4


def test_scan_rejects_too_many_carries():
    with pytest.raises(ValueError):
        tl.Scan(cumulative_add(), n_carry=3)


# --- Cond -----------------------------------------------------------------------------------------------------------


def _cond_layer():
    return tl.Cond(
        tl.Fn("Positive", lambda c: jnp.sum(c) > 0),
        Counter(100.0, name="True"),
        Counter(-100.0, name="False"),
    )


def test_cond_runs_the_chosen_branch_and_keeps_the_other_state():
    layer = _cond_layer()
    assert (layer.n_in, layer.n_out) == (2, 1)
    y = _x()
    weights, state = layer.init((jnp.array(1.0), y))
    fn = jax.jit(layer.pure_fn)
    out, state = fn((jnp.array(1.0), y), weights, state, None)
    np.testing.assert_array_equal(out, y + 100.0)
    assert (int(state[1]), int(state[2])) == (1, 0)
    out, state = fn((jnp.array(1.0), y), weights, state, None)
    np.testing.assert_array_equal(out, y + 100.0 + 1.0)
    assert (int(state[1]), int(state[2])) == (2, 0)
    out, state = fn((jnp.array(-1.0), y), weights, state, None)
    np.testing.assert_array_equal(out, y - 100.0)
    assert (int(state[1]), int(state[2])) == (2, 1)


def test_cond_eager_pure_fn():
    layer = _cond_layer()
    weights, state = layer.init((jnp.array(1.0), _x()))
    out, new_state = layer.pure_fn((jnp.array(-3.0), _x()), weights, state, None)
    np.testing.assert_array_equal(out, _x() - 100.0)
    assert (int(new_state[1]), int(new_state[2])) == (0, 1)


def test_cond_false_none_is_identity():
    layer = tl.Cond(tl.Fn("Positive", lambda c: c > 0), double())
    y = _x()
    np.testing.assert_array_equal(layer((jnp.array(1.0), y)), 2 * y)
    np.testing.assert_array_equal(layer((jnp.array(0.0), y)), y)


def test_cond_with_two_input_branches():
    layer = tl.Cond(tl.Fn("Positive", lambda c: c > 0), tl.Add(), tl.SubtractTop())
    assert (layer.n_in, layer.n_out) == (3, 1)
    a, b = _x(), _x(scale=10.0)
    np.testing.assert_array_equal(layer((jnp.array(1), a, b)), a + b)
    np.testing.assert_array_equal(layer((jnp.array(0), a, b)), b - a)


def test_cond_keeps_trax_stack_semantics():
    # Trax's CondTest: no inputs; a branch's one-item list output is that item.
    constant = lambda value: tl.Fn("ReturnConst", lambda: value)
    for condition, expected in ((True, 2), (False, 5)):
        layer = tl.Cond(constant(condition), constant([2]), constant([5]))
        layer.init(())
        assert layer(()) == expected
    # A one-item list input is the item.
    x = [np.arange(5, dtype=np.float32)]
    layer = tl.Cond(constant(True), tl.Fn("Half", lambda x: x / 2.0), tl.Fn("Quarter", lambda x: x / 4.0))
    layer.init(shapes.signature(x))
    np.testing.assert_array_equal(layer(x), [0.0, 0.5, 1.0, 1.5, 2.0])
    # Exactly n_in inputs, as Trax's test_exception_run1: one here, not zero or two.
    small = tl.Cond(tl.Fn("Small", lambda c: c < 3.0), constant(2.0), constant(5.0))
    assert float(small(np.array(4.0))) == 5.0
    for xs in ((), (np.array(4.0), np.array([4.0, 12.0]))):
        with pytest.raises(tl.LayerError, match="Cond takes exactly 1 inputs"):
            small(xs)


def test_cond_rejects_mismatched_branches():
    with pytest.raises(ValueError):
        tl.Cond(tl.Fn("C", lambda c: c > 0), tl.Add(), double())
    with pytest.raises(ValueError):
        tl.Cond(tl.Dup(), double())
    with pytest.raises(ValueError):
        tl.Cond(tl.Fn("C", lambda c: c > 0), tl.Dup())  # false=None needs n_in == n_out.


# --- Chunk -----------------------------------------------------------------------------------------------------------


def _leaves(weights):
    return jax.tree.leaves(weights)


def test_chunk_equals_the_unchunked_layer():
    x = _x((4, 3), scale=0.1)
    layer = tl.Chunk(Affine(2), chunk_size=2)
    weights, state = layer.init(x)
    w, b = _leaves(weights)
    y, _ = layer.pure_fn(x, weights, state, None)
    assert y.shape == (4, 2)
    np.testing.assert_allclose(y, affine(x, (w, b)), rtol=1e-5)


def test_chunk_with_two_inputs():
    a, b = _x((6, 2)), _x((6, 2), scale=3.0)
    np.testing.assert_array_equal(tl.Chunk(tl.Add(), 3)((a, b)), a + b)


def test_chunk_pass_unchunkable():
    x = _x((3, 3), scale=0.1)
    layer = tl.Chunk(Affine(2), chunk_size=2, pass_unchunkable=True)
    weights, state = layer.init(x)
    y, _ = layer.pure_fn(x, weights, state, None)
    np.testing.assert_allclose(y, affine(x, _leaves(weights)), rtol=1e-5)
    strict = tl.Chunk(Affine(2), chunk_size=2, pass_unchunkable=False)
    with pytest.raises(tl.LayerError) as info:
        strict.init(x)
    assert isinstance(info.value.__cause__, ValueError)
    assert "chunk_size" in str(info.value)


def test_chunk_size_zero_is_the_layer():
    layer = Affine(2)
    assert tl.Chunk(layer, 0) is layer


def test_chunk_keeps_sequences():
    s = Sequence.from_lengths(_x((4, 3, 2)), [1, 3, 0, 2])
    layer = tl.Chunk(double(), chunk_size=2)
    out = layer(s)
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(out.mask, s.mask)
    np.testing.assert_array_equal(out.mask_invalid().values, 2 * s.mask_invalid().values)


# --- Cache -------------------------------------------------------------------------------------------------------------


def test_cache_returns_first_outputs_for_later_inputs():
    layer = tl.Cache(Affine(2))
    x1, x2 = _x((2, 3)), _x((2, 3), scale=-5.0)
    weights, state = layer.init(x1)
    assert not bool(state[0])
    y1, state = layer.pure_fn(x1, weights, state, None)
    inner = _leaves(weights)
    np.testing.assert_allclose(y1, affine(x1, inner), rtol=1e-6)
    assert bool(state[0])
    y2, state = layer.pure_fn(x2, weights, state, None)
    np.testing.assert_array_equal(y2, y1)
    assert not np.allclose(affine(x2, inner), y1)


def test_cache_interactive_and_sublayer_state():
    layer = tl.Cache(Counter())
    x1, x2 = jnp.zeros((2,)), jnp.ones((2,))
    np.testing.assert_array_equal(layer(x1), [0.0, 0.0])
    np.testing.assert_array_equal(layer(x2), [0.0, 0.0])
    np.testing.assert_array_equal(layer(x2), [0.0, 0.0])
    assert int(layer.state[2]) == 1  # The counter ran once.


# --- BatchLeadingAxes -----------------------------------------------------------------------------------------------------


def test_batch_leading_axes_folds_leading_axes():
    layer = tl.BatchLeadingAxes(Rank2Affine(5))
    x = _x((2, 3, 4), scale=0.1)
    weights, state = layer.init(x)
    y, _ = layer.pure_fn(x, weights, state, None)
    assert y.shape == (2, 3, 5)
    inner = _leaves(weights)
    for i in range(2):
        np.testing.assert_allclose(y[i], affine(x[i], inner), rtol=1e-5)
    assert layer.output_signature(ShapeDtype((2, 3, 4))) == ShapeDtype((2, 3, 5))


def test_batch_leading_axes_keeps_two_axes():
    def rank3_only(x):
        assert x.ndim == 3
        return jnp.sum(x, axis=1)

    layer = tl.BatchLeadingAxes(tl.Fn("SumRows", rank3_only), n_last_axes_to_keep=2)
    x = _x((2, 3, 4, 5))
    y = layer(x)
    assert y.shape == (2, 3, 5)
    np.testing.assert_array_equal(y, jnp.sum(x, axis=2))


def test_batch_leading_axes_keeps_sequences():
    layer = tl.BatchLeadingAxes(Rank2Affine(2))
    s = Sequence.from_lengths(_x((2, 3, 4), scale=0.1), [3, 1])
    weights, state = layer.init(s)
    out, _ = layer.pure_fn(s, weights, state, None)
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(out.mask, s.mask)
    np.testing.assert_allclose(out.values[0], affine(s.values[0], _leaves(weights)), rtol=1e-5)


# --- SerialWithSideOutputs -------------------------------------------------------------------------------------------------


def test_serial_with_side_outputs_reference_example():
    layers = [
        tl.Fn("L0", lambda x: (2 * x, x + 10.0), n_out=2),
        tl.Fn("L1", lambda x: (3 * x, x + 20.0), n_out=2),
        tl.Fn("L2", lambda x: (4 * x, x + 30.0), n_out=2),
    ]
    layer = tl.SerialWithSideOutputs(layers)
    assert (layer.n_in, layer.n_out) == (1, 4)
    x = _x()
    final, s0, s1, s2 = layer(x)
    # x, side_outputs = layer_i(x) for each layer; return [x] + side_outputs.
    np.testing.assert_array_equal(final, 24 * x)
    np.testing.assert_array_equal(s0, x + 10.0)
    np.testing.assert_array_equal(s1, 2 * x + 20.0)
    np.testing.assert_array_equal(s2, 6 * x + 30.0)


def _simulate_side_outputs(layers, n_sides, stack):
    """The reference computation, on a Python list stack."""
    stack, sides = list(stack), []
    for fn, n_in, n_out, n_side in zip(*zip(*layers), n_sides):
        res = fn(*stack[:n_in])
        res = list(res) if isinstance(res, tuple) else [res]
        stack = res[: n_out - n_side] + stack[n_in:]
        sides.extend(res[n_out - n_side :])
    return stack + sides


def test_serial_with_side_outputs_general_case():
    specs = [
        (lambda a, b: (a + b, a - b, a * b), 2, 3),
        (lambda x: (10 * x, x + 1.0), 1, 2),
        (lambda x, y: x + y, 2, 1),
    ]
    n_sides = [2, 1, 0]
    layers = [tl.Fn(f"S{i}", fn, n_out=n_out) for i, (fn, _, n_out) in enumerate(specs)]
    layer = tl.SerialWithSideOutputs(layers, n_side_outputs=n_sides)
    a, b, c = jnp.array([2.0]), jnp.array([5.0]), jnp.array([7.0])
    inputs = (a, b, c)[: layer.n_in]
    expected = _simulate_side_outputs(specs, n_sides, inputs)
    out = layer(inputs)
    out = out if isinstance(out, tuple) else (out,)
    assert len(out) == len(expected) == layer.n_out
    for got, want in zip(out, expected):
        np.testing.assert_array_equal(got, want)


def test_serial_with_side_outputs_checks_lengths():
    with pytest.raises(ValueError):
        tl.SerialWithSideOutputs([tl.Dup(), tl.Dup()], n_side_outputs=[1])


# --- Bidirectional ------------------------------------------------------------------------------------------------------------


def test_bidirectional_on_arrays_reverses_the_whole_time_axis():
    layer = tl.Bidirectional(CumSum())
    x = _x((1, 4, 1))
    y = layer(x)
    assert y.shape == (1, 4, 2)
    np.testing.assert_array_equal(y[0, :, 0], [1.0, 3.0, 6.0, 10.0])
    np.testing.assert_array_equal(y[0, :, 1], [10.0, 9.0, 7.0, 4.0])


def test_bidirectional_on_sequences_reverses_within_each_valid_prefix():
    values = np.array([[1.0, 2.0, 99.0, 99.0], [1.0, 2.0, 3.0, 4.0], [5.0, 99.0, 99.0, 99.0]], np.float32)
    s = Sequence.from_lengths(jnp.asarray(values).reshape((3, 4, 1)), [2, 4, 1])
    out = tl.Bidirectional(CumSum())(s)
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(out.mask, s.mask)
    valid = np.asarray(s.mask)
    forward = np.asarray(out.values[..., 0])
    backward = np.asarray(out.values[..., 1])
    np.testing.assert_array_equal(forward[valid], [1.0, 3.0, 1.0, 3.0, 6.0, 10.0, 5.0])
    # Backward: suffix sums within each row's valid prefix; padding never leaks in.
    np.testing.assert_array_equal(backward[valid], [3.0, 2.0, 10.0, 9.0, 7.0, 4.0, 5.0])


def test_bidirectional_valid_outputs_do_not_depend_on_padding():
    base = np.array([[1.0, 2.0, 3.0, 0.0, 0.0]], np.float32).reshape((1, 5, 1))
    garbage = base.copy()
    garbage[0, 3:] = 1e6
    layer = tl.Bidirectional(CumSum())
    a = layer(Sequence.from_lengths(jnp.asarray(base), [3]))
    b = layer(Sequence.from_lengths(jnp.asarray(garbage), [3]))
    np.testing.assert_array_equal(a.values[:, :3], b.values[:, :3])


def test_bidirectional_backward_copy_has_weights_of_its_own():
    layer = tl.Bidirectional(Affine(2))
    x = _x((1, 3, 3), scale=0.1)
    weights, state = layer.init(x)
    flat, _ = tl.flatten_weights_and_state(weights, state)
    assert len(flat) == 4
    w_f, b_f, w_b, b_b = flat
    assert not np.allclose(w_f, w_b)
    y, _ = layer.pure_fn(x, weights, state, None)
    # Affine is pointwise in time, so the two reversals cancel.
    np.testing.assert_allclose(
        y, jnp.concatenate([affine(x, (w_f, b_f)), affine(x, (w_b, b_b))], axis=-1), rtol=1e-5
    )


def test_bidirectional_with_merge_layer():
    layer = tl.Bidirectional(CumSum(), merge_layer=tl.Add())
    y = layer(_x((1, 3, 1)))
    np.testing.assert_array_equal(y[0, :, 0], [1.0 + 6.0, 3.0 + 5.0, 6.0 + 3.0])


# --- Concatenate, Split -------------------------------------------------------------------------------------------------------


def test_concatenate_reference_example():
    x, y, z = jnp.array([1, 2]), jnp.array([3, 4]), jnp.array([5, 6])
    concat3 = tl.Concatenate(n_items=3)
    assert (concat3.n_in, concat3.n_out) == (3, 1)
    np.testing.assert_array_equal(concat3((x, y, z)), [1, 2, 3, 4, 5, 6])


def test_concatenate_axis():
    a, b = _x((2, 2)), _x((1, 2), scale=-1.0)
    np.testing.assert_array_equal(tl.Concatenate(axis=0)((a, b)), jnp.concatenate([a, b], axis=0))
    with pytest.raises(ValueError):
        tl.Concatenate(n_items=0)


def test_concatenate_sequences_on_channels_ands_the_masks():
    a = Sequence.from_lengths(_x((2, 3, 1)), [3, 1])
    b = Sequence.from_lengths(_x((2, 3, 2), scale=10.0), [2, 3])
    out = tl.Concatenate()((a, b))
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(out.mask, np.array([[1, 1, 0], [1, 0, 0]], bool))
    valid = np.asarray(out.mask)
    np.testing.assert_array_equal(
        np.asarray(out.values)[valid], np.concatenate([np.asarray(a.values), np.asarray(b.values)], -1)[valid]
    )


def test_concatenate_sequences_along_time_joins_masks():
    a = Sequence.from_lengths(_x((2, 2, 1)), [1, 2])
    b = Sequence.from_lengths(_x((2, 3, 1), scale=10.0), [3, 0])
    out = tl.Concatenate(axis=1)((a, b))
    assert out.shape == (2, 5, 1)
    np.testing.assert_array_equal(out.values[..., 0], [[1, 2, 10, 20, 30], [3, 4, 40, 50, 60]])
    np.testing.assert_array_equal(out.mask, np.array([[1, 0, 1, 1, 1], [1, 1, 0, 0, 0]], bool))
    mixed = tl.Concatenate(axis=1)((a, _x((2, 1, 1), scale=-1.0)))
    assert isinstance(mixed, Sequence)
    np.testing.assert_array_equal(mixed.mask, np.array([[1, 0, 1], [1, 1, 1]], bool))


def test_split_values():
    x = _x((2, 6))
    a, b, c = tl.Split(n_items=3)(x)
    np.testing.assert_array_equal(a, x[:, :2])
    np.testing.assert_array_equal(b, x[:, 2:4])
    np.testing.assert_array_equal(c, x[:, 4:])
    top, bottom = tl.Split(axis=0)(_x((4, 1)))
    np.testing.assert_array_equal(top, [[1.0], [2.0]])
    np.testing.assert_array_equal(bottom, [[3.0], [4.0]])


def test_split_sequence_along_time_splits_the_mask():
    s = Sequence.from_lengths(_x((2, 4, 1)), [1, 3])
    first, second = tl.Split(axis=1)(s)
    assert isinstance(first, Sequence) and isinstance(second, Sequence)
    np.testing.assert_array_equal(first.values[..., 0], [[1, 2], [5, 6]])
    np.testing.assert_array_equal(first.mask, np.array([[1, 0], [1, 1]], bool))
    np.testing.assert_array_equal(second.mask, np.array([[0, 0], [1, 0]], bool))


def test_split_sequence_on_channels_keeps_the_mask():
    s = Sequence.from_lengths(_x((2, 3, 4)), [1, 3])
    a, b = tl.Split()(s)
    np.testing.assert_array_equal(a.values, s.values[..., :2])
    np.testing.assert_array_equal(b.values, s.values[..., 2:])
    np.testing.assert_array_equal(a.mask, s.mask)
    np.testing.assert_array_equal(b.mask, s.mask)


def test_split_then_concatenate_along_time_round_trips():
    s = Sequence.from_lengths(_x((2, 4, 3)), [4, 2])
    out = tl.Serial(tl.Split(axis=1), tl.Concatenate(axis=1))(s)
    np.testing.assert_array_equal(out.values, s.values)
    np.testing.assert_array_equal(out.mask, s.mask)


# --- FlattenList and arithmetic ----------------------------------------------------------------------------------------------


def test_flatten_list():
    a, b, c = jnp.array([1.0]), jnp.array([2.0]), jnp.array([3.0])
    out = tl.FlattenList()((a, [b, (c,)]))
    assert isinstance(out, tuple) and len(out) == 3
    for got, want in zip(out, (a, b, c)):
        np.testing.assert_array_equal(got, want)


def test_add_subtract_top_multiply_gate():
    a = jnp.array([1.0, 2.0])
    b = jnp.array([10.0, 20.0])
    np.testing.assert_array_equal(tl.Add()((a, b)), [11.0, 22.0])
    np.testing.assert_array_equal(tl.SubtractTop()((a, b)), [9.0, 18.0])  # b - a
    np.testing.assert_array_equal(tl.Multiply()((a, b)), [10.0, 40.0])
    memory, gate, candidate = jnp.array([1.0, 2.0]), jnp.array([0.25, 1.0]), jnp.array([5.0, 7.0])
    np.testing.assert_array_equal(tl.Gate()((memory, gate, candidate)), [0.25 + 0.75 * 5.0, 2.0])
    assert (tl.Gate().n_in, tl.Gate().n_out) == (3, 1)


def test_arithmetic_on_sequences_ands_masks():
    a = Sequence.from_lengths(_x((1, 3)), [2])
    b = Sequence.from_lengths(_x((1, 3), scale=10.0), [3])
    out = tl.Add()((a, b))
    assert isinstance(out, Sequence)
    np.testing.assert_array_equal(
        np.where(out.mask, out.values, 0), np.where(out.mask, a.values + b.values, 0)
    )
    np.testing.assert_array_equal(out.mask, np.array([[1, 1, 0]], bool))


# --- Stack helpers -------------------------------------------------------------------------------------------------------------


def test_inputs_from_stack():
    a, b, c = jnp.array(1), jnp.array(2), jnp.array(3)
    assert tl.inputs_from_stack((a, b, c), 1) is a
    got = tl.inputs_from_stack((a, b, c), 2)
    assert isinstance(got, tuple) and got[0] is a and got[1] is b
    assert tl.inputs_from_stack(a, 1) is a
    with pytest.raises(ValueError):
        tl.inputs_from_stack((a, b), 3)


def test_outputs_onto_stack():
    a, b, c = jnp.array(1), jnp.array(2), jnp.array(3)
    y1, y2 = jnp.array(10), jnp.array(20)
    new = tl.outputs_onto_stack((y1, y2), (a, b, c), 2)
    assert len(new) == 3 and new[0] is y1 and new[1] is y2 and new[2] is c
    assert tl.outputs_onto_stack(y1, (a, b), 2) is y1  # One item: bare.
    new = tl.outputs_onto_stack((), (a, b, c), 1)
    assert len(new) == 2 and new[0] is b and new[1] is c


# --- Derived streaming properties ---------------------------------------------------------------------------------------------


def test_serial_derives_streaming_properties():
    down = Streamer(
        block_size=2, output_ratio=F(1, 2), input_latency=2, output_latency=1, receptive_field=(1, 0)
    )
    after = Streamer(block_size=3, input_latency=3, output_latency=3, receptive_field=(2, 1))
    layer = tl.Serial(down, after)
    # Blocks of b input steps give b/2 steps to `after`, which needs multiples of 3.
    assert layer.block_size == 6
    assert layer.output_ratio == F(1, 2)
    # `after` needs 3 more steps at its input: 6 at the Serial's input.
    assert layer.input_latency == 2 + 6
    # `down`'s one late output delays `after`'s outputs by one more step.
    assert layer.output_latency == 1 + 3
    # `after` sees 2 past / 1 future steps of its input: 4 / 2 at the Serial's input.
    assert layer.receptive_field == (1 + 4, 0 + 2)
    assert layer.supports_step is True


def test_serial_block_size_after_upsampling():
    up = Streamer(output_ratio=F(2))
    down = Streamer(block_size=4, output_ratio=F(1, 4))
    layer = tl.Serial(up, down)
    assert layer.block_size == 2
    assert layer.output_ratio == F(1, 2)


def test_empty_and_pointwise_combinators_keep_defaults():
    for layer in (
        tl.Serial(),
        tl.Serial(tl.Dup(), tl.Add()),
        tl.Residual(double()),
        tl.Branch(None, double()),
    ):
        assert layer.block_size == 1
        assert layer.output_ratio == F(1)
        assert (layer.input_latency, layer.output_latency) == (0, 0)
        assert layer.receptive_field == (0, 0)


def test_parallel_derives_streaming_properties():
    a = Streamer(block_size=2, input_latency=4, output_latency=4, receptive_field=(3, 4))
    b = Streamer(block_size=3, input_latency=1, output_latency=1, receptive_field=(0, 1))
    layer = tl.Parallel(a, b)
    assert layer.block_size == 6
    assert layer.output_ratio == F(1)
    # The later branch sets the latencies (the earlier one is aligned to it).
    assert layer.input_latency == 4
    assert layer.output_latency == 4
    assert layer.receptive_field == (3, 4)
    y0, y1 = layer((_x(), _x(scale=2.0)))  # Layer-wise, both are identities.
    np.testing.assert_array_equal(y0, _x())
    np.testing.assert_array_equal(y1, _x(scale=2.0))


def test_parallel_raises_on_disagreeing_output_ratios():
    layer = tl.Parallel(Streamer(output_ratio=F(1, 2)), Streamer())
    with pytest.raises(ValueError, match="output_ratio"):
        _ = layer.output_ratio
    with pytest.raises(ValueError, match="output_ratio"):
        _ = tl.Branch(Streamer(output_ratio=F(1, 2)), None).output_ratio
    with pytest.raises(ValueError, match="output_ratio"):
        _ = tl.Residual(Streamer(output_ratio=F(2))).output_ratio
    # It does not step, and predict mode says why.
    assert not layer.supports_step
    predict = tl.Parallel(Streamer(output_ratio=F(1, 2)), Streamer()).with_mode("predict")
    with pytest.raises(tl.LayerError, match="does not stream .*must agree on output_ratio"):
        predict.init((ShapeDtype((1, 2, 1)), ShapeDtype((1, 2, 1))))
        predict.pure_fn(
            (jnp.zeros((1, 2, 1)), jnp.zeros((1, 2, 1))), *predict.init((ShapeDtype((1, 2, 1)),) * 2), None
        )


def test_non_streamable_combinators_say_so():
    assert tl.Scan(cumulative_add()).supports_step is False
    assert tl.Cache(double()).supports_step is False
    assert tl.Cond(tl.Fn("C", lambda c: c > 0), double()).supports_step is False
    assert tl.Serial(double(), tl.Scan(cumulative_add())).supports_step is False


# --- Found by tests/layers/test_contract_fuzz.py ---------------------------------------------


@pytest.mark.parametrize("body", [tl.Relu(), tl.Serial(), tl.Dropout(0.0)], ids=["Relu", "Serial", "Dropout"])
def test_repeat_of_a_weightless_layer_runs(body):
    x = jnp.arange(8.0).reshape((1, 4, 2))
    layer = tl.Repeat(body, 2)
    weights, state = layer.init(ShapeDtype(x.shape))
    y, _ = layer.pure_fn(x, weights, state, None)
    np.testing.assert_allclose(y, body.pure_fn(body.pure_fn(x, (), (), None)[0], (), (), None)[0])


def test_a_strided_layer_after_an_odd_latency_keeps_the_contract():
    # Conv1d 'reverse_causal' (kernel 2): output_latency 1; then stride 2. Without realignment the
    # second convolution windows steps (-1, 0), (1, 2), ... of the layer-wise first output
    # step-wise; SequenceLayers asks for a Delay of -1 % 2 = 1 step there, Serial inserts it.
    model = lambda mode: tl.Serial(
        tl.Conv1d(2, 2, padding="reverse_causal", mode=mode),
        tl.Conv1d(2, 1, stride=2, padding="causal", mode=mode),
    )
    tl.contract.verify_contract(model, ShapeDtype((1, 8, 2)), chunkings=[[1], [2, 1]])
    layer = model("eval")
    assert [sub.name for sub in layer.sublayers] == ["Conv1d", "Delay_1", "Conv1d"]
    assert (layer.output_latency, layer.latency_period) == (1, 2)


def test_a_strided_serial_nested_after_an_odd_latency_is_delayed_as_a_whole():
    strided = lambda mode: tl.Serial(
        tl.Conv1d(2, 2, stride=2, padding="causal", mode=mode),
        tl.Conv1d(2, 2, stride=2, padding="causal", mode=mode),
    )
    assert strided("eval").latency_period == 4
    model = lambda mode: tl.Serial(tl.Lookahead(1, preserve_length_in_layer=True, mode=mode), strided(mode))
    assert [sub.name for sub in model("eval").sublayers] == ["Lookahead_1", "Delay_3", "Serial"]
    tl.contract.verify_contract(model, ShapeDtype((2, 16, 2)))


# --- Trax's stack pass-through: a Serial called with more items than it takes carries the rest ------------


def test_serial_carries_the_items_its_sublayers_do_not_reach():
    x, m = np.array([-1.0, 2.0]), np.array([3.0, 4.0])
    relu, passed = tl.Serial(tl.Relu())((x, m))
    np.testing.assert_array_equal(relu, [0, 2])
    np.testing.assert_array_equal(passed, m)
    np.testing.assert_array_equal(tl.Serial(tl.Drop())((x, m)), m)  # Trax: y.
    np.testing.assert_array_equal(tl.Serial(tl.Relu())([x]), [0, 2])  # A one-item list is the item.
    # Trax's combinators_test: a no-op Serial passes every item; a Serial of no inputs takes ().
    first, second = tl.Serial(None)([np.array([1, 2, 3, 4]), np.array([10, 20, 30])])
    np.testing.assert_array_equal(first, [1, 2, 3, 4])
    np.testing.assert_array_equal(second, [10, 20, 30])
    np.testing.assert_array_equal(tl.Serial(tl.Fn("Const", lambda: jnp.array([3, 4]), n_out=1))(()), [3, 4])
    # A whole batch given to init (a common Trax idiom): the model takes its inputs, the rest pass.
    model = tl.Serial(tl.Dense(1))
    model.init((np.ones((2, 3), np.float32), np.ones((2, 1)), np.ones((2, 1))))
    assert model(np.ones((2, 3), np.float32)).shape == (2, 1)
    with pytest.raises(tl.LayerError, match="Serial takes 2 inputs from the stack, got one"):
        tl.Serial(tl.Add())(x)
