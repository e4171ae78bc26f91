"""Training and evaluation tasks: labeled data with a loss and optimizer, or with metrics.

`TrainTask` and `EvalTask` are Trax's (`trax.supervised.training`); import
them from `trax_sl.supervised.training`, where `Loop` runs them. Labeled data
is an iterator of batches, or a function `position -> iterator` giving the
batches after the first `position`, which lets a resumed run restart its data
directly; a plain iterator is advanced by taking and dropping batches (so it
must be deterministic for a resumed run to see the same data).
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Iterator

import gin
import optax

from trax_sl import layers as tl


class _Batches:
    """A task's batches from an iterator, or from a function `position -> iterator` (restartable)."""

    def __init__(self, labeled_data, owner: str):
        self._owner = owner
        self._fn: Callable[[int], Iterator] | None = None
        self._iterator: Iterator | None = None
        if isinstance(labeled_data, collections.abc.Iterator):
            self._iterator = labeled_data
        elif callable(labeled_data):
            self._fn = labeled_data
        elif isinstance(labeled_data, collections.abc.Iterable):
            self._iterator = iter(labeled_data)
        else:
            raise TypeError(
                f"{owner}: labeled_data must be an iterator of batches or a function position -> "
                f"iterator, got {type(labeled_data).__name__}"
            )
        self.position = 0

    def sample(self):
        """A batch to initialize from; taken from an iterator as Trax does, so not counted."""
        if self._fn is not None:
            iterator = iter(self._fn(0))
            try:
                return self._take(iterator)
            finally:
                _close(iterator)
        return self._take(self._iterator)

    def _take(self, iterator):
        try:
            return next(iterator)
        except StopIteration:
            raise ValueError(
                f"{self._owner}: labeled_data ran out of batches after {self.position}; "
                f"give a stream that repeats"
            ) from None

    def next(self):
        if self._iterator is None:
            self._iterator = iter(self._fn(self.position))
        batch = self._take(self._iterator)
        self.position += 1
        return batch

    def state(self) -> dict:
        """Where the batches stand: `{'position': batches taken}`, plus the iterator's own state if it keeps one.

        A Grain iterator (the pipelines of `trax_sl.data`) keeps one: restoring
        it continues in O(1), where a position alone may replay the batches.
        """
        state = {"position": self.position}
        if self._iterator is not None and hasattr(self._iterator, "get_state"):
            state["iterator"] = self._iterator.get_state()
        return state

    def restore(self, state: dict) -> None:
        """Continues where `state` (from `state()`) stood: from the iterator's state if saved, else by seeking."""
        if "iterator" in state:
            if self._fn is not None:
                self.close()
                self._iterator = iter(self._fn(0))
            if hasattr(self._iterator, "set_state"):
                self._iterator.set_state(state["iterator"])
                self.position = state["position"]
                return
        self.seek(state["position"])

    def close(self) -> None:
        """Stops the read-ahead (threads or worker processes) of an iterator made here, if it has one."""
        if self._fn is not None:
            _close(self._iterator)

    def seek(self, position: int) -> None:
        """Continues after the first `position` batches."""
        if self._fn is not None:
            self.close()
            self._iterator, self.position = None, position
            return
        if position < self.position:
            raise ValueError(
                f"{self._owner}: cannot go back from batch {self.position} to {position} in an "
                f"iterator; give labeled_data as a function position -> iterator"
            )
        while self.position < position:
            self.next()


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _to_optax(optimizer, lr_schedule) -> optax.GradientTransformation:
    if isinstance(optimizer, optax.GradientTransformation):
        if lr_schedule is not None:
            raise ValueError(
                "TrainTask: lr_schedule drives trax_sl optimizers; an optax transformation "
                "takes its schedule itself (e.g. optax.adam(optax.cosine_decay_schedule(...)))"
            )
        return optimizer
    if not hasattr(optimizer, "to_optax"):
        raise TypeError(
            f"TrainTask: optimizer must be a trax_sl optimizer (e.g. trax_sl.optimizers.Adam()) or an "
            f"optax.GradientTransformation, got {optimizer!r}"
        )
    # Loop numbers steps from 1, as Trax's Loop does: the schedule sees 1 at the first update.
    return optimizer.to_optax(lr_schedule, step_offset=1)


