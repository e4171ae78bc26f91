"""`train`: a gin-configurable training run on `training.Loop` (Trax's `trainer_lib.train`).

The parameters keep Trax's names, so Trax gin files (with `trax.` renamed
`trax_sl.`) configure it::

    train.model = @trax_sl.models.TransformerLM
    train.inputs = @trax_sl.data.sequence_copy_inputs
    train.optimizer = @trax_sl.optimizers.Adam
    train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
    train.steps = 1000
    train.eval_frequency = 100

`python -m trax_sl.trainer --config_file=F.gin --output_dir=D` runs it.
A run started again with the same `output_dir` resumes from its newest
checkpoint and stops at `steps`.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable

import gin
import jax

from trax_sl import gin_types
from trax_sl import layers as tl
from trax_sl import optimizers as trax_opt
from trax_sl.supervised import checkpoints, dir_lock, lr_schedules, training

_DEFAULT_METRICS = {
    "loss": tl.WeightedCategoryCrossEntropy(),
    "accuracy": tl.WeightedCategoryAccuracy(),
    "sequence_accuracy": tl.MaskedSequenceAccuracy(),
    "neg_log_perplexity": tl.Serial(tl.WeightedCategoryCrossEntropy(), tl.Negate()),
    "weights_per_batch_per_core": tl.Serial(tl.Drop(), tl.Drop(), tl.Sum()),
}

NamedStream = collections.namedtuple("NamedStream", ["name", "stream"])
"""A stream of batches with the name its metrics are logged under (Trax's `trainer_lib.NamedStream`)."""


@gin.configurable
def named_stream(name=gin.REQUIRED, stream=gin.REQUIRED) -> NamedStream:
    """A data stream with a name, for `train.additional_eval_streams` (Trax's)."""
    return NamedStream(name=name, stream=stream)


@gin.configurable
def num_devices(value: int | None = None) -> int | None:
    """Returns how many local devices to use (None: all of them), as Trax's `num_devices`."""
    return value


def _print_model(model: tl.Layer, input_signature) -> None:
    """The model's top-level layers and its parameter count (Trax prints the count)."""
    table = tl.summary(model, input_signature, depth=1, print_fn=None)
    print(table, flush=True)
    print("(tl.summary(model, input_signature) shows every layer)", flush=True)


@gin.configurable(denylist=["output_dir"])
def train(
    output_dir: str,
    model: Callable[..., tl.Layer] = gin.REQUIRED,
    loss_fn: tl.Layer = tl.WeightedCategoryCrossEntropy(),
    inputs=gin.REQUIRED,
    optimizer=trax_opt.Adafactor,
    lr_schedule_fn: Callable = lr_schedules.multifactor,
    steps: int = 1000,
    checkpoints_at: list[int] | None = None,
    permanent_checkpoints_at: list[int] | None = None,
    eval_steps: int = 10,
    eval_frequency: int | None = 100,
    permanent_checkpoint_frequency: int | None = None,
    random_seed: int | None = None,
    save_graphs: bool = True,
    metrics: dict[str, tl.Layer] | None = None,
    checkpoint_highest: str | None = None,
    checkpoint_lowest: str | None = None,
    use_loop: bool = True,
    loss_chunk_size: int = 0,
    use_memory_efficient_trainer: bool = False,
    adasum: bool = False,
    init_checkpoint: str | None = None,
    callbacks: list | None = None,
    n_weights_shards: int = 1,
    additional_train_tasks: list | None = None,
    additional_eval_tasks: list | None = None,
    additional_eval_streams: list[NamedStream] | None = None,
    n_checkpoints_to_keep: int | None = 3,
    progress_bar: bool | None = None,
    log_every: int | None = None,
    mesh_shape: dict | None = None,
    grad_accum_steps: int = 1,
    peak_flops_per_device: float | None = None,
    profile_steps: tuple[int, int] | None = None,
    precision: str | None = None,
) -> training.Loop:
    """Trains the model on the inputs; returns the `training.Loop`.

    Training runs on a mesh of `num_devices.value` local devices (all by
    default) of every process of the run, data parallel unless `mesh_shape`
    says otherwise; the batch sizes of the built-in `inputs` are global, each
    process reading its rows (see `trax_sl.data`). The start log prints the
    bytes each device holds.

    Args:
        output_dir: Directory for checkpoints, metrics.jsonl, event files and
            config.gin; a run started again there resumes. The run holds a
            lock on it (`dir_lock`): a second run there raises OutputDirInUse.
        model: A function `mode -> Layer` (e.g. `trax_sl.models.TransformerLM`);
            called with mode='train' and mode='eval'.
        loss_fn: The loss layer, on `(model_output, targets, weights)`.
        inputs: A `trax_sl.data.Inputs`, or a function returning one.
        optimizer: An optimizer class (called with no arguments: configure it in gin).
        lr_schedule_fn: A function returning the schedule (a function step -> rate).
        steps: Total number of training steps.
        checkpoints_at: Steps to save checkpoints at; by default every `eval_frequency` steps.
        permanent_checkpoints_at: Steps to save checkpoints that are never pruned.
        eval_steps: Batches per evaluation; 0 or None disables evaluation.
        eval_frequency: Steps between evaluations (and default checkpoints);
            0 or None disables both.
        permanent_checkpoint_frequency: Steps between permanent checkpoints.
        random_seed: Seed of initialization and training randomness; random if None.
        save_graphs: Used by Trax's old Trainer only; ignored, as Trax ignores it with `use_loop`.
        metrics: Eval metrics by name; Trax's defaults (loss, accuracy,
            sequence_accuracy, neg_log_perplexity, weights_per_batch_per_core) if None.
        checkpoint_highest: Save the checkpoint `highest_<metric>` when this eval metric peaks.
        checkpoint_lowest: Save the checkpoint `lowest_<metric>` when this eval metric bottoms.
        use_loop: Must be True: Trax's old Trainer is not provided.
        loss_chunk_size: Accepted for Trax configs; has no effect.
        use_memory_efficient_trainer: Accepted for Trax configs; has no effect.
        adasum: Accepted for Trax configs; has no effect.
        init_checkpoint: Weights to start from (fine-tuning): a checkpoint
            directory of a run (a step's, a named one such as `lowest_loss`, or
            an output_dir: its newest step) or a `Layer.save_to_file` file.
        callbacks: `callbacks.TrainingStepCallback` subclasses.
        n_weights_shards: Trax's weight sharding: k > 1 splits weights and
            optimizer state k ways (`mesh_shape={'data': -1, 'fsdp': k}`).
        additional_train_tasks: More `training.TrainTask`s, trained in turn with the first.
        additional_eval_tasks: More `training.EvalTask`s.
        additional_eval_streams: `NamedStream`s evaluated with the same metrics.
        n_checkpoints_to_keep: Step checkpoints kept (the newest); None keeps all.
        progress_bar: Show a progress bar; None shows one when stderr is a terminal.
        log_every: Steps between progress lines (step, train loss, speed,
            ETA) when no bar is drawn on the terminal stdout goes to; None: a
            tenth of eval_frequency; 0: none.
        mesh_shape: The sizes of the mesh axes 'data', 'fsdp' and 'tensor',
            e.g. `{'fsdp': 8}` (FSDP) or `{'fsdp': -1, 'tensor': 2}`; None for
            all devices on 'data' (see `trax_sl.mesh.make_mesh`).
        grad_accum_steps: Micro-batches per step, their gradients averaged
            inside the compiled step (`train.grad_accum_steps = 4` in gin);
            it must divide the batch size (see `training.Loop`).
        peak_flops_per_device: One device's peak FLOP/s for the logged MFU
            (`train/mfu`); None: the device's entry in
            `trax_sl.supervised.efficiency.PEAK_FLOPS`, measured on a CPU.
        profile_steps: `(first, last)`: write a `jax.profiler` trace of those
            steps to `output_dir/plugins/profile` (TensorBoard's profile tab),
            e.g. `train.profile_steps = (10, 12)`.
        precision: `'bfloat16'` trains in mixed precision (float32 weights
            and optimizer state, bfloat16 compute, float32 losses and
            metrics); None or `'float32'` as the model is (see `tl.get_policy`).
    """
    del save_graphs  # Trax uses it only without use_loop.
    gin_types.check_bindings()
    if output_dir is not None and os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise NotADirectoryError(
            f"train: output_dir {output_dir} is a file, not a directory; pass a directory "
            f"(it is created if missing)"
        )
    if not use_loop:
        raise ValueError("train: use_loop=False asks for Trax's old Trainer, which trax_sl does not provide")
    if n_weights_shards != 1:
        if mesh_shape is not None:
            raise ValueError(
                f"train: give mesh_shape or Trax's n_weights_shards, not both; got mesh_shape={mesh_shape} "
                f"and n_weights_shards={n_weights_shards}"
            )
        mesh_shape = {"data": -1, "fsdp": n_weights_shards}
    if permanent_checkpoint_frequency is not None and permanent_checkpoints_at is not None:
        raise ValueError(
            'train: only one of ["permanent_checkpoint_frequency", "permanent_checkpoints_at"] should be set'
        )
    n_devices = num_devices() or jax.local_device_count()
    if callable(inputs):
        inputs = inputs()
    train_task = training.TrainTask(
        lambda position: inputs.train_stream(n_devices, position=position),
        loss_layer=loss_fn,
        optimizer=optimizer(),
        lr_schedule=lr_schedule_fn(),
        n_steps_per_checkpoint=eval_frequency,
        n_steps_per_permanent_checkpoint=permanent_checkpoint_frequency,
        loss_name="loss",
    )
    names, metric_layers = zip(*(metrics if metrics is not None else _DEFAULT_METRICS).items())
    eval_tasks = list(additional_eval_tasks or [])
    if eval_steps and eval_frequency:
        eval_task = training.EvalTask(
            lambda position: inputs.eval_stream(n_devices, position=position),
            metric_layers,
            metric_names=names,
            n_eval_batches=eval_steps,
        )
        eval_tasks.insert(0, eval_task)
        eval_tasks += [
            training.EvalTask(
                stream.stream,
                metric_layers,
                metric_names=names,
                n_eval_batches=eval_steps,
                export_prefix=stream.name,
            )
            for stream in additional_eval_streams or []
        ]

    # One writer per output_dir (process 0 of a multi-process run holds the lock).
    chief = jax.process_index() == 0
    with dir_lock.hold(output_dir) if output_dir is not None and chief else contextlib.nullcontext():
        model_train = model(mode="train")
        model_eval = model(mode="eval")
        if init_checkpoint and os.path.isdir(init_checkpoint):
            model_train.weights, _ = checkpoints.load_model(init_checkpoint, model_train)
            model_eval.weights = model_train.weights
        elif init_checkpoint:
            model_train.init_from_file(init_checkpoint, weights_only=True)
            model_eval.weights = model_train.weights
        loop = training.Loop(
            model_train,
            [train_task, *(additional_train_tasks or [])],
            eval_model=model_eval,
            eval_tasks=eval_tasks or None,
            output_dir=output_dir,
            checkpoint_at=None if checkpoints_at is None else (lambda step: step in checkpoints_at),
            checkpoint_low_metric=checkpoint_lowest,
            checkpoint_high_metric=checkpoint_highest,
            permanent_checkpoint_at=(
                None if permanent_checkpoints_at is None else (lambda step: step in permanent_checkpoints_at)
            ),
            n_devices=n_devices,
            random_seed=random_seed,
            loss_chunk_size=loss_chunk_size,
            use_memory_efficient_trainer=use_memory_efficient_trainer,
            adasum=adasum,
            callbacks=callbacks,
            n_checkpoints_to_keep=n_checkpoints_to_keep,
            progress_bar=progress_bar,
            log_every=log_every,
            mesh_shape=mesh_shape,
            grad_accum_steps=grad_accum_steps,
            peak_flops_per_device=peak_flops_per_device,
            profile_steps=profile_steps,
            precision=precision,
        )
        memory = loop.memory_line()  # Every process compiles the step here; the chief prints.
        if chief:  # Shown at any log level, as Trax prints them.
            _print_model(model_train, loop.model_input_signature)
            print(memory, flush=True)
            if loop.step:
                print(f"Restored step {loop.step} from {output_dir}", flush=True)
        steps_to_go = steps - loop.step
        try:
            if steps_to_go <= 0:
                if chief:
                    print(f"Stop training, already reached the total training steps {steps}", flush=True)
            else:
                loop.run(steps_to_go)
        finally:
            loop.close()
        return loop
