"""The compiled training and evaluation steps, and where their arrays live.

Arrays live on a one-axis `Mesh` ('data') of the devices a loop uses:
weights, state, optimizer state and rng replicated, batches split on their
leading (batch) axis. Everything a step takes is put there *before* its
first call, and its outputs come back with the same shardings, so a step
compiles once per batch shape: calls never alternate between uncommitted
and committed arrays, which would make jit compile again.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl import shapes

DATA_AXIS = "data"


def make_mesh(n_devices: int) -> Mesh:
    """A one-axis mesh over the first `n_devices` local devices."""
    devices = jax.local_devices()
    if not 1 <= n_devices <= len(devices):
        raise ValueError(
            f"n_devices must be between 1 and the {len(devices)} local device(s), got n_devices={n_devices}"
        )
    return Mesh(np.asarray(devices[:n_devices]), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
    """Copies `tree` onto every device of `mesh` (fresh buffers: steps donate them)."""
    return jax.device_put(tree, replicated(mesh), may_alias=False)


def put_batch(batch, mesh: Mesh):
    """Puts a batch on `mesh`, split on its leading axis; checks that it divides."""
    n_devices = mesh.devices.size
    for leaf in jax.tree.leaves(batch):
        shape = np.shape(leaf)
        if not shape or shape[0] % n_devices:
            raise ValueError(
                f"a batch of arrays with a leading batch axis divisible by n_devices={n_devices} is "
                f"expected; got an item of shape {tuple(shape)}"
            )
    return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(DATA_AXIS)))


def stack_inputs(batch: tuple, n_in: int):
    """The first `n_in` batch items, packaged as a layer's inputs (bare if one)."""
    if len(batch) < n_in:
        raise ValueError(
            f"the model with its loss or metrics takes {n_in} inputs (e.g. inputs, targets, weights), "
            f"but batches have {len(batch)} items; add loss weights to the batches (e.g. with "
            f"trax_sl.data.AddLossWeights()) or use a loss that takes {len(batch)} inputs"
        )
    return batch[0] if n_in == 1 else tuple(batch[:n_in])


def batch_items(batch, n_in) -> tuple:
    """The batch as a tuple, without the items beyond the first `n_in` (not sent to devices)."""
    batch = tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)
    return batch if n_in >= len(batch) else batch[:n_in]


def input_signature(batch, n_in: int):
    """The signature of a layer's inputs taken from `batch` (its first `n_in` items)."""
    return shapes.signature(stack_inputs(batch_items(batch, n_in), n_in))


def train_step(model_with_loss, tx: optax.GradientTransformation, mesh: Mesh) -> Callable:
    """The jitted step `(weights, state, opt_state, batch, rng) -> (weights, state, opt_state, loss, rng)`.

    `model_with_loss` maps a batch (its first `n_in` items) to a scalar loss.
    Weights, state and optimizer state are donated: their buffers are reused
    for the outputs. The rng comes back split, ready for the next step.
    """
    n_in = model_with_loss.n_in

    def loss_fn(weights, state, batch, rng):
        loss, new_state = model_with_loss.pure_fn(stack_inputs(batch, n_in), weights, state, rng)
        return loss, new_state

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    # Named for jax's compile logs (`jax.log_compiles()` shows "Compiling jit(loop_train_step)").
    def loop_train_step(weights, state, opt_state, batch, rng):
        rng, step_rng = jax.random.split(rng)
        (loss, new_state), grads = grad_fn(weights, state, batch, step_rng)
        updates, opt_state = tx.update(grads, opt_state, weights)
        weights = optax.apply_updates(weights, updates)
        return weights, new_state, opt_state, loss, rng

    return jax.jit(loop_train_step, donate_argnums=(0, 1, 2), out_shardings=replicated(mesh))


def eval_step(model_with_metrics, mesh: Mesh) -> Callable:
    """The jitted `(weights, state, batch, rng) -> metric values` (a float32 vector, one per metric)."""
    n_in, n_out = model_with_metrics.n_in, model_with_metrics.n_out

    def loop_eval_step(weights, state, batch, rng):
        outputs, _ = model_with_metrics.pure_fn(stack_inputs(batch, n_in), weights, state, rng)
        outputs = (outputs,) if n_out == 1 else outputs
        return jax.numpy.stack([jax.numpy.asarray(x, jax.numpy.float32) for x in outputs])

    return jax.jit(loop_eval_step, out_shardings=replicated(mesh))