class _LabeledDataTask:
    """What train and eval tasks share: resumable labeled data, a sample batch, an export prefix."""

    def _init_data(self, labeled_data, task_name: str, sample_batch, export_prefix) -> None:
        self._batches = _Batches(labeled_data, task_name)
        self._labeled_data = labeled_data
        self._sample_batch = self._batches.sample() if sample_batch is None else sample_batch
        self._export_prefix = export_prefix

    @property
    def labeled_data(self):
        return self._labeled_data

    @property
    def sample_batch(self):
        return self._sample_batch

    def next_batch(self):
        """Returns one batch of labeled data: a tuple of input(s) plus label."""
        return self._batches.next()

    @property
    def data_position(self) -> int:
        """How many batches `next_batch` has returned (what checkpoints save)."""
        return self._batches.position

    def seek(self, position: int) -> None:
        """Makes `next_batch` continue after the first `position` batches."""
        self._batches.seek(position)

    @property
    def data_state(self) -> dict:
        """Where the labeled data stands (what checkpoints save): the position, and a Grain iterator's state."""
        return self._batches.state()

    def restore_data(self, state: dict) -> None:
        """Makes `next_batch` continue where `data_state` was `state` (a resumed Loop calls it)."""
        self._batches.restore(state)

    @property
    def export_prefix(self) -> str | None:
        return self._export_prefix


@gin.configurable(module="trax_sl.supervised.training")
class TrainTask(_LabeledDataTask):
    """A supervised task (labeled data + feedback mechanism) for training."""

    def __init__(
        self,
        labeled_data: Iterator | Callable[[int], Iterator],
        loss_layer: tl.Layer,
        optimizer,
        lr_schedule: Callable | None = None,
        n_steps_per_checkpoint: int | None = 100,
        n_steps_per_permanent_checkpoint: int | None = None,
        loss_name: str | None = None,
        sample_batch=None,
        export_prefix: str | None = None,
    ):
        """Configures a training task.

        Args:
            labeled_data: Iterator of batches `(inputs, targets[, weights])`, or
                a function `position -> iterator` giving the batches after the
                first `position` (then runs resume without replaying data).
            loss_layer: Layer that computes a scalar loss from `(model_output,
                targets[, weights])`.
            optimizer: A trax_sl optimizer (e.g. `trax_sl.optimizers.Adam()`; a
                class, as Trax's memory-efficient trainer takes, is made with
                its defaults), or an `optax.GradientTransformation`.
            lr_schedule: Learning rate schedule, a function step -> learning
                rate (steps numbered from 1); the optimizer's rate if None.
            n_steps_per_checkpoint: Steps between checkpoints (and evals), by default.
            n_steps_per_permanent_checkpoint: Steps between permanent checkpoints.
            loss_name: Name of the loss in logs; the loss layer's name if None.
            sample_batch: Batch to initialize the model from; if None, the
                first batch of `labeled_data` (taken from an iterator, as in Trax).
            export_prefix: Name of this task in logs when there are several.
        """
        self._init_data(labeled_data, "TrainTask", sample_batch, export_prefix)
        if isinstance(optimizer, type) and hasattr(optimizer, "to_optax"):
            optimizer = optimizer()  # Trax's memory-efficient trainer takes the class: its defaults.
        self._loss_layer = loss_layer
        self._optimizer = optimizer
        self._lr_schedule = lr_schedule
        self._tx = _to_optax(optimizer, lr_schedule)
        self._n_steps_per_checkpoint = n_steps_per_checkpoint
        self._n_steps_per_permanent_checkpoint = n_steps_per_permanent_checkpoint
        self._loss_name = loss_name or loss_layer.name

    @property
    def loss_layer(self) -> tl.Layer:
        return self._loss_layer

    @property
    def loss_name(self) -> str:
        return self._loss_name

    @property
    def n_steps_per_checkpoint(self) -> int | None:
        return self._n_steps_per_checkpoint

    @property
    def n_steps_per_permanent_checkpoint(self) -> int | None:
        return self._n_steps_per_permanent_checkpoint

    @property
    def optimizer(self):
        return self._optimizer

    @property
    def optax_transformation(self) -> optax.GradientTransformation:
        """The optax transformation that updates the weights (learning rate schedule included)."""
        return self._tx

    def learning_rate(self, step: int) -> float | None:
        """The learning rate at `step` (None for an optax transformation: it keeps its own)."""
        if self._lr_schedule is not None:
            return float(self._lr_schedule(step))
        return getattr(self._optimizer, "learning_rate", None)


