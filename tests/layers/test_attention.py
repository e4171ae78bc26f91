"""Trax's attention layers, streaming: contract, hand-checked values, KV caches, masks, errors."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import sequence as seq
from trax_sl.layers import attention as tla
from trax_sl.layers import base, combinators, core, test_utils
from trax_sl.shapes import ShapeDtype


def _compiled(layer):
    """layer.pure_fn under jit: eager op-by-op dispatch would compile every op."""
    return jax.jit(lambda x, w, s, rng=None: layer.pure_fn(x, w, s, rng))


def _random(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# --- The streaming contract ------------------------------------------------------------


def test_causal_attention_keeps_the_contract():
    report = test_utils.verify_contract(
        lambda mode: tla.CausalAttention(4, n_heads=2, max_inference_length=12, mode=mode),
        ShapeDtype((2, 12, 4)),
    )
    assert (report.block_size, report.input_latency, report.output_latency) == (1, 0, 0)


def test_causal_attention_with_depthwise_convolutions_keeps_the_contract():
    test_utils.verify_contract(
        lambda mode: tla.CausalAttention(4, n_heads=2, max_inference_length=8, use_dconv=True, mode=mode),
        ShapeDtype((2, 8, 4)),
        check_gradients=False,
    )


def test_dot_product_causal_attention_keeps_the_contract():
    signature = tuple(ShapeDtype((3, 8, 2)) for _ in range(3))
    test_utils.verify_contract(
        lambda mode: tla.DotProductCausalAttention(max_inference_length=8, mode=mode),
        signature,
        check_gradients=False,
    )


@pytest.mark.parametrize("cache", [True, False])
def test_attention_qkv_streams_queries_against_a_whole_source(cache):
    signature = (
        ShapeDtype((2, 8, 4)),
        ShapeDtype((2, 5, 3)),
        ShapeDtype((2, 5, 3)),
        ShapeDtype((2, 1, 1, 5), bool),
    )
    # verify_contract makes every rank >= 2 input a Sequence, the mask too; its
    # pass-through copy (one "step" long) is dropped so the output ratio reads right.
    test_utils.verify_contract(
        lambda mode: combinators.Serial(
            tla.AttentionQKV(4, n_heads=2, mode=mode, cache_KV_in_predict=cache),
            combinators.Select([0], n_in=2),
        ),
        signature,
        streamed=(True, False, False, False),
        check_gradients=cache,
    )


def test_shift_right_keeps_the_contract():
    report = test_utils.verify_contract(lambda mode: tla.ShiftRight(2, mode=mode), ShapeDtype((2, 8, 3)))
    assert (report.input_latency, report.output_latency) == (0, 0)
    test_utils.verify_contract(lambda mode: tla.ShiftRight(1, mode=mode), ShapeDtype((2, 8), np.int32))


def test_split_and_merge_heads_keep_the_contract():
    test_utils.verify_contract(
        lambda mode: combinators.Serial(tla.SplitIntoHeads(2), tla.MergeHeads(2)),
        ShapeDtype((2, 4, 6)),
        check_gradients=False,
    )


# --- Exact values on hand-checked cases ------------------------------------------------


def test_dot_product_attention_weights_keys_by_softmax():
    # One query against two keys: logits 0 and ln 3 give weights 1/4 and 3/4.
    q = jnp.ones((1, 1, 1))
    k = jnp.asarray([[[0.0], [np.log(3.0)]]])
    v = jnp.asarray([[[4.0], [8.0]]])
    layer = tla.DotProductAttention(mode="eval")
    y = layer((q, k, v, jnp.ones((1, 1, 2), bool)))
    np.testing.assert_allclose(np.asarray(y), [[[7.0]]], rtol=1e-6)
    # Masking the second key leaves the first alone.
    y = layer((q, k, v, jnp.asarray([[[True, False]]])))
    np.testing.assert_allclose(np.asarray(y), [[[4.0]]], rtol=1e-6)
    # A Sequence key source masks its invalid steps too (garbage there is never read).
    k_seq = seq.Sequence(k, jnp.asarray([[True, False]]))
    v_seq = seq.Sequence(v.at[0, 1].set(jnp.nan), jnp.asarray([[True, False]]))
    y = layer((q, k_seq, v_seq, jnp.ones((1, 2), bool)))
    np.testing.assert_allclose(np.asarray(y), [[[4.0]]], rtol=1e-6)


def test_dot_product_causal_attention_averages_the_past_when_queries_are_zero():
    q = k = jnp.zeros((1, 5, 1))
    v = jnp.arange(1.0, 6.0).reshape((1, 5, 1))
    layer = tla.DotProductCausalAttention(mode="eval")
    np.testing.assert_allclose(np.asarray(layer((q, k, v))[0, :, 0]), [1.0, 1.5, 2.0, 2.5, 3.0], rtol=1e-6)
    # An invalid step in the middle is never attended to; its own output is invalid.
    mask = jnp.asarray([[True, False, True, True, True]])
    v_seq = seq.Sequence(v.at[0, 1].set(jnp.nan), mask)
    y = layer((seq.Sequence(q, mask), seq.Sequence(k, mask), v_seq))
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(mask))
    np.testing.assert_allclose(np.asarray(y.values[0, [0, 2, 3, 4], 0]), [1.0, 2.0, 8 / 3, 13 / 4], rtol=1e-6)


def test_causal_cache_overflow_marks_outputs_invalid_per_row():
    """max_inference_length=3: a row's outputs from its 4th valid step on are invalid.

    Invalid steps take no cache slot.
    """
    v = jnp.tile(jnp.arange(1.0, 7.0).reshape((1, 6, 1)), (2, 1, 1))
    mask = jnp.asarray([[True] * 6, [True, False, False, True, True, True]])
    q = k = seq.Sequence(jnp.zeros((2, 6, 1)), mask)
    layer = tla.DotProductCausalAttention(max_inference_length=3, mode="predict")
    _, state = layer.init((q[:, :1], k[:, :1], seq.Sequence(v, mask)[:, :1]))
    outputs, step = [], _compiled(layer)
    for t in range(6):
        y, state = step((q[:, t : t + 1], k[:, t : t + 1], seq.Sequence(v, mask)[:, t : t + 1]), (), state)
        outputs.append(y)
    y = seq.Sequence.concatenate_sequences(outputs)
    np.testing.assert_array_equal(
        np.asarray(y.mask), [[True, True, True, False, False, False], [True, False, False, True, True, False]]
    )
    np.testing.assert_allclose(np.asarray(y.values[0, :3, 0]), [1.0, 1.5, 2.0], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(y.values[1, [0, 3, 4], 0]), [1.0, 2.5, 10 / 3], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(state.slots), [4, 4])  # Held at max_inference_length + 1.


def test_shift_right_values_and_streaming():
    x = jnp.asarray([[1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(np.asarray(tla.ShiftRight()(x)), [[0, 1, 2, 3, 4]])
    np.testing.assert_array_equal(np.asarray(tla.ShiftRight(2)(x)), [[0, 0, 1, 2, 3]])
    np.testing.assert_array_equal(np.asarray(tla.ShiftRight(0)(x)), np.asarray(x))
    # A Sequence keeps its mask; its invalid steps shift in as zeros.
    xs = seq.Sequence(jnp.asarray([[1, 2, 99, 4]]), jnp.asarray([[True, True, False, True]]))
    y = tla.ShiftRight()(xs)
    np.testing.assert_array_equal(np.asarray(y.values), [[0, 1, 2, 0]])
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(xs.mask))
    # Predict mode: Trax's no-op (the caller feeds the shifted stream), stateless.
    layer = tla.ShiftRight(2, mode="predict")
    _, state = layer.init(x[:, :2])
    assert state == ()
    np.testing.assert_array_equal(np.asarray(layer(x[:, :2])), [[1, 2]])
    np.testing.assert_array_equal(np.asarray(layer(x[:, 2:4])), [[3, 4]])


def test_padding_mask_and_encoder_decoder_mask():
    ids = jnp.asarray([[5, 6, 0, 0], [7, 0, 8, 0]])
    mask = tla.PaddingMask()(ids)
    assert mask.shape == (2, 1, 1, 4) and mask.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(mask[:, 0, 0]), [[1, 1, 0, 0], [1, 0, 1, 0]])
    np.testing.assert_array_equal(np.asarray(tla.PaddingMask(pad=7)(ids)[1, 0, 0]), [0, 1, 1, 1])
    # A Sequence's invalid steps are padding too, whatever id they hold.
    seq_mask = tla.PaddingMask()(seq.Sequence(ids, jnp.asarray([[True, False, True, True]] * 2)))
    np.testing.assert_array_equal(np.asarray(seq_mask[:, 0, 0]), [[1, 0, 0, 0], [1, 0, 1, 0]])
    decoder_input = jnp.zeros((2, 3), jnp.int32)
    cross = tla.EncoderDecoderMask()((decoder_input, mask))
    assert cross.shape == (2, 1, 3, 4)
    np.testing.assert_array_equal(
        np.asarray(cross[:, 0]), np.broadcast_to(np.asarray(mask), (2, 1, 3, 4))[:, 0]
    )
    with pytest.raises(base.LayerError, match="must be a \\[batch, time\\] array of ids"):
        tla.PaddingMask()(jnp.zeros((2, 3, 1), jnp.int32))


def test_split_and_merge_heads_layout_is_trax():
    x = jnp.arange(2 * 3 * 4, dtype=jnp.float32).reshape((2, 3, 4))
    split = tla.SplitIntoHeads(2)(x)
    assert split.shape == (4, 3, 2)
    # Row b * n_heads + h holds features [h * d_head, (h + 1) * d_head) of row b.
    np.testing.assert_array_equal(np.asarray(split[1]), np.asarray(x[0, :, 2:4]))
    np.testing.assert_array_equal(np.asarray(split[2]), np.asarray(x[1, :, 0:2]))
    np.testing.assert_array_equal(np.asarray(tla.MergeHeads(2)(split)), np.asarray(x))
    unmerged = tla.SplitIntoHeads(2, merged_batch_and_head=False)(x)
    assert unmerged.shape == (2, 2, 3, 2)
    np.testing.assert_array_equal(
        np.asarray(tla.MergeHeads(2, merged_batch_and_head=False)(unmerged)), np.asarray(x)
    )
    xs = seq.Sequence.from_lengths(x, jnp.asarray([3, 1]))
    split_seq = tla.SplitIntoHeads(2)(xs)
    np.testing.assert_array_equal(np.asarray(split_seq.lengths()), [3, 3, 1, 1])
    np.testing.assert_array_equal(np.asarray(tla.MergeHeads(2)(split_seq).lengths()), [3, 1])
    with pytest.raises(base.LayerError, match="use merged_batch_and_head=True"):
        tla.SplitIntoHeads(2, merged_batch_and_head=False)(xs)


def test_attention_ignores_masked_keys():
    """Attention((x, PaddingMask)) at the valid steps equals Attention on the unpadded prefix."""
    x = _random((1, 5, 4))
    ids = jnp.asarray([[1, 1, 1, 0, 0]])
    layer = tla.Attention(4, n_heads=2, mode="eval")
    weights, _ = layer.init((x, tla.PaddingMask()(ids)))
    y, mask = layer((x.at[0, 3:].set(100.0), tla.PaddingMask()(ids)), weights=weights)
    y_prefix, _ = layer((x[:, :3], jnp.ones((1, 1, 1, 3), bool)), weights=weights)
    np.testing.assert_allclose(np.asarray(y[:, :3]), np.asarray(y_prefix), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(tla.PaddingMask()(ids)))


def test_attention_does_not_stream():
    layer = tla.Attention(4, mode="eval")
    assert not layer.supports_step
    x, mask = jnp.zeros((1, 1, 4)), jnp.ones((1, 1, 1, 1), bool)
    weights, state = layer.init((x, mask))
    with pytest.raises(base.LayerError, match="does not stream"):
        layer.with_mode("predict").pure_fn((x, mask), weights, state, None)


def test_attention_qkv_caches_the_source_in_predict_mode():
    q, k, v = _random((1, 2, 4), 1), _random((1, 3, 4), 2), _random((1, 3, 4), 3)
    mask = jnp.ones((1, 1, 1, 3), bool)
    outputs = {}
    for cache in (True, False):
        layer = tla.AttentionQKV(4, n_heads=2, cache_KV_in_predict=cache, mode="predict")
        weights, state = layer.init((q[:, :1], k, v, mask), rng=jax.random.PRNGKey(0))
        step = _compiled(layer)
        y0, state = step((q[:, :1], k, v, mask), weights, state)
        # A different source at the second step: a cached layer keeps the first one's keys and values.
        y1, state = step((q[:, 1:], 2.0 * k, 2.0 * v, mask), weights, state)
        outputs[cache] = (y0, y1)
    eval_layer = tla.AttentionQKV(4, n_heads=2, mode="eval")
    (expected, _), _ = _compiled(eval_layer)((q, k, v, mask), weights, eval_layer.init((q, k, v, mask))[1])
    np.testing.assert_allclose(np.asarray(outputs[True][0][0]), np.asarray(expected[:, :1]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(outputs[True][1][0]), np.asarray(expected[:, 1:]), atol=1e-6)
    assert not np.allclose(np.asarray(outputs[False][1][0]), np.asarray(expected[:, 1:]), atol=1e-3)


def test_configurable_attention_builds_from_parts():
    layer = tla.ConfigurableAttention(
        core.Dense(4),
        core.Dense(4),
        core.Dense(4),
        core.Dense(4),
        tla.DotProductCausalAttention(mode="eval"),
        n_heads=2,
    )
    x = _random((2, 5, 4), 4)
    weights, _ = layer.init(x)
    y = layer(x)
    assert y.shape == (2, 5, 4)
    # Causal: changing the last step leaves the earlier outputs alone.
    y2 = layer(x.at[:, -1].set(9.0), weights=weights)
    np.testing.assert_allclose(np.asarray(y2[:, :-1]), np.asarray(y[:, :-1]), atol=1e-6)


def test_weights_are_the_same_in_every_mode_and_with_or_without_the_kv_cache():
    for make in (
        lambda m: tla.AttentionQKV(4, 2, cache_KV_in_predict=m == "predict", mode=m),
        lambda m: tla.CausalAttention(4, 2, mode=m),
        lambda m: tla.AttentionQKV(4, 2, cache_KV_in_predict=True, mode=m),
    ):
        signature = (
            ShapeDtype((2, 3, 4))
            if make("eval").n_in == 1
            else (
                ShapeDtype((2, 3, 4)),
                ShapeDtype((2, 5, 4)),
                ShapeDtype((2, 5, 4)),
                ShapeDtype((2, 1, 1, 5), bool),
            )
        )
        trees = [
            jax.tree.structure(make(m).weights_and_state_signature(signature)[0])
            for m in ("train", "eval", "predict")
        ]
        assert trees[0] == trees[1] == trees[2]


# --- Errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: tla.CausalAttention(5, n_heads=2), "d_feature must be a positive multiple of n_heads=2"),
        (lambda: tla.AttentionQKV(4, dropout=1.5), "dropout must be in \\[0, 1\\)"),
        (lambda: tla.AttentionQKV(4, q_sparsity=4), "sparse processors are not available"),
        (lambda: tla.DotProductCausalAttention(max_inference_length=0), "max_inference_length must be"),
        (lambda: tla.ShiftRight(-1), "n_positions must be an integer >= 0"),
        (lambda: tla.SplitIntoHeads(0), "n_heads must be an integer >= 1"),
        (lambda: tla.PureAttention(n_heads=0), "n_heads must be an integer >= 1"),
    ],
)
def test_constructor_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_bad_mask_shape_reads_clearly():
    layer = tla.PureAttention(n_heads=1, mode="eval")
    x = jnp.zeros((2, 3, 4))
    with pytest.raises(base.LayerError, match="expected an attention mask"):
        layer((x, x, x, jnp.ones((2, 3, 3), bool)))


def test_attention_layers_are_gin_configurable():
    try:
        gin.parse_config("trax_sl.layers.CausalAttention.n_heads = 2")
        assert gin.query_parameter("trax_sl.layers.CausalAttention.n_heads") == 2
    finally:
        gin.clear_config()
