"""DotProductSelfAttention and LocalDotProductSelfAttention: contract, SL 0.2 golden numbers, caches."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, delay, position, streaming, test_utils
from trax_sl.layers.self_attention import DotProductSelfAttention, LocalDotProductSelfAttention
from trax_sl.shapes import ShapeDtype

SIGNATURE = ShapeDtype((2, 12, 3))


def _compiled(layer):
    """layer.pure_fn under jit: eager op-by-op dispatch would compile every op."""
    return jax.jit(lambda x, w, s, rng=None: layer.pure_fn(x, w, s, rng))


# --- The streaming contract ------------------------------------------------------------


# Gradients are checked where the step path differs (the window with its query
# delay buffer, the global cache's writes); each costs a few seconds of compiling.
@pytest.mark.parametrize(
    "kwargs, latency, gradients",
    [
        ({"max_past_horizon": 3}, 0, False),
        ({"max_past_horizon": 3, "max_future_horizon": 2}, 2, True),
        ({"max_past_horizon": 0, "max_future_horizon": 2}, 2, False),
        ({"max_past_horizon": -1, "max_future_horizon": 1, "cache_size": 12}, 1, True),
        ({"max_past_horizon": 3, "max_future_horizon": 1, "num_kv_heads": 1, "use_bias": True}, 1, False),
    ],
)
def test_dot_product_self_attention_keeps_the_contract(kwargs, latency, gradients):
    report = test_utils.verify_contract(
        lambda mode: DotProductSelfAttention(num_heads=2, units_per_head=2, mode=mode, **kwargs),
        SIGNATURE,
        check_gradients=gradients,
    )
    assert (report.block_size, report.input_latency, report.output_latency) == (1, latency, latency)


def test_lookahead_attention_of_the_notebook_has_input_latency_5():
    def layer_fn(mode):
        return DotProductSelfAttention(
            num_heads=1, units_per_head=1, max_past_horizon=5, max_future_horizon=5, mode=mode
        )

    assert layer_fn("eval").input_latency == 5
    report = test_utils.verify_contract(layer_fn, ShapeDtype((2, 12, 2)), check_gradients=False)
    assert (report.input_latency, report.output_latency) == (5, 5)


def test_upstream_latency_keeps_the_contract():
    """Lookahead makes a stream's first steps invalid: they take no slot of an exactly sized cache."""

    def layer_fn(mode):
        return combinators.Serial(
            delay.Lookahead(2, mode=mode),
            DotProductSelfAttention(
                2, 2, max_past_horizon=-1, max_future_horizon=1, cache_size=10, mode=mode
            ),
        )

    report = test_utils.verify_contract(layer_fn, SIGNATURE, check_gradients=False)
    assert (report.input_latency, report.output_latency) == (1, 3)


def test_local_dot_product_self_attention_keeps_the_contract():
    report = test_utils.verify_contract(
        lambda mode: LocalDotProductSelfAttention(
            2, 2, block_size=3, max_past_horizon=2, max_future_horizon=1, mode=mode
        ),
        SIGNATURE,
    )
    assert (report.block_size, report.input_latency, report.output_latency) == (1, 1, 1)


def test_rotary_query_and_key_networks_keep_the_contract():
    def layer_fn(mode):
        return DotProductSelfAttention(
            2,
            2,
            max_past_horizon=3,
            max_future_horizon=1,
            query_network=position.ApplyRotaryPositionalEncoding(mode=mode),
            key_network=position.ApplyRotaryPositionalEncoding(mode=mode),
            mode=mode,
        )

    test_utils.verify_contract(layer_fn, SIGNATURE, check_gradients=False)


def test_query_network_changes_the_result_and_runs_on_queries_only():
    x = seq.Sequence.from_values(
        jnp.asarray(np.random.default_rng(0).standard_normal((1, 5, 3)), jnp.float32)
    )
    plain = DotProductSelfAttention(1, 2, max_past_horizon=4, mode="eval")
    rope = DotProductSelfAttention(
        1,
        2,
        max_past_horizon=4,
        mode="eval",
        query_network=position.ApplyRotaryPositionalEncoding(mode="eval"),
    )
    weights, state = plain.init(x)
    y_plain = plain(x, weights=weights).values
    y_rope = _compiled(rope)(x, weights, state)[0].values
    # Position 0 is not rotated, so the first step is unchanged; the others are not.
    np.testing.assert_allclose(y_rope[:, 0], y_plain[:, 0], atol=1e-6)
    assert not np.allclose(y_rope[:, 1:], y_plain[:, 1:], atol=1e-3)


