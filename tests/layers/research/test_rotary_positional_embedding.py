"""research.rotary_positional_embedding: Trax's Rotate/rotate, hand-checked values, the streaming contract."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.layers.research import rotary_positional_embedding as rotary_pe
from trax_sl.shapes import ShapeDtype


def trax_rotate(x):
    """Trax's rotate as Trax writes the math: frequencies exp(-2i log(10000) / d), emb = [freqs, freqs]."""
    _, length, d = x.shape
    inv_freq = np.exp(np.arange(0, d, 2) * -(np.log(10000.0) / d))
    emb = np.concatenate([np.outer(np.arange(length), inv_freq)] * 2, axis=-1)
    rotated_half = np.concatenate([-x[..., d // 2 :], x[..., : d // 2]], axis=-1)
    return x * np.cos(emb)[None] + rotated_half * np.sin(emb)[None]


def test_rotary_monotonicity():
    # Trax: rotary_positional_embedding_test.test_rotary_monotonicity.
    layer = rotary_pe.Rotate()
    shape = (1, 32, 512)
    q, k = np.ones(shape, np.float32), np.ones(shape, np.float32)
    q, k = layer(q), layer(k)
    assert q.dtype == np.float32
    assert q.shape == shape
    dot_product = np.einsum("bnd,bmd->bnm", q, k)
    assert (dot_product[0, 0, :9] > dot_product[0, 0, 1:10]).all()
    assert (dot_product[0, 1, 1:10] > dot_product[0, 1, 2:11]).all()


def test_rotate_hand_checked_values():
    # d = 4: the halves [x0, x1], [x2, x3] turn by p (frequency 1) and p / 100 (10000 ** (2/4)).
    x = jnp.broadcast_to(jnp.array([1.0, 0.0, 0.0, 1.0]), (1, 3, 4))
    p = np.arange(3.0)
    expected = np.stack([np.cos(p), -np.sin(p / 100), np.sin(p), np.cos(p / 100)], axis=-1)[None]
    np.testing.assert_allclose(rotary_pe.rotate(x), expected, rtol=1e-6, atol=1e-7)


def test_rotate_equals_trax_formula():
    x = np.random.default_rng(0).standard_normal((2, 40, 16)).astype(np.float32)
    np.testing.assert_allclose(rotary_pe.rotate(x), trax_rotate(x.astype(np.float64)), atol=1e-5)
    np.testing.assert_allclose(rotary_pe.Rotate()(x), rotary_pe.rotate(x), atol=1e-6)


def test_rotate_layer_is_weightless_and_named():
    layer = rotary_pe.Rotate()
    weights, state = layer.init(ShapeDtype((2, 8, 4)))
    assert (weights, state) == ((), ())
    assert layer.name == "Rotate" and (layer.n_in, layer.n_out) == (1, 1)
    assert sorted(rotary_pe.__all__) == ["Rotate", "rotate"]


def test_rotate_rejects_odd_depth():
    with pytest.raises(tl.LayerError, match="even size"):
        rotary_pe.Rotate()(np.ones((1, 2, 3), np.float32))


def test_rotate_streams_continuing_positions():
    x = np.random.default_rng(1).standard_normal((2, 6, 4)).astype(np.float32)
    layer = rotary_pe.Rotate().with_mode("predict")
    _, state = layer.init(ShapeDtype((2, 2, 4)))
    outputs = []
    for start in range(0, 6, 2):
        y, state = layer.pure_fn(x[:, start : start + 2], (), state, None)
        outputs.append(y)
    np.testing.assert_allclose(np.concatenate(outputs, axis=1), rotary_pe.rotate(x), rtol=1e-6)
    np.testing.assert_array_equal(state, [6, 6])


def test_rotate_streams_with_a_position_per_row():
    # tests/layers/registry.py runs verify_contract on it (and the fuzzer on its ranks and dtypes).
    assert jax.tree.leaves(rotary_pe.Rotate(mode="predict").init(ShapeDtype((3, 1, 4)))[1])[0].shape == (3,)
