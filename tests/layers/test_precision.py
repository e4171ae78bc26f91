"""Mixed precision: `tl.Policy`, `tl.get_policy` and `tl.WithPolicy` on layers and a TransformerLM."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from tests import jaxprs
from trax_sl import models, shapes

BF16 = tl.Policy("float32", "bfloat16", "float32")


def lm(mode="eval"):
    return models.TransformerLM(
        vocab_size=32, d_model=32, d_ff=64, n_layers=2, n_heads=4, max_len=16, dropout=0.0, mode=mode
    )


def tokens(shape=(2, 12), seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), shape, 1, 32)


def primitive_dtypes(fn, *args) -> collections.Counter:
    """(primitive, input dtypes) -> count over the jaxpr of `fn(*args)`, sub-jaxprs included."""
    return collections.Counter(
        (eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars))
        for eqn in jaxprs.equations(fn, *args)
    )


def test_get_policy_reads_names_and_the_explicit_form():
    assert tl.get_policy("bfloat16") == BF16 == tl.get_policy("mixed_bfloat16")
    assert tl.get_policy(None) == tl.Policy() == tl.get_policy("float32")
    explicit = tl.get_policy("params=float32, compute=float16, output=float16")
    assert explicit == tl.Policy(jnp.float32, jnp.float16, jnp.float16)
    assert str(BF16) == "params=float32,compute=bfloat16,output=float32"
    assert tl.get_policy(BF16) is BF16
    with pytest.raises(ValueError, match=r"precision: expected a Policy, one of \['bfloat16', .*got 'fp8'"):
        tl.get_policy("fp8")
    with pytest.raises(ValueError, match="Policy: compute_dtype must be a floating dtype, got int32"):
        tl.Policy("float32", "int32", "float32")


def test_cast_floating_leaves_integers_masks_and_other_leaves_alone():
    tree = {
        "x": jnp.ones(2),
        "ids": jnp.ones(2, jnp.int32),
        "mask": jnp.ones(2, bool),
        "sig": shapes.ShapeDtype((3,)),
    }
    cast = tl.precision.cast_floating(tree, jnp.bfloat16)
    assert {k: str(v.dtype) for k, v in cast.items()} == {
        "x": "bfloat16",
        "ids": "int32",
        "mask": "bool",
        "sig": "bfloat16",
    }


def test_weights_stay_float32_matmuls_run_in_bfloat16_softmax_and_norms_in_float32():
    model = tl.WithPolicy(lm(), "bfloat16")
    x = tokens()
    weights, state = model.init(shapes.signature(x))
    plain_weights, _ = lm().init(shapes.signature(x))
    # The same tree as the model's own: a checkpoint loads either way.
    assert jax.tree.structure(weights) == jax.tree.structure(plain_weights)
    assert {a.dtype for a in jax.tree.leaves(weights)} == {jnp.dtype(jnp.float32)}
    counts = primitive_dtypes(lambda w: model.pure_fn(x, w, state, None)[0], weights)
    dots = {dtypes for (name, dtypes) in counts if name == "dot_general"}
    assert dots == {("bfloat16", "bfloat16")}
    # The blocks' one scanned body (q, k, v, out; two in attention; two feed-forward), then the logits.
    assert sum(n for (name, _), n in counts.items() if name == "dot_general") == (4 + 2 + 2) + 1
    assert {dtypes for (name, dtypes) in counts if name == "exp"} == {("float32",)}  # Softmax.
    assert {dtypes for (name, dtypes) in counts if name == "rsqrt"} == {("float32",)}  # LayerNorm.
    y = model(x)
    assert y.dtype == jnp.float32


def test_bfloat16_outputs_and_gradients_track_float32():
    x = tokens()
    float32, bfloat16 = lm(), tl.WithPolicy(lm(), "bfloat16")
    weights, state = float32.init(shapes.signature(x))

    def loss(model, w):
        logits = model.pure_fn(x, w, state, None)[0]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), x[..., None], -1))

    y32, y16 = float32.pure_fn(x, weights, state, None)[0], bfloat16.pure_fn(x, weights, state, None)[0]
    scale = float(jnp.max(jnp.abs(y32)))
    assert float(jnp.max(jnp.abs(y16 - y32))) < 0.02 * scale
    assert not np.array_equal(y16, y32)  # It did compute in bfloat16.
    g32 = jax.grad(lambda w: loss(float32, w))(weights)
    g16 = jax.grad(lambda w: loss(bfloat16, w))(weights)
    assert {a.dtype for a in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    flat32, flat16 = (jnp.concatenate([g.ravel() for g in jax.tree.leaves(g)]) for g in (g32, g16))
    cosine = jnp.dot(flat32, flat16) / (jnp.linalg.norm(flat32) * jnp.linalg.norm(flat16))
    assert cosine > 0.999


def test_predict_mode_keeps_kv_caches_in_bfloat16_and_decodes_as_layer_wise():
    x = tokens((2, 8))
    model = tl.WithPolicy(lm(), "bfloat16")
    weights, _ = model.init(shapes.signature(x))
    expected = model(x)
    predict = tl.WithPolicy(lm("predict"), "bfloat16")
    _, state = predict.init(shapes.signature(x[:, :1]))
    floats = {a.dtype for a in jax.tree.leaves(state) if jnp.issubdtype(a.dtype, jnp.floating)}
    assert floats == {jnp.dtype(jnp.bfloat16)}
    predict.weights = weights
    # Trax's decoding loop: predict-mode ShiftRight passes its input on; the caller feeds token t-1.
    shifted = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]
    steps = np.concatenate([predict(shifted[:, t : t + 1]) for t in range(8)], axis=1)
    np.testing.assert_allclose(steps, expected, atol=0.03 * float(jnp.max(jnp.abs(expected))))
    assert {
        a.dtype for a in jax.tree.leaves(predict.state) if jnp.issubdtype(a.dtype, jnp.floating)
    } == floats


def test_a_shared_layer_computes_in_the_policy_dtype_too():
    dense = tl.Dense(4)
    model = tl.WithPolicy(tl.Serial(tl.Serial(dense, tl.Relu(), dense)), "bfloat16")  # One-sublayer Serial.
    x = jnp.ones((2, 4))
    weights, state = model.init(shapes.signature(x))
    counts = primitive_dtypes(lambda w: model.pure_fn(x, w, state, None)[0], weights)
    assert {dtypes for (name, dtypes) in counts if name == "dot_general"} == {("bfloat16", "bfloat16")}
    assert sum(n for (name, _), n in counts.items() if name == "dot_general") == 2
    np.testing.assert_allclose(
        model(x), tl.Serial(tl.Serial(dense, tl.Relu(), dense)).pure_fn(x, weights, state, None)[0], rtol=2e-2
    )
