"""Adafactor against Trax's rule and optax.adafactor."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trax_sl import optimizers


def trax_adafactor(w, n_steps, lr, wd, beta1=None, clipping_threshold=1.0, epsilon1=1e-16, epsilon2=1e-3):
    """Trax's Adafactor (factored over the last two axes) on sum(w**2), steps from 0."""
    w = np.float64(w)
    factored = w.ndim >= 2
    v_row, v_col = np.zeros(w.shape[:-1]), np.zeros(w.shape[:-2] + w.shape[-1:])
    v, m = np.zeros_like(w), np.zeros_like(w)
    history = []
    for step in range(n_steps):
        g = 2 * w
        decay = 1 - (step + 1.0) ** -0.8
        scale = lr * max(np.sqrt(np.mean(w * w)), epsilon2)
        if factored:
            v_row = decay * v_row + (1 - decay) * np.mean(g * g, axis=-1)
            v_col = decay * v_col + (1 - decay) * np.mean(g * g, axis=-2)
            row_factor = (np.mean(v_row, axis=-1, keepdims=True) / (v_row + epsilon1)) ** 0.5
            y = g * row_factor[..., :, None] * ((v_col + epsilon1) ** -0.5)[..., None, :]
        else:
            v = decay * v + (1 - decay) * g * g
            y = g * (v + epsilon1) ** -0.5
        y = y / max(1.0, np.sqrt(np.mean(y * y)) / clipping_threshold)
        subtrahend = scale * y
        if beta1 is not None:
            m = beta1 * m + (1 - beta1) * subtrahend
            subtrahend = m
        w = (1 - wd) * w - subtrahend
        history.append(w)
    return history


WEIGHTS = {
    "vector": [1.0, -2.0, 0.5],
    "matrix": [[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]],
    # Rank 3 with its two largest axes last, where optax factors the axes Trax does.
    "rank3": np.arange(1.0, 25.0).reshape((2, 3, 4)) / 10,
}


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_adafactor_follows_trax_rule(run_steps, name):
    w0 = np.float32(WEIGHTS[name])
    history = run_steps(optimizers.Adafactor(0.05, weight_decay_rate=0.01).to_optax(), w0, 3)
    for got, expected in zip(history, trax_adafactor(w0, 3, 0.05, 0.01)):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_adafactor_with_momentum_and_low_clipping_follows_trax_rule(run_steps):
    w0 = np.float32(WEIGHTS["matrix"])
    opt = optimizers.Adafactor(
        0.05, do_momentum=True, beta1=0.5, clipping_threshold=0.5, weight_decay_rate=0.0
    )
    history = run_steps(opt.to_optax(), w0, 3)
    for got, expected in zip(history, trax_adafactor(w0, 3, 0.05, 0.0, beta1=0.5, clipping_threshold=0.5)):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_adafactor_without_decay_equals_optax_adafactor(run_steps):
    w0 = np.float32(WEIGHTS["matrix"])
    ours = run_steps(optimizers.Adafactor(0.05, weight_decay_rate=0.0).to_optax(), w0, 3)
    reference = optax.adafactor(0.05, min_dim_size_to_factor=1, eps=1e-16)
    theirs = run_steps(reference, w0, 3)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-6)


def test_adafactor_weight_decay_falls_over_n_steps(run_steps):
    # Zero gradients: clipping and parameter scale leave a zero step, only decay acts;
    # rates 0.1 * (2 - step) / 2 for steps 0, 1, 2: 0.1, 0.05, 0.
    opt = optimizers.Adafactor(weight_decay_rate=0.1, weight_decay_n_steps=2)
    history = run_steps(opt.to_optax(), np.float32([2.0]), 3, grad_fn=jnp.zeros_like)
    np.testing.assert_allclose([float(w[0]) for w in history], [1.8, 1.71, 1.71], rtol=1e-6)


def test_adafactor_momentum_in_bfloat16_keeps_a_bfloat16_accumulator():
    opt = optimizers.Adafactor(do_momentum=True, beta1=0.9, momentum_in_bfloat16=True)
    state = opt.to_optax().init(jnp.ones((2, 3)))
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(state) if leaf.shape == (2, 3)}
    assert jnp.dtype(jnp.bfloat16) in dtypes


def test_adafactor_rejects_non_bool_flags():
    with pytest.raises(TypeError, match="factored must be a bool, got 1"):
        optimizers.Adafactor(factored=1)
