"""Positional layers: the streaming contract, per-row positions, max_len, and SequenceLayers 0.2 golden numbers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, test_utils
from trax_sl.layers import position as ps
from trax_sl.shapes import ShapeDtype

# --- The streaming contract ---------------------------------------------------------

CONTRACT_CASES = {
    "PositionalEncoding": (lambda mode: ps.PositionalEncoding(max_len=32, mode=mode), (2, 12, 4)),
    "PositionalEncoding_d_feature": (
        lambda mode: ps.PositionalEncoding(max_len=16, d_feature=6, mode=mode),
        (2, 8, 3),
    ),
    "AddTimingSignal": (lambda mode: ps.AddTimingSignal(mode=mode), (2, 12, 5)),
    "AddTimingSignal_scale_all_steps": (
        lambda mode: ps.AddTimingSignal(
            trainable_scale=True, axes=-1, only_advance_position_for_valid_timesteps=False, mode=mode
        ),
        (2, 8, 2, 4),
    ),
    "ApplyRotaryPositionalEncoding": (
        lambda mode: ps.ApplyRotaryPositionalEncoding(mode=mode),
        (2, 12, 2, 4),
    ),
    "ApplyRotaryPositionalEncoding_3d": (
        lambda mode: ps.ApplyRotaryPositionalEncoding(max_wavelength=100.0, mode=mode),
        (2, 8, 6),
    ),
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


def _stream(layer, x, blocks, weights=None):
    """Runs a predict-mode layer over x in blocks of the given sizes; returns (joined output, state)."""
    w, state = layer.init(x[:, : blocks[0]])
    weights = w if weights is None else weights
    step = jax.jit(layer.pure_fn)
    outputs, start = [], 0
    for size in blocks:
        y, state = step(x[:, start : start + size], weights, state, None)
        outputs.append(y)
        start += size
    return seq.Sequence.concatenate_sequences(outputs), state


# --- PositionalEncoding ---------------------------------------------------------------


def _table_row(position, d=4):
    # Trax's sinusoids for d=4: div_term = [1, 10000 ** -0.5].
    return [math.sin(position), math.cos(position), math.sin(position / 100), math.cos(position / 100)]


def test_positional_encoding_adds_trax_sinusoids():
    layer = ps.PositionalEncoding(max_len=8)
    weights, state = layer.init(ShapeDtype((1, 3, 4)))
    assert weights.shape == (8, 4) and state == ()
    y = layer(jnp.zeros((1, 3, 4)))
    np.testing.assert_allclose(y[0], [_table_row(p) for p in range(3)], atol=1e-6)
    # An odd width: sines on even features, cosines on odd ones.
    odd = ps.PositionalEncoding(max_len=4)
    odd.init(ShapeDtype((1, 2, 3)))
    np.testing.assert_allclose(
        odd(jnp.zeros((1, 2, 3)))[0, 1], [math.sin(1), math.cos(1), math.sin(10000 ** (-2 / 3))], atol=1e-6
    )


def test_positional_encoding_predict_mode_keeps_each_rows_position():
    """Row 1 skips the middle block (invalid there): it goes on from its own position, not row 0's."""
    layer = ps.PositionalEncoding(max_len=8, mode="predict")
    x = seq.Sequence(jnp.zeros((2, 5, 4)), jnp.array([[True] * 5, [True, False, False, True, True]]))
    y, state = _stream(layer, x, [1, 2, 2])
    np.testing.assert_array_equal(state, [5, 3])
    np.testing.assert_allclose(y.values[0], [_table_row(p) for p in range(5)], atol=1e-6)
    np.testing.assert_allclose(y.values[1, [0, 3, 4]], [_table_row(p) for p in range(3)], atol=1e-6)
    np.testing.assert_array_equal(y.mask, x.mask)
    # Layer-wise counts valid steps the same way.
    eval_y = layer.with_mode("eval")(x)
    np.testing.assert_allclose(eval_y.values[1, [0, 3, 4]], y.values[1, [0, 3, 4]], atol=1e-6)


