"""Adam (Trax's rule: weight decay not scaled by the learning rate) and AdamW (optax.adamw)."""

import jax.numpy as jnp
import numpy as np
import optax

from trax_sl import optimizers


def trax_adam(w, n_steps, lr, wd, b1, b2, eps):
    """Trax's Adam update on sum(w**2), step numbers from 0 (as in trainer_lib)."""
    w, m, v, history = np.float64(w), 0.0, 0.0, []
    for step in range(n_steps):
        g = 2 * w
        m = (1 - b1) * g + b1 * m
        v = (1 - b2) * g**2 + b2 * v
        mhat, vhat = m / (1 - b1 ** (step + 1)), v / (1 - b2 ** (step + 1))
        w = (1 - wd) * w - lr * mhat / (np.sqrt(vhat) + eps)
        history.append(w)
    return history


def test_adam_follows_trax_rule_with_weight_decay(run_steps):
    w0 = np.float32([1.0, -2.0, 0.5])
    opt = optimizers.Adam(0.1, weight_decay_rate=0.01, b1=0.8, b2=0.9, eps=1e-3)
    history = run_steps(opt.to_optax(), w0, 3)
    for got, expected in zip(history, trax_adam(w0, 3, 0.1, 0.01, 0.8, 0.9, 1e-3)):
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    # First step by hand: mhat = g, vhat = g**2, so w1 = 0.99 w - 0.1 * g / (|g| + 1e-3).
    np.testing.assert_allclose(history[0][0], 0.99 - 0.1 * 2 / 2.001, rtol=1e-6)


def test_adam_without_decay_equals_optax_adam(run_steps):
    w0 = np.float32([[1.0, -2.0], [3.0, 0.25]])
    ours = run_steps(optimizers.Adam(0.01, weight_decay_rate=0.0).to_optax(), w0, 3)
    theirs = run_steps(optax.adam(0.01, b1=0.9, b2=0.999, eps=1e-5), w0, 3)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-6)


def test_adam_weight_decay_does_not_scale_with_the_learning_rate(run_steps):
    # With zero gradients only the decay acts: w <- (1 - wd) w whatever the rate.
    opt = optimizers.Adam(learning_rate=10.0, weight_decay_rate=0.1)
    history = run_steps(opt.to_optax(), np.float32([2.0]), 2, grad_fn=jnp.zeros_like)
    np.testing.assert_allclose([float(w[0]) for w in history], [1.8, 1.62], rtol=1e-6)


def test_adam_defaults_are_trax_ones():
    assert optimizers.Adam().opt_params == {
        "learning_rate": 0.0001,
        "weight_decay_rate": 1e-5,
        "b1": 0.9,
        "b2": 0.999,
        "eps": 1e-5,
    }
    assert optimizers.Adam().clip_grad_norm is None


def test_adamw_equals_optax_adamw(run_steps):
    w0 = np.float32([1.0, -2.0, 0.5])
    ours = run_steps(optimizers.AdamW(0.05, weight_decay_rate=0.1).to_optax(), w0, 3)
    theirs = run_steps(optax.adamw(0.05, b1=0.9, b2=0.999, eps=1e-5, weight_decay=0.1), w0, 3)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-6)


def test_adamw_decay_scales_with_the_learning_rate(run_steps):
    # Zero gradients: w <- w - lr * wd * w = (1 - 0.5 * 0.1) w.
    opt = optimizers.AdamW(learning_rate=0.5, weight_decay_rate=0.1)
    (w1,) = run_steps(opt.to_optax(), np.float32([2.0]), 1, grad_fn=jnp.zeros_like)
    np.testing.assert_allclose(w1, [1.9], rtol=1e-6)
