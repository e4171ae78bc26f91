"""Normalization layers: the streaming contract, hand-checked values, and SequenceLayers 0.2 golden numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, streaming, test_utils
from trax_sl.layers import normalization as nz
from trax_sl.shapes import ShapeDtype

# --- The streaming contract ---------------------------------------------------------

CONTRACT_CASES = {
    "LayerNorm": (lambda mode: nz.LayerNorm(), (2, 12, 3)),
    "LayerNorm_no_center": (lambda mode: nz.LayerNorm(center=False), (2, 6, 3)),
    "RMSNorm": (lambda mode: nz.RMSNorm(), (2, 12, 3)),
    "RMSNorm_two_axes": (lambda mode: nz.RMSNorm(axis=(2, 3)), (2, 4, 3, 2)),
    "BatchNorm": (lambda mode: nz.BatchNorm(axis=(0, 1), mode=mode), (2, 12, 3)),
    "BatchNorm_default_axis": (lambda mode: nz.BatchNorm(mode=mode), (2, 4, 3, 2)),
    "GroupNorm_cumulative": (lambda mode: nz.GroupNorm(2, cumulative=True, mode=mode), (2, 8, 4)),
}


@pytest.mark.parametrize("name", sorted(CONTRACT_CASES))
def test_contract(name):
    layer_fn, shape = CONTRACT_CASES[name]
    report = test_utils.verify_contract(layer_fn, ShapeDtype(shape))
    assert (report.block_size, report.output_ratio, report.input_latency, report.output_latency) == (
        1,
        1,
        0,
        0,
    )
    assert "step-wise == layer-wise" in report.checks and "gradients" in report.checks


@pytest.mark.parametrize(
    "layer", [nz.FilterResponseNorm(mode="predict"), nz.GroupNorm(2, cumulative=False, mode="predict")]
)
def test_layers_mixing_time_do_not_stream(layer):
    assert not layer.supports_step
    x = jnp.ones((1, 2, 4))
    layer.init(ShapeDtype(x.shape))
    with pytest.raises(base.LayerError, match="does not stream"):
        layer(x)


# --- LayerNorm and RMSNorm ------------------------------------------------------------


def test_layer_norm_of_one_two_three():
    layer = nz.LayerNorm()
    x = jnp.array([[[1.0, 2.0, 3.0]]])
    layer.init(ShapeDtype(x.shape))
    # mean 2, variance 2/3.
    expected = np.array([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3 + 1e-6)
    np.testing.assert_allclose(layer(x)[0, 0], expected, rtol=1e-6)
    scale, bias = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.5, -1.0])
    np.testing.assert_allclose(
        layer(x, weights=(scale, bias))[0, 0], expected * [1, 2, 3] + [0.5, 0.5, -1.0], rtol=1e-6
    )


def test_layer_norm_without_center_divides_by_root_mean_square():
    layer = nz.LayerNorm(center=False)
    x = jnp.array([[[1.0, 2.0, 3.0]]])
    scale, bias = jnp.ones(3), jnp.full((3,), 100.0)  # the bias is unused without center
    expected = np.array([1.0, 2.0, 3.0]) / math.sqrt(14 / 3 + 1e-6)
    np.testing.assert_allclose(layer(x, weights=(scale, bias))[0, 0], expected, rtol=1e-6)


def test_rms_norm_of_three_four():
    layer = nz.RMSNorm()
    x = jnp.array([[[3.0, 4.0]]])
    weights, _ = layer.init(ShapeDtype(x.shape))
    assert weights.shape == (2,)
    np.testing.assert_allclose(
        layer(x)[0, 0], [3 / math.sqrt(12.5 + 1e-6), 4 / math.sqrt(12.5 + 1e-6)], rtol=1e-6
    )
    assert nz.RMSNorm(use_scale=False).init(ShapeDtype(x.shape))[0] == ()


def test_normalizing_zeros_gives_zeros_and_zero_gradient():
    layer = nz.RMSNorm()
    weights, _ = layer.init(ShapeDtype((1, 1, 3)))
    grad = jax.grad(lambda x: jnp.sum(layer.pure_fn(x, weights, (), None)[0]))(jnp.zeros((1, 1, 3)))
    np.testing.assert_array_equal(grad, np.zeros((1, 1, 3)))


def _autodiff_normalize(x, axes, epsilon, center):
    """The normalization written plainly, for autodiff: what `_normalize`'s hand-written gradient must equal."""
    v = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    centered = v - jnp.mean(v, axes, keepdims=True) if center else v
    variance = jnp.mean(jnp.square(centered), axes, keepdims=True)
    normed = centered * jax.lax.rsqrt(variance + epsilon)
    return jnp.where(variance == 0, jax.lax.stop_gradient(normed), normed).astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("axes", [(2,), (2, 3)])