# --- SequenceLayers 0.2 golden numbers ------------------------------------------------
#
# Computed with sequence_layers.jax 0.2 (layer-wise, training=False) on the
# inputs and projection weights below (SL's CombinedQueryKeyValueProjection
# kernel = stack([w_q, w_k, w_v], axis=1); SeparateQueryKeyValueProjection for
# GQA). Rows are the valid steps, the columns the flattened [num_heads, units].


def _golden_inputs():
    x = np.random.default_rng(7).standard_normal((2, 6, 3)).astype(np.float32)
    return seq.Sequence.from_lengths(jnp.asarray(x), jnp.asarray([6, 4]))


def _golden_projection(num_heads, num_kv_heads, units=2, d=3):
    rng = np.random.default_rng(11)
    shapes = [(d, num_heads, units), (d, num_kv_heads, units), (d, num_kv_heads, units)]
    return tuple(jnp.asarray(0.5 * rng.standard_normal(s), jnp.float32) for s in shapes)


SL_GLOBAL = [
    [
        [0.335360, -0.019762, -0.132843, 0.121506],
        [0.388291, -0.021728, -0.116208, 0.096958],
        [0.361874, -0.017533, -0.134105, 0.124345],
        [0.206602, -0.000515, -0.124165, 0.121762],
        [0.316023, -0.024052, -0.133561, 0.120236],
        [0.450870, -0.027995, -0.141601, 0.120898],
    ],
    [
        [1.900726, 0.070690, -0.810079, 0.450831],
        [1.424307, 0.014297, -0.548498, 0.594466],
        [2.392338, 0.041800, -0.667767, 0.535487],
        [1.308221, 0.092207, -0.551254, 0.592972],
    ],
]
SL_CAUSAL = [
    [
        [-0.122191, -0.047799, 0.035426, 0.005565],
        [0.835547, 0.072154, -0.145156, 0.345208],
        [0.308440, 0.019712, 0.029180, 0.209283],
        [0.039699, 0.100695, 0.149826, 0.214391],
        [0.277028, 0.052387, 0.028226, 0.183174],
        [0.450870, -0.027995, -0.141601, 0.120898],
    ],
    [
        [3.472545, 0.395697, -0.794494, 1.560858],
        [2.257857, 0.258640, -0.609116, 0.916890],
        [2.444769, 0.036271, -0.849241, 0.585835],
        [1.308221, 0.092207, -0.551254, 0.592972],
    ],
]
SL_PAST2_FUTURE1 = [
    [
        [0.769136, 0.063836, -0.157159, 0.367784],
        [0.356954, 0.025472, 0.077733, 0.159353],
        [0.253527, 0.100561, 0.146236, 0.221972],
        [0.226119, 0.095271, 0.032548, 0.227220],
        [0.060741, -0.073213, -0.122006, -0.003076],
        [0.442468, -0.118098, -0.312091, 0.035210],
    ],
    [
        [2.717583, 0.310513, -0.637796, 1.016518],
        [1.731023, -0.061589, -0.766847, 0.684040],
        [2.392338, 0.041800, -0.667767, 0.535487],
        [0.819090, 0.023618, -0.475027, 0.289655],
    ],
]
SL_GQA_4_2_PAST3 = [
    [
        [0.142951, 0.152505, 0.142951, 0.152505, 0.401685, -0.209712, 0.401685, -0.209712],
        [0.098280, 0.068193, 0.106181, 0.083106, 0.582349, 0.272144, 0.569037, 0.236638],
        [0.167039, 0.124214, 0.075525, -0.001985, 0.775509, -0.227751, 0.732282, -0.057148],
        [0.086448, 0.007381, 0.085224, 0.002762, 0.572820, -0.169029, 0.573809, -0.123332],
        [0.035775, -0.036835, 0.091249, 0.034054, 0.322737, 0.100735, 0.361840, -0.002451],
        [0.058853, 0.026491, 0.104192, 0.129473, -0.006801, 0.110076, 0.142252, -0.036376],
    ],
    [
        [-0.132664, -0.379138, -0.132664, -0.379138, 1.085053, 1.485166, 1.085053, 1.485166],
        [-0.279061, -0.387631, -0.343334, -0.391360, 0.131070, 1.217815, -0.113235, 1.149350],
        [0.164407, 0.249793, 0.211326, 0.246370, 0.869741, 1.209621, 0.913912, 0.934488],
        [0.072466, 0.053390, 0.035635, 0.018692, 0.547348, 0.652526, 0.570331, 0.636815],
    ],
]


