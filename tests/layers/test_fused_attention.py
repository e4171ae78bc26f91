"""Fused attention (`jax.nn.dot_product_attention`) against the einsum path, and when each is taken."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import models, shapes
from trax_sl.layers import attention_core, test_utils
from trax_sl.layers.self_attention import DotProductSelfAttention


def _random(shape, seed, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(seed), shape, dtype)


@pytest.fixture
def fused_calls(monkeypatch):
    """How many times attention went through `jax.nn.dot_product_attention` while tracing."""
    calls = []
    original = jax.nn.dot_product_attention

    def spy(*args, **kwargs):
        calls.append(kwargs.get("implementation"))
        return original(*args, **kwargs)

    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    return calls


def _both_paths(fn, *args):
    with attention_core.use_implementation("fused"):  # On a CPU 'auto' takes the einsum path.
        fused = jax.jit(fn)(*args)
    with attention_core.use_implementation("einsum"):
        einsum = jax.jit(lambda *a: fn(*a))(*args)  # A fresh trace.
    return fused, einsum


@pytest.mark.parametrize(
    ("heads", "kv_heads", "query_time", "key_time", "mask_shape"),
    [
        (4, 4, 6, 6, (2, 1, 6, 6)),  # Self-attention, one mask for all heads.
        (4, 2, 6, 6, (2, 4, 6, 6)),  # Grouped key/value heads, a mask per head.
        (4, 1, 5, 7, (2, 1, 1, 7)),  # Multi-query cross-attention, key padding only.
        (2, 2, 1, 9, (2, 1, 1, 9)),  # One decoding step against a KV cache.
    ],
)
def test_fused_attention_equals_the_einsum_path_values_and_gradients(
    fused_calls, heads, kv_heads, query_time, key_time, mask_shape
):
    q = _random((2, query_time, heads, 8), 0)
    k, v = _random((2, key_time, kv_heads, 8), 1), _random((2, key_time, kv_heads, 8), 2)
    visible = jax.random.bernoulli(jax.random.PRNGKey(3), 0.6, mask_shape)
    visible = visible.at[0, ..., 0, :].set(False)  # A query (or all) that sees nothing: the uniform average.

    def attend(q, k, v):
        return attention_core.multihead_attention(q, k, v, visible)

    fused, einsum = _both_paths(attend, q, k, v)
    assert fused_calls == ["xla"]  # Once, on the CPU XLA's; not at all on the einsum path.
    np.testing.assert_allclose(fused, einsum, atol=2e-6)

    def loss(q, k, v):
        return jnp.sum(jnp.sin(attend(q, k, v)))

    grads = _both_paths(jax.grad(loss, argnums=(0, 1, 2)), q, k, v)
    for a, b in zip(*grads, strict=True):
        np.testing.assert_allclose(a, b, atol=5e-6)


def test_bfloat16_fused_attention_matches_the_einsum_path_to_bfloat16_precision(fused_calls):
    q, k, v = (_random((2, 6, 4, 8), seed, jnp.bfloat16) for seed in range(3))
    visible = jnp.tril(jnp.ones((6, 6), bool))[None, None]
    fused, einsum = _both_paths(lambda q, k, v: attention_core.multihead_attention(q, k, v, visible), q, k, v)
    assert fused.dtype == einsum.dtype == jnp.bfloat16 and fused_calls == ["xla"]
    np.testing.assert_allclose(fused.astype(np.float32), einsum.astype(np.float32), atol=2e-2)


@pytest.mark.parametrize(
    "options",
    [
        {"soft_cap": 5.0},
        {"dropout_rate": 0.5, "rng": jax.random.PRNGKey(0)},
        {"zero_fully_masked": True},
    ],
    ids=["soft_cap", "dropout", "zero_fully_masked"],
)
def test_what_the_fused_kernel_cannot_do_takes_the_einsum_path(fused_calls, options):
    q, k, v = (_random((2, 4, 2, 8), seed) for seed in range(3))
    with attention_core.use_implementation("fused"):
        attention_core.multihead_attention(q, k, v, jnp.ones((2, 1, 4, 4), bool), **options)
    assert fused_calls == []


def test_auto_fuses_on_accelerators_and_keeps_the_einsum_path_on_a_cpu(fused_calls, monkeypatch):
    q, k, v = (_random((2, 4, 2, 8), seed) for seed in range(3))
    visible = jnp.ones((2, 1, 4, 4), bool)
    attention_core.multihead_attention(q, k, v, visible)
    assert fused_calls == []  # XLA:CPU copies KV caches in jax.nn's attention: decoding was 1.7x slower.
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    attention_core.multihead_attention(q, k, v, visible)
    assert fused_calls == ["xla"]  # float32 on a GPU: XLA's (cuDNN's kernel takes bfloat16 and float16).


def test_a_transformer_lm_decodes_and_trains_alike_on_both_paths():
    x = jax.random.randint(jax.random.PRNGKey(0), (2, 10), 1, 32)
    lm = models.TransformerLM(
        32, d_model=32, d_ff=64, n_layers=2, n_heads=4, max_len=16, dropout=0.0, mode="eval"
    )
    weights, state = lm.init(shapes.signature(x))
    fused, einsum = _both_paths(lambda w: lm.pure_fn(x, w, state, None)[0], weights)
    np.testing.assert_allclose(fused, einsum, atol=1e-5)
    predict = lm.with_mode("predict")
    _, start = predict.init(shapes.signature(x[:, :1]))
    shifted = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]

    def decode(w):
        def step(state, token):
            logits, state = predict.pure_fn(token[:, None], w, state, None)
            return state, logits[:, 0]

        return jnp.swapaxes(jax.lax.scan(step, start, shifted.T)[1], 0, 1)

    stepped_fused, stepped_einsum = _both_paths(decode, weights)
    np.testing.assert_allclose(stepped_fused, stepped_einsum, atol=1e-5)
    np.testing.assert_allclose(stepped_fused, fused, atol=1e-5)  # Decoding equals layer-wise.


@pytest.mark.parametrize(("past", "future", "kv_heads"), [(5, 0, 2), (3, 0, 4), (2, 2, 1)])
def test_sequence_layers_self_attention_keeps_the_contract_on_the_fused_path(
    fused_calls, past, future, kv_heads
):
    def layer_fn(mode):
        return DotProductSelfAttention(
            num_heads=4,
            units_per_head=4,
            max_past_horizon=past,
            max_future_horizon=future,
            num_kv_heads=kv_heads,
            mode=mode,
        )

    with attention_core.use_implementation("fused"):
        test_utils.verify_contract(layer_fn, shapes.ShapeDtype((2, 8, 6)), atol=1e-5, rtol=1e-5)
    assert "xla" in fused_calls


def test_use_implementation_names_the_choices():
    with (
        pytest.raises(
            ValueError,
            match=r"attention implementation must be one of \('auto', 'fused', 'einsum'\), got 'flash'",
        ),
        attention_core.use_implementation("flash"),
    ):
        pass
