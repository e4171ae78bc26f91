"""research.efficient_attention: the array functions, the attention layers against numpy, LSH invariants."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import attention, base, test_utils
from trax_sl.layers.research import efficient_attention as ea
from trax_sl.shapes import ShapeDtype

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 8, 4)).astype(np.float32)


def softmax_attention(q, k, v, visible):
    """Numpy reference: softmax(q k^T / sqrt(d) masked by `visible`) v, one head."""
    dots = q @ k.T / np.sqrt(q.shape[-1])
    dots = np.where(visible, dots, -np.inf)
    p = np.exp(dots - dots.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def shared_qk_attention(q, v, visible):
    """LSH's attention without hashing: keys are the length-normalized queries; self only as a last resort."""
    k = q / np.sqrt(np.mean(q**2, -1, keepdims=True) + 1e-6)
    dots = q @ k.T / np.sqrt(q.shape[-1]) - 1e5 * np.eye(len(q))
    dots = np.where(visible, dots, -np.inf)
    p = np.exp(dots - dots.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ v


def causal(length):
    return np.tril(np.ones((length, length), bool))


# --- Array functions --------------------------------------------------------------------


def test_length_normalized_and_look_adjacent():
    # rms([3, 4]) = sqrt(12.5).
    np.testing.assert_allclose(
        ea.length_normalized(jnp.array([[3.0, 4.0]])), [[3 / 12.5**0.5, 4 / 12.5**0.5]], rtol=1e-6
    )
    chunks = jnp.arange(6).reshape((3, 2))  # Chunks [0 1] [2 3] [4 5].
    np.testing.assert_array_equal(ea.look_adjacent(chunks, 0, 0), chunks)
    # Each chunk sees the previous one first (wrapping around), then itself, then the next.
    np.testing.assert_array_equal(
        ea.look_adjacent(chunks, 1, 1), [[4, 5, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5], [2, 3, 4, 5, 0, 1]]
    )


def test_mask_self_attention():
    dots = jnp.zeros((3, 3))
    info = jnp.array([0, 1, 2])
    q, kv = info.reshape((3, 1)), jnp.array([0, 1, -2]).reshape((1, 3))
    y = ea.mask_self_attention(dots, q, kv, causal=True, exclude_self=True, masked=True)
    expected = [[-1e5, -1e9, -1e9], [0, -1e5, -1e9], [0, 0, -1e9]]
    np.testing.assert_allclose(y, expected)
    np.testing.assert_allclose(ea.mask_self_attention(dots, q, kv, causal=False, exclude_self=False), 0.0)


def test_attend_full_and_chunked_against_numpy():
    q, k, v = (RNG.standard_normal((6, 3)).astype(np.float32) for _ in range(3))
    out, lse = ea.attend(q, k, v)
    np.testing.assert_allclose(out, softmax_attention(q, k, v, np.ones((6, 6), bool)), atol=1e-6)
    np.testing.assert_allclose(lse, np.log(np.exp(q @ k.T / np.sqrt(3)).sum(-1)), rtol=1e-5)

    # Chunks of 2 seeing themselves and the previous chunk, causal: a window of the current and last chunk.
    def mask_fn(d, qi, ki):
        return ea.mask_self_attention(d, qi, ki, causal=True, exclude_self=False)

    out, _ = ea.attend(q, k, v, q_chunk_len=2, kv_chunk_len=2, n_chunks_before=1, mask_fn=mask_fn)
    t = np.arange(6)
    window = causal(6) & (t.reshape((1, -1)) // 2 >= t.reshape((-1, 1)) // 2 - 1)
    np.testing.assert_allclose(out, softmax_attention(q, k, v, window), atol=1e-6)
    with pytest.raises(ValueError, match="need chunking"):
        ea.attend(q, k, v, n_chunks_before=1)


def test_hash_vecs_is_argmax_over_rotations_and_their_negations():
    vecs = RNG.standard_normal((5, 3)).astype(np.float32)
    key = jax.random.PRNGKey(4)
    buckets, n_buckets = ea.hash_vecs(vecs, 4, 2, key)
    rotations = np.asarray(jax.random.normal(key, (3, 2, 2)))
    rotated = np.einsum("tf,fhb->htb", vecs, rotations)
    assert n_buckets == 4
    np.testing.assert_array_equal(buckets, np.argmax(np.concatenate([rotated, -rotated], -1), -1))
    # Hierarchical hashing: bucket = b1 + 2 * b2, the factors hashed on separate rotation columns.
    buckets, n_buckets = ea.hash_vecs(vecs, [2, 4], 1, key)
    rotated = np.einsum("tf,fhb->htb", vecs, np.asarray(jax.random.normal(key, (3, 1, 3))))
    b1 = np.argmax(np.concatenate([rotated[..., :1], -rotated[..., :1]], -1), -1)
    b2 = np.argmax(np.concatenate([rotated[..., 1:], -rotated[..., 1:]], -1), -1)
    assert n_buckets == 8
    np.testing.assert_array_equal(buckets, b1 + 2 * b2)
    with pytest.raises(ValueError, match="must be even"):
        ea.hash_vecs(vecs, 3, 1, key)


def test_permutations_and_their_gradients():
    val = jnp.arange(12.0).reshape((4, 3))
    perm = jnp.array([2, 0, 3, 1])
    inverse = jnp.argsort(perm)
    np.testing.assert_array_equal(ea.permute_via_gather(val, perm, inverse), val[perm])
    np.testing.assert_array_equal(ea.permute_via_sort(val[:, 0], inverse, perm), val[perm, 0])
    cot = jnp.arange(12.0).reshape((4, 3)) ** 2
    grad = jax.grad(lambda v: jnp.sum(ea.permute_via_gather(v, perm, inverse) * cot))(val)
    np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(v[perm] * cot))(val))
    grad = jax.grad(lambda v: jnp.sum(ea.permute_via_sort(v, inverse, perm) * cot[:, 0]))(val[:, 0])
    np.testing.assert_array_equal(grad, jax.grad(lambda v: jnp.sum(v[perm] * cot[:, 0]))(val[:, 0]))


