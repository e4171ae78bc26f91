"""RMSProp against Trax's rule (average of squares starting at one) and optax.rmsprop."""

import numpy as np
import optax

from trax_sl import optimizers


def test_rms_prop_follows_trax_rule(run_steps):
    lr, gamma, eps = 0.1, 0.9, 1e-8
    history = run_steps(optimizers.RMSProp(lr, gamma=gamma, eps=eps).to_optax(), np.float32([1.0, -3.0]), 3)
    w, avg = np.float64([1.0, -3.0]), np.ones(2)
    for got in history:
        g = 2 * w
        avg = gamma * avg + (1 - gamma) * g**2
        w = w - lr * g / (np.sqrt(avg) + eps)
        np.testing.assert_allclose(got, w, rtol=1e-5)
    # The first step by hand: avg = 0.9 + 0.1 * 4 = 1.3, w1 = 1 - 0.2 / sqrt(1.3).
    np.testing.assert_allclose(history[0][0], 1 - 0.2 / np.sqrt(1.3), rtol=1e-6)


def test_rms_prop_equals_optax_rmsprop(run_steps):
    ours = run_steps(optimizers.RMSProp(0.01).to_optax(), np.float32([[1.0, 2.0]]), 2)
    reference = optax.rmsprop(0.01, decay=0.9, eps=1e-8, initial_scale=1.0, eps_in_sqrt=False)
    theirs = run_steps(reference, np.float32([[1.0, 2.0]]), 2)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-6)
