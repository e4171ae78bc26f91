"""SM3 against Trax's rule (momentum types, weight decay) and optax.sm3."""

import numpy as np
import optax
import pytest

from trax_sl import optimizers
from trax_sl.optimizers import MomentumType


def trax_sm3(w, n_steps, lr, momentum, wd, momentum_type):
    """Trax's SM3 (second_moment_averaging=1) on sum(w**2), for rank 1 and 2 weights."""
    w = np.float64(w)
    accumulators = [np.zeros(d) for d in w.shape]
    m = np.zeros_like(w)
    history = []
    for _ in range(n_steps):
        g = 2 * w
        if w.ndim == 1:
            acc = accumulators[0] + g * g
        else:
            acc = np.minimum(accumulators[0][:, None], accumulators[1][None, :]) + g * g
        p = np.where(acc > 0, 1 / (np.sqrt(acc) + 1e-16), 0) * g + wd * w
        if momentum_type == MomentumType.EMA:
            m = (1 - momentum) * p + momentum * m
            update = m
        else:
            m = p + momentum * m
            update = p + momentum * m if momentum_type == MomentumType.NESTEROV else m
        w = w - lr * update
        accumulators = [acc] if w.ndim == 1 else [acc.max(axis=1), acc.max(axis=0)]
        history.append(w)
    return history


@pytest.mark.parametrize("momentum_type", list(MomentumType))
@pytest.mark.parametrize("w0", [[1.0, -2.0], [[1.0, -2.0, 0.5], [3.0, 0.25, -1.0]]])
def test_sm3_follows_trax_rule(run_steps, momentum_type, w0):
    opt = optimizers.SM3(0.1, momentum=0.5, weight_decay=0.01, momentum_type=momentum_type)
    history = run_steps(opt.to_optax(), np.float32(w0), 3)
    for got, expected in zip(history, trax_sm3(w0, 3, 0.1, 0.5, 0.01, momentum_type)):
        np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_sm3_first_step_by_hand(run_steps):
    # acc = g**2, so p = sign(g); with EMA momentum m = (1 - 0.9) * sign(g).
    (w1,) = run_steps(optimizers.SM3(0.1).to_optax(), np.float32([1.0, -2.0]), 1)
    np.testing.assert_allclose(w1, [1.0 - 0.01, -2.0 + 0.01], rtol=1e-6)


def test_sm3_without_decay_equals_optax_sm3(run_steps):
    w0 = np.float32([[1.0, -2.0], [3.0, 0.25]])
    ours = run_steps(optimizers.SM3(0.05, momentum=0.9).to_optax(), w0, 3)
    theirs = run_steps(optax.sm3(0.05, momentum=0.9), w0, 3)
    np.testing.assert_allclose(ours[-1], theirs[-1], rtol=1e-6)


def test_sm3_rejects_an_unknown_momentum_type():
    with pytest.raises(ValueError, match="momentum_type must be one of"):
        optimizers.SM3(momentum_type=7)
