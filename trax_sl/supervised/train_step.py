"""The compiled training and evaluation steps, and where their arrays live.

Training is data parallel: arrays live on a one-axis `Mesh` ('data', from
`trax_sl.mesh`) of the devices a loop uses (by default every device of every
process): weights, state, optimizer state and rng replicated, batches split
on their leading (batch) axis, so each device computes on its slice of the
global batch.
The step is one `jax.jit` program over the whole mesh: the loss is the mean
over the global batch, and the partitioner adds the one all-reduce its
gradient needs (no pmap, no hand-written pmean to apply twice).

In a multi-process run (`jax.distributed`), each process reads its own part
of the global batch; `put_batch` assembles the global array from the parts
(`jax.make_array_from_process_local_data`), process 0's part first.

Everything a step takes is put on the mesh *before* its first call, and its
outputs come back with the same shardings, so a step compiles once per batch
shape: calls never alternate between uncommitted and committed arrays, which
would make jit compile again.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl import shapes
from trax_sl.mesh import DATA_AXIS, data_parallel_mesh

# The loop's mesh: the first `n_devices` local devices of every process, batches split on DATA_AXIS.
make_mesh = data_parallel_mesh


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
    """Copies `tree` onto every device of `mesh` (fresh buffers: steps donate them).

    In a multi-process run every process must pass the same values.
    """
    return jax.device_put(tree, replicated(mesh), may_alias=False)


def put_batch(batch, mesh: Mesh):
    """Puts this process's part of a batch on `mesh`, split on its leading axis; checks that it divides.

    With one process the part is the whole batch. With several, the global
    batch is the processes' parts one after the other.
    """
    n_processes = len({device.process_index for device in mesh.devices.flat})
    n_local = sum(device.process_index == jax.process_index() for device in mesh.devices.flat)
    for leaf in jax.tree.leaves(batch):
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(f"batch items must have a leading batch axis, got a scalar item {leaf!r}")
        if shape[0] % n_local:
            size, devices, per_process = f"the global batch size {shape[0]}", f"n_devices={n_local}", ""
            if n_processes > 1:
                size = f"the global batch size {shape[0] * n_processes} ({shape[0]} per process)"
                devices = f"the {mesh.devices.size} devices (n_devices={n_local} per process)"
                per_process = " per process"
            raise ValueError(
                f"{size} does not divide by {devices}: each device takes an equal slice of the batch; "
                f"use a batch size{per_process} that is a multiple of {n_local}, or an n_devices that "
                f"divides it; got a batch item of shape {tuple(shape)}"
            )
    sharding = _batch_sharding(mesh)
    if n_processes == 1:  # One transfer for the whole batch: the cheapest host work per step.
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), batch)


@functools.lru_cache(maxsize=8)
def _batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


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