@pytest.mark.parametrize(
    "layer, expected",
    [
        (DotProductSelfAttention(2, 2, max_past_horizon=-1, max_future_horizon=-1, mode="eval"), SL_GLOBAL),
        (DotProductSelfAttention(2, 2, max_past_horizon=-1, mode="eval"), SL_CAUSAL),
        (
            DotProductSelfAttention(2, 2, max_past_horizon=2, max_future_horizon=1, mode="eval"),
            SL_PAST2_FUTURE1,
        ),
        # The local layer computes the same function block by block (SL agrees).
        (
            LocalDotProductSelfAttention(
                2, 2, block_size=2, max_past_horizon=2, max_future_horizon=1, mode="eval"
            ),
            SL_PAST2_FUTURE1,
        ),
        (DotProductSelfAttention(4, 2, max_past_horizon=3, num_kv_heads=2, mode="eval"), SL_GQA_4_2_PAST3),
    ],
    ids=["global", "causal", "past2_future1", "local", "gqa"],
)
def test_layer_wise_matches_sequence_layers(layer, expected):
    x = _golden_inputs()
    weights, _ = layer.init(x)
    num_heads = layer._num_heads
    weights = (_golden_projection(num_heads, layer._num_kv_heads),) + weights[1:]
    y = layer(x, weights=weights)
    assert y.shape == (2, 6, num_heads, 2)
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(x.mask))
    for row, rows in enumerate(expected):
        got = np.asarray(y.values[row, : len(rows)]).reshape((len(rows), -1))
        np.testing.assert_allclose(got, np.asarray(rows), atol=2e-6)


# --- Rotary query/key networks (the seed notebook's Transformer configuration) -----------------
#
# sequence_layers.jax 0.2, DotProductSelfAttention(num_heads=4, units_per_head=2,
# max_past_horizon=4, max_future_horizon=0 or 2, num_kv_heads=2, use_bias=False,
# SeparateQueryKeyValueProjection, query_network=key_network=
# ApplyRotaryPositionalEncoding(max_wavelength=10000)) on the golden inputs and
# projection; SL's step-wise outputs equal these to 6e-8.
SL_ROPE_FUTURE0 = [
    [
        [0.142951, 0.152505, 0.142951, 0.152505, 0.401685, -0.209712, 0.401685, -0.209712],
        [0.097852, 0.067386, 0.105714, 0.082224, 0.584262, 0.277245, 0.569244, 0.237190],
        [0.101471, 0.029206, 0.087435, 0.016667, 0.769943, -0.132143, 0.735087, -0.110847],
        [0.047371, -0.043830, 0.102061, 0.024393, 0.578929, -0.142086, 0.573453, -0.162133],
        [0.092496, 0.042094, 0.044943, -0.018874, 0.346033, -0.015418, 0.374433, 0.006715],
        [0.029005, -0.050041, 0.014096, 0.007820, 0.172741, 0.149497, 0.209654, 0.145508],
    ],
    [
        [-0.132664, -0.379138, -0.132664, -0.379138, 1.085053, 1.485165, 1.085053, 1.485165],
        [-0.351349, -0.391825, -0.324795, -0.390284, -0.166109, 1.134532, 0.024636, 1.187988],
        [0.056369, 0.012314, -0.031754, -0.164451, 0.613710, 1.143772, 0.786720, 0.558605],
        [0.058309, 0.036973, -0.019407, -0.111669, 0.543952, 0.623549, 0.554220, 0.629507],
    ],
]
SL_ROPE_FUTURE2 = [
    [
        [0.211335, 0.181503, 0.196983, 0.160695, 0.761096, -0.217846, 0.759546, -0.172002],
        [0.108443, 0.032018, 0.112952, 0.037161, 0.612289, -0.115957, 0.551024, -0.091920],
        [0.044644, -0.030379, 0.019082, -0.051384, 0.401364, 0.005107, 0.361883, 0.016381],
        [0.031906, 0.003799, 0.063488, 0.077434, 0.226312, 0.095145, 0.223598, 0.080249],
        [0.094715, 0.094738, 0.052461, 0.030351, 0.213518, 0.083485, 0.238889, 0.100428],
        [0.029005, -0.050041, 0.014096, 0.007820, 0.172741, 0.149497, 0.209654, 0.145508],
    ],
    [
        [0.320711, 0.459481, 0.382637, 0.542212, 0.947865, 1.382732, 0.686725, 1.048597],
        [0.092666, 0.108144, -0.020217, -0.066114, 0.567111, 0.513112, 0.591187, 0.572587],
        [-0.053022, -0.140004, -0.041734, -0.174993, 0.499791, 0.995906, 0.564785, 0.480507],
        [0.058309, 0.036973, -0.019407, -0.111669, 0.543952, 0.623549, 0.554220, 0.629507],
    ],
]


