"""The compiled training and evaluation steps, and where their arrays live.

Arrays live on the loop's mesh (`trax_sl.mesh.make_mesh`: axes 'data',
'fsdp', 'tensor'). Batches are split on their leading axis over 'data' and
'fsdp'; each weight is split as its layer's logical axes and the rules of
`trax_sl.partitioning` say (replicated on a data-only mesh, its large axes
over 'fsdp', heads and hidden units over 'tensor'); the optimizer state takes
its weight's placement (`opt_state_shardings`); model state and rng are
replicated. The step is one `jax.jit` program over the whole mesh: the loss
is the mean over the global batch, and the partitioner adds the collectives
(the gradient all-reduce, the gathers of sharded weights) it needs.

Weights and optimizer state are made where they live (`sharded_init`: a
jitted init with `out_shardings`), never whole on one device.

In a multi-process run (`jax.distributed`), each process reads its own part
of the global batch; `put_batch` assembles the global array from the parts
(`jax.make_array_from_process_local_data`), process 0's part first.

Everything a step takes is put on the mesh *before* its first call, and its
outputs come back with the same shardings, so a step compiles once per batch
shape.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl import layers as tl
from trax_sl import partitioning, shapes
from trax_sl.mesh import BATCH_AXES


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a whole copy of an array on every device of mesh."""
    return NamedSharding(mesh, PartitionSpec())


def put_replicated(tree, mesh: Mesh):
    """Copies `tree` onto every device of `mesh` (fresh buffers: steps donate them).

    In a multi-process run every process must pass the same values.
    """
    return jax.device_put(tree, replicated(mesh), may_alias=False)


def put_sharded(tree, shardings):
    """Copies `tree` onto its `shardings` (fresh buffers: steps donate them).

    In a multi-process run every process must pass the same values.
    """
    return jax.device_put(tree, shardings, may_alias=False)


def weight_shardings(layer: tl.Layer, weights, mesh: Mesh):
    """A NamedSharding per array of `layer`'s `weights` (arrays or signatures), from its logical axes."""
    return partitioning.weight_shardings(layer.weight_axes(weights), weights, mesh)


def sharded_init(layer: tl.Layer, signature, rng, mesh: Mesh):
    """`(weights, state, weight shardings)` of `layer`, made directly on their devices.

    One jitted init whose outputs are already split as `weight_shardings`
    says: no device ever holds the whole model. State is replicated.
    """
    signature = tl.base.as_signature(signature)
    weights_sig, _ = layer.weights_and_state_signature(signature)
    shardings = weight_shardings(layer, weights_sig, mesh)

    def init(rng):
        weights, state, _ = layer.init_tree(signature, rng)
        return weights, state

    weights, state = jax.jit(init, out_shardings=(shardings, replicated(mesh)))(rng)
    return weights, state, shardings


def opt_state_shardings(tx: optax.GradientTransformation, weights, shardings, mesh: Mesh):
    """The optimizer state's shardings: a slot shaped like a weight (Adam's mu, nu) is placed like it.

    Slots are found by their tree path ending with the weight's path (as
    optax's states hold trees shaped like the weights); anything else (step
    counts, factored second moments) is replicated.
    """
    by_path = {
        _path_key(path): (tuple(w.shape), sharding)
        for (path, w), sharding in zip(
            jax.tree_util.tree_flatten_with_path(weights)[0], jax.tree.leaves(shardings)
        )
    }
    repl = replicated(mesh)

    def placed(path, slot):
        key = _path_key(path)
        for start in range(len(key)):
            shape, sharding = by_path.get(key[start:], (None, None))
            if shape == tuple(slot.shape):
                return sharding
        return repl

    return jax.tree_util.tree_map_with_path(placed, jax.eval_shape(tx.init, weights))


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(entry) for entry in path)


def sharded_opt_init(tx: optax.GradientTransformation, weights, shardings, mesh: Mesh):
    """`(opt_state, its shardings)`: `tx.init(weights)` made directly on its devices."""
    opt_shardings = opt_state_shardings(tx, weights, shardings, mesh)
    return jax.jit(tx.init, out_shardings=opt_shardings)(weights), opt_shardings


def batch_shards(mesh: Mesh) -> int:
    """How many slices a batch is split into: the product of the batch axes' sizes."""
    return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def put_batch(batch, mesh: Mesh):
    """Puts this process's part of a batch on `mesh`, split on its leading axis; checks that it divides.

    With one process the part is the whole batch. With several, the global
    batch is the processes' parts one after the other.
    """
    n_processes = len({device.process_index for device in mesh.devices.flat})
    n_shards = batch_shards(mesh)
    per_process = n_shards // n_processes
    for leaf in jax.tree.leaves(batch):
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(f"batch items must have a leading batch axis, got a scalar item {leaf!r}")
        if shape[0] % per_process:
            axes = " x ".join(f"{axis}={mesh.shape[axis]}" for axis in BATCH_AXES)
            size, where = f"the global batch size {shape[0]}", ""
            if n_processes > 1:
                size = f"the global batch size {shape[0] * n_processes} ({shape[0]} per process)"
                where = f" ({per_process} per process)"
            raise ValueError(
                f"{size} does not divide by the {n_shards} batch slices of the mesh ({axes}){where}: "
                f"each takes an equal slice of the batch; use a batch size that is a multiple of "
                f"{n_shards}, or a mesh (n_devices, mesh_shape) whose batch axes divide it; got a batch "
                f"item of shape {tuple(shape)}"
            )
    sharding = _batch_sharding(mesh)
    if n_processes == 1:  # One transfer for the whole batch: the cheapest host work per step.
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda leaf: jax.make_array_from_process_local_data(sharding, leaf), batch)