def test_apply_broadcasted_dropout():
    vecs = jnp.ones((3, 4, 8))
    np.testing.assert_array_equal(ea.apply_broadcasted_dropout(vecs, 0.0, None), vecs)
    y = np.asarray(ea.apply_broadcasted_dropout(vecs, 0.5, jax.random.PRNGKey(0)))
    # One keep/drop decision per feature, shared by all other axes.
    assert set(np.unique(y)) <= {0.0, 2.0} and np.all(y == y[:1, :1])


# --- SelfAttention -----------------------------------------------------------------------


def _numpy_self_attention(x, weights, visible):
    w_q, w_k, w_v, w_o = (np.asarray(w) for w in weights)
    out = np.zeros_like(x)
    for b in range(x.shape[0]):
        for h in range(w_q.shape[0]):
            out[b] += softmax_attention(x[b] @ w_q[h], x[b] @ w_k[h], x[b] @ w_v[h], visible) @ w_o[h]
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"n_parallel_heads": 1},
        {"n_parallel_heads": 2, "use_python_loop": True},
        {"use_reference_code": True},
    ],
)
def test_causal_self_attention_equals_numpy(options):
    layer = ea.SelfAttention(n_heads=2, d_qk=3, d_v=5, causal=True, mode="eval", **options)
    weights, state = layer.init(ShapeDtype(X.shape))
    assert [w.shape for w in weights] == [(2, 4, 3), (2, 4, 3), (2, 4, 5), (2, 5, 4)] and state == ()
    np.testing.assert_allclose(layer(X), _numpy_self_attention(X, weights, causal(8)), atol=1e-5)


