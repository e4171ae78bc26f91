"""Trax's per-tree optimizer API (slots, tree_init, tree_update) and its Trainer, on optax underneath."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import trax_sl.layers as tl
from trax_sl import optimizers


def test_slots_as_trax_optimizers_test():
    weight_tree = np.arange(15, dtype=np.float32).reshape((3, 5))
    sgd = optimizers.SGD(0.01)
    assert sgd.slots is None
    sgd.tree_init(weight_tree)
    assert sgd.slots == (None,)  # SGD keeps nothing per weight.
    momentum = optimizers.Momentum(0.01)
    assert momentum.slots is None
    momentum.tree_init(weight_tree)
    assert isinstance(momentum.slots, tuple) and len(momentum.slots) == 1
    assert momentum.slots[0].shape == (3, 5)


def test_adam_slots_are_m_and_v_per_array_and_tree_update_equals_optax():
    weights = {"w": jnp.ones((2, 3)), "b": (jnp.zeros(3),)}
    grads = {"w": jnp.full((2, 3), 0.5), "b": (jnp.ones(3),)}
    adam = optimizers.Adam(0.1)
    slots, opt_params = adam.tree_init(weights)
    assert opt_params["learning_rate"] == 0.1 and len(slots) == 2
    assert all(len(slot) == 2 and slot[0].shape == slot[1].shape for slot in slots)  # Trax's (m, v)
    tx = adam.to_optax()
    opt_state, expected = tx.init(weights), weights
    update = jax.jit(lambda *args: adam.tree_update(*args, store_slots=False))
    got = weights
    for step in range(3):
        updates, opt_state = tx.update(grads, opt_state, expected)
        expected = optax.apply_updates(expected, updates)
        got, slots, stats = update(step, grads, got, slots, opt_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
    np.testing.assert_allclose(stats["gradients_l2"], np.sqrt(6 * 0.25 + 3), rtol=1e-6)
    # The first m of w after three steps of gradient 0.5: 0.5 * (1 - 0.9**3).
    np.testing.assert_allclose(slots[1][0], np.full((2, 3), 0.5 * (1 - 0.9**3)), rtol=1e-6)


def test_tree_update_takes_the_learning_rate_from_opt_params_and_stores_slots():
    sgd = optimizers.SGD(0.01)
    slots, opt_params = sgd.tree_init(jnp.ones(2))
    new_weights, _, stats = sgd.tree_update(
        0, jnp.ones(2), jnp.ones(2), slots, {**opt_params, "learning_rate": 0.5}
    )
    np.testing.assert_allclose(new_weights, [0.5, 0.5])
    assert float(stats["weights_l2"]) == pytest.approx(np.sqrt(2))
    with pytest.raises(ValueError, match="got 2 slots for a weight tree of 1 arrays"):
        sgd.tree_update(0, jnp.ones(2), jnp.ones(2), (None, None), opt_params)


def test_trainer_one_step_as_trax_trainer_test():
    inputs = np.arange(8).reshape((8, 1)).astype(np.float32)
    batch = (inputs, np.pi * np.ones_like(inputs), np.ones_like(inputs))
    model_with_loss = tl.Serial(tl.Dense(1), tl.L2Loss())
    model_with_loss.init(batch)
    w, b = (np.asarray(a) for a in model_with_loss.weights[0])
    optimizer = optimizers.SGD(0.01)
    optimizer.tree_init(model_with_loss.weights)
    trainer = optimizers.Trainer(model_with_loss, optimizer)
    loss, stats = trainer.one_step(batch, jax.random.PRNGKey(0))
    # By hand: L2Loss is the weighted mean of squared errors; one SGD step on it.
    error = inputs @ w + b[None] - np.pi
    assert float(loss) == pytest.approx(float(np.mean(error**2)), rel=1e-5)
    assert float(stats["loss"]) == float(loss)
    grad_w, grad_b = 2 * inputs.T @ error / 8, 2 * np.mean(error, axis=0)
    new_w, new_b = model_with_loss.weights[0]
    np.testing.assert_allclose(new_w, w - 0.01 * grad_w, rtol=1e-5)
    np.testing.assert_allclose(new_b, b - 0.01 * grad_b, rtol=1e-5)
    losses = [float(trainer.one_step(batch, jax.random.PRNGKey(0), step=i)[0]) for i in range(1, 4)]
    assert losses == sorted(losses, reverse=True)
    with pytest.raises(ValueError, match="adasum"):
        optimizers.Trainer(model_with_loss, optimizer, adasum=True)