def test_positional_encoding_past_max_len():
    """Layer-wise a too-long input raises; a stream past max_len gives invalid zero steps, never a clamped row."""
    with pytest.raises(base.LayerError, match="the input has 5 steps, more than max_len=4"):
        ps.PositionalEncoding(max_len=4, mode="eval").init(ShapeDtype((1, 5, 4)))
    layer = ps.PositionalEncoding(max_len=4, mode="predict")
    # Row 1 has an invalid step, so it reaches position 4 one step later than row 0.
    x = seq.Sequence(jnp.zeros((2, 6, 4)), jnp.array([[True] * 6, [True, False, True, True, True, True]]))
    y, state = _stream(layer, x, [2, 2, 2])
    np.testing.assert_array_equal(state, [6, 5])
    np.testing.assert_array_equal(y.mask, [[True] * 4 + [False] * 2, [True, False] + [True] * 3 + [False]])
    np.testing.assert_allclose(y.values[0, :4], [_table_row(p) for p in range(4)], atol=1e-6)
    np.testing.assert_array_equal(y.values[0, 4:], 0.0)
    np.testing.assert_array_equal(y.values[1, 5], 0.0)
    # Arrays carry no mask: their steps past max_len are zero, and the capacity says where that starts.
    table, state = layer.init(ShapeDtype((1, 3, 4)))
    first, state = layer.pure_fn(jnp.ones((1, 3, 4)), table, state, None)
    second, _ = layer.pure_fn(jnp.ones((1, 3, 4)), table, state, None)
    assert np.all(first != 0) and np.all(second[0, 0] != 0) and np.all(second[0, 1:] == 0)
    assert layer.stream_capacity == 4


def test_positional_encoding_d_feature_projects_the_table():
    layer = ps.PositionalEncoding(max_len=4, d_feature=4)
    (table, ff), _ = layer.init(ShapeDtype((1, 2, 3)))
    assert table.shape == (4, 4) and ff.shape == (4, 3)
    y = layer(jnp.zeros((1, 2, 3)))
    np.testing.assert_allclose(y[0], np.array([_table_row(0), _table_row(1)]) @ np.asarray(ff), atol=1e-6)


def test_positional_encoding_train_mode_dropout_and_random_offset():
    x = jnp.zeros((2, 3, 4))
    rows = np.array([_table_row(p) for p in range(8)], np.float32)
    dropout = ps.PositionalEncoding(max_len=8, dropout=0.5, mode="train")
    weights, state = dropout.init(ShapeDtype(x.shape))
    with pytest.raises(base.LayerError, match="mode='train' with dropout=0.5 needs an rng"):
        dropout.pure_fn(x, weights, state, None)
    y = np.asarray(dropout(x, rng=jax.random.PRNGKey(1)))
    # Each feature is dropped or kept (scaled by 2) for the whole batch and all steps.
    for j in range(4):
        kept = np.allclose(y[:, :, j], 2 * np.broadcast_to(rows[:3, j], (2, 3)), atol=1e-6)
        assert kept or np.all(y[:, :, j] == 0), f"feature {j}: {y[:, :, j]}"
    np.testing.assert_array_equal(
        np.asarray(dropout.with_mode("eval")(x)), np.broadcast_to(rows[:3], (2, 3, 4))
    )
    offset = ps.PositionalEncoding(max_len=8, start_from_zero_prob=0.0, max_offset_to_add=4, mode="train")
    offset.init(ShapeDtype(x.shape))
    starts = set()
    for seed in range(8):
        y = np.asarray(offset(x, rng=jax.random.PRNGKey(seed)))
        start = int(np.argmin([np.abs(y[0, 0] - rows[s]).max() for s in range(8)]))
        np.testing.assert_allclose(y[1], rows[start : start + 3], atol=1e-6)
        starts.add(start)
    assert starts <= {0, 1, 2, 3} and len(starts) > 1


def test_positional_encoding_predict_mode_state():
    layer = ps.PositionalEncoding(max_len=8, mode="predict")
    weights, state = layer.init(ShapeDtype((3, 1, 4)))
    assert state.shape == (3,) and state.dtype == jnp.int32
    assert jax.tree.structure(weights) == jax.tree.structure(
        ps.PositionalEncoding(max_len=8).init(ShapeDtype((3, 1, 4)))[0]
    )


# --- Golden numbers from SequenceLayers 0.2 -----------------------------------------------
# Computed offline with sequence-layers 0.2 (sl.AddTimingSignal, sl.ApplyRotaryPositionalEncoding;
# layer-wise, training=False) on the inputs below. Invalid steps are shown as zeros.

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


TIMING = _golden(
    """
      0.591000   1.683000   1.983000   2.351000   1.083000  -0.224000
     -1.113529  -1.757000  -0.747900   1.163302   2.700950   2.979000
      2.235297   0.069999  -1.249800  -2.378147  -0.751200   0.284000
      0.796120   1.747995   1.974300   0.311007   1.015550  -0.276000
     -2.724802  -1.694011  -0.684600   0.033356   2.734200   2.968000
      1.275000  -0.018000  -1.302000  -0.974000  -0.717000   0.347000
      1.559471   1.762000   1.962100   1.789302   0.948950  -0.327000
     -1.069703  -1.680001  -0.620800   0.332853   2.767800   2.955000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 6),
)

TIMING_ODD = _golden(
    """
      0.591000   1.683000   2.983000   2.351000   0.083000
     -0.314703  -1.915011  -2.183147   0.251200   0.623000
      0.944197   2.058915   0.672356   1.046802  -1.250000
     -2.241416  -1.631288   0.244170   1.647809   1.718000
      2.963358   1.460318  -0.129500  -0.288773  -1.968000
     -1.734000  -0.685000   1.687000   2.735000   1.968000
      2.184297   0.021989  -1.718147  -0.974800  -1.717000
     -1.409802   0.797915   1.098356   2.958802   1.249000
      0.000000   0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 5),
)