def _rope_attention(future, mode):
    return DotProductSelfAttention(
        num_heads=4,
        units_per_head=2,
        max_past_horizon=4,
        max_future_horizon=future,
        num_kv_heads=2,
        use_bias=False,
        query_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000),
        key_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000),
        mode=mode,
    )


@pytest.mark.parametrize("future, expected", [(0, SL_ROPE_FUTURE0), (2, SL_ROPE_FUTURE2)])
def test_rotary_networks_layer_wise_and_step_wise_match_sequence_layers(future, expected):
    """The query/key networks run in the attention's mode: in predict mode RoPE counts positions
    across blocks (they were left in 'train' mode, restarting at 0 every block)."""
    x = _golden_inputs()
    layer = _rope_attention(future, "eval")
    weights, _ = layer.init(x)
    weights = (_golden_projection(4, 2),) + weights[1:]
    y = layer(x, weights=weights)
    predict = _rope_attention(future, "predict")
    assert all(network.mode == "predict" for network in predict.sublayers[1:])
    _, state = predict.init(x[:, :1])
    stream = x.pad_time(0, future, valid=False)
    outputs, step = [], _compiled(predict)
    for t in range(stream.shape[1]):
        y_t, state = step(stream[:, t : t + 1], weights, state)
        outputs.append(y_t)
    y_step = seq.Sequence.concatenate_sequences(outputs)[:, future:]
    for got in (y, y_step):
        np.testing.assert_array_equal(np.asarray(got.mask), np.asarray(x.mask))
        for row, rows in enumerate(expected):
            values = np.asarray(got.values[row, : len(rows)]).reshape((len(rows), -1))
            np.testing.assert_allclose(values, np.asarray(rows), atol=2e-6)


@pytest.mark.parametrize("future", [0, 2])
def test_rotary_networks_keep_the_contract(future):
    """The issue's repro: the notebook's configuration through verify_contract."""

    def make(mode):
        return DotProductSelfAttention(
            num_heads=4,
            units_per_head=4,
            max_past_horizon=4,
            max_future_horizon=future,
            num_kv_heads=2,
            use_bias=False,
            query_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000),
            key_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000),
            mode=mode,
        )

    test_utils.verify_contract(make, seq.Sequence(jnp.zeros((2, 12, 8)), jnp.ones((2, 12), bool)))


def test_a_network_shared_by_queries_and_keys_stays_shared():
    rope = position.ApplyRotaryPositionalEncoding()
    layer = DotProductSelfAttention(
        2, 2, max_past_horizon=2, query_network=rope, key_network=rope, mode="predict"
    )
    assert layer.sublayers[1] is layer.sublayers[2] and layer.sublayers[1].mode == "predict"


