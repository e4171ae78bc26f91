"""Tests of the recurrent layers: Trax's cells and stacks, streaming, and SequenceLayers' LSTM."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, core, rnn, test_utils
from trax_sl.layers.activation_fns import Tanh
from trax_sl.layers.combinators import Branch, Parallel, Scan, Select, Serial, Split
from trax_sl.shapes import ShapeDtype


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm_cell(x, state, w, b):
    """Trax's LSTMCell in numpy: gates i, j, f, o on [x, h]."""
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    c, h = np.split(state, 2, axis=-1)
    i, j, f, o = np.split(np.concatenate([x, h], axis=-1) @ w + b, 4, axis=-1)
    new_c = c * sigmoid(f) + sigmoid(i) * np.tanh(j)
    new_h = np.tanh(new_c) * sigmoid(o)
    return new_h, np.concatenate([new_c, new_h], axis=-1)


def np_gru_cell(x, state, w1, b1, w2, b2):
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in (w1, b1, w2, b2))
    u, r = np.split(sigmoid(np.concatenate([x, state], axis=-1) @ w1 + b1), 2, axis=-1)
    c = np.concatenate([x, r * state], axis=-1) @ w2 + b2
    new = u * state + (1 - u) * np.tanh(c)
    return new, new


def np_scan(cell, xs, mask, state):
    """Runs a numpy cell over time; invalid steps keep the state. Returns (ys, final state)."""
    ys = []
    for t in range(xs.shape[1]):
        y, new_state = cell(xs[:, t], state)
        valid = mask[:, t].reshape((-1, 1))
        state = np.where(valid, new_state, state)
        ys.append(y)
    return np.stack(ys, axis=1), state


def random_sequence(shape, lengths, seed=0, garbage=np.nan):
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(shape).astype(np.float32)
    mask = np.arange(shape[1]).reshape((1, -1)) < np.asarray(lengths).reshape((-1, 1))
    values = np.where(mask.reshape(mask.shape + (1,)), values, garbage).astype(np.float32)
    return seq.Sequence(jnp.asarray(values), jnp.asarray(mask))


def valid_values(y: seq.Sequence):
    mask = np.asarray(y.mask)
    return np.where(mask.reshape(mask.shape + (1,)), np.asarray(y.values), 0.0)


def run_blocks(layer, x_items, weights, state, block):
    """Feeds (x, *others) block by block along time (others whole); returns per-block outputs."""
    x, *others = x_items if isinstance(x_items, tuple) else (x_items,)
    outputs = []
    step = jax.jit(lambda inputs, s: layer.pure_fn(inputs, weights, s, None))
    for start in range(0, x.shape[1], block):
        inputs = x[:, start : start + block]
        if others:
            inputs = (inputs, *others)
        y, state = step(inputs, state)
        outputs.append(y)
    return outputs, state


# --- Cells: exact values -------------------------------------------------------------

X1 = np.array([[0.5, -1.0], [0.25, 2.0]], np.float32)  # [batch 2, d_in 2]
LSTM_STATE = np.array([[0.1, -0.2, 0.3, 0.4, 0.0, -0.5], [-0.3, 0.2, 0.0, 0.1, 0.6, -0.1]], np.float32)
W_LSTM = (np.arange(5 * 12, dtype=np.float32).reshape((5, 12)) % 7 - 3.0) * 0.1
B_LSTM = np.linspace(-0.5, 0.6, 12).astype(np.float32)


def test_lstm_cell_one_step_exact_values():
    cell = rnn.LSTMCell(3)
    h, new_state = cell((X1, LSTM_STATE), weights=(W_LSTM, B_LSTM))
    expected_h, expected_state = np_lstm_cell(X1.astype(np.float64), LSTM_STATE, W_LSTM, B_LSTM)
    np.testing.assert_allclose(h, expected_h, atol=1e-6)
    np.testing.assert_allclose(new_state, expected_state, atol=1e-6)
    # Spot-check the gate order by hand for row 0, unit 0: i, j, f, o are columns 0, 3, 6, 9.
    z = np.concatenate([X1[0], LSTM_STATE[0, 3:]]) @ W_LSTM + B_LSTM
    c = LSTM_STATE[0, 0] * sigmoid(z[6]) + sigmoid(z[0]) * np.tanh(z[3])
    np.testing.assert_allclose(new_state[0, 0], c, atol=1e-6)
    np.testing.assert_allclose(h[0, 0], np.tanh(c) * sigmoid(z[9]), atol=1e-6)