TIMING_GAP = _golden(
    """
      0.591000   1.683000   1.983000   2.351000   1.083000  -0.224000
     -1.113529  -1.757000  -0.747900   1.163302   2.700950   2.979000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      1.564297   1.737999   1.974200   0.884853   1.015800  -0.276000
     -1.826880  -1.704005  -0.684700  -0.302993   2.734550   2.968000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      0.718000   1.752000   1.962000   2.249000   0.949000  -0.327000
     -1.137529  -1.690000  -0.620900   1.289302   2.767950   2.955000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      1.689297   1.802999   1.947200   0.779853   0.880800  -0.377000
    """,
    (2, 5, 6),
)

ROPE = _golden(
    """
      0.591000   1.683000   1.983000   1.351000
      0.083000  -1.224000  -1.955000  -1.767000
     -1.835488   0.603179   0.289634   1.985131
      1.768279   0.069617   0.440413  -1.961402
      0.133083  -0.750215  -1.864756   1.703337
     -0.836023   1.326258   1.788295  -1.249727
      2.044972  -1.753827   0.400421   0.634679
     -1.897565   1.967654  -1.017397   0.041039
     -0.448386  -1.946308   2.107663  -0.731417
      1.015530   1.700652  -1.825833   1.318062
     -0.051000  -1.327000  -1.979000  -1.700000
     -0.621000   0.749000   1.768000   1.955000
      1.797918  -0.065156   0.297789  -1.984751
     -1.565136  -0.606800  -0.993918   1.777021
     -0.702032   1.223299   1.819924  -1.352806
      1.333779  -1.679886  -1.575889   0.777560
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 2, 4),
)

ROPE_3D = _golden(
    """
      0.591000   1.683000   1.983000   1.351000   0.083000  -1.224000
     -1.580527  -2.089791  -0.839018  -1.308468   1.283925   1.942162
      1.232231   0.776782  -1.178246   2.022208  -1.570067  -0.828790
     -0.832042   1.361842   2.131999  -1.195547   1.047457  -0.989662
      1.806294  -2.445856  -1.036518   1.040334  -0.186459   1.807728
      1.275000  -0.018000  -1.302000  -1.974000  -1.717000  -0.653000
     -0.663060   1.722399   2.021459   1.279014   0.324723  -1.234536
      0.142491  -2.283065  -0.799552  -2.111193   0.896347   1.889016
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
    """,
    (2, 5, 6),
)

ROPE_GAP = _golden(
    """
      0.591000   1.683000   1.983000   1.351000   0.083000  -1.224000
     -1.580527  -2.089791  -0.839018  -1.308468   1.283925   1.942162
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
     -1.455572   1.554285   2.083784   0.054183   0.732106  -1.087519
      1.851356  -2.429174  -0.951524  -0.957849   0.340729   1.853874
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
      0.718000   1.752000   1.962000   1.249000  -0.051000  -1.327000
     -1.699520  -2.038663  -0.711042  -1.260585   1.363700   1.924081
      0.000000   0.000000   0.000000   0.000000   0.000000   0.000000
     -1.412114   1.669730   2.066262   0.211540   0.636595  -1.190587
    """,
    (2, 5, 6),
)


GOLDEN_CASES = {
    "AddTimingSignal": (lambda mode: ps.AddTimingSignal(mode=mode), (2, 5, 6), None, TIMING),
    "AddTimingSignal_odd": (
        lambda mode: ps.AddTimingSignal(min_timescale=2.0, max_timescale=100.0, mode=mode),
        (2, 5, 5),
        None,
        TIMING_ODD,
    ),
    "AddTimingSignal_gaps": (lambda mode: ps.AddTimingSignal(mode=mode), (2, 5, 6), GAP_MASK, TIMING_GAP),
    "ApplyRotaryPositionalEncoding": (
        lambda mode: ps.ApplyRotaryPositionalEncoding(max_wavelength=10000.0, mode=mode),
        (2, 5, 2, 4),
        None,
        ROPE,
    ),
    "ApplyRotaryPositionalEncoding_3d": (
        lambda mode: ps.ApplyRotaryPositionalEncoding(max_wavelength=100.0, mode=mode),
        (2, 5, 6),
        None,
        ROPE_3D,
    ),
    "ApplyRotaryPositionalEncoding_gaps": (
        lambda mode: ps.ApplyRotaryPositionalEncoding(max_wavelength=100.0, mode=mode),
        (2, 5, 6),
        GAP_MASK,
        ROPE_GAP,
    ),
}


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_matches_sequence_layers(name):
    make, shape, mask, expected = GOLDEN_CASES[name]
    x = _inputs(shape, lengths=[5, 3], mask=mask)
    layer = make("eval")
    layer.init(x)
    y = layer(x)
    np.testing.assert_array_equal(y.mask, x.mask)
    np.testing.assert_allclose(_valid(y), expected, atol=2e-6, err_msg=name)
    # Step-wise, in blocks of 2, 1 and 2: the same numbers, invalid steps between valid ones included.
    y, state = _stream(make("predict"), x, [2, 1, 2])
    np.testing.assert_allclose(_valid(y), expected, atol=2e-6, err_msg=f"{name}, step-wise")
    np.testing.assert_array_equal(state, np.asarray(x.mask).sum(axis=1))


def test_timing_signal_by_hand():
    # channels=4: timescales 1 and 1e4 -> [sin(p), sin(p / 1e4), cos(p), cos(p / 1e4)].
    layer = ps.AddTimingSignal()
    y = layer(jnp.zeros((1, 3, 4)))
    expected = [[math.sin(p), math.sin(p / 1e4), math.cos(p), math.cos(p / 1e4)] for p in range(3)]
    np.testing.assert_allclose(y[0], expected, atol=1e-6)


def test_timing_signal_counting_all_steps():
    x = seq.Sequence(jnp.zeros((1, 3, 2)), jnp.array([[False, True, True]]))
    valid_only = ps.AddTimingSignal()(x).values[0, 1:, 0]
    all_steps = ps.AddTimingSignal(only_advance_position_for_valid_timesteps=False)(x).values[0, 1:, 0]
    np.testing.assert_allclose(valid_only, [math.sin(0), math.sin(1)], atol=1e-6)
    np.testing.assert_allclose(all_steps, [math.sin(1), math.sin(2)], atol=1e-6)


def test_rotary_encoding_by_hand():
    # dim 2: one frequency, angle = position; [x1 cos - x2 sin, x2 cos + x1 sin].
    layer = ps.ApplyRotaryPositionalEncoding()
    y = layer(jnp.array([[[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]]]))
    expected = [[1.0, 0.0], [math.cos(1), math.sin(1)], [-2 * math.sin(2), 2 * math.cos(2)]]
    np.testing.assert_allclose(y[0], expected, atol=1e-6)
    assert layer.init(ShapeDtype((1, 3, 2)))[0] == ()


def test_trainable_scale_multiplies_the_signal():
    layer = ps.AddTimingSignal(trainable_scale=True)
    weights, _ = layer.init(ShapeDtype((1, 2, 2)))
    assert weights.shape == () and float(weights) == 1.0
    y = layer(jnp.zeros((1, 2, 2)), weights=jnp.asarray(3.0))
    np.testing.assert_allclose(y[0, 1], [3 * math.sin(1), 3 * math.cos(1)], atol=1e-6)


# --- Constructor and input errors ------------------------------------------------------------


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ps.PositionalEncoding(max_len=0), "PositionalEncoding: max_len must be an integer >= 1"),
        (lambda: ps.PositionalEncoding(dropout=1.0), r"PositionalEncoding: dropout must be in \[0, 1\)"),
        (lambda: ps.PositionalEncoding(mode="decode"), "PositionalEncoding: mode must be one of"),
        (lambda: ps.AddTimingSignal(min_timescale=0.0), "AddTimingSignal: expected 0 < min_timescale"),
        (lambda: ps.ApplyRotaryPositionalEncoding(0.0), "ApplyRotaryPositionalEncoding: max_wavelength"),
    ],
)
def test_constructor_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "layer, signature, match",
    [
        (ps.ApplyRotaryPositionalEncoding(), ShapeDtype((1, 2, 3)), "axis 2 must have an even size, got 3"),
        (ps.ApplyRotaryPositionalEncoding(axis=1), ShapeDtype((1, 2, 4)), "must name a channel axis"),
        (
            ps.AddTimingSignal(),
            ShapeDtype((1, 2, 4), jnp.int32),
            r"expected floating-point inputs, got i32\[1,2,4\]",
        ),
        (ps.PositionalEncoding(), ShapeDtype((1, 2, 2, 4)), r"expected \[batch, time, d\] inputs"),
    ],
)
def test_input_errors_name_the_layer(layer, signature, match):
    with pytest.raises(base.LayerError, match=match) as info:
        layer.init(signature)
    assert isinstance(info.value.__cause__, ValueError)
