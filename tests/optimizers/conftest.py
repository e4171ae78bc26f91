"""Helpers for the optimizer tests: run a few jitted updates on the quadratic sum(w**2)."""

import jax
import jax.numpy as jnp
import optax
import pytest


def _quadratic_grads(weights):
    return jax.grad(lambda w: sum(jnp.sum(x**2) for x in jax.tree.leaves(w)))(weights)


@pytest.fixture
def run_steps():
    """Returns run(tx, weights, n_steps, grad_fn=grad of sum(w**2)) -> weights after each step."""

    def run(tx, weights, n_steps, grad_fn=_quadratic_grads):
        state = tx.init(weights)

        @jax.jit
        def step(weights, state):
            updates, state = tx.update(grad_fn(weights), state, weights)
            return optax.apply_updates(weights, updates), state

        history = []
        for _ in range(n_steps):
            weights, state = step(weights, state)
            history.append(weights)
        return history

    return run