@pytest.mark.parametrize("center", [True, False])
def test_normalize_gradient_equals_autodiff(dtype, axes, center):
    x = (jax.random.normal(jax.random.PRNGKey(1), (2, 5, 6, 3)) * 3 + 1).astype(dtype)
    x = x.at[0, 1].set(2.0)  # A constant step: with center, its variance is 0 and no gradient flows.
    cotangent = jax.random.normal(jax.random.PRNGKey(2), x.shape).astype(dtype)

    def loss(normalize):
        return lambda x: jnp.sum(normalize(x, axes, 1e-6, center).astype(jnp.float32) * cotangent)

    got = jax.grad(loss(nz._normalize))(x)
    want = jax.grad(loss(_autodiff_normalize))(x)
    assert got.dtype == dtype
    tolerance = 1e-6 if dtype == jnp.float32 else 1e-2
    np.testing.assert_allclose(
        np.asarray(got, np.float32), np.asarray(want, np.float32), atol=tolerance, rtol=tolerance
    )
    np.testing.assert_array_equal(
        np.asarray(nz._normalize(x, axes, 1e-6, center), np.float32),
        np.asarray(_autodiff_normalize(x, axes, 1e-6, center), np.float32),
    )
    if center:
        np.testing.assert_array_equal(np.asarray(got[0, 1], np.float32), 0.0)


def test_layer_norm_keeps_bfloat16():
    layer = nz.LayerNorm()
    x = jnp.array([[[1.0, 2.0, 3.0]]], jnp.bfloat16)
    weights, _ = layer.init(ShapeDtype(x.shape, jnp.bfloat16))
    assert weights[0].dtype == jnp.bfloat16
    assert layer(x).dtype == jnp.bfloat16


# --- BatchNorm --------------------------------------------------------------------------


def test_batch_norm_train_mode_uses_valid_steps_and_updates_running_statistics():
    layer = nz.BatchNorm(axis=(0, 1), momentum=0.9, mode="train")
    # The invalid steps hold garbage and NaN: they must not enter the statistics.
    x = seq.Sequence(
        jnp.array([[[1.0], [2.0], [3.0], [100.0]], [[5.0], [np.nan], [7.0], [7.0]]]),
        jnp.array([[True, True, True, False], [True, False, False, False]]),
    )
    weights, state = layer.init(x)
    assert jax.tree.map(jnp.shape, state) == ((1,), (1,), ())
    # Valid values 1, 2, 3, 5: mean 2.75, variance 2.1875.
    mean, var = 2.75, 2.1875
    y, state = layer.pure_fn(x, weights, state, None)
    np.testing.assert_allclose(
        y.values[0, :3, 0], (np.array([1.0, 2.0, 3.0]) - mean) / math.sqrt(var + 1e-5), rtol=1e-6
    )
    np.testing.assert_allclose(y.values[1, 0, 0], (5.0 - mean) / math.sqrt(var + 1e-5), rtol=1e-6)
    np.testing.assert_array_equal(y.mask, x.mask)
    np.testing.assert_allclose(state[0], [0.1 * mean], rtol=1e-6)
    np.testing.assert_allclose(state[1], [0.9 + 0.1 * var], rtol=1e-6)
    assert int(state[2]) == 1
    _, state = layer.pure_fn(x, weights, state, None)
    np.testing.assert_allclose(state[0], [0.9 * 0.1 * mean + 0.1 * mean], rtol=1e-6)
    np.testing.assert_allclose(state[1], [0.9 * (0.9 + 0.1 * var) + 0.1 * var], rtol=1e-6)
    assert int(state[2]) == 2


