"""Pipeline steps that are Trax stream functions and also build Grain datasets.

A `Step` is called as Trax calls a stream function (on a generator of
examples, or on None for the first step) and also knows how to apply itself
to a Grain dataset (`on_dataset`). `data.Serial` of steps whose first makes
examples (a source: `TFDS`, ...) is a `Step` whose `dataset()` is the whole
pipeline as one Grain dataset: random access up to the batching step, then a
checkpointable iterator whose state is a few integers, so a resumed run
continues in O(1) (see `trax_sl.data.grain_batching`).

Batches are global: `Batch(32)` on 2 processes makes the same batches of 32
rows as on 1 process, and each process keeps its 16 rows (`process_rows`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import grain
import jax
import numpy as np

from trax_sl.sequence import Sequence


@dataclasses.dataclass(frozen=True)
class Processes:
    """Which process of how many reads a pipeline: it keeps rows `[index * b / count, (index + 1) * b / count)`."""

    index: int = 0
    count: int = 1

    @classmethod
    def current(cls) -> Processes:
        return cls(jax.process_index(), jax.process_count())


class Step:
    """A pipeline step: a Trax stream function that can also be applied to a Grain dataset.

    Args:
        name: What errors and `repr` call the step (`Batch(batch_size=32)`).
        on_stream: `generator -> generator` (the step as a Trax stream
            function); None for a source, which streams its dataset.
        on_dataset: `(dataset, processes) -> dataset`; a source step gets None.
        is_source: The step makes the examples (it ignores its input).
    """

    def __init__(
        self,
        name: str,
        on_stream: Callable[[Iterator | None], Iterator] | None,
        on_dataset: Callable,
        is_source: bool = False,
    ):
        self.name = name
        self._on_stream = on_stream
        self._on_dataset = on_dataset
        self.is_source = is_source

    def __call__(self, generator: Iterator | None = None) -> Iterator:
        """The step as a stream function; a whole pipeline (a source first) iterates its Grain dataset."""
        if self.is_source:
            return iter(self.dataset())
        return self._on_stream(generator)

    def on_dataset(self, dataset, processes: Processes):
        """This step applied to a Grain `MapDataset` or `IterDataset` (None for a source)."""
        return self._on_dataset(dataset, processes)

    def dataset(self, processes: Processes | None = None) -> grain.IterDataset:
        """The pipeline as a Grain dataset for one process (the current one if None), read from the start.

        Raises:
            ValueError: If the step does not start with a source.
        """
        if not self.is_source:
            raise ValueError(
                f"{self.name}: only a pipeline that starts with a source (e.g. TFDS) makes a dataset"
            )
        return iterable(self._on_dataset(None, processes or Processes.current()))

    def __repr__(self) -> str:
        return self.name


def iterable(dataset: grain.MapDataset | grain.IterDataset) -> grain.IterDataset:
    """`dataset` as an `IterDataset` that reads in the calling thread (`read_ahead` decides what runs ahead)."""
    if isinstance(dataset, grain.MapDataset):
        # Grain's default would read up to 500 items ahead in 16 threads of its own.
        return dataset.to_iter_dataset(read_options=grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    return dataset


def map_step(name: str, fn: Callable) -> Step:
    """A step that applies `fn` to each item (example or batch) of the stream or dataset."""
    return Step(name, lambda g: map(fn, g), lambda dataset, _: dataset.map(fn))


def serial_step(steps: tuple[Step, ...]) -> Step:
    """The steps one after the other, as one step (a source if the first is one)."""

    def on_stream(generator):
        for step in steps:
            generator = step._on_stream(generator)
        return generator

    def on_dataset(dataset, processes):
        for step in steps:
            dataset = step.on_dataset(dataset, processes)
        return dataset

    if any(step.is_source for step in steps[1:]):
        sources = [step.name for step in steps if step.is_source]
        raise ValueError(
            f"Serial: only the first step may be a source (it ignores its input), got sources {sources}"
        )
    name = f"Serial({', '.join(step.name for step in steps)})"
    return Step(name, on_stream, on_dataset, is_source=bool(steps) and steps[0].is_source)


def process_rows(batch, processes: Processes, where: str):
    """This process's rows of a global batch (a tuple of arrays and Sequences, or one of them)."""
    if processes.count == 1:
        return batch
    items = batch if isinstance(batch, tuple) else (batch,)
    size = _leading_size(items[0])
    if size % processes.count:
        raise ValueError(
            f"{where}: the global batch of {size} rows does not split evenly over {processes.count} processes; "
            f"give a batch size that is a multiple of the process count (or per_process=True for a batch "
            f"size per process)"
        )
    per_process = size // processes.count
    rows = slice(processes.index * per_process, (processes.index + 1) * per_process)
    kept = tuple(_rows(x, rows) for x in items)
    return kept if isinstance(batch, tuple) else kept[0]


def _leading_size(x) -> int:
    return (x.values if isinstance(x, Sequence) else np.asarray(x)).shape[0]


def _rows(x, rows: slice):
    if isinstance(x, Sequence):
        return Sequence(x.values[rows], x.mask[rows])
    return np.asarray(x)[rows]
