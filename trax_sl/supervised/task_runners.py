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

from collections.abc import Callable
from typing import NamedTuple

import jax

from trax_sl import layers as tl
from trax_sl.supervised import efficiency, train_step
from trax_sl.supervised.tasks import EvalTask, TrainTask


class Trainer:
    """One training task's compiled step and its own arrays (loss weights, optimizer state).

    The step is compiled ahead of its first call, once per batch shape
    (`compiled`), so that its memory analysis is known before it runs.
    """

    def __init__(
        self, task: TrainTask, layer: tl.Layer, step_fn, ends_weights, ends_state, opt_state, shardings
    ):
        self.task = task
        self.layer = layer  # Serial(model, loss_layer)
        self.step_fn = step_fn
        self.ends_weights = ends_weights
        self.ends_state = ends_state
        self.opt_state = opt_state
        self.shardings = shardings  # {"ends_weights": ..., "opt_state": ...}: where they live.
        self.pending_losses: list = []  # Since the last logged step; device scalars or floats.
        self._steps: dict = {}  # Batch shapes -> CompiledStep.

    def compiled_step(self, weights, state, batch, rng) -> CompiledStep:
        """The step for these arguments' shapes: compiled (with the trainer's optimizer state), with its cost.

        Made once per batch shape: the step compiled ahead of its first call,
        its model FLOPs (`efficiency.training_flops`, all devices) and the
        tokens of such a batch (`efficiency.batch_tokens`).
        """
        key = jax.tree.structure(batch), tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch))
        if key not in self._steps:
            layer = self.layer

            def forward(weights, state, batch, rng):
                return layer.pure_fn(train_step.stack_inputs(batch, layer.n_in), weights, state, rng)

            self._steps[key] = CompiledStep(
                self.step_fn.lower(weights, state, self.opt_state, batch, rng).compile(),
                efficiency.training_flops(forward, weights, state, batch, rng),
                efficiency.batch_tokens(batch),
            )
        return self._steps[key]

    def compiled(self, weights, state, batch, rng):
        """The step compiled for these arguments' shapes (`compiled_step(...).fn`)."""
        return self.compiled_step(weights, state, batch, rng).fn


class CompiledStep(NamedTuple):
    """A training step compiled for one batch shape, and what one call of it costs."""

    fn: Callable
    flops: float  # Model FLOPs of one step, all devices together.
    tokens: int  # Tokens in one batch.


class Evaluator:
    """One eval task's compiled metrics and the metric layers' own weights and state."""

    def __init__(self, task: EvalTask, layer: tl.Layer, step_fn, ends_weights, ends_state):
        self.task = task
        self.layer = layer  # Serial(eval_model, Branch(*metrics))
        self.step_fn = step_fn
        self.ends_weights = ends_weights
        self.ends_state = ends_state


def init_trainers(
    model: tl.Layer,
    model_input_signature,
    tasks: list[TrainTask],
    mesh: jax.sharding.Mesh,
    rng,
    grad_accum_steps: int = 1,
    precision: tl.Policy | None = None,
):
    """Makes a `Trainer` per task, and the model's weights and state unless it has them.

    The model keeps weights it already has (e.g. from `init_from_file`), and
    its state if that fits `model_input_signature` (the first task's model
    inputs); otherwise both come from initializing `Serial(model, loss_layer)`
    on the first task's sample batch. Everything is made (or put) directly on
    its devices, split as `train_step.weight_shardings` says. Each step
    averages the gradients of `grad_accum_steps` micro-batches; with a
    `precision` policy the model runs under it (`tl.WithPolicy`: its weights
    and optimizer state in the param dtype, the loss on outputs in the output dtype).

    Returns:
        `(model_weights, model_state, model_weight_shardings, trainers)`, all on `mesh`.
    """
    model_weights = model_state = model_shardings = None
    if jax.tree.leaves(model.weights):  # Given, e.g. by init_from_file: kept.
        model_shardings = train_step.weight_shardings(model, model.weights, mesh)
        model_weights = train_step.put_sharded(model.weights, model_shardings)
        state_sig = model.weights_and_state_signature(model_input_signature)[1]
        same = jax.tree.structure(model.state) == jax.tree.structure(state_sig)
        if same:
            model_state = train_step.put_replicated(model.state, mesh)
        else:  # Made with (sharded) weights that are dropped: the given ones stay.
            model_state = train_step.sharded_init(model, model_input_signature, rng, mesh)[1]
    trainers = []
    for index, task in enumerate(tasks):
        layer = tl.Serial(_under(model, precision), task.loss_layer)
        signature = train_step.input_signature(task.sample_batch, layer.n_in)
        task_rng = jax.random.fold_in(rng, index)
        if model_weights is None:
            weights, state, shardings = train_step.sharded_init(layer, signature, task_rng, mesh)
            model_weights, model_state, model_shardings = weights[0], state[0], shardings[0]
            ends_weights, ends_state, ends_shardings = weights[1], state[1], shardings[1]
        else:
            ends_weights, ends_state, ends_shardings = _init_ends(layer, signature, task_rng, mesh)
        shardings = (model_shardings, ends_shardings)
        tx = task.optax_transformation
        opt_state, opt_shardings = train_step.sharded_opt_init(
            tx, (model_weights, ends_weights), shardings, mesh
        )
        trainers.append(
            Trainer(
                task,
                layer,
                train_step.train_step(layer, tx, mesh, shardings, opt_shardings, grad_accum_steps),
                ends_weights,
                ends_state,
                opt_state,
                {"ends_weights": ends_shardings, "opt_state": opt_shardings},
            )
        )
    return model_weights, model_state, model_shardings, trainers


def init_evaluator(
    eval_model: tl.Layer,
    task: EvalTask,
    model_weights,
    model_state,
    mesh: jax.sharding.Mesh,
    precision: tl.Policy | None = None,
) -> Evaluator:
    """Makes the `Evaluator` of `task`, checking that its metrics are scalars and its model the trained one.

    Raises:
        ValueError: If a metric gives a non-scalar, or the eval model's
            weights or state tree differs from the trained model's.
    """
    layer = tl.Serial(_under(eval_model, precision), tl.Branch(*task.metrics))
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
    ends_weights, ends_state, _ = _init_ends(
        layer, signature, jax.random.PRNGKey(0), mesh, (weights_sig, state_sig)
    )
    return Evaluator(task, layer, train_step.eval_step(layer, mesh), ends_weights, ends_state)


def _under(model: tl.Layer, precision: tl.Policy | None) -> tl.Layer:
    """`model` under the `precision` policy (weights and state trees unchanged), or as it is for None."""
    return model if precision is None else tl.WithPolicy(model, precision)


def _init_ends(layer: tl.Layer, signature, rng, mesh: jax.sharding.Mesh, signatures=None):
    """(weights, state, weight shardings) of `Serial(model, ends)`'s ends, on `mesh`.

    The model is initialized too (and dropped) only if the ends have weights
    or state. `signatures` is the layer's (weights, state) signature if known already.
    """
    weights_sig, state_sig = signatures or layer.weights_and_state_signature(signature)
    if not jax.tree.leaves((weights_sig[1], state_sig[1])):
        return weights_sig[1], state_sig[1], weights_sig[1]  # Trees without leaves: nothing to make.
    weights, state, shardings = train_step.sharded_init(layer, signature, rng, mesh)
    return weights[1], state[1], shardings[1]