def test_chunked_self_attention_equals_a_window():
    layer = ea.SelfAttention(
        n_heads=2, d_qk=3, d_v=5, causal=True, chunk_len=2, n_chunks_before=1, mode="eval"
    )
    weights, _ = layer.init(ShapeDtype(X.shape))
    t = np.arange(8)
    window = causal(8) & (t.reshape((1, -1)) // 2 >= t.reshape((-1, 1)) // 2 - 1)
    np.testing.assert_allclose(layer(X), _numpy_self_attention(X, weights, window), atol=1e-5)
    with pytest.raises(base.LayerError, match=r"length \(6\) must be a multiple of chunk_len=4"):
        ea.SelfAttention(n_heads=1, chunk_len=4).init(ShapeDtype((1, 6, 4)))


def test_share_qk_self_attention_with_bias_equals_numpy():
    layer = ea.SelfAttention(n_heads=1, d_qk=3, d_v=2, share_qk=True, bias=True, mode="eval")
    (w_q, w_v, w_o, b_q, b_v), _ = layer.init(ShapeDtype(X.shape))
    b_q, b_v = jnp.full((1, 3), 0.5), jnp.full((1, 2), -1.0)
    y = layer(X, weights=(w_q, w_v, w_o, b_q, b_v))
    q, v = X[0] @ np.asarray(w_q[0]) + 0.5, X[0] @ np.asarray(w_v[0]) - 1.0
    np.testing.assert_allclose(
        y[0], shared_qk_attention(q, v, np.ones((8, 8), bool)) @ np.asarray(w_o[0]), atol=1e-5
    )


def test_self_attention_masks_padding_and_position_zero():
    layer = ea.SelfAttention(n_heads=2, d_qk=3, d_v=5, masked=True, mode="eval")
    weights, _ = layer.init((ShapeDtype(X.shape), ShapeDtype((2, 8), bool)))
    mask = np.ones((2, 8), bool)
    mask[:, 0] = False  # Trax's sign trick could not mask position 0.
    mask[1, 6:] = False
    y = layer((X, mask))
    for b in range(2):
        keys = np.flatnonzero(mask[b])
        visible = np.zeros((8, 8), bool)
        visible[:, keys] = True
        np.testing.assert_allclose(y[b], _numpy_self_attention(X[b : b + 1], weights, visible)[0], atol=1e-5)
    # A Sequence masks keys the same way, garbage (NaN) in padding included, and comes back a Sequence.
    plain = ea.SelfAttention(n_heads=2, d_qk=3, d_v=5, mode="eval")
    garbage = np.where(np.arange(8).reshape((1, -1, 1)) >= 5, np.nan, X).astype(np.float32)
    out = plain(seq.Sequence.from_lengths(garbage, jnp.array([5, 5])), weights=weights)
    assert isinstance(out, seq.Sequence)
    np.testing.assert_allclose(out.values[:, :5], plain(X[:, :5], weights=weights), atol=1e-5)


def test_self_attention_dropout_and_predict_mode():
    layer = ea.SelfAttention(n_heads=1, d_qk=3, d_v=3, attention_dropout=0.5, output_dropout=0.5)
    weights, state = layer.init(ShapeDtype(X.shape))
    with pytest.raises(base.LayerError, match="needs an rng"):
        layer.pure_fn(X, weights, state, None)
    a, b = layer(X, rng=jax.random.PRNGKey(0)), layer(X, rng=jax.random.PRNGKey(1))
    assert not np.allclose(a, b)
    np.testing.assert_allclose(layer.with_mode("eval")(X), layer.with_mode("eval")(X))
    assert not layer.supports_step
    with pytest.raises(base.LayerError, match="does not stream"):
        layer.with_mode("predict").pure_fn(X, weights, state, None)


def test_fast_inference_of_causal_chunked_self_attention_equals_eval():
    # Trax's efficient_attention_test.test_fast_inference_self_attention (one of its head groupings).
    common = {
        "n_heads": 6,
        "d_qk": 7,
        "d_v": 17,
        "causal": True,
        "chunk_len": 5,
        "n_chunks_before": 1,
        "n_chunks_after": 0,
    }
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 10, 13), dtype=jnp.float32)
    reference = ea.SelfAttention(use_reference_code=True, mode="eval", **common)
    weights, state = reference.init(ShapeDtype(x.shape))
    expected, _ = reference.pure_fn(x, weights, state, jax.random.PRNGKey(0))
    predict = ea.SelfAttention(mode="predict", n_parallel_heads=3, **common)
    assert predict.supports_step and predict.block_size == 1
    _, stream = predict.init(ShapeDtype((2, 1, 13)))
    outputs = []
    for t in range(10):
        y, stream = predict.pure_fn(x[:, t : t + 1], weights, stream, jax.random.PRNGKey(0))
        outputs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), expected, rtol=1e-4, atol=1e-4)