def test_step_wise_with_cache_matches_sequence_layers_causal_numbers():
    """SL cannot step max_past_horizon=-1; our cached stream gives SL's layer-wise numbers."""
    x = _golden_inputs()
    layer = DotProductSelfAttention(2, 2, max_past_horizon=-1, cache_size=6, mode="predict")
    weights, state = layer.init(x[:, :1])
    weights = (_golden_projection(2, 2),) + weights[1:]
    outputs, step = [], _compiled(layer)
    for t in range(6):
        y, state = step(x[:, t : t + 1], weights, state)
        outputs.append(y)
    y = seq.Sequence.concatenate_sequences(outputs)
    for row, rows in enumerate(SL_CAUSAL):
        got = np.asarray(y.values[row, : len(rows)]).reshape((len(rows), -1))
        np.testing.assert_allclose(got, np.asarray(rows), atol=2e-6)


# --- Exact values on hand-checked cases ------------------------------------------------


def _averaging_weights(layer, x):
    """Zero query/key projections (uniform attention) and value = the input's first channel."""
    weights, _ = layer.init(x)
    d = x.shape[-1]
    heads, units = layer._num_heads, layer._units
    wq = jnp.zeros((d, heads, units))
    wk = jnp.zeros((d, layer._num_kv_heads, units))
    wv = jnp.zeros((d, layer._num_kv_heads, units)).at[0].set(1.0)
    return ((wq, wk, wv),) + weights[1:]


def test_uniform_attention_averages_the_window():
    x = seq.Sequence.from_lengths(jnp.arange(1.0, 7.0).reshape((1, 6, 1)), jnp.asarray([5]))
    layer = DotProductSelfAttention(1, 1, max_past_horizon=2, max_future_horizon=1, mode="eval")
    y = layer(x, weights=_averaging_weights(layer, x))
    # Step t averages the valid steps t-2 .. t+1; step 5 (value 6) is invalid, so never seen.
    expected = [
        np.mean([1, 2]),
        np.mean([1, 2, 3]),
        np.mean([1, 2, 3, 4]),
        np.mean([2, 3, 4, 5]),
        np.mean([3, 4, 5]),
    ]
    np.testing.assert_allclose(np.asarray(y.values[0, :5, 0, 0]), expected, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(y.mask[0]), [True] * 5 + [False])


def test_plain_array_in_plain_array_out():
    x = jnp.arange(1.0, 5.0).reshape((1, 4, 1))
    layer = DotProductSelfAttention(1, 1, max_past_horizon=1, mode="eval")
    y = layer(x, weights=_averaging_weights(layer, x))
    assert isinstance(y, jax.Array)
    np.testing.assert_allclose(np.asarray(y[0, :, 0, 0]), [1.0, 1.5, 2.5, 3.5], rtol=1e-6)


@pytest.mark.parametrize("block_size", [1, 2, 4, 7])
def test_local_equals_global_with_the_same_horizons(block_size):
    x = seq.Sequence.from_lengths(
        jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 3)), jnp.float32), jnp.asarray([9, 5])
    )
    full = DotProductSelfAttention(2, 2, max_past_horizon=3, max_future_horizon=2, mode="eval")
    local = LocalDotProductSelfAttention(
        2, 2, block_size, max_past_horizon=3, max_future_horizon=2, mode="eval"
    )
    weights, state = full.init(x)
    y_full = _compiled(full)(x, weights, state)[0].mask_invalid().values
    y_local = _compiled(local)(x, weights, state)[0].mask_invalid().values
    np.testing.assert_allclose(np.asarray(y_local), np.asarray(y_full), atol=1e-6)


# --- Caches ---------------------------------------------------------------------------


def _stream(layer, x, weights, state, steps: int):
    """Runs `steps` one-step blocks of x (cycled) through a compiled loop; returns the last state."""

    def body(state, t):
        block = seq.Sequence(
            jax.lax.dynamic_slice_in_dim(x.values, t % x.shape[1], 1, axis=1),
            jax.lax.dynamic_slice_in_dim(x.mask, t % x.shape[1], 1, axis=1),
        )
        _, state = layer.pure_fn(block, weights, state, None)
        return state, None

    return jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps))[0])(state)