def test_gru_cell_one_step_exact_values():
    state = np.array([[0.1, -0.2, 0.3], [0.4, 0.0, -0.5]], np.float32)
    w1 = (np.arange(5 * 6, dtype=np.float32).reshape((5, 6)) % 5 - 2.0) * 0.2
    b1 = np.linspace(-0.3, 0.3, 6).astype(np.float32)
    w2 = (np.arange(5 * 3, dtype=np.float32).reshape((5, 3)) % 4 - 1.5) * 0.3
    b2 = np.array([0.1, -0.1, 0.05], np.float32)
    y, new_state = rnn.GRUCell(3)((X1, state), weights=(w1, b1, w2, b2))
    expected, _ = np_gru_cell(X1.astype(np.float64), state, w1, b1, w2, b2)
    np.testing.assert_allclose(y, expected, atol=1e-6)
    np.testing.assert_allclose(new_state, expected, atol=1e-6)


def test_inner_sru_cell_exact_values():
    xf = np.array([[1.0, 2.0]], np.float32)
    f = np.array([[0.5, 0.25]], np.float32)
    c = np.array([[4.0, -8.0]], np.float32)
    res, carry = rnn.InnerSRUCell()((xf, f, c))
    np.testing.assert_allclose(res, [[3.0, 0.0]])
    np.testing.assert_allclose(carry, [[3.0, 0.0]])


def test_cells_weight_shapes_and_trax_defaults():
    sig = (ShapeDtype((2, 5)), ShapeDtype((2, 8)))
    (w, b), state = rnn.LSTMCell(4).init(sig, rng=jax.random.PRNGKey(1))
    assert w.shape == (9, 16) and b.shape == (16,) and state == ()
    # forget_bias=1.0 is added to the whole bias at init, as in Trax; the initializer is N(0, 1e-6).
    np.testing.assert_allclose(b, np.ones(16), atol=1e-4)
    lim = math.sqrt(6.0 / (9 + 16))  # GlorotUniform.
    assert np.all(np.abs(w) <= lim) and np.abs(w).max() > lim / 2
    (b_zero,) = rnn.LSTMCell(4, forget_bias=0.0).init(sig, rng=jax.random.PRNGKey(1))[0][1:]
    np.testing.assert_allclose(b_zero, np.zeros(16), atol=1e-4)

    (w1, b1, w2, b2), _ = rnn.GRUCell(4).init((ShapeDtype((2, 5)), ShapeDtype((2, 4))))
    assert (w1.shape, b1.shape, w2.shape, b2.shape) == ((9, 8), (8,), (9, 4), (4,))
    assert np.abs(w1).max() <= 0.01 and np.abs(w2).max() <= 0.01  # RandomUniform(0.01).
    np.testing.assert_allclose(b1, np.zeros(8), atol=1e-4)  # forget_bias=0.0.
    (_, b1_biased, _, _), _ = rnn.GRUCell(4, forget_bias=2.0).init((ShapeDtype((2, 5)), ShapeDtype((2, 4))))
    np.testing.assert_allclose(b1_biased, np.full(8, 2.0), atol=1e-4)

    for cell in (rnn.LSTMCell(4), rnn.GRUCell(4)):
        assert (cell.n_in, cell.n_out) == (2, 2)


def test_cell_state_depth_is_checked():
    with pytest.raises(base.LayerError, match=r"2 \* n_units = 8.*f32\[2,4\]"):
        rnn.LSTMCell(4).init((ShapeDtype((2, 5)), ShapeDtype((2, 4))))
    with pytest.raises(base.LayerError, match=r"n_units = 4.*f32\[2,8\]"):
        rnn.GRUCell(4).init((ShapeDtype((2, 5)), ShapeDtype((2, 8))))


@pytest.mark.parametrize("make", [rnn.LSTMCell, rnn.GRUCell, rnn.LSTM, rnn.GRU, rnn.SRU, rnn.ConvGRUCell])
def test_n_units_is_checked(make):
    with pytest.raises(ValueError, match=r"n_units must be an integer >= 1, got n_units=0"):
        make(0)