def test_causal_chunked_self_attention_keeps_the_contract_and_pads_its_last_chunk():
    def make(mode):
        return ea.SelfAttention(
            n_heads=2,
            d_qk=3,
            d_v=3,
            causal=True,
            share_qk=True,
            bias=True,
            chunk_len=4,
            n_chunks_before=1,
            mode=mode,
        )

    test_utils.verify_contract(make, ShapeDtype((2, 12, 4)), check_gradients=False)
    layer = make("eval")
    weights, state = layer.init(ShapeDtype((2, 8, 4)))
    x = jnp.asarray(RNG.standard_normal((2, 8, 4)), jnp.float32)
    # 6 steps (not a multiple of chunk_len): the first 6 outputs of 8 steps, as causal outputs are.
    np.testing.assert_allclose(
        layer.pure_fn(x[:, :6], weights, state, None)[0],
        layer.pure_fn(x, weights, state, None)[0][:, :6],
        atol=1e-5,
    )
    # Look-ahead or no chunks: no bounded window of the past, so no streaming.
    assert not ea.SelfAttention(causal=True, chunk_len=4, n_chunks_after=1).supports_step
    assert not ea.SelfAttention(causal=True).supports_step


def test_chunked_attention_dropout_is_one_mask_for_every_chunk():
    # Trax's attend draws the dropout mask of one chunk's [q, kv] dots; with chunks it broadcasts.
    layer = tl.LSHSelfAttention(n_heads=2, d_qk=4, d_v=4, attention_dropout=0.5, chunk_len=4, n_hashes=1)
    x = jnp.ones((2, 8, 8))
    layer.init(ShapeDtype(x.shape))
    a, b = layer(x, rng=jax.random.PRNGKey(0)), layer(x, rng=jax.random.PRNGKey(1))
    assert a.shape == (2, 8, 8) and not np.allclose(a, b)


def test_forward_and_or_backward_equals_autodiff():
    layer = ea.SelfAttention(n_heads=1, d_qk=3, d_v=3, causal=True, mode="eval")
    weights, state = layer.init(ShapeDtype(X.shape))
    cot = jnp.asarray(RNG.standard_normal(X.shape), jnp.float32)
    out, new_state, x_grad, w_grad = jax.jit(
        lambda x, w: layer.forward_and_or_backward(x, w, state, None, output_grad=cot)
    )(X, weights)
    loss, g = jax.jit(
        jax.value_and_grad(lambda x, w: jnp.sum(layer.pure_fn(x, w, state, None)[0] * cot), argnums=(0, 1))
    )(X, weights)
    np.testing.assert_allclose(jnp.sum(out * cot), loss, rtol=1e-5)
    np.testing.assert_allclose(x_grad, g[0], atol=1e-5)
    np.testing.assert_allclose(w_grad[3], g[1][3], atol=1e-5)
    assert new_state == ()


def test_constructor_errors():
    with pytest.raises(ValueError, match="n_parallel_heads must be a multiple or a divisor of n_heads=2"):
        ea.SelfAttention(n_heads=2, n_parallel_heads=3)
    with pytest.raises(ValueError, match="need chunk_len"):
        ea.SelfAttention(n_chunks_before=1)
    with pytest.raises(ValueError, match="attention_dropout must be in"):
        ea.SelfAttention(attention_dropout=1.0)
    with pytest.raises(ValueError, match="incremental=True needs predict_mem_len"):
        ea.EfficientAttentionBase(2, incremental=True)
    with pytest.raises(ValueError, match="chunk_len must be an integer >= 1"):
        ea.LSHSelfAttention(chunk_len=None)
    with pytest.raises(ValueError, match="n_buckets must be None, an even integer"):
        ea.LSHSelfAttention(n_buckets=3)


