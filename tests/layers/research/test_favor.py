"""research.sparsity's FAVOR layers: Trax's FavorTest, the formula against numpy, masks, streaming."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers.research import sparsity
from trax_sl.shapes import ShapeDtype

RNG = np.random.default_rng(0)


def favor_reference(q_prime, k_prime, v, visible):
    """Numpy FAVOR, one row: y_t = q'_t (sum_s k'_s v_s^T) / (q'_t sum_s k'_s) over the visible keys s.

    `visible [query_time, key_time]` (all keys, or s <= t for causal FAVOR).
    """
    weights = (q_prime @ k_prime.T) * visible
    return (weights @ v) / weights.sum(-1, keepdims=True)


def relu_features(x, stabilizer=0.001):
    return np.maximum(x, 0) + stabilizer


def call_and_grad(layer_partial, layer, x, w, embedding_shape, output_shape):
    """Trax's FavorTest body: output shapes, the loss, and the embedding's gradient."""
    x_sig, w_sig = shapes.signature(x), shapes.signature(w)
    layer_partial.init(x_sig)
    assert layer_partial(x).shape == output_shape
    layer.init((x_sig, x_sig, w_sig))
    assert layer((x, x, w)).shape == ()
    state = layer.state
    rng = jax.random.PRNGKey(0)
    loss = jax.jit(jax.grad(lambda weights, inp: layer.pure_fn(inp, weights, state, rng=rng)[0]))
    g = loss(layer.weights, (x, x, w))  # Trax differentiates eagerly: the same, op by op (slower).
    assert g[0][1][0].shape == embedding_shape
    assert np.all(np.isfinite(np.asarray(g[0][1][0])))
    assert np.any(np.asarray(g[0][1][0]) != 0)


# --- Trax's FavorTest ------------------------------------------------------------------


def test_call_and_grad():
    # Mirrors FavorTest.test_call_and_grad.
    def branch():
        return tl.Branch(tl.Embedding(3, 4), tl.PaddingMask())

    layer_partial = tl.Serial(branch(), sparsity.Favor(d_feature=4, n_heads=2), tl.Select([0], n_in=2))
    layer = tl.Serial(
        branch(),
        sparsity.Favor(d_feature=4, n_heads=2),
        tl.Select([0], n_in=2),
        tl.WeightedCategoryCrossEntropy(),
    )
    x = np.ones((1, 2), np.int32)
    call_and_grad(layer_partial, layer, x, np.ones_like(x).astype(np.float32), (3, 4), (1, 2, 4))


def test_call_and_grad_approximate_softmax():
    # Mirrors FavorTest.test_call_and_grad_approximate_softmax.
    def favor():
        return sparsity.Favor(d_feature=12, n_heads=3, n_random_features=128, use_approximate_softmax=True)

    def branch():
        return tl.Branch(tl.Embedding(11, 12), tl.PaddingMask())

    layer_partial = tl.Serial(branch(), favor(), tl.Select([0], n_in=2))
    layer = tl.Serial(branch(), favor(), tl.Select([0], n_in=2), tl.WeightedCategoryCrossEntropy())
    x = np.ones((3, 5), np.int32)
    call_and_grad(layer_partial, layer, x, np.ones_like(x).astype(np.float32), (11, 12), (3, 5, 12))


def test_causal_call_and_grad():
    # Mirrors FavorTest.test_causal_call_and_grad.
    layer = tl.Serial(tl.Dense(4), sparsity.CausalFavor(d_feature=4, n_heads=2), tl.L2Loss())
    x = RNG.uniform(size=(1, 2, 4)).astype(np.float32)
    w = np.ones_like(x)
    x_sig, w_sig = shapes.signature(x), shapes.signature(w)
    layer.init((x_sig, x_sig, w_sig))
    assert layer((x, x, w)).shape == ()
    state = layer.state
    rng = jax.random.PRNGKey(0)
    g = jax.jit(jax.grad(lambda weights, inp: layer.pure_fn(inp, weights, state, rng=rng)[0]))(
        layer.weights, (x, x, w)
    )
    assert g[0][0].shape == (4, 4)
    assert np.any(np.asarray(g[0][0]) != 0)


# --- The formula, by hand and against numpy ---------------------------------------------------


def test_favor_attention_one_key_returns_its_value():
    # One valid key: every query's weights are all on it, so y = v_0 (the masked key adds nothing).
    q = jnp.array([[[1.0], [-2.0]]])
    k = jnp.array([[[3.0], [5.0]]])
    v = jnp.array([[[7.0], [-9.0]]])
    mask = jnp.array([[[[True, False]]]])
    y, mask_out = sparsity.FavorAttention(d_feature=1)((q, k, v, mask))
    np.testing.assert_allclose(y, [[[7.0], [7.0]]], rtol=1e-6)
    np.testing.assert_array_equal(mask_out, mask)
    # Both keys: y = (q'k'_0 v_0 + q'k'_1 v_1) / (q'k'_0 + q'k'_1), q' cancels with one feature.
    y, _ = sparsity.FavorAttention(d_feature=1)((q, k, v, jnp.ones((1, 1, 1, 2), bool)))
    want = (3.001 * 7 - 5.001 * 9) / (3.001 + 5.001)
    np.testing.assert_allclose(y, [[[want], [want]]], rtol=1e-6)


def test_favor_attention_matches_numpy_with_heads_and_mask():
    batch, heads, time, d_head = 2, 2, 5, 3
    q, k, v = (RNG.standard_normal((batch * heads, time, d_head)).astype(np.float32) for _ in range(3))
    lengths = np.array([5, 3])
    mask = (np.arange(time) < lengths[:, None]).reshape((batch, 1, 1, time))
    y, _ = sparsity.FavorAttention(d_feature=heads * d_head, n_heads=heads)((q, k, v, mask))
    for row in range(batch * heads):
        visible = np.broadcast_to(mask[row // heads, 0], (time, time))  # Row b * heads + h is batch b.
        want = favor_reference(relu_features(q[row]), relu_features(k[row]), v[row], visible)
        np.testing.assert_allclose(y[row], want, rtol=1e-5, atol=1e-6)


def test_approximate_softmax_features_match_numpy():
    layer = sparsity.FavorAttention(
        d_feature=4, n_heads=2, n_random_features=6, use_approximate_softmax=True, normalize_data=True
    )
    w = layer._projection_matrix
    assert w.shape == (6, 2)
    q, k, v = (RNG.standard_normal((2, 4, 2)).astype(np.float32) for _ in range(3))
    mask = np.array([[True, True, True, False]])  # [batch, time]; both heads' rows.
    y, _ = layer((q, k, v, mask))

    def features(x, is_query, valid):
        x = x * 2**-0.25  # normalize_data: d_head^(-1/4) on each of q and k.
        dash = x @ w.T
        half_norm = 0.5 * np.sum(x**2, -1, keepdims=True)
        peak = dash.max(-1, keepdims=True) if is_query else dash[valid].max()
        return (np.exp(dash - half_norm - peak) + 1e-4) / np.sqrt(6)

    valid = mask[0]
    for row in range(2):
        want = favor_reference(
            features(q[row], True, valid),
            features(k[row], False, valid),
            v[row],
            np.broadcast_to(valid, (4, 4)),
        )
        np.testing.assert_allclose(y[row], want, rtol=1e-5, atol=1e-6)


def test_projection_rows_are_orthogonal_in_blocks():
    w = sparsity.FavorAttention.get_2d_array(
        jax.random.PRNGKey(1), n_rows=7, n_columns=3, scale_by_norm=False
    )
    assert w.shape == (7, 3)
    # Rows of sqrt(3) norm, orthogonal within each block of 3 (the last block cut to one row).
    np.testing.assert_allclose(
        w[:6].reshape((2, 3, 3)) @ w[:6].reshape((2, 3, 3)).transpose((0, 2, 1)),
        np.broadcast_to(3 * np.eye(3), (2, 3, 3)),
        atol=1e-5,
    )
    np.testing.assert_allclose(np.linalg.norm(w[6]), np.sqrt(3), rtol=1e-5)
    scaled = sparsity.FavorAttention.get_2d_array(jax.random.PRNGKey(1), n_rows=7, n_columns=3)
    assert not np.allclose(np.linalg.norm(scaled, axis=1), np.sqrt(3))  # Norms of Gaussian vectors.


def test_causal_favor_attention_matches_numpy_on_sequences():
    rows, time, d = 2, 5, 3
    q, k, v = (RNG.standard_normal((rows, time, d)).astype(np.float32) for _ in range(3))
    mask = np.array([[True, True, False, True, True], [True, True, True, False, False]])
    garbage = np.where(mask[..., None], 0, np.nan).astype(np.float32)
    x = tuple(seq.Sequence(a + garbage, mask) for a in (q, k, v))
    y = sparsity.CausalFavorAttention()(x)
    np.testing.assert_array_equal(y.mask, mask)
    for row in range(rows):
        visible = np.tril(np.ones((time, time), bool)) & mask[row]
        want = favor_reference(relu_features(q[row]), relu_features(k[row]), v[row], visible)
        np.testing.assert_allclose(y.values[row][mask[row]], want[mask[row]], rtol=1e-5, atol=1e-6)


def test_causal_favor_gradient_matches_quadratic_form():
    # The chunked, rematerialized running sums give the gradient of the plain formula.
    q, k, v = (jnp.asarray(RNG.standard_normal((2, 7, 3)), jnp.float32) for _ in range(3))
    cotangent = jnp.asarray(RNG.standard_normal((2, 7, 3)), jnp.float32)
    layer = sparsity.CausalFavorAttention(mode="eval")

    def quadratic(q, k, v):
        weights = jnp.einsum("btm,bsm->bts", jax.nn.relu(q) + 1e-3, jax.nn.relu(k) + 1e-3)
        weights = weights * jnp.tril(jnp.ones((7, 7)))[None]
        return weights @ v / jnp.sum(weights, -1, keepdims=True)

    def loss(f):
        return lambda *x: jnp.sum(f(*x) * cotangent)

    got = jax.jit(jax.grad(loss(lambda *x: layer.pure_fn(x, (), (), None)[0]), argnums=(0, 1, 2)))(q, k, v)
    want = jax.jit(jax.grad(loss(quadratic), argnums=(0, 1, 2)))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# --- Masks and Sequences ---------------------------------------------------------------------


@pytest.mark.parametrize("approximate", [False, True])
def test_favor_padding_does_not_reach_valid_outputs(approximate):
    layer = tl.Serial(
        sparsity.Favor(4, n_heads=2, n_random_features=8, use_approximate_softmax=approximate),
        tl.Select([0], n_in=2),
    )
    x = RNG.standard_normal((2, 6, 4)).astype(np.float32)
    mask = np.array([[True] * 6, [True] * 4 + [False] * 2])
    trax_mask = np.ones((2, 1, 1, 6), bool)
    layer.init((ShapeDtype((2, 6, 4)), ShapeDtype((2, 1, 1, 6), np.bool_)))
    y = layer((seq.Sequence(x, mask), trax_mask))
    np.testing.assert_array_equal(y.mask, mask)
    # Other padding (huge, NaN) and more of it: the valid outputs stay, bit for bit where possible.
    x2 = np.where(mask[..., None], x, np.float32(np.nan))
    y2 = layer((seq.Sequence(x2, mask), trax_mask))
    np.testing.assert_allclose(y2.values[mask], y.values[mask], rtol=1e-6)
    # The second row alone, cut to its 4 valid steps, is the same row.
    short = layer((seq.Sequence(x[1:, :4], mask[1:, :4]), trax_mask[1:, :, :, :4]))
    np.testing.assert_allclose(short.values[0], y.values[1, :4], rtol=1e-5, atol=1e-6)
    # A Trax mask hiding the same keys of an array input gives the same valid outputs.
    y3 = layer((x, mask.reshape((2, 1, 1, 6))))
    np.testing.assert_allclose(y3[mask], y.values[mask], rtol=1e-5, atol=1e-6)


def test_favor_attention_row_without_keys_gives_zeros():
    q = k = v = jnp.ones((2, 3, 2))
    y, _ = sparsity.FavorAttention(d_feature=2)((q, k, v, jnp.array([[True, True, False], [False] * 3])))
    np.testing.assert_allclose(y[1], 0)
    np.testing.assert_allclose(y[0], 1, rtol=1e-6)


def test_favor_attention_rejects_per_query_masks():
    q = k = v = jnp.ones((1, 3, 2))
    with pytest.raises(tl.LayerError, match="FAVOR masks keys"):
        sparsity.FavorAttention(d_feature=2)((q, k, v, jnp.ones((1, 1, 3, 3), bool)))


# --- Constructors and streaming ---------------------------------------------------------------


def test_constructor_checks_and_layer_tree():
    with pytest.raises(ValueError, match="Favor: d_feature must be a multiple of n_heads"):
        sparsity.Favor(5, n_heads=2)
    with pytest.raises(ValueError, match="CausalFavor: d_feature must be a multiple of n_heads"):
        sparsity.CausalFavor(5, n_heads=2)
    with pytest.raises(ValueError, match="mode must be one of"):
        sparsity.CausalFavorAttention(mode="decode")
    # Trax's tree: Branch of [Dense, SplitIntoHeads] x 3, the attention, MergeHeads, Dense.
    layer = sparsity.Favor(4, n_heads=2)
    names = [sub.name for sub in layer.sublayers]
    assert names[1:] == ["FavorAttention", "MergeHeads", "Dense_4"]
    assert (layer.n_in, layer.n_out) == (2, 2)
    assert (sparsity.CausalFavor(4).n_in, sparsity.CausalFavor(4).n_out) == (1, 1)


def test_favor_refuses_predict_mode():
    layer = sparsity.Favor(4, n_heads=2, mode="predict")
    assert not layer.supports_step
    layer.init((ShapeDtype((1, 1, 4)), ShapeDtype((1, 1, 1, 1), np.bool_)))
    with pytest.raises(tl.LayerError, match="FavorAttention does not stream .*CausalFavor streams"):
        layer((np.ones((1, 1, 4), np.float32), np.ones((1, 1, 1, 1), bool)))


def test_causal_favor_streams():
    # tests/layers/registry.py runs verify_contract on it (step-wise == layer-wise, padding, gradients).
    layer = sparsity.CausalFavor(4, n_heads=2, mode="predict")
    assert layer.supports_step and layer.stream_capacity is None
