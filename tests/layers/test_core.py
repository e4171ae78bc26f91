"""Exact-value tests of trax_sl.layers.core on small hand-checked cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
from trax_sl import shapes
from trax_sl.layers import base, core
from trax_sl.layers import initializers as init

Sequence = trax_sl.Sequence


def f32(x):
    return np.asarray(x, np.float32)


def cause_of(excinfo):
    """The original exception inside a LayerError."""
    assert isinstance(excinfo.value, base.LayerError)
    return excinfo.value.__cause__


# --- Dense -------------------------------------------------------------------------


def test_dense_with_given_weights():
    layer = core.Dense(3)
    w = f32([[1, 2, 3], [4, 5, 6]])
    b = f32([10, 20, 30])
    y = layer(f32([[1, 2], [0, -1]]), weights=(w, b))
    # [1, 2] @ w = [9, 12, 15]; [0, -1] @ w = [-4, -5, -6].
    np.testing.assert_allclose(y, [[19, 32, 45], [6, 15, 24]])


def test_dense_on_rank3_input_and_without_bias():
    layer = core.Dense(2, use_bias=False)
    weights, state = layer.init(shapes.ShapeDtype((2, 3, 4)))
    assert isinstance(weights, jax.Array) and weights.shape == (4, 2)
    assert state == ()
    w = f32([[1, 0], [0, 1], [1, 1], [2, -1]])
    x = np.arange(24, dtype=np.float32).reshape((2, 3, 4))
    y = layer(x, weights=w)
    assert y.shape == (2, 3, 2)
    # x[0, 0] = [0, 1, 2, 3]: [0 + 2 + 6, 1 + 2 - 3] = [8, 0].
    np.testing.assert_allclose(y[0, 0], [8, 0])
    np.testing.assert_allclose(y, np.einsum("btd,du->btu", x, w))


def test_dense_default_initializers():
    layer = core.Dense(16)
    (w, b), _ = layer.init(shapes.ShapeDtype((5, 8)), rng=jax.random.PRNGKey(3))
    assert w.shape == (8, 16) and b.shape == (16,)
    assert w.dtype == jnp.float32 and b.dtype == jnp.float32
    glorot_limit = math.sqrt(6.0 / (8 + 16))
    assert float(jnp.max(jnp.abs(w))) <= glorot_limit
    assert float(jnp.max(jnp.abs(w))) > 0.5 * glorot_limit  # Uniform over the range, not tiny.
    assert 0 < float(jnp.max(jnp.abs(b))) < 1e-5  # RandomNormalInitializer(1e-6).


def test_dense_custom_initializers_and_bfloat16():
    layer = core.Dense(
        2,
        kernel_initializer=lambda shape, rng: jnp.full(shape, 0.5),
        bias_initializer=lambda shape, rng: jnp.full(shape, 1.0),
        use_bfloat16=True,
    )
    (w, b), _ = layer.init(shapes.ShapeDtype((1, 3)))
    assert w.dtype == jnp.bfloat16 and b.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(layer(f32([[1, 2, 3]])), np.float32), [[4.0, 4.0]])


def test_dense_name_and_arity():
    layer = core.Dense(16)
    assert (layer.name, layer.n_in, layer.n_out) == ("Dense_16", 1, 1)


def test_dense_constructor_check():
    with pytest.raises(ValueError, match="Dense: n_units must be >= 1, got n_units=0"):
        core.Dense(0)


def test_dense_last_axis_mismatch_names_layer_and_shapes():
    layer = core.Dense(16)
    layer.init(shapes.ShapeDtype((4, 8)))
    with pytest.raises(base.LayerError) as excinfo:
        layer(jnp.zeros((4, 5)))
    assert isinstance(cause_of(excinfo), ValueError)
    assert "Dense_16: expected input with last axis 8 (the weights' input size), got f32[4,5]" in str(
        excinfo.value
    )


def test_dense_rank0_input_is_a_clear_error():
    with pytest.raises(base.LayerError) as excinfo:
        core.Dense(4).init(shapes.ShapeDtype(()))
    assert "Dense_4: expected input with at least one axis" in str(excinfo.value)
    assert "got f32[]" in str(excinfo.value)


def test_dense_on_sequence_keeps_mask():
    layer = core.Dense(1, use_bias=False)
    x = Sequence.from_lengths(f32([[[1, 2], [3, 4], [5, 6]]]), [2])
    y = layer(x, weights=f32([[1], [10]]))
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.mask, [[True, True, False]])
    # The base zeroes invalid steps before pointwise math, so NaN there cannot reach gradients.
    np.testing.assert_allclose(y.values[..., 0], [[21, 43, 0]])
    assert layer.output_signature(shapes.signature(x)).values.shape == (1, 3, 1)


# --- Embedding ---------------------------------------------------------------------


def test_embedding_looks_up_and_clips_ids():
    layer = core.Embedding(4, 2)
    table = f32([[0, 1], [10, 11], [20, 21], [30, 31]])
    y = layer(np.array([[-3, 0, 2, 3, 7]], np.int32), weights=table)
    # -3 clips to 0 and 7 to vocab_size - 1 = 3.
    np.testing.assert_allclose(y, [[[0, 1], [0, 1], [20, 21], [30, 31], [30, 31]]])


def test_embedding_default_initializer_and_bfloat16():
    layer = core.Embedding(100, 12)
    w, _ = layer.init(shapes.ShapeDtype((2, 5), np.int32), rng=jax.random.PRNGKey(1))
    assert w.shape == (100, 12) and w.dtype == jnp.float32
    limit = math.sqrt(3.0 / 12)  # Uniform, variance 1 / fan_out with fan_out = d_feature.
    assert limit * 0.8 < float(jnp.max(jnp.abs(w))) <= limit
    w16, _ = core.Embedding(10, 3, use_bfloat16=True).init(shapes.ShapeDtype((2,), np.int32))
    assert w16.dtype == jnp.bfloat16
    assert layer.name == "Embedding_100_12"


def test_embedding_on_sequence_and_float_ids():
    layer = core.Embedding(3, 1)
    table = f32([[5], [6], [7]])
    y = layer(Sequence.from_lengths(np.array([[2, 1, 0]], np.int32), [1]), weights=table)
    assert isinstance(y, Sequence)
    np.testing.assert_allclose(y.values[:, :1, 0], [[7]])  # Invalid steps are zeroed to id 0 first.
    np.testing.assert_array_equal(y.mask, [[True, False, False]])
    with pytest.raises(base.LayerError, match="expected integer token ids, got f32\\[2\\]"):
        layer(f32([1, 2]), weights=table)


# --- Dropout -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["eval", "predict"])
def test_dropout_is_a_no_op_outside_training(mode):
    layer = core.Dropout(rate=0.9, mode=mode)
    x = f32(np.arange(6).reshape((2, 3)))
    y, state = layer.pure_fn(x, (), (), None)
    np.testing.assert_array_equal(y, x)
    assert state == ()


def test_dropout_rate_zero_is_a_no_op_without_rng():
    x = f32([1, 2, 3])
    np.testing.assert_array_equal(core.Dropout(0.0).pure_fn(x, (), (), None)[0], x)


def test_dropout_train_scales_survivors():
    layer = core.Dropout(rate=0.25, mode="train")
    x = jnp.full((4000,), 3.0)
    y, _ = layer.pure_fn(x, (), (), jax.random.PRNGKey(0))
    y = np.asarray(y)
    # Survivors are 3 / (1 - 0.25) = 4 exactly; the others 0.
    assert set(np.unique(y).tolist()) == {0.0, 4.0}
    assert abs(np.mean(y == 0.0) - 0.25) < 0.03
    y2, _ = layer.pure_fn(x, (), (), jax.random.PRNGKey(1))
    assert not np.array_equal(y, np.asarray(y2))


def test_dropout_shared_axes_share_the_mask():
    layer = core.Dropout(rate=0.5, shared_axes=[1], mode="train")
    x = jnp.ones((64, 5, 3))
    y = np.asarray(layer.pure_fn(x, (), (), jax.random.PRNGKey(2))[0])
    # Along axis 1 every entry equals the first one.
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1, :], y.shape))
    assert set(np.unique(y).tolist()) == {0.0, 2.0}
    # Not shared along the other axes.
    assert len(np.unique(y[:, 0, :])) == 2


def test_dropout_negative_shared_axis():
    layer = core.Dropout(rate=0.5, shared_axes=(-1,))
    y = np.asarray(layer.pure_fn(jnp.ones((32, 4)), (), (), jax.random.PRNGKey(0))[0])
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))


def test_dropout_train_without_rng_is_a_clear_error():
    layer = core.Dropout(rate=0.1, mode="train")
    with pytest.raises(base.LayerError) as excinfo:
        layer.pure_fn(jnp.ones((2,)), (), (), None)
    assert isinstance(cause_of(excinfo), ValueError)
    assert "needs an rng, got None" in str(excinfo.value)


def test_dropout_with_mode_and_constructor_checks():
    train = core.Dropout(rate=0.5)
    assert train.mode == "train"
    evaluating = train.with_mode("eval")
    x = jnp.ones((8,))
    np.testing.assert_array_equal(evaluating.pure_fn(x, (), (), jax.random.PRNGKey(0))[0], x)
    with pytest.raises(ValueError, match="rate must be in \\[0, 1\\), got rate=1.0"):
        core.Dropout(1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        core.Dropout(0.1, mode="test")


def test_dropout_on_sequence_keeps_mask():
    x = Sequence.from_lengths(jnp.ones((2, 3, 4)), [3, 1])
    y, _ = core.Dropout(0.5).pure_fn(x, (), (), jax.random.PRNGKey(0))
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.mask, x.mask)
    assert set(np.unique(np.asarray(y.values)).tolist()) == {0.0, 2.0}


# --- Weights and RandomUniform --------------------------------------------------------


def test_weights_layer():
    layer = core.Weights(lambda shape, rng: jnp.arange(6.0).reshape(shape), shape=(2, 3))
    assert (layer.n_in, layer.n_out) == (0, 1)
    w, _ = layer.init(())
    np.testing.assert_array_equal(w, [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(layer(()), w)
    given = f32([[7, 8, 9], [1, 2, 3]])
    np.testing.assert_array_equal(layer.pure_fn((), given, (), None)[0], given)
    w16, _ = core.Weights(init.RandomNormalInitializer(1.0), shape=(4,), use_bfloat16=True).init(())
    assert w16.shape == (4,) and w16.dtype == jnp.bfloat16


def test_random_uniform_range_shape_dtype():
    layer = core.RandomUniform(min_val=2.0, max_val=3.0, shape=(1000,))
    assert (layer.n_in, layer.n_out) == (0, 1)
    y, _ = layer.pure_fn((), (), (), jax.random.PRNGKey(0))
    y = np.asarray(y)
    assert y.shape == (1000,) and y.dtype == np.float32
    assert y.min() >= 2.0 and y.max() < 3.0
    assert y.min() < 2.05 and y.max() > 2.95
    y2 = np.asarray(layer.pure_fn((), (), (), jax.random.PRNGKey(1))[0])
    assert not np.array_equal(y, y2)
    scalar = core.RandomUniform().pure_fn((), (), (), jax.random.PRNGKey(0))[0]
    assert scalar.shape == () and 0.0 <= float(scalar) < 1.0


def test_random_uniform_needs_rng():
    with pytest.raises(base.LayerError, match="needs an rng"):
        core.RandomUniform().pure_fn((), (), (), None)


def test_random_uniform_sync_across_devices():
    n = 4
    mesh = jax.make_mesh((n,), ("batch",), devices=jax.devices()[:n])
    spec = jax.sharding.PartitionSpec("batch")
    rngs = jax.device_put(jax.random.split(jax.random.PRNGKey(0), n), jax.NamedSharding(mesh, spec))

    def draw(sync):
        layer = core.RandomUniform(shape=(1, 3), sync=sync)
        run = jax.shard_map(
            lambda r: layer.pure_fn((), (), (), r[0])[0], mesh=mesh, in_specs=spec, out_specs=spec
        )
        return np.asarray(run(rngs))

    synced = draw(True)
    np.testing.assert_array_equal(synced, np.broadcast_to(synced[:1], synced.shape))
    unsynced = draw(False)
    assert not np.array_equal(unsynced[0], unsynced[1])
    np.testing.assert_array_equal(synced[0], unsynced[0])  # Device 0's draw.


# --- LocallyConnected1d --------------------------------------------------------------


def _lc_weights(length_out, scales=None):
    """Kernel [1, 10, 100] at each position (times scales[l]), depth 1, one filter."""
    scales = np.ones(length_out) if scales is None else np.asarray(scales)
    w = scales.reshape((-1, 1)) * f32([1, 10, 100]).reshape((1, 3))
    return w.reshape((length_out, 3, 1, 1)).astype(np.float32)


X_123 = f32([1, 2, 3]).reshape((1, 3, 1))


def test_locally_connected_valid():
    layer = core.LocallyConnected1d(1, 3)
    (w, b), _ = layer.init(shapes.ShapeDtype((1, 3, 1)))
    assert w.shape == (1, 3, 1, 1) and b.shape == (1, 1)
    y = layer(X_123, weights=(_lc_weights(1), f32([[0.5]])))
    np.testing.assert_allclose(y, [[[1 + 20 + 300 + 0.5]]])


def test_locally_connected_same_zero_pads_and_weights_differ_by_position():
    layer = core.LocallyConnected1d(1, 3, padding="SAME", use_bias=False)
    w, _ = layer.init(shapes.ShapeDtype((1, 3, 1)))
    assert w.shape == (3, 3, 1, 1)
    y = layer(X_123, weights=_lc_weights(3, scales=[1, 2, 3]))
    # Windows [0,1,2], [1,2,3], [2,3,0]: 210, 2 * 321, 3 * 32.
    np.testing.assert_allclose(y[0, :, 0], [210, 642, 96])


def test_locally_connected_wrap_pads_circularly():
    layer = core.LocallyConnected1d(1, 3, padding="WRAP")
    y = layer(X_123, weights=(_lc_weights(3), f32([[0], [0], [1]])))
    # Windows [3,1,2], [1,2,3], [2,3,1].
    np.testing.assert_allclose(y[0, :, 0], [213, 321, 133])


def test_locally_connected_multichannel_matches_einsum():
    layer = core.LocallyConnected1d(2, 1)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 3))
    (w, b), _ = layer.init(shapes.signature(x))
    assert w.shape == (4, 1, 3, 2) and b.shape == (4, 2)
    expected = np.einsum("bld,ldf->blf", np.asarray(x), np.asarray(w[:, 0])) + np.asarray(b)[None]
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_locally_connected_checks():
    with pytest.raises(ValueError, match="kernel_size must be odd, got kernel_size=2"):
        core.LocallyConnected1d(1, 2)
    with pytest.raises(ValueError, match="padding must be 'VALID', 'SAME' or 'WRAP'"):
        core.LocallyConnected1d(1, 3, padding="CAUSAL")
    layer = core.LocallyConnected1d(1, 3)
    layer.init(shapes.ShapeDtype((1, 5, 1)))
    with pytest.raises(base.LayerError, match="got f32\\[1,4,1\\]"):
        layer(jnp.zeros((1, 4, 1)))
    with pytest.raises(base.LayerError, match="length >= kernel_size 3"):
        core.LocallyConnected1d(1, 3).init(shapes.ShapeDtype((1, 2, 1)))


def test_locally_connected_on_sequence_masks_invalid_steps():
    x = Sequence.from_lengths(f32([1, 2, 1000]).reshape((1, 3, 1)), [2])
    same = core.LocallyConnected1d(1, 3, padding="SAME", use_bias=False)
    y = same(x, weights=_lc_weights(3))
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.mask, [[True, True, False]])
    # The invalid 1000 counts as 0: windows [0,1,2], [1,2,0].
    np.testing.assert_allclose(y.values[0, :2, 0], [210, 21])
    valid = core.LocallyConnected1d(1, 1, use_bias=False)
    y = valid(x, weights=f32([2, 2, 2]).reshape((3, 1, 1, 1)))
    np.testing.assert_allclose(y.values[0, :2, 0], [2, 4])
    three = core.LocallyConnected1d(1, 3, use_bias=False)
    y = three(Sequence.from_lengths(f32(np.ones((2, 4, 1))), [4, 3]), weights=_lc_weights(2))
    # VALID windows are steps [0..2] and [1..3]: the second is invalid in row 1.
    np.testing.assert_array_equal(y.mask, [[True, True], [True, False]])
    assert not core.LocallyConnected1d(1, 3).supports_step


# --- PrintShape and summaries ----------------------------------------------------------


def test_print_shape_prints_at_run_time_and_returns_inputs(capsys):
    layer = core.PrintShape(n_in=2, msg="here")
    assert (layer.n_in, layer.n_out) == (2, 2)
    x = (jnp.ones((2, 3)), Sequence.from_values(jnp.zeros((1, 4, 5), jnp.int32)))
    layer.init(shapes.signature(x))
    for _ in range(2):  # Compiled once, printed at every run.
        y = layer(x)
    jax.effects_barrier()
    out = capsys.readouterr().out
    assert out.count("PrintShape: here\n    f32[2,3]\n    Sequence(i32[1,4,5])\n") == 2
    np.testing.assert_array_equal(y[0], x[0])
    assert isinstance(y[1], Sequence)
    np.testing.assert_array_equal(y[1].values, x[1].values)


def test_summary_scalar_keeps_the_aggregate_in_state():
    layer = core.SummaryScalar("loss")
    assert layer.name == "Summary_loss"
    x = f32([[1, 2], [3, 6]])
    _, state = layer.init(shapes.signature(x))
    assert list(state) == ["summary_loss"]  # Trax's key
    assert state["summary_loss"].shape == () and float(state["summary_loss"]) == 0.0
    y, state = layer.pure_fn(x, (), state, None)
    np.testing.assert_array_equal(y, x)
    assert float(state["summary_loss"]) == 3.0
    layer(x)
    assert float(layer.state["summary_loss"]) == 3.0
    _, state = core.SummaryScalar("m", aggregation_fun=jnp.max).pure_fn(x, (), state, None)
    assert float(state["summary_m"]) == 6.0


def test_summary_scalar_on_sequence_averages_valid_steps():
    x = Sequence.from_lengths(f32([[[1, 3], [5, 7], [100, 100]]]), [2])
    y, state = core.SummaryScalar("s").pure_fn(x, (), {"summary_s": jnp.zeros(())}, None)
    assert isinstance(y, Sequence)
    assert float(state["summary_s"]) == 4.0


def test_summary_image_keeps_the_first_images():
    layer = core.SummaryImage("img", n_in=1, num_summaries=2)
    assert (layer.name, layer.n_in, layer.n_out) == ("Summary_img", 1, 1)
    x = f32(np.arange(3 * 2 * 2).reshape((3, 2, 2, 1)))
    _, state = layer.init(shapes.signature(x))
    np.testing.assert_array_equal(state, np.zeros((2, 2, 2, 1)))
    y, state = layer.pure_fn(x, (), state, None)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(state, x[:2])


def test_summary_image_with_recover_fn_and_two_inputs():
    layer = core.SummaryImage("pair", n_in=2, num_summaries=5, recover_fn=lambda xs: xs[0] - xs[1])
    a, b = f32(np.full((2, 3, 3), 5.0)), f32(np.ones((2, 3, 3)))
    _, state = layer.init(shapes.signature((a, b)))
    assert state.shape == (2, 3, 3)
    (ya, yb), state = layer.pure_fn((a, b), (), state, None)
    np.testing.assert_array_equal(ya, a)
    np.testing.assert_array_equal(yb, b)
    np.testing.assert_array_equal(state, np.full((2, 3, 3), 4.0))
    with pytest.raises(ValueError, match="needs a recover_fn"):
        core.SummaryImage("x", n_in=2)


# --- Shape and axis functions -------------------------------------------------------


def test_flatten():
    x = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape((2, 3, 5, 7))
    y = core.Flatten(n_axes_to_keep=2)(x)
    assert y.shape == (2, 3, 35)
    np.testing.assert_array_equal(y, x.reshape((2, 3, 35)))
    assert core.Flatten()(x).shape == (2, 105)
    assert core.Flatten(0)(x).shape == (210,)
    with pytest.raises(base.LayerError, match="input rank \\(2\\) must exceed"):
        core.Flatten(2)(jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match="n_axes_to_keep must be >= 0"):
        core.Flatten(-1)


def test_flatten_keeping_time_on_sequence():
    x = Sequence.from_lengths(jnp.ones((2, 3, 2, 2)), [3, 1])
    y = core.Flatten(2)(x)
    assert isinstance(y, Sequence) and y.values.shape == (2, 3, 4)
    y1 = core.Flatten(1)(x)  # Time merged away: a plain array, invalid steps zeroed.
    assert not isinstance(y1, Sequence)
    np.testing.assert_array_equal(y1[1], [1] * 4 + [0] * 8)


LN3 = math.log(3.0)


def test_log_softmax_softmax_logsumexp():
    x = f32([[0.0, LN3], [1.0, 1.0]])
    np.testing.assert_allclose(core.log_softmax(x), [[math.log(0.25), math.log(0.75)], [math.log(0.5)] * 2])
    np.testing.assert_allclose(core.LogSoftmax()(x), core.log_softmax(x))
    np.testing.assert_allclose(core.Softmax()(x), [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6)
    lse = core.LogSumExp()(x)
    assert lse.shape == (2, 1)  # Trax keeps the axis.
    np.testing.assert_allclose(lse, [[math.log(4.0)], [1.0 + math.log(2.0)]], rtol=1e-6)
    np.testing.assert_allclose(
        core.Softmax(axis=0)(x)[:, 0], [1 / (1 + math.e), math.e / (1 + math.e)], rtol=1e-6
    )


def test_softmax_family_over_time_ignores_invalid_steps():
    x = Sequence.from_lengths(f32([[0.0, LN3, 50.0], [2.0, 9.0, 9.0]]), [2, 1])
    y = core.Softmax(axis=1)(x)
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.mask, x.mask)
    np.testing.assert_allclose(y.values, [[0.25, 0.75, 0.0], [1.0, 0.0, 0.0]], rtol=1e-6)
    ly = core.LogSoftmax(axis=1)(x)
    np.testing.assert_allclose(ly.values[0, :2], [math.log(0.25), math.log(0.75)], rtol=1e-6)
    lse = core.LogSumExp(axis=1)(x)
    assert not isinstance(lse, Sequence)
    np.testing.assert_allclose(lse, [[math.log(4.0)], [2.0]], rtol=1e-6)
    # Gradients stay finite, also for a row with no valid step.
    empty = Sequence(x.values, jnp.array([[True, True, False], [False, False, False]]))
    layer = core.LogSoftmax(axis=1)
    grad = jax.grad(lambda v: jnp.sum(layer.pure_fn(Sequence(v, empty.mask), (), (), None)[0].values))(
        x.values
    )
    assert np.all(np.isfinite(grad))


def test_to_float_negate_threshold_stop_gradient():
    x = np.array([[1, -2, 3]], np.int32)
    y = core.ToFloat()(x)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, [[1.0, -2.0, 3.0]])
    np.testing.assert_array_equal(core.Negate()(f32([1.5, -2])), [-1.5, 2])
    t = core.ThresholdToBinary()(f32([0.2, 0.5, 0.51, 3]))
    assert t.dtype == jnp.int32
    np.testing.assert_array_equal(t, [0, 0, 1, 1])
    np.testing.assert_array_equal(core.ThresholdToBinary(threshold=2.0)(f32([1, 3])), [0, 1])
    layer = core.StopGradient()
    np.testing.assert_array_equal(layer(f32([4.0])), [4.0])
    grad = jax.grad(lambda v: jnp.sum(layer.pure_fn(v, (), (), None)[0] * v))(f32([4.0]))
    np.testing.assert_array_equal(grad, [4.0])  # d(sg(v) * v)/dv = sg(v) = 4, not 2v = 8.


def test_function_layer_names():
    names = [
        core.Flatten().name,
        core.LogSoftmax().name,
        core.LogSumExp().name,
        core.Softmax().name,
        core.ToFloat().name,
        core.Mean().name,
        core.Min().name,
        core.Max().name,
        core.Sum().name,
        core.ThresholdToBinary().name,
        core.ArgMax().name,
        core.Negate().name,
        core.StopGradient().name,
    ]
    assert names == [
        "Flatten",
        "LogSoftmax",
        "LogSumExp",
        "Softmax",
        "ToFloat",
        "Mean",
        "Min",
        "Max",
        "Sum",
        "ThresholdToBinary",
        "ArgMax",
        "Negate",
        "StopGradient",
    ]


# --- Reductions -----------------------------------------------------------------------


X_REDUCE = f32([[1, 5, 3], [-4, 0, 2]])


def test_reductions_on_arrays():
    np.testing.assert_allclose(core.Mean()(X_REDUCE), [3, -2 / 3], rtol=1e-6)
    np.testing.assert_array_equal(core.Min()(X_REDUCE), [1, -4])
    np.testing.assert_array_equal(core.Max()(X_REDUCE), [5, 2])
    assert float(core.Sum()(X_REDUCE)) == 7.0  # axis=None: everything.
    np.testing.assert_array_equal(core.Sum(axis=0)(X_REDUCE), [-3, 5, 5])
    np.testing.assert_array_equal(core.Max(axis=0, keepdims=True)(X_REDUCE), [[1, 5, 3]])
    assert core.Mean(keepdims=True)(X_REDUCE).shape == (2, 1)
    np.testing.assert_array_equal(core.ArgMax()(X_REDUCE), [1, 2])
    np.testing.assert_array_equal(core.ArgMax(axis=0)(X_REDUCE), [0, 0, 0])


def test_reductions_over_time_ignore_invalid_steps():
    values = f32([[[-3], [-1], [100]], [[2], [4], [-100]]])
    x = Sequence.from_lengths(values, [2, 2])
    np.testing.assert_array_equal(core.Max(axis=1)(x), [[-1], [4]])  # Not 0 from zeroed padding.
    np.testing.assert_array_equal(core.Min(axis=1)(x), [[-3], [2]])
    np.testing.assert_array_equal(core.Mean(axis=1)(x), [[-2], [3]])  # Over 2 valid steps, not 3.
    np.testing.assert_array_equal(core.Sum(axis=1)(x), [[-4], [6]])
    assert float(core.Sum()(x)) == 2.0
    np.testing.assert_array_equal(core.ArgMax(axis=1)(x), [[1], [1]])
    assert not isinstance(core.Max(axis=1)(x), Sequence)
    ints = Sequence.from_lengths(np.array([[3, 1, -7]], np.int32), [2])
    np.testing.assert_array_equal(core.Min(axis=-1)(ints), [1])  # axis -1 of [batch, time] is time.
    np.testing.assert_array_equal(core.Max(axis=1, keepdims=True)(ints), [[3]])


def test_reductions_over_channels_keep_the_sequence():
    x = Sequence.from_lengths(f32([[[1, 2], [3, 4], [5, 9]]]), [2])
    y = core.Max()(x)
    assert isinstance(y, Sequence)
    np.testing.assert_array_equal(y.values, [[2, 4, 9]])
    np.testing.assert_array_equal(y.mask, [[True, True, False]])
    np.testing.assert_array_equal(core.Mean()(x).values, [[1.5, 3.5, 7]])
    np.testing.assert_array_equal(core.Sum(axis=-1)(x).values, [[3, 7, 14]])


# --- Array functions --------------------------------------------------------------------


def test_one_hot():
    y = core.one_hot(np.array([0, 2, 5, -1]), 3)
    assert y.dtype == jnp.float32
    np.testing.assert_array_equal(y, [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 0, 0]])
    y2 = core.one_hot(np.array([[1], [0]]), 2, dtype=jnp.int32)
    assert y2.shape == (2, 1, 2) and y2.dtype == jnp.int32
    np.testing.assert_array_equal(y2, [[[0, 1]], [[1, 0]]])


LOG_2PI = math.log(2 * math.pi)


def test_log_gaussian_diag_pdf():
    # Variances [1, 4]: quadratic term 1^2/1 + 2^2/4 = 2; Trax adds 1e-6 to the determinant 4.
    y = core.log_gaussian_diag_pdf(f32([1, 2]), f32([0, 0]), f32([1, 4]))
    np.testing.assert_allclose(y, -0.5 * (2 * LOG_2PI + math.log(4 + 1e-6) + 2), rtol=1e-6)
    batched = core.log_gaussian_diag_pdf(f32([[1, 2], [0, 0]]), f32([[0, 0], [0, 0]]), f32([[1, 4], [1, 1]]))
    np.testing.assert_allclose(batched[1], -0.5 * (2 * LOG_2PI + math.log(1 + 1e-6)), rtol=1e-6)


def test_log_gaussian_pdf():
    y = core.log_gaussian_pdf(f32([1, 2]), f32([0, 0]), f32([[1, 0], [0, 4]]))
    np.testing.assert_allclose(y, -0.5 * (2 * LOG_2PI + math.log(4) + 2), rtol=1e-6)
    # Sigma [[2, 1], [1, 2]]: det 3, inverse [[2, -1], [-1, 2]] / 3, so d = [1, 1] gives 2/3.
    sigma = f32([[[2, 1], [1, 2]], [[1, 0], [0, 1]]])
    y = core.log_gaussian_pdf(f32([[2, 3], [0, 0]]), f32([[1, 2], [0, 0]]), sigma)
    np.testing.assert_allclose(y, [-0.5 * (2 * LOG_2PI + math.log(3) + 2 / 3), -LOG_2PI], rtol=1e-6)


def test_multigaussian_loss():
    # One Gaussian in 1-D: logit 0, mean 1, s = 2 so variance 4 + 1e-6; target 3.
    preds = f32([[0.0, 1.0, 2.0]])
    y = core.multigaussian_loss(preds, f32([[3.0]]))
    variance = 4 + 1e-6
    expected = -0.5 * (LOG_2PI + math.log(variance + 1e-6) + 4 / variance)
    np.testing.assert_allclose(y, [expected], rtol=1e-6)
    # Two identical components with equal logits are the same distribution.
    preds2 = f32([[0.3, 0.3, 1.0, 1.0, 2.0, 2.0]])
    np.testing.assert_allclose(core.multigaussian_loss(preds2, f32([[3.0]]), ngauss=2), [expected], rtol=1e-5)
    # Two components far apart with logits log(1/4), log(3/4): the target sits on the second.
    preds3 = f32([[math.log(0.25), math.log(0.75), -50.0, 0.0, 1.0, 1.0]])
    np.testing.assert_allclose(
        core.multigaussian_loss(preds3, f32([[0.0]]), ngauss=2),
        [math.log(0.75) - 0.5 * (LOG_2PI + math.log(1 + 2e-6))],
        rtol=1e-5,
    )


def test_logsoftmax_sample_temperature_zero_is_argmax():
    log_probs = jnp.log(f32([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    np.testing.assert_array_equal(core.logsoftmax_sample(log_probs, temperature=0.0), [1, 0])
    np.testing.assert_array_equal(
        core.logsoftmax_sample(log_probs, temperature=0.0, rng=jax.random.PRNGKey(0)), [1, 0]
    )


def test_logsoftmax_sample_follows_the_distribution():
    log_probs = jnp.log(jnp.broadcast_to(f32([0.2, 0.8]), (20000, 2)))
    sample = jax.jit(core.logsoftmax_sample)(log_probs, 1.0, jax.random.PRNGKey(0))
    assert abs(float(jnp.mean(sample)) - 0.8) < 0.02
    np.random.seed(0)
    host_sample = core.logsoftmax_sample(np.asarray(log_probs))
    assert abs(float(np.mean(host_sample)) - 0.8) < 0.02
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        core.logsoftmax_sample(log_probs, temperature=-1.0)