def test_batch_norm_eval_and_predict_use_running_statistics():
    x = jnp.array([[[4.0, 0.0]], [[2.0, 1.0]]])
    state = (jnp.array([2.0, 1.0]), jnp.array([4.0, 9.0]), jnp.array(7, jnp.int32))
    weights = (jnp.array([1.0, 0.0]), jnp.array([3.0, 2.0]))  # (beta, gamma)
    eps = 1e-5
    expected = np.array([[[1 + 3 * 2 / math.sqrt(4 + eps), 2 * -1 / math.sqrt(9 + eps)]], [[1.0, 0.0]]])
    for mode in ("eval", "predict"):
        layer = nz.BatchNorm(axis=(0, 1), mode=mode)
        y, new_state = layer.pure_fn(x, weights, state, None)
        np.testing.assert_allclose(y, expected, rtol=1e-6)
        assert new_state is state


def test_batch_norm_start_stream_keeps_trained_statistics():
    model = nz.BatchNorm(axis=(0, 1), mode="train")
    x = jnp.arange(24, dtype=jnp.float32).reshape((2, 4, 3))
    weights, state = model.init(ShapeDtype(x.shape))
    _, trained = model.pure_fn(x, weights, state, None)
    predict_model, stream_state = streaming.start_stream(model, ShapeDtype((2, 1, 3)), weights, trained)
    assert predict_model.mode == "predict"
    for a, b in zip(jax.tree.leaves(stream_state), jax.tree.leaves(trained)):
        np.testing.assert_array_equal(a, b)
    y, _ = predict_model.pure_fn(x[:, :1], weights, stream_state, None)
    eval_y, _ = model.with_mode("eval").pure_fn(x, weights, trained, None)
    np.testing.assert_allclose(y, eval_y[:, :1], rtol=1e-6)


def test_batch_norm_weights_follow_center_and_scale():
    sig = ShapeDtype((2, 3, 4))
    assert jax.tree.map(jnp.shape, nz.BatchNorm(axis=(0, 1)).init(sig)[0]) == ((4,), (4,))
    assert jax.tree.map(jnp.shape, nz.BatchNorm(axis=(0, 1), center=False).init(sig)[0]) == ((4,),)
    assert nz.BatchNorm(axis=(0, 1), center=False, scale=False).init(sig)[0] == ()
    # Trax's default axis=(0, 1, 2) reduces everything of [batch, time, d]: scalar statistics.
    assert nz.BatchNorm().init(sig)[1][0].shape == ()


# --- FilterResponseNorm -----------------------------------------------------------------


def test_filter_response_norm_averages_over_valid_steps():
    layer = nz.FilterResponseNorm()
    x = seq.Sequence(jnp.array([[[1.0], [2.0], [3.0], [np.nan]]]), jnp.array([[True, True, True, False]]))
    weights, _ = layer.init(x)
    assert jax.tree.map(jnp.shape, weights) == ((1,), (1,), ())
    y = layer(x)
    np.testing.assert_allclose(
        y.values[0, :3, 0], np.array([1.0, 2.0, 3.0]) / math.sqrt(14 / 3 + 1e-6), rtol=1e-6
    )
    # A plain array is all valid; learn_epsilon adds |learnt| to epsilon.
    learnt = nz.FilterResponseNorm(learn_epsilon=True, init_learnt_epsilon=0.5)
    weights, _ = learnt.init(ShapeDtype((1, 3, 1)))
    np.testing.assert_allclose(weights[2][0], 0.5)
    y = learnt(jnp.array([[[1.0], [2.0], [3.0]]]))
    np.testing.assert_allclose(
        y[0, :, 0], np.array([1.0, 2.0, 3.0]) / math.sqrt(14 / 3 + 1e-6 + 0.5), rtol=1e-6
    )


# --- GroupNorm ----------------------------------------------------------------------------


def test_group_norm_weights_and_state():
    sig = ShapeDtype((2, 1, 4))
    weights, state = nz.GroupNorm(2, cumulative=True, mode="predict").init(sig)
    assert jax.tree.map(jnp.shape, weights) == ((4,), (4,))
    assert jax.tree.map(jnp.shape, state) == ((2, 1, 2, 1),) * 3
    assert nz.GroupNorm(2, cumulative=True, mode="eval").init(sig)[1] == ()
    assert nz.GroupNorm(2, use_scale=False, use_bias=False).init(sig)[0] == ((), ())