@pytest.mark.parametrize(
    "kwargs", [{"max_past_horizon": 3, "max_future_horizon": 2}, {"max_past_horizon": -1, "cache_size": 8}]
)
def test_kv_cache_size_does_not_grow_with_the_stream(kwargs):
    x = seq.Sequence.from_values(
        jnp.asarray(np.random.default_rng(2).standard_normal((2, 4, 3)), jnp.float32)
    )
    layer = DotProductSelfAttention(2, 2, mode="predict", **kwargs)
    weights, state0 = layer.init(x[:, :1])
    after_10 = _stream(layer, x, weights, state0, 10)
    after_1000 = _stream(layer, x, weights, state0, 1000)
    sizes = [[leaf.size for leaf in jax.tree.leaves(s)] for s in (state0, after_10, after_1000)]
    assert sizes[0] == sizes[1] == sizes[2]
    if kwargs["max_past_horizon"] == -1:
        # The per-row count stops at cache_size + 1: it can never overflow either.
        np.testing.assert_array_equal(np.asarray(after_1000[0].slots), [9, 9])


def test_global_cache_overflow_marks_outputs_invalid():
    """cache_size=3: a row's outputs are valid while it has <= 3 valid steps up to t + F (F=1)."""
    values = jnp.arange(1.0, 8.0).reshape((1, 7, 1))
    values = jnp.concatenate([values, values], axis=0)
    # Row 1 has an invalid step at t=1, which takes no cache slot.
    mask = jnp.asarray([[True] * 7, [True, False, True, True, True, True, True]])
    x = seq.Sequence(values, mask)
    layer = DotProductSelfAttention(
        1, 1, max_past_horizon=-1, max_future_horizon=1, cache_size=3, mode="predict"
    )
    weights = _averaging_weights(layer, x)
    _, state = layer.init(x[:, :1])
    stream = x.pad_time(0, 1, valid=False)
    outputs, step = [], _compiled(layer)
    for t in range(stream.shape[1]):
        y, state = step(stream[:, t : t + 1], weights, state)
        outputs.append(y)
    y = seq.Sequence.concatenate_sequences(outputs)[:, 1:]  # Drop output_latency = 1.
    # Row 0: query t needs steps <= t + 1, i.e. t + 2 valid steps: valid for t <= 1.
    # Row 1: valid steps are 0, 2, 3, ...: t + 1 <= 3 holds the 3 slots for t <= 2 (t=1 itself invalid).
    np.testing.assert_array_equal(
        np.asarray(y.mask), [[True, True] + [False] * 5, [True, False, True] + [False] * 4]
    )
    # Where valid, the values are the layer-wise ones (uniform over the visible valid steps).
    np.testing.assert_allclose(np.asarray(y.values[0, :2, 0, 0]), [1.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y.values[1, [0, 2], 0, 0]), [1.0, (1 + 3 + 4) / 3], rtol=1e-6)
    layer_wise = layer.with_mode("eval")(x, weights=weights)
    np.testing.assert_allclose(np.asarray(layer_wise.values[1, 2, 0, 0]), (1 + 3 + 4) / 3, rtol=1e-6)


def test_rows_at_different_lengths_stream_independently():
    x = seq.Sequence.from_lengths(
        jnp.asarray(np.random.default_rng(3).standard_normal((3, 8, 3)), jnp.float32), jnp.asarray([8, 3, 6])
    )
    layer = DotProductSelfAttention(2, 2, max_past_horizon=-1, cache_size=8, mode="eval")
    weights, _ = layer.init(x)
    expected = layer(x, weights=weights)
    predict, state = streaming.start_stream(layer, x[:, :2], weights)
    outputs, step = [], _compiled(predict)
    for t in range(0, 8, 2):
        y, state = step(x[:, t : t + 2], weights, state)
        outputs.append(y)
    y = seq.Sequence.concatenate_sequences(outputs)
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(expected.mask))
    np.testing.assert_allclose(
        np.asarray(y.mask_invalid().values), np.asarray(expected.mask_invalid().values), atol=1e-5
    )
    np.testing.assert_array_equal(np.asarray(state[0].slots), [8, 3, 6])


# --- Properties and errors -------------------------------------------------------------


