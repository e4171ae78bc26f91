"""A Loop's tasks joined to its model: one compiled step and the task's own arrays per task.

A `Trainer` runs a `TrainTask`: `Serial(model, loss_layer)`, its jitted
train step, and the arrays only this task has (the loss layer's weights and
state, the optimizer state). An `Evaluator` runs an `EvalTask`:
`Serial(eval_model, Branch(*metrics))`, its jitted metrics, and the metric
layers' weights and state. The model's weights and state are not theirs: the
`Loop` holds them and passes them to every step. All arrays live on the
loop's mesh (see `train_step`).
"""

from __future__ import annotations

import jax

from trax_sl import layers as tl
from trax_sl.supervised import train_step
from trax_sl.supervised.tasks import EvalTask, TrainTask


class Trainer:
    """One training task's compiled step and its own arrays (loss weights, optimizer state)."""

    def __init__(self, task: TrainTask, layer: tl.Layer, step_fn, ends_weights, ends_state, opt_state):
        self.task = task
        self.layer = layer  # Serial(model, loss_layer)
        self.step_fn = step_fn
        self.ends_weights = ends_weights
        self.ends_state = ends_state
        self.opt_state = opt_state
        self.pending_losses: list = []  # Since the last logged step; device scalars or floats.


class Evaluator:
    """One eval task's compiled metrics and the metric layers' own weights and state."""

    def __init__(self, task: EvalTask, layer: tl.Layer, step_fn, ends_weights, ends_state):
        self.task = task
        self.layer = layer  # Serial(eval_model, Branch(*metrics))
        self.step_fn = step_fn
        self.ends_weights = ends_weights
        self.ends_state = ends_state


def init_trainers(
    model: tl.Layer, model_input_signature, tasks: list[TrainTask], mesh: jax.sharding.Mesh, rng
):
    """Makes a `Trainer` per task, and the model's weights and state unless it has them.

    The model keeps weights it already has (e.g. from `init_from_file`), and
    its state if that fits `model_input_signature` (the first task's model
    inputs); otherwise both come from initializing `Serial(model, loss_layer)`
    on the first task's sample batch.

    Returns:
        `(model_weights, model_state, trainers)`, all on `mesh`.
    """
    model_weights = model_state = None
    if jax.tree.leaves(model.weights):  # Given, e.g. by init_from_file: kept.
        model_weights = model.weights
        state_sig = model.weights_and_state_signature(model_input_signature)[1]
        same = jax.tree.structure(model.state) == jax.tree.structure(state_sig)
        model_state = model.state if same else model.init(model_input_signature, rng)[1]
    trainers = []
    for index, task in enumerate(tasks):
        layer = tl.Serial(model, task.loss_layer)
        signature = train_step.input_signature(task.sample_batch, layer.n_in)
        if model_weights is None:
            weights, state = layer.init(signature, rng=jax.random.fold_in(rng, index))
            model_weights, model_state = weights[0], state[0]
            ends_weights, ends_state = weights[1], state[1]
        else:
            ends_weights, ends_state = _init_ends(layer, signature, jax.random.fold_in(rng, index))
        tx = task.optax_transformation
        opt_state = tx.init((model_weights, ends_weights))
        trainers.append(
            Trainer(
                task,
                layer,
                train_step.train_step(layer, tx, mesh),
                train_step.put_replicated(ends_weights, mesh),
                train_step.put_replicated(ends_state, mesh),
                train_step.put_replicated(opt_state, mesh),
            )
        )
    model_weights, model_state = train_step.put_replicated((model_weights, model_state), mesh)
    return model_weights, model_state, trainers


def init_evaluator(
    eval_model: tl.Layer, task: EvalTask, model_weights, model_state, mesh: jax.sharding.Mesh
) -> Evaluator:
    """Makes the `Evaluator` of `task`, checking that its metrics are scalars and its model the trained one.

    Raises:
        ValueError: If a metric gives a non-scalar, or the eval model's
            weights or state tree differs from the trained model's.
    """
    layer = tl.Serial(eval_model, tl.Branch(*task.metrics))
    signature = train_step.input_signature(task.sample_batch, layer.n_in)
    weights_sig, state_sig = layer.weights_and_state_signature(signature)
    outputs = layer.output_signature(signature)
    for name, leaf in zip(task.metric_names, outputs if layer.n_out > 1 else [outputs]):
        if tuple(leaf.shape) != ():
            raise ValueError(f"EvalTask: metric {name!r} must give a scalar, got shape {tuple(leaf.shape)}")
    trained = (
        ("weights", model_weights, weights_sig[0]),
        ("state", model_state, state_sig[0]),
    )
    for what, ours, theirs in trained:
        if jax.tree.structure(ours) != jax.tree.structure(theirs):
            raise ValueError(
                f"Loop: the eval model's {what} tree differs from the trained model's; the eval model "
                f"must be the same model (e.g. in another mode)"
            )
    ends_weights, ends_state = _init_ends(layer, signature, jax.random.PRNGKey(0), (weights_sig, state_sig))
    return Evaluator(
        task,
        layer,
        train_step.eval_step(layer, mesh),
        train_step.put_replicated(ends_weights, mesh),
        train_step.put_replicated(ends_state, mesh),
    )


def _init_ends(layer: tl.Layer, signature, rng, signatures=None):
    """Weights and state of `Serial(model, ends)`'s ends, initializing the model only if they have any.

    `signatures` is the layer's (weights, state) signature if known already.
    """
    weights_sig, state_sig = signatures or layer.weights_and_state_signature(signature)
    if not jax.tree.leaves((weights_sig[1], state_sig[1])):
        return weights_sig[1], state_sig[1]  # Trees without leaves: nothing to initialize.
    weights, state = layer.init(signature, rng=rng)
    return weights[1], state[1]
