"""Supervised training: `Loop`, `TrainTask` and `EvalTask` (Trax's `training` API).

A `TrainTask` is labeled data, a loss layer and an optimizer; an `EvalTask`
labeled data and metric layers. A `Loop` initializes the model, trains it
with one compiled step per task, runs evals, logs metrics and saves
checkpoints::

    task = training.TrainTask(inputs.train_stream(1), tl.WeightedCategoryCrossEntropy(),
                              trax_sl.optimizers.Adam(0.01))
    eval_task = training.EvalTask(inputs.eval_stream(1),
                                  [tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
                                  metric_names=['loss', 'accuracy'])
    loop = training.Loop(model, task, eval_tasks=eval_task, output_dir='~/run')
    loop.run(1000)

Batches are tuples `(inputs, targets[, weights])` whose items may be
`trax_sl.Sequence`s: the model gets the inputs (and sees their masks), the
loss layer gets `(model_output, targets, weights)` (the stack semantics of
`Serial(model, loss_layer)`), so masks and loss weights reach the loss.

The step `(weights, state, opt_state, batch, rng) -> (weights, state,
opt_state, loss, rng)` is one jitted function per task that donates its
arrays and compiles once per batch shape (see `train_step`). The loss stays
on the device; the host waits for it only at logging steps.

Progress: on a terminal a progress bar, with each evaluation's line
(`Step 100: train/loss 2.31 | eval/loss 2.4 | eval/accuracy 0.31`) and text
from callbacks printed above it. Without a bar on the terminal (output to a
file or a pipe, `progress_bar=False`) a line every `log_every` steps takes its
place: `Step 120/900: train/loss 1.873 | 2.13 steps/s | ETA 6m05s`.

Evaluations use the same batches each time (see `EvalTask`'s `fixed_batches`).

Devices: a mesh of all local devices of every process (`n_devices` per
process for fewer) with axes 'data', 'fsdp' and 'tensor' (`mesh_shape`, by
default all on 'data': data parallel). Batches are split over 'data' and
'fsdp'; weights and optimizer state are split as their layers' logical axes
say (`trax_sl.partitioning`): FSDP with 'fsdp', tensor parallelism with
'tensor'. With several processes (`jax.distributed`)
each process's batches are its part of the global batch; process 0 alone
writes logs and metrics, every process takes part in saving checkpoints
(Orbax) and restores the same checkpoint files.

Checkpoints (see `checkpoints`) are written in a background thread while
training goes on; each `run` waits for them before it returns, and `close`
releases the writer.

Resuming: a loop whose `output_dir` holds checkpoints continues from the
newest usable one (weights, state, optimizer state, step, rng, history and
the batches taken from each task's data), so a run killed and started again
ends as an uninterrupted one would; metrics.jsonl is cut back to the
checkpoint's step (emptied when there is none) so it reads the same too.
"""

from __future__ import annotations

import os
import random
import re
import sys
import time
from collections.abc import Callable

import gin
import jax
import numpy as np
import optax
import tqdm
from absl import logging
from jax.experimental import multihost_utils

from trax_sl import layers as tl
from trax_sl import mesh as mesh_lib
from trax_sl import partitioning
from trax_sl.layers import serialization
from trax_sl.supervised import checkpoints, efficiency, preemption, task_runners, train_step
from trax_sl.supervised.history import History
from trax_sl.supervised.metrics_log import MetricsLogger, ProgressLine, Scalar
from trax_sl.supervised.tasks import EvalTask, TrainTask

# The metrics.jsonl keys that time a run (they differ between two runs of the same steps).
TIMING_KEYS = (
    "train/steps_per_second",
    "train/seconds_per_step",
    "train/tokens_per_second",
    "train/mfu",
    "train/input_wait_fraction",
)
# The name `save_checkpoint` gives the step checkpoints (a restart resumes from them), as Trax's basename.
STEP_CHECKPOINTS = "model"

__all__ = ["EvalTask", "Loop", "TrainTask"]