def test_streaming_properties():
    layer = DotProductSelfAttention(2, 2, max_past_horizon=4, max_future_horizon=3)
    assert (layer.block_size, layer.input_latency, layer.output_latency, layer.receptive_field) == (
        1,
        3,
        3,
        (4, 3),
    )
    assert DotProductSelfAttention(2, 2, -1).receptive_field == (float("inf"), 0)
    assert not DotProductSelfAttention(2, 2, -1).supports_step
    assert DotProductSelfAttention(2, 2, -1, cache_size=16).supports_step
    assert not DotProductSelfAttention(2, 2, 3, -1).supports_step
    weights_train = DotProductSelfAttention(2, 2, 3, 1).weights_and_state_signature(SIGNATURE)[0]
    weights_predict = DotProductSelfAttention(2, 2, 3, 1, mode="predict").weights_and_state_signature(
        ShapeDtype((2, 1, 3))
    )[0]
    assert jax.tree.structure(weights_train) == jax.tree.structure(weights_predict)


def test_global_attention_without_cache_size_says_how_to_stream():
    layer = DotProductSelfAttention(2, 2, max_past_horizon=-1, mode="predict")
    with pytest.raises(base.LayerError, match="pass cache_size="):
        layer.init(ShapeDtype((2, 1, 3)))


def test_unlimited_future_does_not_stream():
    layer = DotProductSelfAttention(2, 2, max_past_horizon=2, max_future_horizon=-1, mode="eval")
    weights, _ = layer.init(SIGNATURE)
    with pytest.raises(base.LayerError, match="does not stream"):
        layer.with_mode("predict").pure_fn(jnp.zeros((2, 1, 3)), weights, ((), ((), (), (), ())), None)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: DotProductSelfAttention(0, 2, 1), "num_heads must be an integer >= 1, got num_heads=0"),
        (
            lambda: DotProductSelfAttention(4, 2, 1, num_kv_heads=3),
            "num_heads must be a multiple of num_kv_heads",
        ),
        (lambda: DotProductSelfAttention(2, 2, 0, 0), "both 0"),
        (lambda: DotProductSelfAttention(2, 2, -2), "max_past_horizon must be an integer >= -1"),
        (lambda: DotProductSelfAttention(2, 2, 3, cache_size=8), "cache_size is for max_past_horizon=-1"),
        (lambda: DotProductSelfAttention(2, 2, -1, cache_size=0), "cache_size must be an integer >= 1"),
        (lambda: DotProductSelfAttention(2, 2, 1, attention_probabilities_dropout_rate=1.0), "in \\[0, 1\\)"),
        (lambda: DotProductSelfAttention(2, 2, 1, value_network=3), "value_network must be a Layer"),
        (lambda: LocalDotProductSelfAttention(2, 2, 0, 2), "block_size must be an integer >= 1"),
        (lambda: LocalDotProductSelfAttention(2, 2, 2, -1), "max_past_horizon must be an integer >= 1"),
        (lambda: LocalDotProductSelfAttention(2, 2, 2, 2, -1), "max_future_horizon must be an integer >= 0"),
    ],
)
def test_constructor_errors(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_network_with_latency_is_refused():
    with pytest.raises(
        ValueError, match="query_network must have block_size 1, output_ratio 1 and no latency"
    ):
        DotProductSelfAttention(2, 2, 2, query_network=delay.Lookahead(1))


def test_dropout_in_train_mode_changes_outputs_and_needs_rng():
    x = jnp.asarray(np.random.default_rng(4).standard_normal((1, 6, 3)), jnp.float32)
    layer = DotProductSelfAttention(2, 2, -1, attention_probabilities_dropout_rate=0.5, mode="train")
    weights, state = layer.init(x)
    train, evaluate = _compiled(layer), _compiled(layer.with_mode("eval"))
    y1, _ = train(x, weights, state, jax.random.PRNGKey(1))
    y2, _ = train(x, weights, state, jax.random.PRNGKey(2))
    assert not np.allclose(np.asarray(y1), np.asarray(y2))
    y_eval, _ = evaluate(x, weights, state)
    y_eval2, _ = evaluate(x, weights, state, jax.random.PRNGKey(2))
    np.testing.assert_allclose(np.asarray(y_eval), np.asarray(y_eval2))
    with pytest.raises(base.LayerError, match="needs an rng"):
        layer.pure_fn(x, weights, state, None)


def test_self_attention_layers_are_gin_configurable():
    try:
        gin.parse_config("trax_sl.layers.LocalDotProductSelfAttention.block_size = 4")
        assert gin.query_parameter("trax_sl.layers.LocalDotProductSelfAttention.block_size") == 4
    finally:
        gin.clear_config()