@functools.lru_cache(maxsize=8)
def _batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


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


def train_step(
    model_with_loss,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    weight_shardings,
    opt_shardings,
    grad_accum_steps: int = 1,
) -> Callable:
    """The jitted step `(weights, state, opt_state, batch, rng) -> (weights, state, opt_state, loss, rng)`.

    `model_with_loss` maps a batch (its first `n_in` items) to a scalar loss.
    Weights, state and optimizer state are donated: their buffers are reused
    for the outputs, which keep the given shardings (state, loss and rng
    replicated). The rng comes back split, ready for the next step.

    With `grad_accum_steps` k > 1 the batch is cut into k micro-batches (rows
    i, i + k, i + 2k, ... make micro-batch i, so each device keeps its own
    rows) and a `lax.scan` inside the one step sums their gradients in
    float32 into one weights-shaped accumulator; the update then uses the mean
    gradient and the loss is the mean of the micro-batch losses. Activations
    are those of one micro-batch. This equals the step on the whole batch
    when every micro-batch carries the same total loss weight (unpadded or
    packed batches; with padding, micro-batches still count equally). Model
    state (e.g. BatchNorm statistics) goes through the micro-batches in turn,
    and each gets its own dropout key.
    """
    n_in = model_with_loss.n_in

    def loss_fn(weights, state, batch, rng):
        with partitioning.batch_sharded_activations(mesh):
            loss, new_state = model_with_loss.pure_fn(stack_inputs(batch, n_in), weights, state, rng)
        return loss, new_state

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum_steps < 1:
        raise ValueError(f"grad_accum_steps must be >= 1, got {grad_accum_steps}")
    if grad_accum_steps > 1:
        grad_fn = _accumulated(grad_fn, grad_accum_steps, mesh)

    # Named for jax's compile logs (`jax.log_compiles()` shows "Compiling jit(loop_train_step)").
    def loop_train_step(weights, state, opt_state, batch, rng):
        rng, step_rng = jax.random.split(rng)
        (loss, new_state), grads = grad_fn(weights, state, batch, step_rng)
        updates, opt_state = tx.update(grads, opt_state, weights)
        weights = optax.apply_updates(weights, updates)
        return weights, new_state, opt_state, loss, rng

    repl = replicated(mesh)
    return jax.jit(
        loop_train_step,
        donate_argnums=(0, 1, 2),
        out_shardings=(weight_shardings, repl, opt_shardings, repl, repl),
    )


def _micro_batches(batch, k: int, mesh: Mesh):
    """`[B, ...]` leaves as `[k, B // k, ...]`: micro-batch i holds rows i, i + k, ... (raises unless k divides B)."""

    def split(leaf):
        rows = leaf.shape[0]
        if rows % k:
            raise ValueError(
                f"grad_accum_steps={k} must divide the batch size, got a batch item of shape {tuple(leaf.shape)}"
            )
        micro = leaf.reshape((rows // k, k) + leaf.shape[1:]).swapaxes(0, 1)
        spec = PartitionSpec(None, BATCH_AXES) if (rows // k) % batch_shards(mesh) == 0 else PartitionSpec()
        return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, spec))

    return jax.tree.map(split, batch)


def _accumulated(grad_fn, k: int, mesh: Mesh):
    """`grad_fn` over k micro-batches of its batch: the mean loss and gradient (summed in float32), in a scan."""

    def accumulated(weights, state, batch, rng):
        def one(carry, micro):
            state, total_loss, total_grads = carry
            batch_i, i = micro
            (loss, state), grads = grad_fn(weights, state, batch_i, jax.random.fold_in(rng, i))
            total_grads = jax.tree.map(lambda t, g: t + g.astype(t.dtype), total_grads, grads)
            return (state, total_loss + loss.astype(jnp.float32), total_grads), None

        zeros = jax.tree.map(lambda w: jnp.zeros(w.shape, jnp.float32), weights)
        start = (state, jnp.zeros((), jnp.float32), zeros)
        micro = (_micro_batches(batch, k, mesh), jnp.arange(k))
        (state, total_loss, total_grads), _ = jax.lax.scan(one, start, micro)
        grads = jax.tree.map(lambda t, w: (t / k).astype(w.dtype), total_grads, weights)
        return (total_loss / k, state), grads

    return accumulated


def eval_step(model_with_metrics, mesh: Mesh) -> Callable:
    """The jitted `(weights, state, batch, rng) -> metric values` (a float32 vector, one per metric)."""
    n_in, n_out = model_with_metrics.n_in, model_with_metrics.n_out

    def loop_eval_step(weights, state, batch, rng):
        with partitioning.batch_sharded_activations(mesh):
            outputs, _ = model_with_metrics.pure_fn(stack_inputs(batch, n_in), weights, state, rng)
        outputs = (outputs,) if n_out == 1 else outputs
        return jax.numpy.stack([jax.numpy.asarray(x, jax.numpy.float32) for x in outputs])

    return jax.jit(loop_eval_step, out_shardings=replicated(mesh))
