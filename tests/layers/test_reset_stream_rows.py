"""reset_stream_rows: restarting some streams of a batch while the others go on (issue 19).

The behaviour across every streamable layer of the registry is verify_contract's
reset check (on by default), run for each layer by `test_registry.py`; here: exact small
cases, the ways of naming rows, jit, the batch axes of every registry layer's
state, and the errors.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.layers import streaming
from trax_sl.shapes import ShapeDtype

from .registry import REGISTRY

STEP = ShapeDtype((2, 1, 4))  # One block of one step for a batch of 2 rows.


def _stream(model, x, state, weights):
    """Feeds x [batch, time, ...] one step at a time; returns (outputs joined along time, state)."""
    step = jax.jit(lambda x, s: model.pure_fn(x, weights, s, None))
    ys = []
    for t in range(x.shape[1]):
        y, state = step(x[:, t : t + 1], state)
        ys.append(y)
    return (jnp.concatenate(ys, axis=1) if ys[0].ndim >= 2 else ys[-1]), state


def _started(layer, x):
    """(predict model, weights, state after streaming x through it)."""
    weights, _ = layer.init(ShapeDtype(x.shape))
    predict, state = tl.start_stream(layer, STEP, weights)
    _, state = _stream(predict, x, state, weights)
    return predict, weights, state


def _assert_rows(actual, expected_reset, expected_kept, rows, axis=0):
    """Leaves of `actual`: `rows` along `axis` as in expected_reset, the other rows as in expected_kept."""
    for a, r, k in zip(*(jax.tree.leaves(t) for t in (actual, expected_reset, expected_kept)), strict=True):
        a, r, k = (np.moveaxis(np.asarray(t), axis, 0) for t in (a, r, k))
        others = np.setdiff1d(np.arange(a.shape[0]), rows)
        np.testing.assert_array_equal(a[rows], r[rows])
        np.testing.assert_array_equal(a[others], k[others])


X = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 4))
X_NEW = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 4))


# --- Exact small cases ----------------------------------------------------------------------


def test_causal_conv_buffer_of_a_restarted_row_is_zeros_as_at_the_start():
    predict, weights, state = _started(tl.CausalConv(3, kernel_width=3), X)
    assert np.asarray(state.values)[0].any()  # The last two steps, before the reset.
    reset = tl.reset_stream_rows(predict, state, [0], STEP, weights)
    np.testing.assert_array_equal(reset.values[0], np.zeros((2, 4)))
    np.testing.assert_array_equal(reset.values[1], state.values[1])
    np.testing.assert_array_equal(reset.values[1], X[1, 3:])
    # Row 0 then convolves the new input as a fresh stream does: zeros before it, not row 0's past.
    y, _ = _stream(predict, X_NEW, reset, weights)
    expected = tl.CausalConv(3, kernel_width=3, mode="eval").pure_fn(X_NEW, weights, (), None)[0]
    np.testing.assert_allclose(y[0], expected[0], rtol=1e-5, atol=1e-6)


def test_lstm_restarted_row_computes_the_new_stream_layer_wise():
    layer = tl.LSTM(3)
    predict, weights, state = _started(layer, X)
    reset = tl.reset_stream_rows(predict, state, np.array([1]), STEP, weights)
    _, (_, (carry,), started), _ = reset  # LSTM's recurrence: (cell state, carries, started).
    np.testing.assert_array_equal(carry[1], np.zeros(6))
    np.testing.assert_array_equal(carry[0], state[1][1][0][0])
    np.testing.assert_array_equal(started, [True, False])
    y, _ = _stream(predict, X_NEW, reset, weights)
    expected = tl.LSTM(3, mode="eval").pure_fn(X_NEW, weights, layer.init(STEP)[1], None)[0]
    np.testing.assert_allclose(y[1], expected[1], rtol=1e-5, atol=1e-6)


def test_kv_cache_attention_restarted_row_attends_only_to_its_new_stream():
    layer = tl.DotProductSelfAttention(2, 2, max_past_horizon=3, max_future_horizon=0)
    predict, weights, state = _started(layer, X)
    reset = tl.reset_stream_rows(predict, state, jnp.array([True, False]), STEP, weights)
    _, fresh = tl.start_stream(layer, STEP, weights)
    _assert_rows(reset, fresh, state, [0])
    assert not np.asarray(reset[0].slots)[0].any() and np.asarray(reset[0].slots)[1].all()
    y, _ = _stream(predict, X_NEW, reset, weights)
    expected = layer.with_mode("eval").pure_fn(X_NEW, weights, layer.init(STEP)[1], None)[0]
    np.testing.assert_allclose(y[0], expected[0], rtol=1e-5, atol=1e-6)
    # Row 1 goes on: its cache still holds the old stream's last steps.
    going_on = _stream(predict, X_NEW, state, weights)[0]
    np.testing.assert_allclose(y[1], going_on[1], rtol=1e-6)


def test_positional_encoding_counter_of_a_restarted_row_starts_from_zero():
    predict, weights, state = _started(tl.PositionalEncoding(max_len=16), X)
    np.testing.assert_array_equal(state, [5, 5])
    reset = tl.reset_stream_rows(predict, state, [1], STEP, weights)
    np.testing.assert_array_equal(reset, [5, 0])
    y, after = _stream(predict, X_NEW, reset, weights)
    np.testing.assert_array_equal(after, [9, 4])
    table = weights if not isinstance(weights, tuple) else weights[0]
    np.testing.assert_allclose(y[1], X_NEW[1] + table[:4], rtol=1e-6)
    np.testing.assert_allclose(y[0], X_NEW[0] + table[5:9], rtol=1e-6)


def test_delay_restarted_row_gives_its_delay_of_invalid_steps_again():
    layer = tl.Delay(2)
    x = Sequence(jnp.arange(1.0, 11.0).reshape((2, 5, 1)), jnp.ones((2, 5), bool))
    step = Sequence(ShapeDtype((2, 1, 1)), ShapeDtype((2, 1), bool))
    weights, _ = layer.init(step)
    predict, state = tl.start_stream(layer, step, weights)
    stream = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    for t in range(5):
        _, state = stream(x[:, t : t + 1], state)
    state = tl.reset_stream_rows(predict, state, [0], step, weights)
    new = Sequence(jnp.full((2, 3, 1), 100.0), jnp.ones((2, 3), bool))
    ys = []
    for t in range(3):
        y, state = stream(new[:, t : t + 1], state)
        ys.append(y)
    y = Sequence.concatenate_sequences(ys)
    np.testing.assert_array_equal(y.mask, [[False, False, True], [True, True, True]])
    np.testing.assert_array_equal(y.values[0, 2:, 0], [100.0])
    np.testing.assert_array_equal(y.values[1, :, 0], [9.0, 10.0, 100.0])  # Row 1's old stream, then the new.


def test_repeat_states_one_per_repeat_are_restarted_along_their_batch_axis():
    layer = tl.Repeat(tl.Residual(tl.Dense(4), tl.Delay(1, delay_layer_output=False)), 3)
    predict, weights, state = _started(layer, X)
    assert len(state) == 3  # In predict mode, one state per repeat.
    assert set(streaming.batch_axes(predict, STEP)) == {(0, 1)}
    reset = tl.reset_stream_rows(predict, state, [0], STEP, weights)
    _, fresh = tl.start_stream(layer, STEP, weights)
    _assert_rows(reset, fresh, state, [0])


def test_a_cache_with_heads_folded_into_the_batch_restarts_each_streams_heads():
    """CausalAttention caches `[batch * heads, ...]`: stream r holds entries r * heads to (r + 1) * heads."""
    layer = tl.CausalAttention(4, n_heads=2, max_inference_length=8)
    predict, weights, state = _started(layer, X)
    assert set(streaming.batch_axes(predict, STEP)) == {(0, 2)}
    reset = tl.reset_stream_rows(predict, state, [1], STEP, weights)
    _, fresh = tl.start_stream(layer, STEP, weights)
    _assert_rows(reset, fresh, state, [2, 3])  # The two heads of row 1.
    np.testing.assert_array_equal(reset[1].slots, [5, 5, 0, 0])  # Steps cached, per stream and head.


def test_cross_attention_cache_is_per_row():
    """A restarted row projects its new stream's source; the others keep their cached one."""
    source, new_source = X[:, :3], X_NEW[:, :3]
    mask = jnp.ones((2, 1, 1, 3), bool)
    layer = tl.AttentionQKV(4, n_heads=2, cache_KV_in_predict=True)
    signature = (STEP, ShapeDtype(source.shape), ShapeDtype(source.shape), ShapeDtype(mask.shape, bool))
    weights, _ = layer.init(signature)
    predict, state = tl.start_stream(layer, signature, weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    _, state = step((X[:, :1], source, source, mask), state)
    state = tl.reset_stream_rows(predict, state, [0], signature, weights)
    y, _ = step((X[:, 1:2], new_source, new_source, mask), state)
    eval_layer = tl.AttentionQKV(4, n_heads=2, mode="eval")
    eval_state = eval_layer.init(signature)[1]
    on_new = eval_layer.pure_fn((X[:, 1:2], new_source, new_source, mask), weights, eval_state, None)[0][0]
    on_old = eval_layer.pure_fn((X[:, 1:2], source, source, mask), weights, eval_state, None)[0][0]
    np.testing.assert_allclose(y[0][0], on_new[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y[0][1], on_old[1], rtol=1e-5, atol=1e-6)


def test_trained_statistics_without_a_batch_axis_are_left_alone():
    model = tl.BatchNorm(axis=(0, 1), mode="train")
    weights, state = model.init(ShapeDtype((2, 4, 4)))
    _, trained = model.pure_fn(X[:, :4], weights, state, None)
    predict, stream_state = tl.start_stream(model, STEP, weights, trained)
    assert streaming.batch_axes(predict, STEP) == (None, None, None)
    reset = tl.reset_stream_rows(predict, stream_state, [0, 1], STEP, weights)
    for a, b in zip(jax.tree.leaves(reset), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(a, b)


# --- Naming rows, jit ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows",
    [
        [1],
        (1,),
        np.array([1]),
        jnp.array([1]),
        [False, True],
        np.array([False, True]),
        jnp.array([False, True]),
    ],
)
def test_rows_as_indices_or_mask(rows):
    predict, weights, state = _started(tl.CausalConv(3, kernel_width=3), X)
    reset = tl.reset_stream_rows(predict, state, rows, STEP, weights)
    _, fresh = tl.start_stream(predict, STEP, weights)
    _assert_rows(reset, fresh, state, [1])


def test_no_rows_changes_nothing():
    predict, weights, state = _started(tl.CausalConv(3, kernel_width=3), X)
    for rows in ([], [False, False]):
        reset = tl.reset_stream_rows(predict, state, rows, STEP, weights)
        _assert_rows(reset, state, state, [])


def test_under_jit_with_a_traced_mask_and_traced_indices():
    predict, weights, state = _started(tl.LSTM(3), X)
    _, fresh = tl.start_stream(predict, STEP, weights)
    reset = jax.jit(lambda s, rows: tl.reset_stream_rows(predict, s, rows, STEP, weights))
    _assert_rows(reset(state, jnp.array([True, False])), fresh, state, [0])
    _assert_rows(reset(state, jnp.array([False, True])), fresh, state, [1])
    _assert_rows(reset(state, jnp.array([1])), fresh, state, [1])


def test_a_model_in_another_mode_resets_through_its_predict_twin():
    layer = tl.CausalConv(3, kernel_width=3, mode="train")
    predict, weights, state = _started(layer, X)
    reset = tl.reset_stream_rows(layer, state, [0], STEP, weights)
    _, fresh = tl.start_stream(predict, STEP, weights)
    _assert_rows(reset, fresh, state, [0])


# --- Every streamable registry layer: a batch axis for each leaf of its state ----------------

# Leaves shared by the batch, per layer: trained statistics (carried over by start_stream), a
# summary of the last block. Any other leaf without a batch axis would be a stream's state shared
# by every stream, which no row could restart alone.
SHARED_BY_THE_BATCH = {"BatchNorm": 3, "SummaryScalar": 1}
STREAMING = sorted(name for name, entry in REGISTRY.items() if entry.streams)


def _block_signature(entry, block_size):
    items = entry.signature if isinstance(entry.signature, tuple) else (entry.signature,)
    streamed = entry.contract.get("streamed") or tuple(len(s.shape) >= 2 for s in items)
    block = tuple(
        ShapeDtype((s.shape[0], block_size) + s.shape[2:], s.dtype) if is_streamed else s
        for s, is_streamed in zip(items, streamed)
    )
    return block if isinstance(entry.signature, tuple) else block[0]


@pytest.mark.parametrize("name", STREAMING)
def test_every_leaf_of_a_registry_layers_stream_state_has_a_batch_axis(name):
    entry = REGISTRY[name]
    predict = entry.build("predict").with_mode("predict")
    axes = streaming.batch_axes(predict, _block_signature(entry, predict.block_size))
    assert axes.count(None) == SHARED_BY_THE_BATCH.get(name, 0), axes


def test_the_reset_check_is_on_by_default_in_verify_contract():
    entry = REGISTRY["CausalConv"]
    report = tl.contract.verify_contract(entry.build, entry.signature, check_gradients=False, chunkings=[[1]])
    assert "reset rows == fresh streams" in report.checks
    report = tl.contract.verify_contract(
        entry.build, entry.signature, check_gradients=False, chunkings=[[1]], check_reset=False
    )
    assert "reset rows == fresh streams" not in report.checks


# --- Errors -----------------------------------------------------------------------------------


class _SharedCounter(tl.Layer):
    """Adds each step's position, counted for the whole batch in one scalar: a stream state no row
    can restart alone (layer-wise and step-wise agree, as all rows start together there)."""

    def __init__(self, mode="train"):
        super().__init__(name="SharedCounter")
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((), jnp.int32)

    def forward(self, x, weights, state, rng):
        steps = state if self._mode == "predict" else 0
        positions = (steps + jnp.arange(x.shape[1])).astype(x.dtype)
        return x + positions[None, :, None], state + x.shape[1]


class _PairsOfStreams(_SharedCounter):
    """A state `[batch, batch]` (one entry per pair of streams): not its streams along one axis."""

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((input_signature.shape[0],) * 2, jnp.int32)

    def forward(self, x, weights, state, rng):
        return x, state + 1


def test_verify_contract_catches_a_stream_state_shared_by_the_batch():
    with pytest.raises(AssertionError, match=r"rows \[0\] restarted after .* vs fresh streams"):
        tl.contract.verify_contract(
            lambda mode: _SharedCounter(mode),
            ShapeDtype((2, 4, 3)),
            check_gradients=False,
            chunkings=[[1]],
            check_reset=True,
        )


def test_a_leaf_without_one_row_per_stream_is_named():
    layer = _PairsOfStreams(mode="predict")
    weights, state = layer.init(STEP)
    with pytest.raises(
        ValueError, match=r"state leaf .* is i32\[2,2\] for a batch of 2 and i32\[3,3\] for 3"
    ):
        tl.reset_stream_rows(layer, state, [0], STEP, weights)


def test_bad_rows_and_states_are_refused():
    predict, weights, state = _started(tl.CausalConv(3, kernel_width=3), X)
    with pytest.raises(ValueError, match=r"a row mask must be bool\[2\], got bool\[3\]"):
        tl.reset_stream_rows(predict, state, [True, False, True], STEP, weights)
    with pytest.raises(ValueError, match="row 2 is out of range for a batch of 2"):
        tl.reset_stream_rows(predict, state, [2], STEP, weights)
    with pytest.raises(TypeError, match="rows must be a bool mask"):
        tl.reset_stream_rows(predict, state, [0.5], STEP, weights)
    with pytest.raises(ValueError, match="not a stream state of this model"):
        tl.reset_stream_rows(predict, state, [0], ShapeDtype((3, 1, 4)), weights)