def test_mode_and_arguments_are_checked():
    with pytest.raises(ValueError, match=r"LSTM: mode must be one of .*got mode='infer'"):
        rnn.LSTM(4, mode="infer")
    with pytest.raises(ValueError, match="monkey_patched_mask is not supported"):
        rnn.ScanSRUCell("predict", monkey_patched_mask=object())
    with pytest.raises(TypeError, match="SRU: activation must be a Layer"):
        rnn.SRU(4, activation=jnp.tanh)
    with pytest.raises(ValueError, match="depth_multiplier must be an integer >= 1"):
        rnn.MakeZeroState(0)


def test_general_gru_cell_exact_values():
    cell = rnn.GeneralGRUCell(lambda: core.Dense(3)).with_mode("eval")  # eval: no dropout.
    s = np.array([[0.2, -0.4, 0.6], [1.0, 0.5, -0.5]], np.float32)
    weights, _ = cell.init(ShapeDtype((2, 3)), rng=jax.random.PRNGKey(3))
    # Depth-first: the gate's Dense, the reset's Dense, the candidate's Dense.
    wu, bu, wr, br, wc, bc = (np.asarray(a, np.float64) for a in jax.tree.leaves(weights))
    u = sigmoid(s @ wu + bu + 0.5)
    r = sigmoid(s @ wr + br + 0.5)
    c = np.tanh((r * s) @ wc + bc)
    np.testing.assert_allclose(cell(s), s * u + (1 - u) * c, atol=1e-6)


def test_conv_gru_cell_matches_its_formula():
    cell = rnn.ConvGRUCell(2, kernel_size=(3, 3)).with_mode("eval")
    s = np.random.default_rng(0).standard_normal((1, 4, 5, 2)).astype(np.float32)
    weights, _ = cell.init(ShapeDtype(s.shape), rng=jax.random.PRNGKey(0))
    wu, bu, wr, br, wc, bc = jax.tree.leaves(weights)

    def conv(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b.reshape((1, 1, 1, -1))

    u = jax.nn.sigmoid(conv(s, wu, bu) + 0.5)
    r = jax.nn.sigmoid(conv(s, wr, br) + 0.5)
    c = jnp.tanh(conv(r * s, wc, bc))
    y = cell(s)
    assert y.shape == s.shape
    np.testing.assert_allclose(y, s * u + (1 - u) * c, atol=1e-5)


def test_make_zero_state():
    x = random_sequence((2, 5, 3), [5, 2])
    z = rnn.MakeZeroState(depth_multiplier=2)(x)
    assert not isinstance(z, seq.Sequence)  # No time axis, so a plain array.
    assert z.shape == (2, 6) and z.dtype == jnp.float32 and not np.any(np.asarray(z))
    assert rnn.MakeZeroState()(jnp.ones((3, 4, 5), jnp.bfloat16)).shape == (3, 5)
    with pytest.raises(base.LayerError, match=r"rank 3.*f32\[2,5\]"):
        rnn.MakeZeroState()(jnp.ones((2, 5)))


# --- The recurrent layers: Trax's compositions ----------------------------------------


def trax_lstm(n_units):
    """Trax's LSTM, built literally (non-streaming tl.Scan and MakeZeroState)."""
    return Serial(
        Branch(None, rnn.MakeZeroState(depth_multiplier=2)),
        Scan(rnn.LSTMCell(n_units), axis=1),
        Select([0], n_in=2),
    )


def trax_gru(n_units):
    return Serial(
        Branch(None, rnn.MakeZeroState(depth_multiplier=1)),
        Scan(rnn.GRUCell(n_units), axis=1),
        Select([0], n_in=2),
    )


def trax_sru(n_units, activation=None):
    return Serial(
        Branch(core.Dense(3 * n_units), None),
        Split(n_items=3),
        Parallel(rnn.activation_fns.Sigmoid(), rnn.activation_fns.Sigmoid()),
        base.Fn("", lambda r, f, y: (y * (1.0 - f), f, r), n_out=3),
        Parallel(None, None, Branch(rnn.MakeZeroState(), None)),
        Scan(rnn.InnerSRUCell(), axis=1),
        Select([0], n_in=2),
        activation if activation is not None else [],
        base.Fn("FinalSRUGate", lambda c, r, x: c * r + x * (1 - r) * (3**0.5)),
    )


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (lambda: rnn.LSTM(4), lambda: trax_lstm(4)),
        (lambda: rnn.GRU(4), lambda: trax_gru(4)),
        (lambda: rnn.SRU(4), lambda: trax_sru(4)),
        (lambda: rnn.SRU(4, activation=Tanh()), lambda: trax_sru(4, Tanh())),
    ],
    ids=["LSTM", "GRU", "SRU", "SRU_tanh"],
)
def test_same_weights_tree_and_values_as_trax_composition(ours, theirs):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 6, 4)).astype(np.float32))
    ours, theirs = ours(), theirs()
    weights, _ = ours.init(ShapeDtype(x.shape), rng=jax.random.PRNGKey(0))
    trax_weights, _ = theirs.init(ShapeDtype(x.shape))
    assert jax.tree.structure(weights) == jax.tree.structure(trax_weights)
    assert jax.tree.map(jnp.shape, weights) == jax.tree.map(jnp.shape, trax_weights)
    for mode in ("train", "eval", "predict"):
        w_sig, _ = ours.with_mode(mode).weights_and_state_signature(ShapeDtype(x.shape))
        assert jax.tree.structure(w_sig) == jax.tree.structure(weights)
    np.testing.assert_allclose(ours(x, weights=weights), theirs(x, weights=weights), atol=1e-6)


