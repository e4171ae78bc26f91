"""Residual Shuffle-Exchange Networks: mirrors Trax's rse_test.py, plus exact values of the RSU."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl.models import rse
from trax_sl.shapes import ShapeDtype


def positions_as_values(length, depth):
    """`[1, length, depth]` with x[0, a, b] = a (Trax's _input_with_indice_as_values)."""
    return np.broadcast_to(np.arange(length)[None, :, None], (1, length, depth)).copy()


def test_trax_signatures_and_defaults():
    params = inspect.signature(rse.ResidualShuffleExchange).parameters
    assert list(params) == ["vocab_size", "d_model", "input_dropout", "dropout", "mode", "n_blocks"]
    assert (params["mode"].default, params["n_blocks"].default) == ("train", 2)
    rsu = inspect.signature(rse.ResidualSwitchUnit).parameters
    assert {k: p.default for k, p in rsu.items()} == {
        "d_model": inspect.Parameter.empty,
        "dropout": 0.1,
        "mode": "train",
        "residual_weight": 0.9,
    }


def output_shape(model, x):
    """The output of `model` initialised on x's signature, traced (not compiled): shape and dtype."""

    def run(x):
        weights, state, _ = model.init_tree(ShapeDtype(x.shape, x.dtype), jax.random.PRNGKey(0))
        return model.pure_fn(x, weights, state, jax.random.PRNGKey(1))[0]

    return jax.eval_shape(run, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape


def test_rsu_forward_shape():  # Trax: test_rsu_forward_shape.
    model = rse.ResidualSwitchUnit(d_model=17, dropout=0.1, mode="train")
    assert output_shape(model, np.ones((3, 32, 17), np.float32)) == (3, 32, 17)


def test_rsu_exact_values():
    """o = sigmoid(S) * i + h * (W GELU(LayerNorm(Z i)) + B) on paired positions; S starts at the residual weight."""
    d_model, residual_weight = 3, 0.9
    model = rse.ResidualSwitchUnit(d_model=d_model, dropout=0.0, mode="eval", residual_weight=residual_weight)
    x = np.random.default_rng(0).normal(size=(2, 4, d_model)).astype(np.float32)
    weights, _ = model.init(ShapeDtype(x.shape))
    # Residual = Branch(shortcut, layers): S first, then Z, LayerNorm's scale and bias, W, B.
    s, z, gamma, beta, w_out, b_out = [np.asarray(w) for w in jax.tree.leaves(weights)]
    assert [s.shape, z.shape, w_out.shape] == [(6,), (6, 12), (12, 6)]
    np.testing.assert_allclose(1 / (1 + np.exp(-s)), residual_weight, rtol=1e-6)
    pairs = x.reshape(2, 2, 2 * d_model)
    hidden = pairs @ z
    mean, var = hidden.mean(-1, keepdims=True), hidden.var(-1, keepdims=True)
    normed = (hidden - mean) / np.sqrt(var + 1e-6) * gamma + beta
    c = np.asarray(jax.nn.gelu(normed, approximate=False)) @ w_out + b_out
    expected = residual_weight * pairs + np.sqrt(1 - residual_weight**2) * 0.25 * c
    np.testing.assert_allclose(model(x), expected.reshape(x.shape), rtol=1e-4, atol=1e-5)


def test_shuffle_layer():  # Trax: test_shuffle_layer.
    x = np.arange(8).reshape(1, 8, 1)
    np.testing.assert_array_equal(rse.ShuffleLayer()(x)[0, :, 0], [0, 2, 4, 6, 1, 3, 5, 7])


def test_shuffle_layer_log_times_is_identity():  # Trax: test_shuffle_layer_log_times_is_identity.
    x = positions_as_values(8, 17)
    y = x
    for _ in range(3):
        y = rse.ShuffleLayer()(y)
    np.testing.assert_array_equal(y, x)


def test_reverse_shuffle_layer():  # Trax: test_reverse_shuffle_layer.
    x = np.arange(8).reshape(1, 8, 1)
    np.testing.assert_array_equal(rse.ReverseShuffleLayer()(x)[0, :, 0], [0, 4, 1, 5, 2, 6, 3, 7])


def test_reverse_shuffle_layer_log_times_is_identity():  # Trax: test_reverse_shuffle_layer_log_times_is_identity.
    x = positions_as_values(8, 17)
    y = x
    for _ in range(3):
        y = rse.ReverseShuffleLayer()(y)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(rse.ReverseShuffleLayer()(rse.ShuffleLayer()(x)), x)


def test_rse_forward_shape():  # Trax: test_rse_forward_shape.
    model = rse.ResidualShuffleExchange(
        vocab_size=12, d_model=17, dropout=0.1, input_dropout=0.05, mode="train"
    )
    assert output_shape(model, np.ones((3, 32), np.int32)) == (3, 32, 12)


def test_benes_block_shares_one_rsu_per_half():
    """Each half of a Beneš block is a Scan: one RSU's weights serve all log2(length) steps."""
    block = rse.BenesBlock(d_model=4, dropout=0.0, mode="eval")
    weights, _ = block.init(ShapeDtype((1, 16, 4)))
    kernels = [w.shape for w in jax.tree.leaves(weights) if w.shape == (8, 16)]
    assert kernels == [(8, 16), (8, 16)]


def test_a_sequence_is_taken_as_its_padded_ids():
    # The trainer's built-in inputs give Sequences; the shuffles need Trax's zero-padded ids.
    model = rse.ResidualShuffleExchange(10, 8, 0.0, 0.0, mode="eval")
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 10, size=(2, 8)), jnp.int32)
    lengths = jnp.asarray([5, 8])
    x = seq.Sequence(ids, jnp.arange(8).reshape((1, 8)) < lengths.reshape((2, 1)))
    model.init(x)
    padded = jnp.where(x.mask, ids, 0)
    np.testing.assert_allclose(model(x), model(padded), atol=1e-6)
