"""Gradient accumulation (`grad_accum_steps`): micro-batches inside the one compiled step."""

import jax
import numpy as np
import optax
import pytest

from tests.supervised.test_training import copy_inputs, make_loop
from trax_sl import layers as tl
from trax_sl import mesh as mesh_lib
from trax_sl import shapes
from trax_sl.supervised import train_step


def _close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6), a, b)


def test_accumulated_steps_equal_whole_batch_steps_on_two_devices():
    def trained(k):
        loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, n_devices=2, grad_accum_steps=k)
        loop.run(3)
        return loop.model.weights, [loss for _, loss in loop.history.get("train", "metrics/loss")]

    whole_weights, whole_losses = trained(1)
    accumulated_weights, accumulated_losses = trained(4)  # 4 micro-batches of 2 rows, 1 per device.
    _close(whole_weights, accumulated_weights)
    np.testing.assert_allclose(accumulated_losses, whole_losses, rtol=2e-5)


def test_micro_batch_i_holds_rows_i_i_plus_k_and_so_on():
    mesh = mesh_lib.make_mesh(None, 2)
    batch = (np.arange(8).reshape((8, 1)), np.arange(8))
    micro = jax.jit(lambda b: train_step._micro_batches(b, 4, mesh))(batch)
    np.testing.assert_array_equal(micro[1], [[0, 4], [1, 5], [2, 6], [3, 7]])
    assert micro[0].shape == (4, 2, 1)


def _step_and_args(k, mesh, tx):
    model = tl.Serial(tl.Embedding(16, 64), tl.Dense(256), tl.Relu(), tl.Dense(16), tl.LogSoftmax())
    layer = tl.Serial(model, tl.CrossEntropyLoss())
    tokens = np.random.default_rng(0).integers(0, 16, (64, 32)).astype(np.int32)
    batch = (tokens, (tokens * 3) % 16, np.ones((64, 32), np.float32))
    weights, state, shardings = train_step.sharded_init(
        layer, shapes.signature(batch), jax.random.PRNGKey(0), mesh
    )
    opt_state, opt_shardings = train_step.sharded_opt_init(tx, weights, shardings, mesh)
    step = train_step.train_step(layer, tx, mesh, shardings, opt_shardings, grad_accum_steps=k)
    return step, (weights, state, opt_state, train_step.put_batch(batch, mesh), jax.random.PRNGKey(1))


def test_the_sgd_update_is_the_whole_batch_mean_gradient_on_four_devices():
    mesh = mesh_lib.make_mesh(None, 4)
    # Each call makes its own (equal) arguments: a step donates them.
    whole, accumulated = (
        step(*args) for step, args in (_step_and_args(k, mesh, optax.sgd(0.5)) for k in (1, 4))
    )
    _close(whole[0], accumulated[0])  # The weights: SGD moves them by the mean gradient itself.
    np.testing.assert_allclose(accumulated[3], whole[3], rtol=1e-6)  # The loss.


def test_accumulation_keeps_one_micro_batch_of_activations():
    mesh = mesh_lib.make_mesh(None, 1)
    whole, accumulated = (
        step.lower(*args).compile()
        for step, args in (_step_and_args(k, mesh, optax.adam(1e-3)) for k in (1, 8))
    )
    # The [64, 32, 256] hidden activations (2 MiB) and their gradients shrink to one micro-batch's.
    assert accumulated.memory_analysis().temp_size_in_bytes < whole.memory_analysis().temp_size_in_bytes / 3


def test_bad_grad_accum_steps_read_clearly():
    with pytest.raises(ValueError, match="grad_accum_steps must be an integer >= 1, got 0"):
        make_loop(eval_tasks=False, grad_accum_steps=0)
    loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, n_devices=1, grad_accum_steps=3)
    assert next(copy_inputs().train_stream(1))[0].shape[0] == 8
    with pytest.raises(ValueError, match=r"grad_accum_steps=3 must divide the batch size, got .*\(8, 16\)"):
        loop.run(1)