# --- EncDecAttention -------------------------------------------------------------------


def test_enc_dec_attention_equals_numpy_with_masked_keys():
    layer = ea.EncDecAttention(n_heads=2, d_qk=3, d_v=2, mode="eval")
    source = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    weights, _ = layer.init((ShapeDtype(X.shape), ShapeDtype(source.shape), ShapeDtype(mask.shape, bool)))
    w_q, w_k, w_v, w_o = (np.asarray(w) for w in weights)
    assert (w_q.shape, w_k.shape, w_v.shape, w_o.shape) == ((2, 4, 3), (2, 6, 3), (2, 6, 2), (2, 2, 4))
    y = layer((X, source, mask))
    for b in range(2):
        visible = np.broadcast_to(mask[b].reshape((1, -1)), (8, 5))
        expected = sum(
            softmax_attention(X[b] @ w_q[h], source[b] @ w_k[h], source[b] @ w_v[h], visible) @ w_o[h]
            for h in range(2)
        )
        np.testing.assert_allclose(y[b], expected, atol=1e-5)
    # Unmasked, with a Sequence source: its mask masks the keys.
    unmasked = ea.EncDecAttention(n_heads=2, d_qk=3, d_v=2, masked=False, mode="eval")
    np.testing.assert_allclose(
        unmasked((X, seq.Sequence(source, jnp.asarray(mask))), weights=weights), y, atol=1e-6
    )


# --- LSH attention --------------------------------------------------------------------


def test_lsh_with_one_chunk_equals_full_shared_qk_attention():
    """With a chunk as long as the input, every hashing round attends to everything: full attention.

    Causal with 3 rounds: the first query sees only itself (at -1e5), where Trax's logsumexp weighting
    of the rounds rounds off in float32 (here a softmax over rounds).
    """
    layer = ea.LSHSelfAttention(
        n_heads=2,
        d_qk=3,
        d_v=5,
        chunk_len=8,
        n_chunks_before=0,
        n_hashes=3,
        n_buckets=16,
        causal=True,
        mode="eval",
    )
    weights, state = layer.init(ShapeDtype(X.shape))
    assert [w.shape for w in weights] == [(2, 4, 3), (2, 4, 5), (2, 5, 4)] and state.shape == (2, 2)
    y, new_state = jax.jit(layer.pure_fn)(X, weights, state, None)
    w_q, w_v, w_o = (np.asarray(w) for w in weights)
    for b in range(2):
        expected = sum(
            shared_qk_attention(X[b] @ w_q[h], X[b] @ w_v[h], causal(8)) @ w_o[h] for h in range(2)
        )
        np.testing.assert_allclose(y[b], expected, atol=1e-5)
    # The hashing keys advance at every call (one per head).
    assert new_state.shape == (2, 2) and not np.array_equal(new_state, state)


def test_lsh_hashes_with_its_state():
    layer = ea.LSHSelfAttention(n_heads=1, d_qk=3, d_v=3, chunk_len=2, n_hashes=2, n_buckets=4, mode="eval")
    weights, state = layer.init(ShapeDtype(X.shape))
    run = jax.jit(layer.pure_fn)
    y1, s1 = run(X, weights, state, None)
    y2, _ = run(X, weights, state, None)
    y3, _ = run(X, weights, s1, None)
    np.testing.assert_array_equal(y1, y2)  # Same state, same buckets.
    assert not np.allclose(y1, y3)  # New hashes.
    # A row's output does not depend on the other rows (the hashing key is per head, not per example).
    np.testing.assert_allclose(run(X[::-1], weights, state, None)[0], y1[::-1], atol=1e-6)