def test_group_norm_one_group_of_one_two_three():
    layer = nz.GroupNorm(1)
    x = seq.Sequence(jnp.array([[[1.0], [2.0], [3.0], [50.0]]]), jnp.array([[True, True, True, False]]))
    layer.init(x)
    expected = np.array([-1.0, 0.0, 1.0]) / math.sqrt(2 / 3 + 1e-6)
    np.testing.assert_allclose(layer(x).values[0, :3, 0], expected, rtol=1e-6)
    # Cumulative: step 0 sees [1] (variance 0), step 1 sees [1, 2] (mean 1.5; squared deviations from
    # the running means: 0 at step 0, 0.25 at step 1), step 2 adds (3 - 2)^2.
    cumulative = nz.GroupNorm(1, cumulative=True)
    cumulative.init(x)
    expected = [0.0, 0.5 / math.sqrt(0.25 / 2 + 1e-6), 1.0 / math.sqrt(1.25 / 3 + 1e-6)]
    np.testing.assert_allclose(cumulative(x).values[0, :3, 0], expected, rtol=1e-6)


# --- Golden numbers from SequenceLayers 0.2 -----------------------------------------------
# Computed offline with sequence-layers 0.2 (sl.LayerNormalization, sl.RMSNormalization,
# sl.GroupNormalization; layer-wise, training=False) on the inputs below, with params
# scale=SCALE and bias=BIAS. Invalid steps are shown as zeros.

SCALE = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
BIAS = np.array([0.1, -0.2, 0.3, 0.0], np.float32)
GAP_MASK = np.array([[1, 1, 0, 1, 1], [0, 1, 1, 0, 1]], bool)


def _inputs(shape, lengths=None, mask=None):
    """The golden inputs: 2 sin(0.7 i + 0.3) rounded to 3 decimals, garbage where invalid."""
    n = int(np.prod(shape))
    x = np.round(2.0 * np.sin(0.7 * np.arange(n) + 0.3), 3).reshape(shape).astype(np.float32)
    if mask is None:
        mask = np.arange(shape[1])[None, :] < np.asarray(lengths)[:, None]
    garbage = np.where(mask.reshape(mask.shape + (1,) * (len(shape) - 2)), x, np.float32(1e4))
    return seq.Sequence(jnp.asarray(garbage), jnp.asarray(mask))


def _golden(text, shape):
    return np.array(text.split(), np.float32).reshape(shape)


def _valid(y):
    mask = np.asarray(y.mask).reshape(y.mask.shape + (1,) * (y.ndim - 2))
    return np.where(mask, np.asarray(y.values), 0.0)


LN = _golden(
    """
     -0.681526   0.341576   1.979656  -0.196586
      0.915359  -0.210359  -1.092310  -1.384306
     -0.663307  -0.447868   1.436391   2.033775
      0.809474   0.204619  -0.643183  -2.389555
     -0.554948  -0.725096   1.071721   2.641025
      0.690340   0.440229  -0.287530  -2.858447
     -0.397317  -0.971485   0.643306   3.074495
      0.422299   0.748016   0.368366  -3.276385
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 4),
)

RMS = _golden(
    """
      0.197668   1.125805   1.989725   1.807442
      0.028554  -0.842168  -2.017695  -2.431555
     -0.268560   0.447361   1.832168   2.842140
      0.495110   0.037339  -1.400197  -2.930333
     -0.663752  -0.542829   0.744874   2.604973
      0.734763   0.968518   0.017867  -1.899813
     -0.703711  -1.240077  -0.734821   0.982621
      0.594778   1.349307   1.311255  -0.024682
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 4),
)

GN = _golden(
    """
      0.386053   1.414558   1.866055   1.328643
      0.143579  -1.360538  -1.682961  -2.418042
     -0.253068   0.402655   1.611911   2.083267
      0.736878  -0.144345  -1.047599  -2.652360
     -0.731813  -0.875588   0.669231   1.769642
      0.517318   0.241281   0.329000  -3.051431
     -0.634690  -1.532611  -0.928445   1.643507
      0.447473   0.631129   2.587377  -0.042652
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 4),
)

GN_CUM = _golden(
    """
     -0.399999   0.799998   1.799992  -1.999990
     -0.017426  -1.967697  -1.896331  -2.632129
     -0.464171   0.360475   1.651483   2.236705
      0.745501  -0.511448  -1.067069  -2.852762
     -0.839036  -0.962673   0.762872   2.218440
      0.599998  -1.199996   1.799998  -1.999998
     -0.639275  -1.492663  -0.490926   2.850608
      0.565780   0.914111   2.768911  -0.046037
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 4),
)