def test_lstm_weights_layout_and_trax_defaults():
    layer = rnn.LSTM(4)
    assert (layer.n_in, layer.n_out, layer.name, repr(layer)) == (1, 1, "LSTM_4", "LSTM_4")
    weights, _ = layer.init(ShapeDtype((2, 5, 3)))
    assert jax.tree.map(jnp.shape, weights) == (((), ((), ())), (((7, 16), (16,)),), ())
    assert (rnn.LSTM(4, return_state=True).n_in, rnn.LSTM(4, return_state=True).n_out) == (1, 2)
    both = rnn.LSTM(4, return_state=True, initial_state=True)
    assert (both.n_in, both.n_out) == (2, 2)
    w_init, _ = both.init((ShapeDtype((2, 5, 3)), ShapeDtype((2, 8))))
    assert jax.tree.map(jnp.shape, w_init) == ((((7, 16), (16,)),),)
    assert (rnn.GRU(4).name, rnn.SRU(4).name) == ("GRU_4", "SRU_4")
    gru_weights, _ = rnn.GRU(4).init(ShapeDtype((2, 5, 3)))
    assert jax.tree.map(jnp.shape, gru_weights) == (((), ((), ())), (((7, 8), (8,), (7, 4), (4,)),), ())


def test_streaming_properties():
    for layer in (rnn.LSTM(4, mode="predict"), rnn.GRU(4, mode="predict"), rnn.SRU(4, mode="predict")):
        assert (layer.block_size, layer.output_ratio, layer.input_latency, layer.output_latency) == (
            1,
            1,
            0,
            0,
        )
        assert layer.supports_step and layer.mode == "predict"
        assert layer.receptive_field == (math.inf, 0)  # Every past step, none ahead.
        assert layer.with_mode("eval").mode == "eval"


# --- Masks, padding, exact values over sequences ------------------------------------------


def test_lstm_over_a_sequence_freezes_the_state_at_invalid_steps():
    layer = rnn.LSTM(3, return_state=True)
    x = random_sequence((3, 5, 2), [5, 3, 1], seed=1)
    weights, _ = layer.init(ShapeDtype((3, 5, 2)), rng=jax.random.PRNGKey(2))
    (w, b) = weights[1][0]
    y, final = layer(x, weights=weights)
    assert isinstance(y, seq.Sequence) and np.array_equal(y.mask, x.mask)
    xs = np.nan_to_num(np.asarray(x.values, np.float64))
    expected_y, expected_final = np_scan(
        lambda xt, s: np_lstm_cell(xt, s, w, b), xs, np.asarray(x.mask), np.zeros((3, 6))
    )
    np.testing.assert_allclose(
        valid_values(y), np.where(np.asarray(x.mask)[..., None], expected_y, 0), atol=1e-6
    )
    np.testing.assert_allclose(final, expected_final, atol=1e-6)
    # The final state is each row's state after its last valid step: h is y there.
    np.testing.assert_allclose(final[1, 3:], y.values[1, 2], atol=1e-6)
    np.testing.assert_allclose(final[2, 3:], y.values[2, 0], atol=1e-6)


