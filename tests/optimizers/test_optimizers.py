"""What every optimizer shares: optax building, schedules, clipping, trees with SHARED, gin."""

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from trax_sl import optimizers
from trax_sl.layers import base
from trax_sl.supervised import lr_schedules

ALL_OPTIMIZERS = [
    optimizers.SGD,
    optimizers.Momentum,
    optimizers.RMSProp,
    optimizers.Adam,
    optimizers.AdamW,
    optimizers.Adafactor,
    optimizers.SM3,
]


@gin.configurable(module="tests.optimizers")
def train_for_test(optimizer=None, lr_schedule_fn=None):
    return optimizer, lr_schedule_fn


@pytest.fixture
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_to_optax_gives_a_gradient_transformation_with_the_rate_in_its_state():
    tx = optimizers.Adam(0.01).to_optax()
    assert isinstance(tx, optax.GradientTransformation)
    state = tx.init(jnp.ones(3))
    np.testing.assert_allclose(state.hyperparams["learning_rate"], 0.01)
    np.testing.assert_allclose(state.hyperparams["weight_decay_rate"], 1e-5)
    assert state.hyperparams["learning_rate"].dtype == jnp.float32


def test_schedule_drives_the_learning_rate_per_step(run_steps):
    # lr(step) = 0.1 * (step + 1): w1 = 1 - 0.1 * 2 = 0.8, w2 = 0.8 - 0.2 * 1.6 = 0.48.
    tx = optimizers.SGD().to_optax(lambda step: 0.1 * (step + 1))
    history = run_steps(tx, np.float32([1.0]), 2)
    np.testing.assert_allclose([float(w[0]) for w in history], [0.8, 0.48], rtol=1e-6)


def test_step_offset_numbers_the_first_update(run_steps):
    # With step_offset=1 the schedule sees 1, 2: lr 0.2 then 0.3; w1 = 0.6, w2 = 0.6 - 0.36.
    tx = optimizers.SGD().to_optax(lambda step: 0.1 * (step + 1), step_offset=1)
    history = run_steps(tx, np.float32([1.0]), 2)
    np.testing.assert_allclose([float(w[0]) for w in history], [0.6, 0.24], rtol=1e-6)


def test_multifactor_schedule_inside_a_jitted_update():
    schedule = lr_schedules.multifactor(factors="constant * linear_warmup", constant=1.0, warmup_steps=4)
    tx = optimizers.SGD().to_optax(schedule)
    weights = jnp.ones(2)
    state = tx.init(weights)
    update = jax.jit(tx.update)
    rates = []
    for _ in range(3):
        _, state = update(jnp.ones(2), state, weights)
        rates.append(float(state.hyperparams["learning_rate"]))
    assert rates == [0.0, 0.25, 0.5]


def test_clip_grad_norm_clips_the_global_norm_first(run_steps):
    # Gradient [3, 4] has norm 5; clipped to norm 1 it is [0.6, 0.8].
    tx = optimizers.SGD(1.0, clip_grad_norm=1.0).to_optax()
    (w1,) = run_steps(tx, np.float32([0.0, 0.0]), 1, grad_fn=lambda w: jnp.array([3.0, 4.0]))
    np.testing.assert_allclose(w1, [-0.6, -0.8], rtol=1e-6)


def test_l2_norm_and_clip_grads():
    tree = (jnp.array([3.0]), base.SHARED, (), {"b": jnp.array([[4.0]])})
    np.testing.assert_allclose(optimizers.l2_norm(tree), 5.0)
    clipped = optimizers.clip_grads(tree, 2.5)
    np.testing.assert_allclose(clipped[0], [1.5])
    np.testing.assert_allclose(clipped[3]["b"], [[2.0]])
    assert clipped[1] is base.SHARED


@pytest.mark.parametrize("optimizer_class", ALL_OPTIMIZERS)
def test_trees_with_shared_markers_and_empty_entries(optimizer_class, run_steps):
    weights = (
        jnp.array([1.0, -2.0]),
        base.SHARED,
        (),
        (jnp.ones((2, 3)), None),
        {"empty": ()},
    )
    tx = optimizer_class().to_optax()
    state = tx.init(weights)
    # Optimizer state only for the two arrays: SHARED, () and None have no leaves.
    assert {leaf.shape for leaf in jax.tree.leaves(state)} <= {(), (1,), (2,), (3,), (2, 3)}
    (new_weights,) = run_steps(tx, weights, 1)
    assert jax.tree.structure(new_weights) == jax.tree.structure(weights)
    assert new_weights[1] is base.SHARED
    # Every optimizer moves the weights of sum(w**2) toward zero.
    assert float(jnp.abs(new_weights[0][0])) < 1.0
    assert float(jnp.abs(new_weights[3][0][0, 0])) < 1.0


@pytest.mark.parametrize("optimizer_class", ALL_OPTIMIZERS)
def test_bfloat16_weights_keep_their_dtype(optimizer_class, run_steps):
    (w1,) = run_steps(optimizer_class().to_optax(), jnp.ones((2, 2), jnp.bfloat16), 1)
    assert w1.dtype == jnp.bfloat16


def test_repr_lists_hyperparameters():
    assert repr(optimizers.SGD(0.5, clip_grad_norm=2.0)) == "SGD(learning_rate=0.5, clip_grad_norm=2.0)"
    assert repr(optimizers.SM3()).endswith("weight_decay=0.0, momentum_type=EMA)")


def test_bad_hyperparameters_raise_clear_errors():
    with pytest.raises(TypeError, match=r"Adam: learning_rate must be a number.*to_optax\(lr_schedule\)"):
        optimizers.Adam(learning_rate=lambda step: 0.1)
    with pytest.raises(TypeError, match="RMSProp: gamma must be a number, got '0.9'"):
        optimizers.RMSProp(gamma="0.9")
    with pytest.raises(ValueError, match="SGD: clip_grad_norm must be > 0, got clip_grad_norm=0"):
        optimizers.SGD(clip_grad_norm=0)
    with pytest.raises(TypeError, match="lr_schedule must be a function"):
        optimizers.SGD().to_optax(0.1)


def test_gin_configures_optimizers_by_trax_names(clean_gin):
    gin.parse_config(
        """
        trax_sl.optimizers.Adam.learning_rate = 0.02
        Adam.weight_decay_rate = 0.0
        optimizers.Momentum.nesterov = False
        """
    )
    adam = optimizers.Adam()
    assert (adam.learning_rate, adam.opt_params["weight_decay_rate"]) == (0.02, 0.0)
    assert optimizers.Momentum().nesterov is False


def test_gin_passes_optimizer_classes_and_schedules(clean_gin):
    gin.parse_config(
        """
        train_for_test.optimizer = @trax_sl.optimizers.Adafactor
        train_for_test.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
        Adafactor.beta1 = 0.5
        multifactor.constant = 0.5
        multifactor.factors = 'constant * linear_warmup'
        lr_schedules.multifactor.warmup_steps = 10
        """
    )
    optimizer_class, lr_schedule_fn = train_for_test()
    assert optimizer_class is optimizers.Adafactor
    assert optimizer_class().opt_params["beta1"] == 0.5
    np.testing.assert_allclose(lr_schedule_fn()(5), 0.25)