def test_pure_lsh_causality_and_masking():
    """Changing values at future (or masked) positions never changes earlier (or valid) outputs."""
    qk = jnp.asarray(RNG.standard_normal((4, 8, 3)), jnp.float32)  # batch 2 x 2 heads.
    v = jnp.asarray(RNG.standard_normal((4, 8, 3)), jnp.float32)
    layer = ea.PureLSHSelfAttention(
        n_heads=2, chunk_len=2, n_chunks_before=1, n_hashes=2, n_buckets=4, causal=True, mode="eval"
    )
    weights, state = layer.init((qk, v))
    assert weights == () and state.shape == (2, 2)
    run = jax.jit(layer.pure_fn)
    y = run((qk, v), weights, state, None)[0]
    y_changed = run((qk, v.at[:, 5:].set(100.0)), weights, state, None)[0]
    np.testing.assert_array_equal(y[:, :5], y_changed[:, :5])
    assert not np.allclose(y[:, 5:], y_changed[:, 5:])
    masked = ea.PureLSHSelfAttention(
        n_heads=2, chunk_len=4, n_hashes=2, n_buckets=4, masked=True, mode="eval"
    )
    mask = jnp.array([[True] * 6 + [False] * 2, [True] * 8])
    _, state = masked.init((qk, v, mask))
    run = jax.jit(masked.pure_fn)
    y = run((qk, v, mask), (), state, None)[0]
    y_changed = run((qk, v.at[:2, 6:].set(100.0), mask), (), state, None)[0]
    np.testing.assert_array_equal(y[:2, :6], y_changed[:2, :6])


def test_mixed_lsh_uses_standard_attention_up_to_std_length():
    qk = jnp.asarray(RNG.standard_normal((4, 8, 3)), jnp.float32)
    v = jnp.asarray(RNG.standard_normal((4, 8, 3)), jnp.float32)
    layer = ea.MixedLSHSelfAttention(
        n_heads=2, causal=True, std_length=4, chunk_len=4, n_buckets=4, mode="eval"
    )
    weights, state = layer.init((qk, v))
    run = jax.jit(layer.pure_fn)
    short = run((qk[:, :4], v[:, :4]), weights, state, None)[0]
    standard = attention.DotProductCausalAttention(mode="eval")
    np.testing.assert_allclose(short, standard((qk[:, :4], qk[:, :4], v[:, :4])), atol=1e-6)
    lsh = layer.sublayers[0]
    np.testing.assert_allclose(
        run((qk, v), weights, state, None)[0], jax.jit(lsh.pure_fn)((qk, v), (), state[0], None)[0], atol=1e-6
    )
    # Inputs too short for LSH's default chunks still initialize (the LSH branch is not tried).
    short_only = ea.MixedLSHSelfAttention(n_heads=2, causal=True, std_length=16, mode="eval")
    assert short_only.init((qk, v))[1][0].shape == (2, 2)
    with pytest.raises(
        ValueError, match="use causal=True with masked=False, or causal=False with masked=True"
    ):
        ea.MixedLSHSelfAttention(causal=True, masked=True)


def test_pure_lsh_wrapper_projects_attends_and_merges():
    layer = ea.PureLSHSelfAttentionWrapper(
        n_heads=2, d_qk=2, d_v=2, causal=True, chunk_len=8, n_chunks_before=0, n_buckets=4, mode="eval"
    )
    weights, state = layer.init(ShapeDtype(X.shape))
    (w_q, b_q), (w_k, b_k), (w_v, b_v) = weights[0][0][1]
    w_out, b_out = weights[3]
    y = jax.jit(layer.pure_fn)(X, weights, state, None)[0]
    # One chunk: full causal shared-QK attention per head on (q + k) / 2.
    qk = ((X @ w_q + b_q.reshape((1, 1, -1))) + (X @ w_k + b_k.reshape((1, 1, -1)))) / 2
    v = X @ w_v + b_v.reshape((1, 1, -1))
    heads = [
        [
            shared_qk_attention(
                np.asarray(qk[b, :, 2 * h : 2 * h + 2]), np.asarray(v[b, :, 2 * h : 2 * h + 2]), causal(8)
            )
            for h in range(2)
        ]
        for b in range(2)
    ]
    expected = np.concatenate(
        [np.stack(heads[b], 0).transpose((1, 0, 2)).reshape((1, 8, 4)) for b in range(2)]
    )
    np.testing.assert_allclose(
        y, expected @ np.asarray(w_out) + np.asarray(b_out).reshape((1, 1, -1)), atol=1e-5
    )
    with pytest.raises(ValueError, match="weights_format='sparse' is not supported"):
        ea.PureLSHSelfAttentionWrapper(weights_format="sparse")