@gin.configurable(module="trax_sl.supervised.training")
class EvalTask(_LabeledDataTask):
    """Labeled data plus scalar functions for (periodically) measuring a model.

    The value of each metric is its average over `n_eval_batches` batches. By
    default every evaluation uses the same batches (the first `n_eval_batches`
    that `next_batch` returns), so that evaluations differ only by the weights;
    `fixed_batches=False` reads the next `n_eval_batches` batches each time, as
    Trax does.
    """

    def __init__(
        self,
        labeled_data: Iterator | Callable[[int], Iterator],
        metrics: list[tl.Layer],
        metric_names: list[str] | None = None,
        n_eval_batches: int = 1,
        sample_batch=None,
        export_prefix: str | None = None,
        fixed_batches: bool = True,
    ):
        """Configures an eval task: named metrics run with a given data source.

        Args:
            labeled_data: Iterator of batches, or a function `position -> iterator`.
            metrics: Layers that each compute a scalar from `(model_output,
                targets[, weights])`.
            metric_names: A name per metric; the layers' names if None.
            n_eval_batches: How many batches each evaluation averages over.
            sample_batch: Batch to initialize from; the first of `labeled_data` if None.
            export_prefix: Name of this task in logs when there are several.
            fixed_batches: Evaluate on the same batches each time: the first
                `n_eval_batches` batches `next_batch` returns, drawn at the first
                evaluation and kept on the host (a restored loop draws them
                again). False reads the next `n_eval_batches` at each
                evaluation (Trax's behaviour), which makes the curve follow the
                data's order as much as the weights.
        """
        self._init_data(labeled_data, "EvalTask", sample_batch, export_prefix)
        self._metrics = list(metrics)
        self._metric_names = list(metric_names or [m.name for m in self._metrics])
        if len(self._metrics) != len(self._metric_names):
            raise ValueError(
                f"EvalTask: number of metrics ({len(self._metrics)}) does not equal number of "
                f"metric names ({len(self._metric_names)})"
            )
        if not self._metrics:
            raise ValueError("EvalTask: metrics must hold at least one metric layer, got none")
        if n_eval_batches < 1:
            raise ValueError(f"EvalTask: n_eval_batches must be >= 1, got {n_eval_batches}")
        self._n_eval_batches = n_eval_batches
        self._fixed_batches = fixed_batches
        self._kept_batches: list | None = None

    @property
    def metrics(self) -> list[tl.Layer]:
        return self._metrics

    @property
    def metric_names(self) -> list[str]:
        return self._metric_names

    @property
    def n_eval_batches(self) -> int:
        return self._n_eval_batches

    @property
    def fixed_batches(self) -> bool:
        return self._fixed_batches

    def eval_batches(self) -> list:
        """The batches of one evaluation: the kept first ones, or with `fixed_batches=False` the next ones."""
        if not self._fixed_batches:
            return [self.next_batch() for _ in range(self._n_eval_batches)]
        if self._kept_batches is None:
            self._kept_batches = [self.next_batch() for _ in range(self._n_eval_batches)]
        return self._kept_batches

    def restore_data(self, state: dict) -> None:
        """Continues where `data_state` was `state`; fixed batches are drawn again (see `seek`)."""
        if self._fixed_batches:
            self.seek(state["position"])
        else:
            super().restore_data(state)

    def seek(self, position: int) -> None:
        """Continues after the first `position` batches; with fixed batches, draws them again if they were drawn.

        Fixed batches are always the first `n_eval_batches`: a checkpoint taken
        after an evaluation (position > 0) makes a new task draw them now, and
        a task that holds them keeps them.
        """
        if not self._fixed_batches:
            super().seek(position)
        elif self._kept_batches is None and position > 0:
            super().seek(0)
            self.eval_batches()