def test_gru_plain_array_in_plain_array_out():
    layer = rnn.GRU(3)
    x = np.random.default_rng(3).standard_normal((2, 4, 2)).astype(np.float32)
    weights, _ = layer.init(ShapeDtype(x.shape), rng=jax.random.PRNGKey(4))
    y = layer(jnp.asarray(x), weights=weights)
    assert not isinstance(y, seq.Sequence)
    cell_weights = weights[1][0]
    expected, _ = np_scan(
        lambda xt, s: np_gru_cell(xt, s, *cell_weights),
        x.astype(np.float64),
        np.ones((2, 4), bool),
        np.zeros((2, 3)),
    )
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_sru_exact_values():
    n = 3
    layer = rnn.SRU(n, activation=Tanh())
    x = random_sequence((2, 4, n), [4, 2], seed=5)
    weights, _ = layer.init(ShapeDtype((2, 4, n)), rng=jax.random.PRNGKey(6))
    w, b = (np.asarray(a, np.float64) for a in jax.tree.leaves(weights))
    y = layer(x, weights=weights)
    xs = np.nan_to_num(np.asarray(x.values, np.float64))
    r, f, yy = np.split(xs @ w + b, 3, axis=-1)
    r, f = sigmoid(r), sigmoid(f)
    c = np.zeros((2, n))
    expected = []
    for t in range(4):
        c = f[:, t] * c + (1 - f[:, t]) * yy[:, t]
        expected.append(r[:, t] * np.tanh(c) + (1 - r[:, t]) * xs[:, t] * np.sqrt(3.0))
    expected = np.stack(expected, axis=1)
    np.testing.assert_allclose(
        valid_values(y), np.where(np.asarray(x.mask)[..., None], expected, 0), atol=1e-5
    )


def test_scan_sru_cell_stack_semantics_and_masks():
    layer = rnn.ScanSRUCell("eval")
    assert (layer.n_in, layer.n_out) == (3, 2)
    xf = seq.Sequence(jnp.asarray([[[1.0], [2.0], [np.nan]]]), jnp.asarray([[True, True, False]]))
    f = seq.Sequence(jnp.asarray([[[0.5], [0.5], [0.5]]]), jnp.asarray([[True, True, True]]))
    c, final = layer((xf, f, jnp.asarray([[4.0]])))
    # c1 = 0.5 * 4 + 1 = 3, c2 = 0.5 * 3 + 2 = 3.5; the invalid step keeps the carry.
    np.testing.assert_allclose(c.values[0, :2, 0], [3.0, 3.5])
    np.testing.assert_array_equal(c.mask, [[True, True, False]])
    np.testing.assert_allclose(final, [[3.5]])


def test_sru_needs_input_depth_n_units():
    with pytest.raises(base.LayerError, match=r"SRU_4: the input depth must equal n_units=4.*f32\[2,5,3\]"):
        rnn.SRU(4).init(ShapeDtype((2, 5, 3)))


@pytest.mark.parametrize("make", [rnn.LSTM, rnn.GRU, rnn.SRU])
def test_gradients_are_finite_with_nan_padding(make):
    layer = make(3)
    x = random_sequence((2, 5, 3), [5, 2], garbage=np.nan)
    weights, state = layer.init(ShapeDtype((2, 5, 3)))

    def loss(w, values):
        y = layer.pure_fn(seq.Sequence(values, x.mask), w, state, None)[0]
        return jnp.sum(jnp.where(y.mask[..., None], y.values, 0.0))

    g_w, g_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(weights, x.values)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(g_w))
    assert np.all(np.isfinite(np.asarray(g_x)[np.asarray(x.mask)]))
    assert np.any(np.asarray(jax.tree.leaves(g_w)[0]) != 0)