# --- LSHFF -------------------------------------------------------------------------


def test_lshff_computes_only_hidden_units_sharing_a_bucket():
    layer = ea.LSHFF(6, n_buckets=2, n_hashes=1, mode="eval")
    (w1, w2, b2), _ = layer.init(ShapeDtype(X.shape))
    assert (w1.shape, w2.shape, b2.shape) == ((6, 4), (6, 4), (4,))
    flat = X.reshape((-1, 4))
    key = jax.random.PRNGKey(0)  # eval mode hashes with a fixed key.
    x_buckets = np.asarray(ea.hash_vecs(flat, 2, 1, key)[0])[0]
    w_buckets = np.asarray(ea.hash_vecs(w1, 2, 1, key)[0])[0]
    same = x_buckets.reshape((-1, 1)) == w_buckets.reshape((1, -1))
    assert same.any() and not same.all()
    expected = np.maximum(flat @ np.asarray(w1).T * same, 0) @ np.asarray(w2) + np.asarray(b2)
    np.testing.assert_allclose(layer(X).reshape((-1, 4)), expected, atol=1e-5)
    with pytest.raises(base.LayerError, match="mode='train' hashes with the rng"):
        layer.with_mode("train").pure_fn(X, (w1, w2, b2), (), None)
    with pytest.raises(ValueError, match="n_buckets must be an even integer"):
        ea.LSHFF(4, n_buckets=3)


def test_lshff_contract():
    report = test_utils.verify_contract(
        lambda mode: ea.LSHFF(8, n_buckets=4, n_hashes=2, mode=mode), ShapeDtype((2, 4, 3))
    )
    assert (report.block_size, report.input_latency, report.output_latency) == (1, 0, 0)


def test_layers_are_not_streamable():
    for layer in (
        ea.SelfAttention(),
        ea.LSHSelfAttention(),
        ea.PureLSHSelfAttention(),
        ea.EncDecAttention(),
        ea.MixedLSHSelfAttention(causal=True),
        ea.PureLSHSelfAttentionWrapper(),
    ):
        assert not layer.supports_step, layer.name
    assert math.isclose(ea.LSHFF(4, 2).output_ratio, 1)


def test_predict_mode_of_layers_that_do_not_stream_raises_at_init_saying_why():
    one_step = ShapeDtype((1, 1, 8))
    for layer, why in (
        (
            ea.LSHSelfAttention(chunk_len=4, mode="predict"),
            "an output.s bucket chunk is formed by sorting the whole sequence",
        ),
        (ea.SelfAttention(causal=True, mode="predict"), "only causal attention with a chunk_len"),
    ):
        with pytest.raises(base.LayerError, match=f"{layer.name} does not stream \\({why}"):
            layer.init(one_step)
    pure = ea.PureLSHSelfAttention(n_heads=2, chunk_len=4, mode="predict")
    with pytest.raises(base.LayerError, match="PureLSHSelfAttention does not stream"):
        pure.init((ShapeDtype((2, 1, 8)), ShapeDtype((2, 1, 8))))
    # In a model the message names the path (Trax's decoding test of a ReformerLM with LSH attention).
    reformer = models.ReformerLM(
        vocab_size=13, d_model=16, d_ff=32, n_layers=1, n_heads=2, mode="predict", max_len=16,
        attention_type=lambda **kw: ea.LSHSelfAttention(chunk_len=4, **kw), pos_d_axial_embs=None,
        pos_type="fixed-base",
    )  # fmt: skip
    with pytest.raises(base.LayerError, match="(?s)ReformerLM > .*LSHSelfAttention.* does not stream"):
        reformer.init(ShapeDtype((1, 1), jnp.int32))
