"""Momentum and SGD against hand-computed Trax updates."""

import numpy as np
import pytest

from trax_sl import optimizers


def test_sgd_one_step(run_steps):
    # w - lr * 2w = 0.8 w.
    (w1,) = run_steps(optimizers.SGD(0.1).to_optax(), np.float32([1.0, -2.0]), 1)
    np.testing.assert_allclose(w1, [0.8, -1.6], rtol=1e-6)


@pytest.mark.parametrize(
    "nesterov, expected",
    [
        # v1 = 2, d1 = 0.9 * 2 + 2 = 3.8, w1 = 0.99 * 1 - 0.1 * 3.8 = 0.61;
        # g2 = 1.22, v2 = 1.8 + 1.22 = 3.02, d2 = 0.9 * 3.02 + 1.22 = 3.938, w2 = 0.6039 - 0.3938.
        (True, [0.61, 0.2101]),
        # v1 = d1 = 2, w1 = 0.99 - 0.2 = 0.79; g2 = 1.58, v2 = d2 = 3.38, w2 = 0.7821 - 0.338.
        (False, [0.79, 0.4441]),
    ],
)
def test_momentum_two_steps_with_trax_weight_decay(run_steps, nesterov, expected):
    opt = optimizers.Momentum(0.1, mass=0.9, weight_decay_rate=0.01, nesterov=nesterov)
    history = run_steps(opt.to_optax(), np.float32([1.0]), 2)
    np.testing.assert_allclose([float(w[0]) for w in history], expected, rtol=1e-5)


def test_momentum_defaults_are_trax_ones():
    opt = optimizers.Momentum()
    assert opt.opt_params == {"learning_rate": 0.01, "mass": 0.9, "weight_decay_rate": 1e-5}
    assert opt.nesterov is True
    assert repr(opt) == "Momentum(learning_rate=0.01, mass=0.9, weight_decay_rate=1e-05, nesterov=True)"


def test_momentum_rejects_a_non_bool_nesterov():
    with pytest.raises(TypeError, match="nesterov must be a bool, got 'yes'"):
        optimizers.Momentum(nesterov="yes")
