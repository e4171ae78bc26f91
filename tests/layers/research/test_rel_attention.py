"""research.rel_attention: Trax's shift, masks and positions by hand; the attention against numpy; no streaming."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers.research import rel_attention as ra
from trax_sl.shapes import ShapeDtype

RNG = np.random.default_rng(0)


def lm_layer(d=4, n_heads=2, pooling=1, mode="eval"):
    context_bias, location_bias = ra.get_rel_att_inputs(d, n_heads)
    return ra.RelativeAttentionLMLayer(d, context_bias, location_bias, pooling, n_heads=n_heads, mode=mode)


def test_fast_shift_matrix():
    # Trax: rel_attention_test.test_fast_shift_matrix.
    x = np.array([[[[-3.0, -2.0, -1.0, 0.0]] * 4]], np.float32)
    y = ra._fast_matrix_shift(x)
    assert y.dtype == np.float32
    assert tl.to_list(y) == [
        [[[0.0, 0.0, -3.0, -2.0], [-1.0, 0.0, 0.0, -3.0], [-2.0, -1.0, 0.0, 0.0], [-3.0, -2.0, -1.0, 0.0]]]
    ]


def test_fast_shift_matrix_reads_distances_and_the_next_row():
    # Derived by hand from the flattening: entry (i, j) is row i at index L-1+j-i for j <= i (distance j - i),
    # 0 for j = i + 1, and row i + 1 at index j - i - 2 beyond (what unmasked queries see).
    length = 5
    x = RNG.standard_normal((1, 1, length, length)).astype(np.float32)
    expected = np.zeros((length, length), np.float32)
    for i in range(length):
        for j in range(length):
            if j <= i:
                expected[i, j] = x[0, 0, i, length - 1 + j - i]
            elif j > i + 1:
                expected[i, j] = x[0, 0, i + 1, j - i - 2]
    np.testing.assert_array_equal(ra._fast_matrix_shift(x)[0, 0], expected)


@pytest.mark.parametrize(
    ("queries_len", "keys_len"),
    [(2, 4), (2, 6), (4, 2), (6, 2)],
)
def test_fast_shift_matrix_funnel_lines_up_distances(queries_len, keys_len):
    # Scores that hold their own index: each causally visible (i, j) must read the index of key j's
    # distance from query i (keys j, queries i*f when downsampling; keys j*f, queries i when upsampling).
    factor, upsampling = ra.calc_funnel_ratio(keys_len, queries_len)
    n_positions = 2 * (queries_len if upsampling else keys_len) - 1
    x = jnp.broadcast_to(jnp.arange(n_positions, dtype=jnp.float32), (1, 1, queries_len, n_positions))
    y = np.asarray(ra._fast_matrix_shift(x, factor, upsampling))[0, 0]
    visible = np.asarray(ra.CreateAttentionMaskLayer()(_qkv(queries_len, keys_len))[3])[0, 0]
    i, j = np.nonzero(visible)
    index = queries_len - 1 + j * factor - i if upsampling else keys_len - 1 + j - i * factor
    np.testing.assert_array_equal(y[i, j], index)


def _qkv(queries_len, keys_len, d=4, batch=1):
    q = RNG.standard_normal((batch, queries_len, d)).astype(np.float32)
    k = RNG.standard_normal((batch, keys_len, d)).astype(np.float32)
    return q, k, k


def test_calc_funnel_ratio():
    assert ra.calc_funnel_ratio(4, 4) == (1, False)
    assert ra.calc_funnel_ratio(8, 2) == (4, False)
    assert ra.calc_funnel_ratio(2, 6) == (3, True)
    with pytest.raises(ValueError, match="multiple of queries_len"):
        ra.calc_funnel_ratio(5, 2)


def test_attention_mask_layer_masks():
    masks = {
        (3, 3): [[1, 0, 0], [1, 1, 0], [1, 1, 1]],
        (2, 4): [[1, 1, 0, 0], [1, 1, 1, 1]],  # Downsampling: query i sees keys < 2 (i + 1).
        (4, 2): [[1, 0], [1, 0], [1, 1], [1, 1]],  # Upsampling: query i sees keys <= i // 2.
    }
    layer = ra.CreateAttentionMaskLayer()
    for (queries_len, keys_len), expected in masks.items():
        q, k, v = _qkv(queries_len, keys_len, batch=2)
        outputs = layer((q, k, v))
        assert len(outputs) == 4
        np.testing.assert_array_equal(outputs[0], q)
        np.testing.assert_array_equal(
            outputs[3], np.broadcast_to(np.array(expected, bool), (2, 1) + (queries_len, keys_len))
        )


def test_positional_embeddings_distances():
    # d_feature = 2: the embedding of distance p is [sin p, cos p].
    cases = {
        (3, 3, 2): [-4.0, -2.0, 0.0],  # (-(K-1) .. 0) * pooling.
        (2, 4, 2): [-6.0, -4.0, -2.0, 0.0, 2.0, 4.0, 6.0],  # (-(K-1) .. K-1) * pooling.
        (4, 2, 2): [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0],  # -(Q-1) .. Q-1, unscaled.
    }
    for (queries_len, keys_len, pooling), distances in cases.items():
        q, k, _ = _qkv(queries_len, keys_len)
        emb = ra.PositionalEmbeddings(2, False, pooling)((q, k))
        p = np.array(distances)
        np.testing.assert_allclose(emb, np.stack([np.sin(p), np.cos(p)], axis=1), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="separate_cls=True is not supported"):
        ra.PositionalEmbeddings(2, True, 1)


def _dense(x, w):
    return x @ w[0] + w[1]


def numpy_relative_attention(q_in, k_in, v_in, visible, w, d, n_heads, pooling):
    """Trax's RelativeAttentionLayer for equal lengths, written out: weights as its layer tree nests them."""
    inner = w[1]  # AssertFunction: ((), Serial's, ()).
    _, (w_pos, w_q, w_k, w_v), context_bias, location_bias, _, w_out = inner
    length, dh = q_in.shape[1], d // n_heads
    p = (np.arange(length) - (length - 1)) * pooling
    angles = np.outer(p, 1 / 10000 ** (np.arange(0, d, 2) / d))
    pos = _dense(np.concatenate([np.sin(angles), np.cos(angles)], 1), w_pos).reshape(length, n_heads, dh)
    heads = lambda x: x.reshape(x.shape[0], length, n_heads, dh).transpose(0, 2, 1, 3)
    q, k, v = heads(_dense(q_in, w_q)), heads(_dense(k_in, w_k)), heads(_dense(v_in, w_v))
    content = np.einsum("bnid,bnjd->bnij", q + context_bias, k)
    location = np.einsum("bnid,jnd->bnij", q + location_bias, pos)
    shifted = np.zeros_like(content)
    for i in range(length):
        for j in range(length):
            if j <= i:
                shifted[:, :, i, j] = location[:, :, i, length - 1 + j - i]
            elif j > i + 1:
                shifted[:, :, i, j] = location[:, :, i + 1, j - i - 2]
    dots = np.where(visible, (content + shifted) / np.sqrt(dh), -1e9)
    probs = np.exp(dots - dots.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = (probs @ v).transpose(0, 2, 1, 3).reshape(q_in.shape[0], length, d)
    return _dense(out, w_out)


@pytest.mark.parametrize("causal", [True, False])
def test_relative_attention_layer_against_numpy(causal):
    d, n_heads, pooling, length = 4, 2, 2, 4
    q, k, v = (RNG.standard_normal((2, length, d)).astype(np.float32) for _ in range(3))
    visible = np.tril(np.ones((length, length), bool)) if causal else RNG.random((length, length)) < 0.7
    visible[:, 0] = True
    mask = np.broadcast_to(visible, (2, 1, length, length))
    context_bias, location_bias = ra.get_rel_att_inputs(d, n_heads)
    layer = ra.RelativeAttentionLayer(
        d, context_bias, location_bias, pooling, False, n_heads=n_heads, mode="eval"
    )
    weights, state = layer.init(tuple(ShapeDtype(x.shape, x.dtype) for x in (q, k, v, mask)))
    # The global biases are 1e-6 at init; larger ones make them count.
    weights = jax.tree.map(lambda w: w * 1e5 if w.shape == (1, n_heads, 1, d // n_heads) else w, weights)
    (y, mask_out), _ = layer.pure_fn((q, k, v, mask), weights, state, None)
    np.testing.assert_array_equal(mask_out, mask)
    expected = numpy_relative_attention(
        q, k, v, visible, jax.tree.map(np.asarray, weights), d, n_heads, pooling
    )
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


def test_lm_layer_shapes_and_weights_tree():
    layer = lm_layer(d=4, n_heads=2)
    q, k, v = _qkv(4, 8, d=6, batch=2)  # Queries of another depth: Dense maps each to d_feature.
    weights, _ = layer.init(tuple(ShapeDtype(x.shape) for x in (q, k, v)))
    assert layer.output_signature(tuple(ShapeDtype(x.shape) for x in (q, k, v))).shape == (2, 4, 4)
    assert layer.output_signature(tuple(ShapeDtype(x.shape) for x in (k, q, q))).shape == (
        2,
        8,
        4,
    )  # Upsampling.
    # AssertFunction > Serial(CreateAttentionMaskLayer, RelativeAttentionLayer, Select).
    _, (mask_weights, attention_weights, select_weights), _ = weights
    assert jax.tree.leaves(mask_weights) == [] and select_weights == ()
    _, (pos_w, _, _, _), context_bias, location_bias, _, (w_out, b_out) = attention_weights[1]
    assert context_bias.shape == location_bias.shape == (1, 2, 1, 2)
    assert pos_w[0].shape == (4, 4) and w_out.shape == (4, 4) and b_out.shape == (4,)


def test_wrapper_is_causal_self_attention():
    context_bias, location_bias = ra.get_rel_att_inputs(4, 2)
    layer = ra.RelativeAttentionWrapper(
        4,
        2,
        0.0,
        mode="eval",
        context_bias_layer=context_bias,
        location_bias_layer=location_bias,
        total_pooling=1,
    )
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    layer.init(ShapeDtype(x.shape))
    y = layer(x)
    assert y.shape == (2, 6, 4) and y.dtype == np.float32
    changed = x.copy()
    changed[:, 4:] += 1.0  # The future does not reach the first four outputs.
    np.testing.assert_allclose(layer(changed)[:, :4], y[:, :4], rtol=1e-5, atol=1e-6)
    assert not np.allclose(layer(changed)[:, 4:], y[:, 4:])
    with pytest.raises(
        ValueError, match="context_bias_layer, location_bias_layer, total_pooling must be given"
    ):
        ra.RelativeAttentionWrapper(4)


def test_sequence_inputs_mask_keys_and_keep_the_queries_mask():
    layer = lm_layer(d=4, n_heads=1)
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    layer.init(tuple(ShapeDtype(x.shape) for _ in range(3)))
    lengths = np.array([6, 4])
    padded = x.copy()
    padded[1, 4:] = np.nan  # Garbage past the length never reaches a valid output.
    s = seq.Sequence(jnp.asarray(padded), jnp.arange(6)[None, :] < lengths[:, None])
    y = layer((s, s, s))
    assert isinstance(y, seq.Sequence)
    np.testing.assert_array_equal(y.mask, s.mask)
    short = x[1:, :4]
    np.testing.assert_allclose(y.values[1, :4], layer((short, short, short))[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.values[0], layer((x[:1], x[:1], x[:1]))[0], rtol=1e-5, atol=1e-6)


def test_separate_cls_and_dropout_in_dot_product_attention():
    q, k, v = (jnp.asarray(RNG.standard_normal((1, 1, 3, 2)), jnp.float32) for _ in range(3))
    zero = jnp.zeros((1, 1, 1, 2))
    pos_a, pos_b = (jnp.asarray(RNG.standard_normal((3, 1, 2)), jnp.float32) for _ in range(2))
    args = {"separate_cls": True, "dropout": 0.0, "mode": "eval", "rng": None}
    _, dots_a = ra.DotProductAttention(q, k, v, pos_a, zero, zero, None, **args)
    _, dots_b = ra.DotProductAttention(q, k, v, pos_b, zero, zero, None, **args)
    # The first query has no positional scores at all: its weights do not depend on pos_emb.
    np.testing.assert_allclose(dots_a[0, 0, 0], dots_b[0, 0, 0], rtol=1e-6)
    assert not np.allclose(dots_a[0, 0, 1:], dots_b[0, 0, 1:])
    with pytest.raises(ValueError, match="lower than 1"):
        ra.DotProductAttention(
            q, k, v, pos_a, zero, zero, None, separate_cls=False, dropout=1.0, mode="train", rng=None
        )
    with pytest.raises(ValueError, match="needs an rng"):
        ra.DotProductAttention(
            q, k, v, pos_a, zero, zero, None, separate_cls=False, dropout=0.5, mode="train", rng=None
        )


def test_module_dot_product_attention_is_not_tl_dot_product_attention():
    assert ra.DotProductAttention is not tl.DotProductAttention
    assert "DotProductAttention" not in ra.__all__
    assert all(hasattr(ra, name) for name in ra.__all__)


def test_shift_right_cls():
    layer = ra.ShiftRightCls(7)
    np.testing.assert_array_equal(layer(np.array([[1, 2, 3], [4, 5, 6]], np.int32)), [[7, 1, 2], [7, 4, 5]])
    assert not layer.supports_step


@pytest.mark.parametrize(
    "build",
    [
        lambda mode: lm_layer(mode=mode),
        lambda mode: ra.RelativeAttention(False, n_heads=1, mode=mode),
        lambda mode: ra.ShiftRightCls(1),
    ],
    ids=["RelativeAttentionLMLayer", "RelativeAttention", "ShiftRightCls"],
)
def test_predict_mode_is_refused(build):
    layer = build("predict").with_mode("predict")
    assert not layer.supports_step
    x = np.ones((1, 2, 4), np.float32)
    mask = np.ones((1, 1, 2, 2), bool)
    inputs = {
        1: x,
        3: (x, x, x),
        7: (np.zeros((1, 1, 1, 4)), np.zeros((1, 1, 1, 4)), np.ones((2, 4)), x, x, x, mask),
    }
    inputs = inputs[layer.n_in]
    with pytest.raises(tl.LayerError, match="does not stream"):
        weights, state = layer.init(jax.tree.map(lambda a: ShapeDtype(a.shape, a.dtype), inputs))
        layer.pure_fn(inputs, weights, state, None)