# --- Streaming ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layer_fn",
    [
        lambda mode: rnn.LSTM(4, mode=mode),
        lambda mode: rnn.GRU(4, mode=mode),
        lambda mode: rnn.SRU(3, activation=Tanh(), mode=mode),
    ],
    ids=["LSTM", "GRU", "SRU"],
)
def test_verify_contract(layer_fn):
    report = test_utils.verify_contract(layer_fn, ShapeDtype((2, 6, 3)))
    latencies = (report.block_size, report.output_ratio, report.input_latency, report.output_latency)
    assert latencies == (1, 1, 0, 0)
    assert "gradients" in report.checks


def test_predict_state_holds_the_carry():
    layer = rnn.LSTM(4, mode="predict")
    _, state = layer.init(ShapeDtype((3, 1, 2)))
    cell_state, carries, started = state[1]
    assert cell_state == () and started.shape == (3,) and not np.any(started)  # Per row: rows restart alone.
    assert [(c.shape, c.dtype) for c in carries] == [((3, 8), jnp.float32)]
    assert not np.any(np.asarray(carries[0]))
    # The same weights run in every mode.
    eval_layer = rnn.LSTM(4, mode="eval")
    eval_weights, eval_state = eval_layer.init(ShapeDtype((3, 6, 2)))
    assert eval_state == (((), ((), ())), ((),), ())
    x = random_sequence((3, 6, 2), [6, 4, 1], seed=8)
    y_layer = eval_layer(x)
    outputs, _ = run_blocks(layer, x, eval_weights, state, block=2)
    y_step = seq.Sequence.concatenate_sequences(outputs)
    np.testing.assert_allclose(valid_values(y_step), valid_values(y_layer), atol=1e-6)


def test_lstm_return_state_streams_the_latest_state():
    x = random_sequence((3, 6, 2), [6, 4, 1], seed=9)
    layer = rnn.LSTM(4, mode="eval", return_state=True)
    weights, _ = layer.init(ShapeDtype((3, 6, 2)))
    y, final = layer(x, weights=weights)
    stream = layer.with_mode("predict")
    _, state = stream.init(ShapeDtype((3, 3, 2)))
    outputs, _ = run_blocks(stream, x, weights, state, block=3)
    # After each block the state output is the state so far: the last one is the layer-wise final state.
    np.testing.assert_allclose(outputs[-1][1], final, atol=1e-6)
    _, first_half_final = layer(x[:, :3], weights=weights)
    np.testing.assert_allclose(outputs[0][1], first_half_final, atol=1e-6)
    y_step = seq.Sequence.concatenate_sequences([o[0] for o in outputs])
    np.testing.assert_allclose(valid_values(y_step), valid_values(y), atol=1e-6)


def test_lstm_initial_state_from_the_stack():
    n, d = 3, 2
    x = random_sequence((2, 4, d), [4, 3], seed=10)
    s0 = np.random.default_rng(11).standard_normal((2, 2 * n)).astype(np.float32)
    layer = rnn.LSTM(n, mode="eval", return_state=True, initial_state=True)
    weights, _ = layer.init((ShapeDtype((2, 4, d)), ShapeDtype((2, 2 * n))), rng=jax.random.PRNGKey(12))
    w, b = weights[0][0]
    y, final = layer((x, jnp.asarray(s0)), weights=weights)
    xs = np.nan_to_num(np.asarray(x.values, np.float64))
    expected_y, expected_final = np_scan(lambda xt, s: np_lstm_cell(xt, s, w, b), xs, np.asarray(x.mask), s0)
    np.testing.assert_allclose(
        valid_values(y), np.where(np.asarray(x.mask)[..., None], expected_y, 0), atol=1e-6
    )
    np.testing.assert_allclose(final, expected_final, atol=1e-6)

    # Streaming: the stack's state starts the stream; at later blocks the carried state is used.
    stream = layer.with_mode("predict")
    _, state = stream.init((ShapeDtype((2, 1, d)), ShapeDtype((2, 2 * n))))
    step = jax.jit(lambda inputs, s: stream.pure_fn(inputs, weights, s, None))
    ys = []
    for t in range(4):
        stack_state = s0 if t == 0 else np.full_like(s0, 1e3)  # Ignored after the first block.
        (y_t, final_t), state = step((x[:, t : t + 1], jnp.asarray(stack_state)), state)
        ys.append(y_t)
    np.testing.assert_allclose(
        valid_values(seq.Sequence.concatenate_sequences(ys)), valid_values(y), atol=1e-6
    )
    np.testing.assert_allclose(final_t, final, atol=1e-6)