GN_CUM_GAP = _golden(
    """
     -0.399999   0.799998   1.799992  -1.999990
     -0.017426  -1.967697  -1.896331  -2.632129
      0.000000   0.000000   0.000000   0.000000
      0.665350  -0.658549  -0.508842  -2.259780
     -0.808593  -0.946275   1.255862   2.950406
      0.000000   0.000000   0.000000   0.000000
     -0.399981   0.799964  -1.199998   1.999998
      0.759988   1.297267   2.350369  -0.947337
      0.000000   0.000000   0.000000   0.000000
      0.226415   0.906696   2.621789   1.282040
    """,
    (2, 5, 4),
)


@pytest.mark.parametrize(
    "name, layer, weights, mask, expected",
    [
        ("LayerNormalization", nz.LayerNorm(), (SCALE, BIAS), None, LN),
        ("RMSNormalization", nz.RMSNorm(), SCALE, None, RMS),
        ("GroupNormalization", nz.GroupNorm(2), (SCALE, BIAS), None, GN),
        ("GroupNormalization_cumulative", nz.GroupNorm(2, cumulative=True), (SCALE, BIAS), None, GN_CUM),
        (
            "GroupNormalization_cumulative_gaps",
            nz.GroupNorm(2, cumulative=True),
            (SCALE, BIAS),
            GAP_MASK,
            GN_CUM_GAP,
        ),
    ],
)
def test_matches_sequence_layers(name, layer, weights, mask, expected):
    x = _inputs((2, 5, 4), lengths=[5, 3], mask=mask)
    _, state = layer.init(x)
    y = layer(x, weights=jax.tree.map(jnp.asarray, weights), state=state)
    np.testing.assert_array_equal(y.mask, x.mask)
    np.testing.assert_allclose(_valid(y), expected, atol=2e-6, err_msg=name)


def test_cumulative_group_norm_streams_to_the_golden_numbers_with_gaps():
    """Rows whose invalid steps sit between valid ones: the running sums skip them."""
    x = _inputs((2, 5, 4), mask=GAP_MASK)
    layer = nz.GroupNorm(2, cumulative=True, mode="predict")
    _, state = layer.init(x[:, :1])
    weights = (jnp.asarray(SCALE), jnp.asarray(BIAS))
    step = jax.jit(layer.pure_fn)
    outputs = []
    for start, stop in ((0, 1), (1, 3), (3, 5)):
        y, state = step(x[:, start:stop], weights, state, None)
        outputs.append(y)
    y = seq.Sequence.concatenate_sequences(outputs)
    np.testing.assert_allclose(_valid(y), GN_CUM_GAP, atol=2e-6)
    # The count in the state is the number of valid entries seen: 4 and 3 steps of 2 channels per group.
    np.testing.assert_array_equal(state[1][:, 0, :, 0], [[8.0, 8.0], [6.0, 6.0]])


# --- Constructor and input errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: nz.GroupNorm(0), "GroupNorm: num_groups must be a positive integer, got num_groups=0"),
        (lambda: nz.LayerNorm(epsilon=-1.0), "LayerNorm: epsilon must be >= 0"),
        (lambda: nz.BatchNorm(momentum=1.5), "BatchNorm: momentum must be in"),
        (lambda: nz.BatchNorm(mode="infer"), "BatchNorm: mode must be one of"),
        (lambda: nz.FilterResponseNorm(init_epsilon=0.0), "FilterResponseNorm: init_epsilon must be > 0"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (nz.GroupNorm(3), (2, 4, 4), "4 channels, not divisible by num_groups=3"),
        (nz.RMSNorm(axis=1), (2, 4, 4), "normalizing over the batch or time axis is not allowed"),
        (
            nz.BatchNorm(axis=(0, 1, 3)),
            (2, 4, 4),
            r"out of range for a rank-3 input \(e.g. use axis=\(0, 1\)",
        ),
        (nz.BatchNorm(axis=(0, 2), mode="predict"), (2, 1, 4), "predict mode needs the time axis 1 in axis"),
    ],
)
def test_input_errors_name_the_layer(layer, shape, match):
    with pytest.raises(base.LayerError, match=match) as info:
        layer.init(ShapeDtype(shape))
    assert isinstance(info.value.__cause__, ValueError)
