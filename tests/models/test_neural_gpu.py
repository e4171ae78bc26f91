"""NeuralGPU: Trax's signatures and test (trax/models/neural_gpu_test.py), the cell by hand, modes."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import neural_gpu
from trax_sl.shapes import ShapeDtype


def random_init(model, signature, seed=0):
    """Random weights shaped by the abstract init (initializers compile per shape, slowly on CPU)."""
    rng = np.random.default_rng(seed)
    weights, state = model.weights_and_state_signature(signature)

    def fill(s):
        return rng.uniform(-0.5, 0.5, s.shape).astype(s.dtype) if hasattr(s, "shape") else s  # Not SHARED.

    return jax.tree.map(fill, weights), state


def conv_same(x, w, b):
    """A reference 'SAME' convolution (odd kernels, stride 1), NHWC with an HWIO kernel, in numpy."""
    kh, kw = w.shape[:2]
    x = np.pad(x, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    h, wd = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    return sum(x[:, i : i + h, j : j + wd] @ w[i, j] for i in range(kh) for j in range(kw)) + b


def diagonal_gate(x):
    """The first third of the channels from the left neighbour, the last third from the right one."""
    d = x.shape[-1] // 3
    y = x.copy()
    y[:, :, :, :d] = np.pad(x[:, :, :-1, :d], [(0, 0), (0, 0), (1, 0), (0, 0)])
    y[:, :, :, 2 * d :] = np.pad(x[:, :, 1:, 2 * d :], [(0, 0), (0, 0), (0, 1), (0, 0)])
    return y


def test_trax_signatures_and_defaults():
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    assert defaults(neural_gpu.NeuralGPU) == {"d_feature": 96, "steps": 16, "vocab_size": 2, "mode": "train"}
    assert defaults(neural_gpu.ConvDiagonalGRU) == {"units": inspect.Parameter.empty, "kernel_size": (3, 3)}
    assert defaults(neural_gpu.SaturationCost) == {"x": inspect.Parameter.empty, "limit": 0.9}


def test_ngpu():
    # Trax's test_ngpu (mode 'train': the cell drops out its candidate, so an rng is needed).
    model = neural_gpu.NeuralGPU(d_feature=30, steps=4, vocab_size=22)
    x = np.ones((3, 5, 7), np.int32)
    weights, state = random_init(model, ShapeDtype(x.shape, jnp.int32))
    y = model(x, weights=weights, state=state, rng=jax.random.PRNGKey(0))
    assert y.shape == (3, 5, 7, 22)
    # One cell, its weights shared by the 4 steps.
    assert weights[2:5] == (tl.SHARED,) * 3
    assert [w.shape for w in jax.tree.leaves(weights[1])] == [(3, 3, 30, 30), (30,)] * 3
    # Dropout: other rngs, other outputs.
    y2 = model(x, weights=weights, state=state, rng=jax.random.PRNGKey(1))
    assert not np.allclose(y, y2)


def test_values_are_steps_of_the_diagonal_conv_gru():
    model = neural_gpu.NeuralGPU(d_feature=6, steps=2, vocab_size=5, mode="eval")
    x = np.random.default_rng(0).integers(0, 5, (2, 3, 4)).astype(np.int32)
    weights, state = random_init(model, ShapeDtype(x.shape, jnp.int32))
    embedding, cell, *_, (w_out, b_out) = [jax.tree.map(np.asarray, w) for w in weights]
    # GeneralGRUCell: Serial(Branch(DiagonalGate, gate block, candidate block), Gate).
    (_, (_, gate_block, candidate_block)), _ = cell
    gate_conv, reset_conv, candidate_conv = gate_block[0], candidate_block[1], candidate_block[5]

    def hard_sigmoid(v):
        return np.clip(1.0 + v, 0.0, 1.0)

    s = embedding[x]
    for _ in range(2):
        u = hard_sigmoid(conv_same(s, *gate_conv) + 0.5)
        r = hard_sigmoid(conv_same(s, *reset_conv) + 0.5)
        c = np.clip(conv_same(r * s, *candidate_conv), -1.0, 1.0)
        s = u * diagonal_gate(s) + (1.0 - u) * c
    y = model(x, weights=weights, state=state)
    np.testing.assert_allclose(y, s @ w_out + b_out, atol=1e-5, rtol=1e-5)
    # mode 'eval' drops nothing: the same as the 'eval' twin of the 'train' model, with or without rng.
    twin = neural_gpu.NeuralGPU(d_feature=6, steps=2, vocab_size=5).with_mode("eval")
    np.testing.assert_allclose(twin(x, weights=weights, state=state, rng=jax.random.PRNGKey(3)), y, atol=1e-6)


def test_diagonal_gate_shifts_the_outer_thirds():
    x = np.arange(1 * 2 * 4 * 6, dtype=np.float32).reshape((1, 2, 4, 6))
    y = np.asarray(neural_gpu.DiagonalGate()(jnp.asarray(x)))
    np.testing.assert_array_equal(y, diagonal_gate(x))
    np.testing.assert_array_equal(y[0, 0, :, 0], [0.0, 0.0, 6.0, 12.0])  # x[..., l - 1, 0]: zero first.
    np.testing.assert_array_equal(y[0, 0, :, 5], [11.0, 17.0, 23.0, 0.0])  # x[..., l + 1, 5]: zero last.


def test_saturation_cost():
    np.testing.assert_allclose(
        neural_gpu.SaturationCost(jnp.array([-1.0, -0.5, 0.0, 0.95])), [0.0, -0.4, -0.9, 0.0]
    )
    np.testing.assert_allclose(neural_gpu.SaturationCost(jnp.array([0.2]), limit=0.5), [-0.3])


def test_rejects_depth_not_divisible_by_three():
    with pytest.raises(ValueError, match="NeuralGPU: d_feature must be divisible by 3.*got d_feature=32"):
        neural_gpu.NeuralGPU(d_feature=32)