# --- Golden numbers from SequenceLayers 0.2 (sl.LSTM, layer-wise) ---------------------------
#
# sl.LSTM computes z = x @ kernel + h @ recurrent_kernel + bias with gate blocks
# (i, f, g, o) and the same cell equations; Trax's w stacks [kernel; recurrent_kernel]
# with gate blocks (i, j=g, f, o). So w = concat(kernel, recurrent)[:, blocks 0, 2, 1, 3].

SL_X = np.array(
    [
        [[0.0, 0.3], [-0.27, -0.89], [-0.45, -0.99], [0.06, 1.34]],
        [[-0.49, -0.62], [0.49, 0.36], [0.11, -0.93], [-0.03, 0.7]],
    ],
    np.float32,
)
SL_KERNEL = np.array(
    [
        [-0.67, -0.23, -0.95, -0.64, -0.92, -0.12, -0.63, 0.14, 0.08, -0.09, -1.26, -0.27],
        [-0.02, 0.06, -0.77, -0.24, -0.49, -0.4, 0.53, -0.4, -0.02, 0.44, -0.29, -0.06],
    ],
    np.float32,
)
SL_RECURRENT = np.array(
    [
        [0.06, 0.03, -0.61, 0.04, 0.68, -0.77, 0.43, 0.06, -0.32, 1.0, 0.38, -0.6],
        [0.04, 0.29, -0.09, 0.34, -0.03, 0.33, 0.72, -0.34, 0.1, -0.23, 0.06, -0.59],
        [-0.29, -0.1, 0.45, 0.57, -0.66, -0.4, 0.32, -1.0, -0.23, -0.05, 0.63, 0.34],
    ],
    np.float32,
)
SL_BIAS = np.array(
    [-0.03, -0.04, -0.03, 0.15, -0.04, -0.03, 0.04, -0.01, -0.02, -0.11, 0.0, -0.04], np.float32
)
SL_Y = np.array(
    [
        [
            [0.04859956, -0.03053158, -0.00549107],
            [-0.03151564, 0.07258337, -0.01845342],
            [-0.05395956, 0.15970108, -0.01745936],
            [0.14500584, -0.07399218, -0.00623919],
        ],
        [
            [0.00482570, 0.05872176, -0.01775821],
            [-0.00550431, -0.00387509, -0.00377587],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ],
    ],
    np.float32,
)
SL_FINAL_C = np.array([[0.24874240, -0.19680549, -0.01389414], [-0.01102832, -0.01189773, -0.00856407]])
SL_FINAL_H = np.array([[0.14500584, -0.07399218, -0.00623920], [-0.00550431, -0.00387509, -0.00377587]])


def sl_to_trax_lstm_weights(kernel, recurrent, bias):
    n = recurrent.shape[0]
    order = np.concatenate([np.arange(g * n, (g + 1) * n) for g in (0, 2, 1, 3)])
    return np.concatenate([kernel, recurrent], axis=0)[:, order], bias[order]


@pytest.mark.parametrize("mode", ["eval", "predict"])
def test_lstm_matches_sequence_layers(mode):
    x = seq.Sequence(jnp.asarray(SL_X), jnp.asarray([[True] * 4, [True, True, False, False]]))
    w, b = sl_to_trax_lstm_weights(SL_KERNEL, SL_RECURRENT, SL_BIAS)
    weights = (((), ((), ())), ((jnp.asarray(w), jnp.asarray(b)),))
    layer = rnn.LSTM(3, mode=mode, return_state=True)
    _, state = layer.init(ShapeDtype((2, 4 if mode == "eval" else 1, 2)))
    if mode == "eval":
        y, final = layer(x, weights=weights)
    else:
        outputs, _ = run_blocks(layer, x, weights, state, block=1)
        y = seq.Sequence.concatenate_sequences([o[0] for o in outputs])
        final = outputs[-1][1]
    np.testing.assert_allclose(valid_values(y), SL_Y, atol=1e-6)
    np.testing.assert_allclose(final, np.concatenate([SL_FINAL_C, SL_FINAL_H], axis=-1), atol=1e-6)