class Loop:
    """Loop that trains a supervised model for a given number of steps, with evals and checkpoints.

    Several tasks train one model, interleaved by `which_task`. Every
    `TrainTask` gets its own jitted step (the model with its loss, gradients
    and the optimizer update), every `EvalTask` a jitted metrics function.
    Between steps, `loop.model.weights` and `loop.model.state` hold the
    current values (the step donates them: copy what you keep).
    """

    def __init__(
        self,
        model: tl.Layer,
        tasks: TrainTask | list[TrainTask],
        eval_model: tl.Layer | None = None,
        eval_tasks: EvalTask | list[EvalTask] | None = None,
        output_dir: str | None = None,
        checkpoint_at: Callable[[int], bool] | None = None,
        checkpoint_low_metric: str | None = None,
        checkpoint_high_metric: str | None = None,
        permanent_checkpoint_at: Callable[[int], bool] | None = None,
        eval_at: Callable[[int], bool] | None = None,
        which_task: Callable[[int], int] | None = None,
        n_devices: int | None = None,
        random_seed: int | None = None,
        mesh_shape: dict | None = None,
        loss_chunk_size: int = 0,
        use_memory_efficient_trainer: bool = False,
        adasum: bool = False,
        callbacks: list[type] | None = None,
        n_checkpoints_to_keep: int | None = 3,
        progress_bar: bool | None = None,
        async_checkpoints: bool = True,
        log_every: int | None = None,
        grad_accum_steps: int = 1,
        peak_flops_per_device: float | None = None,
        profile_steps: tuple[int, int] | None = None,
        precision: tl.Policy | str | None = None,
    ):
        """Configures a training `Loop`, including a random initialization or a restored checkpoint.

        Args:
            model: The layer to train; loss and metric layers sit on top of it.
                Its weights are used if it has any (e.g. from `init_from_file`),
                else it is initialized from the first task's sample batch.
            tasks: A `TrainTask` or a list of them.
            eval_model: The layer used for evals (e.g. in 'eval' mode); `model` if None.
            eval_tasks: An `EvalTask`, a list of them, or None for no evals.
            output_dir: Where checkpoints, metrics.jsonl, event files and
                config.gin go; None to write nothing.
            checkpoint_at: Function step -> bool; by default at step 1 and
                every `tasks[0].n_steps_per_checkpoint` steps. The step each
                `run` stops at is saved too (with an output_dir).
            checkpoint_low_metric: Name of an eval metric: when it reaches a new
                low at a checkpoint step, the checkpoint `lowest_<name>` is written.
            checkpoint_high_metric: The same for a new high (`highest_<name>`).
            permanent_checkpoint_at: Function step -> bool for checkpoints never
                pruned; by default every `tasks[0].n_steps_per_permanent_checkpoint`.
            eval_at: Function step -> bool for evals and logging; by default the
                checkpoint default (train metrics are logged even without evals).
            which_task: Function step -> index of the task to train at that step;
                by default tasks take turns.
            n_devices: Local devices to use; all of them if None. In a
                multi-process run, per process.
            random_seed: Seed of initialization and of the step's rng; random if None.
            mesh_shape: The sizes of the mesh axes 'data', 'fsdp' and 'tensor'
                (`trax_sl.mesh.make_mesh`), e.g. `{'fsdp': 8}` or
                `{'data': 2, 'fsdp': 2, 'tensor': 2}`; missing axes are 1, one
                -1 takes the devices left. None: every device on 'data'.
            loss_chunk_size: Accepted for Trax configs; has no effect.
            use_memory_efficient_trainer: Accepted for Trax configs; has no
                effect (the Loop shards a model too big for one device with
                `mesh_shape`; Trax's layer-by-layer trainer is
                `optimizers.ReversibleSerialTrainer`, used directly).
            adasum: Accepted for Trax configs; has no effect.
            callbacks: `callbacks.TrainingStepCallback` subclasses, each made with this loop.
            n_checkpoints_to_keep: Step checkpoints kept (the newest; permanent
                ones are kept besides); None keeps all.
            progress_bar: Show a progress bar; None shows one when stderr is a terminal.
            async_checkpoints: Write checkpoint files in a background thread
                while training goes on (each `run` waits for them before it returns).
            log_every: Steps between progress lines (step, train loss, speed,
                ETA), printed when no progress bar is drawn on the terminal that
                stdout goes to; None for a tenth of `tasks[0].n_steps_per_checkpoint`
                (100 if that is None), 0 for none.
            grad_accum_steps: Micro-batches per step: each batch is cut into
                this many and their gradients are averaged inside the one
                compiled step (`train_step.train_step`), so a batch whose
                activations do not fit trains in pieces; it must divide the
                batch size.
            peak_flops_per_device: The peak FLOP/s of one device, for the MFU
                logged with the speed (`efficiency.peak_flops_per_device`);
                None looks the device up in `efficiency.PEAK_FLOPS` (on a
                CPU: measured once with a large matmul).
            profile_steps: `(first, last)`: a `jax.profiler` trace of steps
                first..last (inclusive) goes to `output_dir/plugins/profile`,
                where TensorBoard's profile plugin finds it.
            precision: A mixed-precision policy for the model in training and
                evals (`tl.get_policy`): `'bfloat16'` keeps weights and
                optimizer state float32, computes in bfloat16 and gives the
                losses and metrics float32 outputs; None (or `'float32'`):
                the model's own dtypes.
        """
        tasks = list(tasks) if isinstance(tasks, (list, tuple)) else [tasks]
        if not tasks:
            raise ValueError("Loop: tasks must hold at least one TrainTask, got none")
        if not isinstance(grad_accum_steps, int) or grad_accum_steps < 1:
            raise ValueError(f"Loop: grad_accum_steps must be an integer >= 1, got {grad_accum_steps!r}")
        if log_every is not None and log_every < 0:
            raise ValueError(f"Loop: log_every must be >= 0 (0 for no progress lines), got {log_every}")
        if eval_tasks is None:
            eval_tasks = []
        elif not isinstance(eval_tasks, (list, tuple)):
            eval_tasks = [eval_tasks]
        for name, value in (
            ("loss_chunk_size", loss_chunk_size),
            ("use_memory_efficient_trainer", use_memory_efficient_trainer),
            ("adasum", adasum),
        ):
            if value:
                logging.warning(
                    "Loop: %s=%r has no effect in trax_sl (one jitted step per task).", name, value
                )
        self._profile_steps = _checked_profile_steps(profile_steps, output_dir)
        policy = None if precision is None else tl.get_policy(precision)
        self._tasks = tasks
        self._eval_tasks = list(eval_tasks)
        self._model = model
        self._eval_model = eval_model or model
        self._is_chief = jax.process_index() == 0
        self._mesh = mesh_lib.make_mesh(mesh_shape, n_devices)
        self._n_devices = jax.local_device_count() if n_devices is None else n_devices
        self._output_dir = None if output_dir is None else os.path.expanduser(output_dir)
        self._n_checkpoints_to_keep = n_checkpoints_to_keep
        self._async_checkpoints = async_checkpoints
        self._checkpoint_dirs: dict[str | None, checkpoints.Checkpoints] = {}
        self._progress_bar = progress_bar
        self._bar = None
        if log_every is None:
            log_every = max(1, (tasks[0].n_steps_per_checkpoint or 1000) // 10)
        self._log_every = log_every
        self._progress: ProgressLine | None = None  # While `run` prints progress lines.

        default_at = _at_step_1_and_every_nth_step(tasks[0].n_steps_per_checkpoint)
        self._checkpoint_at = checkpoint_at or default_at
        self._permanent_checkpoint_at = permanent_checkpoint_at or _at_step_1_and_every_nth_step(
            tasks[0].n_steps_per_permanent_checkpoint
        )
        self._eval_at = eval_at or default_at
        self._which_task = which_task or (lambda step: step % len(tasks))
        metric_names = [name for task in self._eval_tasks for name in task.metric_names]
        for metric in (checkpoint_low_metric, checkpoint_high_metric):
            if metric is not None and metric not in metric_names:
                raise ValueError(
                    f"Loop: checkpoint metric {metric!r} is not an eval metric; eval metrics are {metric_names}"
                )
        self._checkpoint_low_metric = checkpoint_low_metric
        self._checkpoint_high_metric = checkpoint_high_metric

        self._step = 0
        self._saved_step = 0  # The newest step checkpoint written or restored (0: none).
        self._history = History()
        self._logger = MetricsLogger(self._output_dir, self._history, self._write_line, self._is_chief)
        self._meter = efficiency.Meter()  # Training time, tokens and FLOPs since the last log.
        self._peak_flops_override = peak_flops_per_device
        self._peak_flops: float | None = None  # Of the whole mesh; found at the first log.
        self._profiling = False
        # Task index -> (its next batch, already on the devices; the task's data state before that batch).
        self._ahead: dict[int, tuple] = {}
        self._input_wait, self._input_wait_since = 0.0, time.time()  # Seconds spent making batches since.

        init_rng, self._rng = jax.random.split(jax.random.PRNGKey(_seed(random_seed)))
        self._model_input_signature = train_step.input_signature(tasks[0].sample_batch, model.n_in)
        self._model_weights, self._model_state, self._model_shardings, self._trainers = (
            task_runners.init_trainers(
                model, self._model_input_signature, tasks, self._mesh, init_rng, grad_accum_steps, policy
            )
        )
        self._evaluators = [
            task_runners.init_evaluator(
                self._eval_model, task, self._model_weights, self._model_state, self._mesh, policy
            )
            for task in self._eval_tasks
        ]
        self._rng = self._put_replicated(self._rng)

        if self._output_dir is not None:
            if self._is_chief:
                os.makedirs(self._output_dir, exist_ok=True)
            self.load_checkpoint()
        if jax.process_count() > 1:
            # Processes on different steps (a stale shared file system) would hang in the first step.
            multihost_utils.assert_equal(
                np.int64(self._step), "Loop: the processes restored checkpoints of different steps"
            )
        self._sync_models()
        self._callbacks = [callback_class(self) for callback_class in callbacks or []]

    # --- Properties -------------------------------------------------------------------------------

    @property
    def step(self) -> int:
        """The number of training steps done (steps are numbered from 1)."""
        return self._step

    @property
    def history(self) -> History:
        return self._history

    @property
    def n_devices(self) -> int:
        """The local devices the loop uses (per process); `mesh` holds all of them."""
        return self._n_devices

    @property
    def mesh(self) -> jax.sharding.Mesh:
        """The devices the loop runs on, of every process: axes 'data', 'fsdp', 'tensor' (see `trax_sl.mesh`)."""
        return self._mesh

    @property
    def is_chief(self) -> bool:
        """Whether this process writes files (process 0)."""
        return self._is_chief

    @property
    def model_input_signature(self):
        """The signature of the model's inputs in a training batch (of one process)."""
        return self._model_input_signature

    @property
    def model(self) -> tl.Layer:
        return self._model

    @property
    def eval_model(self) -> tl.Layer:
        return self._eval_model

    @property
    def tasks(self) -> list[TrainTask]:
        return self._tasks

    @property
    def eval_tasks(self) -> list[EvalTask]:
        return self._eval_tasks

    @property
    def output_dir(self) -> str | None:
        return self._output_dir

    def new_rng(self):
        """Returns a new single-use random key, split off the loop's rng."""
        rng, new = jax.random.split(self._rng)
        self._rng = self._put_replicated(rng)
        return new

    def update_weights_and_state(self, weights=None, state=None) -> None:
        """Replaces the trained model's weights and/or state (None leaves them)."""
        if weights is not None:
            self._model_weights = train_step.put_sharded(weights, self._model_shardings)
        if state is not None:
            self._model_state = self._put_replicated(state)
        self._sync_models()

    def _put_replicated(self, tree):
        return train_step.put_replicated(tree, self._mesh)

    def memory_per_device(self) -> dict[str, int]:
        """Bytes one device holds: weights, optimizer state and the first task's step temporaries.

        Temporaries come from the compiled step's memory analysis (the step is
        compiled for the first task's sample batch, once: its first call reuses it).
        """
        trainer = self._trainers[0]
        weights = (self._model_weights, trainer.ends_weights)
        state = (self._model_state, trainer.ends_state)
        batch = train_step.put_batch(
            train_step.batch_items(trainer.task.sample_batch, trainer.layer.n_in), self._mesh
        )
        analysis = trainer.compiled(weights, state, batch, self._rng).memory_analysis()
        return {
            "weights": partitioning.bytes_per_device(weights),
            "optimizer state": partitioning.bytes_per_device([t.opt_state for t in self._trainers]),
            "step temporaries": int(getattr(analysis, "temp_size_in_bytes", 0) or 0),
        }

    def memory_line(self) -> str:
        """`Per device: weights 1.2 MiB, optimizer state 2.4 MiB, step temporaries 5.0 MiB (mesh data=1 ...)`."""
        sizes = ", ".join(f"{name} {_bytes_text(n)}" for name, n in self.memory_per_device().items())
        axes = " ".join(f"{name}={size}" for name, size in self._mesh.shape.items())
        return f"Per device: {sizes} (mesh {axes}, {self._mesh.devices.size} devices)"

    def _sync_models(self) -> None:
        for layer in {id(self._model): self._model, id(self._eval_model): self._eval_model}.values():
            layer.weights, layer.state = self._model_weights, self._model_state

    # --- Training -----------------------------------------------------------------------------

    def run(self, n_steps: int = 1) -> None:
        """Runs `n_steps` training steps, with evals, logging and checkpoints where due.

        The step it stops at is saved (with an output_dir). A SIGTERM or SIGINT
        stops it after the current step: it saves and raises
        `preemption.Preempted`; a second signal aborts at once.
        """
        if self._is_chief:
            self._logger.save_gin_config(gin.operative_config_str(), self._step)
        disable = not self._is_chief or (None if self._progress_bar is None else not self._progress_bar)
        stop = preemption.StopOnSignals(jax.process_count())
        with tqdm.tqdm(total=n_steps, disable=disable, unit="step", dynamic_ncols=True) as bar, stop:
            self._bar = bar
            bar_on_stdout_terminal = not bar.disable and _is_terminal(sys.stdout)
            if self._is_chief and self._log_every and not bar_on_stdout_terminal:
                self._progress = ProgressLine(self._step, self._step + n_steps)
            self._meter.go()
            try:
                for i in range(n_steps):
                    self._step += 1
                    task_index = self._which_task(self._step)
                    self._profile_before(self._step)
                    self._run_one_step(task_index)
                    self._profile_after(self._step)
                    if i + 1 < n_steps:
                        # While the devices run this step, the next batch is made and put on them.
                        self._read_ahead(self._which_task(self._step + 1))
                    bar.update(1)
                    if self._progress is not None and self._step % self._log_every == 0:
                        losses = list(self._mean_pending_losses().values())
                        self._write_line(self._progress.line(self._step, losses))
                    self._after_step()
                    if stop.requested():
                        break
            finally:
                self._meter.stop()
                self._stop_profile()
                self._bar = None
                self._progress = None
            self._sync_models()
            if self._output_dir is not None and self._saved_step != self._step:
                # The step a run stops at is always saved: a restart must not train it again.
                self.save_checkpoint(STEP_CHECKPOINTS)
            self.wait_for_checkpoints()
        self._logger.close()  # Event files end with the run, as Trax's; metrics.jsonl is written line by line.
        if stop.signum is not None:
            saved = None if self._output_dir is None else checkpoints.step_name(self._step)
            raise preemption.Preempted(stop.signum, self._step, saved)

    def _run_one_step(self, task_index: int) -> None:
        step = self._step
        for callback in self._callbacks:
            if callback.call_at(step):
                callback.on_step_begin(step)
        trainer = self._trainers[task_index]
        ahead = self._ahead.pop(task_index, None)
        batch = self._device_batch(task_index) if ahead is None else ahead[0]
        weights = (self._model_weights, trainer.ends_weights)
        state = (self._model_state, trainer.ends_state)
        with self._meter.pause():  # Compiling (once per batch shape) is not training time.
            compiled = trainer.compiled_step(weights, state, batch, self._rng)
        weights, state, trainer.opt_state, loss, self._rng = compiled.fn(
            weights, state, trainer.opt_state, batch, self._rng
        )
        self._meter.count(compiled.tokens, compiled.flops)
        self._model_weights, trainer.ends_weights = weights
        self._model_state, trainer.ends_state = state
        trainer.pending_losses.append(loss)
        self._sync_models()
        for callback in self._callbacks:
            if callback.call_at(step):
                callback.on_step_end(step)

    def _device_batch(self, task_index: int):
        """The task's next batch, on the devices; the time taken counts as waiting for input."""
        start = time.perf_counter()
        trainer = self._trainers[task_index]
        batch = train_step.batch_items(trainer.task.next_batch(), trainer.layer.n_in)
        batch = train_step.put_batch(batch, self._mesh)
        self._input_wait += time.perf_counter() - start
        return batch

    def _read_ahead(self, task_index: int) -> None:
        """Makes the task's next batch now, keeping the task's data state from before it for checkpoints."""
        if task_index not in self._ahead:
            state = self._tasks[task_index].data_state
            self._ahead[task_index] = (self._device_batch(task_index), state)

    def _train_data_state(self, task_index: int) -> dict:
        """The task's data state after the batches trained on (a batch read ahead is not one of them)."""
        ahead = self._ahead.get(task_index)
        return self._tasks[task_index].data_state if ahead is None else ahead[1]

    def _after_step(self) -> None:
        step = self._step
        evaluating = self._eval_at(step)
        permanent = self._permanent_checkpoint_at(step)
        saving = permanent or self._checkpoint_at(step)
        if not (evaluating or saving):
            return
        if evaluating:
            train_scalars = self._train_scalars()  # Waits for the steps so far.
        else:
            jax.block_until_ready(self._model_weights)  # Training time ends with the step.
        with self._meter.pause():  # Evals and checkpoints are not training time.
            if evaluating:
                self._logger.log(step, train_scalars + self.run_evals(log=False))
            if permanent:
                self.save_checkpoint(STEP_CHECKPOINTS, permanent=True)
            elif saving:
                # Positional, as Trax calls it (tests replace the method).
                self.save_checkpoint(STEP_CHECKPOINTS)
            if saving:
                # Here too, so that a replaced save_checkpoint is not called again at the end.
                self._saved_step = step
            if self._checkpoint_at(step):
                self._save_extreme_checkpoints()

    def _save_extreme_checkpoints(self) -> None:
        if self._checkpoint_low_metric is not None and self._at_extreme(self._checkpoint_low_metric, min):
            self.save_checkpoint(f"lowest_{self._checkpoint_low_metric}")
        if self._checkpoint_high_metric is not None and self._at_extreme(self._checkpoint_high_metric, max):
            self.save_checkpoint(f"highest_{self._checkpoint_high_metric}")

    def _at_extreme(self, metric: str, extreme) -> bool:
        values = [value for _, value in self._history.get("eval", f"metrics/{metric}")]
        return bool(values) and values[-1] == extreme(values)

    def _fetch_pending_losses(self) -> None:
        """Brings the losses since the last logged step to the host (waiting for the steps that make them)."""
        for trainer in self._trainers:
            trainer.pending_losses = [float(x) for x in jax.device_get(trainer.pending_losses)]

    def _mean_pending_losses(self) -> dict[int, Scalar]:
        """Each task's mean loss since the last logged step (what that step's log line shows), by task index."""
        self._fetch_pending_losses()
        return {
            index: Scalar(
                "train",
                self._prefix(self._tasks, index),
                "metrics",
                trainer.task.loss_name,
                float(np.mean(trainer.pending_losses)),
            )
            for index, trainer in enumerate(self._trainers)
            if trainer.pending_losses
        }

    def _train_scalars(self) -> list[Scalar]:
        """The mean loss of each task since the last log, its learning rate, the speed and the MFU."""
        losses = self._mean_pending_losses()  # Waits for the steps run since the last log.
        speed = self._meter.report(self._mesh_peak_flops())
        scalars = []
        for index, trainer in enumerate(self._trainers):
            if index not in losses:
                continue
            prefix = self._prefix(self._tasks, index)
            trainer.pending_losses = []
            scalars.append(losses[index])
            hyperparams = getattr(trainer.opt_state, "hyperparams", {})
            rate = hyperparams.get("learning_rate") if isinstance(hyperparams, dict) else None
            rate = trainer.task.learning_rate(self._step) if rate is None else float(jax.device_get(rate))
            if rate is not None:
                scalars.append(Scalar("train", prefix, "training", "learning_rate", rate))
        scalars.extend(Scalar("train", None, "training", name, value) for name, value in speed.items())
        scalars.append(
            Scalar("train", None, "training", "input_wait_fraction", self._input_wait_fraction(time.time()))
        )
        return scalars

    def _mesh_peak_flops(self) -> float | None:
        """The peak FLOP/s of all the mesh's devices (None if the device is not known)."""
        if self._peak_flops is None:
            with self._meter.pause():  # On a CPU the first call measures a matmul.
                per_device = efficiency.peak_flops_per_device(
                    self._mesh.devices.flat[0], self._peak_flops_override
                )
            self._peak_flops = 0.0 if per_device is None else per_device * self._mesh.devices.size
        return self._peak_flops or None

    # --- Profiling --------------------------------------------------------------------------------

    def _profile_before(self, step: int) -> None:
        if self._profile_steps is not None and step == self._profile_steps[0]:
            jax.block_until_ready(self._model_weights)  # The trace starts with this step.
            jax.profiler.start_trace(self._output_dir)
            self._profiling = True

    def _profile_after(self, step: int) -> None:
        if self._profile_steps is not None and step == self._profile_steps[1]:
            self._stop_profile()

    def _stop_profile(self) -> None:
        if self._profiling:
            with self._meter.pause():
                jax.block_until_ready(self._model_weights)
                jax.profiler.stop_trace()
            self._profiling = False
            logging.info(
                "Wrote a profile of steps %d-%d to %s/plugins/profile.",
                *self._profile_steps,
                self._output_dir,
            )

    def _input_wait_fraction(self, now: float) -> float:
        """The fraction of the time since the last call that the training thread waited for batches."""
        fraction = self._input_wait / max(now - self._input_wait_since, 1e-9)
        self._input_wait, self._input_wait_since = 0.0, now
        return fraction

    def run_evals(self, log: bool = True) -> list[Scalar]:
        """Runs every eval task on the current weights; returns (and if `log`, logs) the values."""
        scalars = []
        for index, evaluator in enumerate(self._evaluators):
            task = evaluator.task
            weights = (self._model_weights, evaluator.ends_weights)
            state = (self._model_state, evaluator.ends_state)
            values = []
            for batch in task.eval_batches():
                batch = train_step.put_batch(train_step.batch_items(batch, evaluator.layer.n_in), self._mesh)
                rng = self._put_replicated(self.new_rng())
                values.append(evaluator.step_fn(weights, state, batch, rng))
            means = np.asarray(jax.device_get(values), np.float64).mean(axis=0)
            prefix = self._prefix(self._eval_tasks, index)
            scalars += [
                Scalar("eval", prefix, "metrics", name, float(value))
                for name, value in zip(task.metric_names, means)
            ]
        if log and scalars:
            self._logger.log(self._step, scalars)
        return scalars

    @staticmethod
    def _prefix(tasks, index: int) -> str | None:
        if len(tasks) < 2:
            return None
        return tasks[index].export_prefix or str(index)

    def log_text(self, name: str, text: str) -> None:
        """Shows `text` in the log (above the progress bar) and in TensorBoard's text dashboard under `name`.

        The text goes to the `train` run at the current step; process 0 alone
        writes it. Callbacks use it for what they print (e.g. text samples).
        """
        self._logger.text(self._step, name, text)

    def _write_line(self, line: str) -> None:
        if not self._is_chief:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(line)  # Above the bar, which is drawn again below.
        else:
            print(line, flush=True)

    # --- Checkpoints --------------------------------------------------------------------------

    def _trainer_tree(self):
        """The arrays a checkpoint holds besides the model's weights and state."""
        tasks = tuple(
            {"loss_weights": t.ends_weights, "loss_state": t.ends_state, "opt_state": t.opt_state}
            for t in self._trainers
        )
        return {"rng": jax.random.key_data(self._rng), "tasks": tasks}

    def _description(self) -> checkpoints.Description:
        return checkpoints.Description(
            model=checkpoints.model_summary(self._model),
            optimizers=tuple(_optimizer_name(task.optimizer) for task in self._tasks),
            input_signature=serialization.signature_to_json(self._model_input_signature),
        )

    def _checkpoints_named(self, name: str) -> checkpoints.Checkpoints:
        """The step checkpoints (name "model") or the named checkpoint `name`, opened once."""
        if name not in self._checkpoint_dirs:
            root = checkpoints.checkpoints_root(self._output_dir)
            if name == STEP_CHECKPOINTS:
                found = checkpoints.Checkpoints(root, self._n_checkpoints_to_keep, self._async_checkpoints)
            else:
                found = checkpoints.Checkpoints(os.path.join(root, name), 1, self._async_checkpoints)
            self._checkpoint_dirs[name] = found
        return self._checkpoint_dirs[name]

    def save_checkpoint(self, basename: str = STEP_CHECKPOINTS, permanent: bool = False) -> None:
        """Starts saving a checkpoint of the current step (see `checkpoints`).

        The files are written in the background (`wait_for_checkpoints` waits);
        every process of a multi-process run calls it.

        Args:
            basename: "model" (Trax's name, the default) for the step
                checkpoint `step_<step>` (the ones a restart resumes from,
                pruned to `n_checkpoints_to_keep`), or the name of a checkpoint
                of its own, replaced at each save.
            permanent: Never prune this step checkpoint.
        """
        if self._output_dir is None:
            logging.info("Did not save a checkpoint: output_dir is None.")
            return
        self._fetch_pending_losses()  # Saved so that a resumed run logs the same mean losses.
        if basename == STEP_CHECKPOINTS:
            self._saved_step = self._step
        train_data = [self._train_data_state(i) for i in range(len(self._tasks))]
        metadata = {
            "train_positions": [state["position"] for state in train_data],
            "eval_positions": [task.data_position for task in self._eval_tasks],
            "train_data": train_data,
            "eval_data": [task.data_state for task in self._eval_tasks],
            "pending_losses": [trainer.pending_losses for trainer in self._trainers],
            "history": self._history.to_dict(),
        }
        checkpoint = checkpoints.Checkpoint(
            self._step, self._model_weights, self._model_state, self._trainer_tree(), metadata
        )
        path = self._checkpoints_named(basename).save(checkpoint, self._description(), permanent)
        logging.info("Saving checkpoint %s", path)

    def wait_for_checkpoints(self) -> None:
        """Waits until every checkpoint started is written (`checkpoints.CheckpointError` if one failed)."""
        for found in self._checkpoint_dirs.values():
            found.wait()

    def close(self) -> None:
        """Waits for pending checkpoints and releases their writer threads and the event files."""
        try:
            for found in self._checkpoint_dirs.values():
                found.close()
        finally:
            self._checkpoint_dirs = {}
            self._logger.close()

    def load_checkpoint(self, directory: str | None = None, filename: str | None = None) -> None:
        """Restores a checkpoint: the newest usable step checkpoint, or the one named `filename`.

        Args:
            directory: The output directory holding `checkpoints/`; this loop's if None.
            filename: A checkpoint name (`step_00000100`, `lowest_loss`, ...); if
                None the newest usable step checkpoint, falling back to older
                ones (with a warning) when the newest cannot be read.

        Raises:
            checkpoints.CheckpointError: If checkpoints exist but none is usable
                (or the named one is not), or they are of another model or optimizer.
        """
        directory = directory or self._output_dir
        if directory is None:
            return
        own = directory == self._output_dir
        found, step = _checkpoint_location(directory, filename, self._checkpoints_named if own else None)
        try:
            if step is not None:
                checkpoint = self._restore(found, step)
            else:
                checkpoint = found.restore_latest(lambda step: self._restore(found, step))
        finally:
            if found is not self._checkpoint_dirs.get(STEP_CHECKPOINTS):
                found.close()
        if checkpoint is None:
            if own and self._is_chief:
                self._logger.resume_at(0)  # Rows of a run that never checkpointed are not this run's.
            return
        self._apply(checkpoint, resuming=own)

    def _restore(self, found: checkpoints.Checkpoints, step: int) -> checkpoints.Checkpoint:
        expected = checkpoints.Checkpoint(
            step, self._model_weights, self._model_state, self._trainer_tree(), {}
        )
        checkpoint = found.restore(step, expected, self._description())
        saved = len(checkpoint.metadata.get("train_positions", ()))
        if saved != len(self._tasks):
            raise checkpoints.CheckpointMismatchError(
                f"{found.path(step)} was saved with {saved} train tasks, this loop has {len(self._tasks)}"
            )
        return checkpoint

    def _apply(self, checkpoint: checkpoints.Checkpoint, resuming: bool) -> None:
        # Restored where they live (the restore targets are the current arrays): placing them is a no-op.
        repl = train_step.replicated(self._mesh)
        self._step = checkpoint.step
        self._model_weights = jax.device_put(checkpoint.model_weights, self._model_shardings)
        self._model_state = jax.device_put(checkpoint.model_state, repl)
        trainer_tree = checkpoint.trainer
        self._rng = jax.device_put(trainer_tree["rng"], repl)
        metadata = checkpoint.metadata
        for trainer, saved, losses in zip(self._trainers, trainer_tree["tasks"], metadata["pending_losses"]):
            trainer.ends_weights = jax.device_put(saved["loss_weights"], trainer.shardings["ends_weights"])
            trainer.ends_state = jax.device_put(saved["loss_state"], repl)
            trainer.opt_state = jax.device_put(saved["opt_state"], trainer.shardings["opt_state"])
            trainer.pending_losses = list(losses)
        self._ahead = {}
        for tasks, kind in ((self._tasks, "train"), (self._eval_tasks, "eval")):
            # Checkpoints from before data states were saved hold positions only.
            states = metadata.get(f"{kind}_data") or [{"position": p} for p in metadata[f"{kind}_positions"]]
            if len(states) != len(
                tasks
            ):  # Eval tasks added or removed (as Trax allows): theirs start afresh.
                logging.info(
                    "The checkpoint has %d eval tasks, this loop %d: eval data starts anew.",
                    len(states),
                    len(tasks),
                )
                continue
            for task, state in zip(tasks, states):
                task.restore_data(state)
        self._history = History.from_dict(metadata.get("history", {}))
        self._logger.history = self._history
        self._saved_step = self._step
        if resuming and self._is_chief:
            self._logger.resume_at(self._step)
        self._sync_models()
        logging.info("Restored the checkpoint of step %d.", self._step)


def _checked_profile_steps(profile_steps, output_dir) -> tuple[int, int] | None:
    """`profile_steps` as `(first, last)`, or a clear error."""
    if profile_steps is None:
        return None
    steps = tuple(profile_steps) if isinstance(profile_steps, (list, tuple)) else ()
    if len(steps) != 2 or not all(isinstance(x, int) for x in steps) or not 1 <= steps[0] <= steps[1]:
        raise ValueError(
            f"Loop: profile_steps must be (first, last) steps with 1 <= first <= last, got {profile_steps!r}"
        )
    if output_dir is None:
        raise ValueError(
            "Loop: profile_steps needs an output_dir (the trace goes to output_dir/plugins/profile)"
        )
    return steps


def _bytes_text(n_bytes: int) -> str:
    """`812 B`, `4.0 KiB`, `1.2 MiB`, `3.5 GiB`."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes} B"


def _optimizer_name(optimizer) -> str:
    return (
        "optax transformation"
        if isinstance(optimizer, optax.GradientTransformation)
        else type(optimizer).__name__
    )


def _checkpoint_location(directory: str, filename: str | None, open_own):
    """(Checkpoints, step or None for the newest) of checkpoint `filename` in output dir `directory`."""
    root = checkpoints.checkpoints_root(directory)
    match = re.fullmatch(r"step_(\d+)", filename or "")
    name = None if filename in (None, STEP_CHECKPOINTS) or match else filename
    if open_own is not None and name is None:
        found = open_own(STEP_CHECKPOINTS)
    else:
        found = checkpoints.Checkpoints(root if name is None else os.path.join(root, name), create=False)
    if match:
        return found, int(match.group(1))
    if name is None:
        return found, None
    steps = found.steps()
    if not steps:
        raise checkpoints.CheckpointError(f"{found.directory}: no checkpoint named {name!r}")
    return found, steps[-1]


def _seed(random_seed: int | None) -> int:
    """The seed to use; a random one (the same on every host) if None."""
    if random_seed is not None:
        return int(random_seed)
    seed = random.SystemRandom().randrange(2**31)
    if jax.process_count() > 1:
        seed = int(multihost_utils.broadcast_one_to_all(np.int32(seed)))
    return seed


def _at_step_1_and_every_nth_step(period: int | None) -> Callable[[int], bool]:
    """A function that is true at step 1 and at multiples of `period` (never if None)."""
    if not period:
        return lambda step: False
    return lambda step: step == 1 or step % period == 0


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # A closed stream.
        return False
