"""Streams of batches from Grain datasets: read ahead in threads or worker processes, resumable.

`dataset_stream(make_dataset)` is the stream function of `Inputs` for a
Grain pipeline: called with `n_devices` it builds the dataset of the current
process and returns its iterator, whose `get_state()`/`set_state()` a
training run saves with each checkpoint and restores on resume. Batches are
prepared ahead of use by `read_ahead`: `buffer_size` batches in a thread by
default, or in `worker_processes` processes (Grain's `mp_prefetch`).
"""

from __future__ import annotations

import atexit
import copy
import queue
import threading
import weakref
from collections.abc import Callable, Iterator

import gin
import grain
import jax
import numpy as np
from absl import flags

from trax_sl import checks
from trax_sl.data.grain_batching import BucketedBatches
from trax_sl.data.steps import Processes, iterable

# Iterators whose read-ahead threads or workers run: closed at exit, before the interpreter tears
# down the modules they use. Grain's iterators also close when collected, which during that
# teardown fails noisily ("Exception ignored in DatasetIterator.__del__"); after the explicit
# close here there is nothing left for them to release, so collection stops closing them.
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_OPEN_ITERATORS):
        iterator.close()
    grain.DatasetIterator.__del__ = lambda self: None


@gin.configurable(module="trax_sl.data")
def read_ahead(
    dataset: grain.IterDataset, buffer_size: int = 2, worker_processes: int = 0
) -> grain.IterDataset:
    """`dataset` with batches prepared ahead of use, in a thread or in worker processes.

    Args:
        dataset: A Grain dataset of batches.
        buffer_size: How many batches a thread prepares ahead; 0 reads in the
            training thread (nothing ahead).
        worker_processes: Prepare batches in this many worker processes
            instead of a thread (for batches whose Python work would hold the
            training thread's GIL); each keeps `buffer_size` batches ahead.
            Needs random access to the batches (the built-in inputs have it).
    """
    checks.check_non_negative("read_ahead", buffer_size=buffer_size, worker_processes=worker_processes)
    if worker_processes:
        if _has_batching_step(dataset):
            raise ValueError(
                f"read_ahead: worker_processes={worker_processes} needs a dataset with random access to its "
                f"batches (the built-in inputs); a pipeline with Batch or BucketByLength makes its batches "
                f"in order, so it reads ahead in a thread: set worker_processes=0"
            )
        if not flags.FLAGS.is_parsed():
            # Grain's workers read its absl flags; outside an absl app (a notebook) they keep their defaults.
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(
            num_workers=worker_processes, per_worker_buffer_size=max(buffer_size, 1)
        )
        # Worker i makes batches i, i + n, ...: the order is the same. Batches arrive in shared memory;
        # copied out, none is left there when the process ends.
        return dataset.mp_prefetch(options).map(_copied)
    if buffer_size:
        return _ThreadReadAhead(dataset, buffer_size)
    return dataset


class _ThreadReadAhead(grain.IterDataset):
    """`parent`'s batches, `buffer_size` of them made ahead in a thread; the state is that of the batches taken."""

    def __init__(self, parent: grain.IterDataset, buffer_size: int):
        super().__init__(parent)
        self._buffer_size = buffer_size

    def __iter__(self) -> grain.DatasetIterator:
        return _ThreadReadAheadIterator(self._parent.__iter__(), self._buffer_size)


class _ThreadReadAheadIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, buffer_size: int):
        super().__init__(parent)
        self._buffer_size = buffer_size
        self._state = parent.get_state()  # The parent's state after the last batch taken from here.
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._made: queue.Queue = queue.Queue()

    def _start(self) -> None:
        self._stop = threading.Event()
        self._made = queue.Queue(self._buffer_size)
        self._thread = threading.Thread(target=self._make, args=(self._made, self._stop), daemon=True)
        self._thread.start()

    def _make(self, made: queue.Queue, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                item = (next(self._parent), self._parent.get_state(), None)
            except BaseException as e:  # noqa: BLE001  (StopIteration too: it ends the stream where it is taken)
                item = (None, None, e)
            while not stop.is_set():
                try:
                    made.put(item, timeout=0.05)
                    break
                except queue.Full:
                    continue
            if item[2] is not None:
                return

    def __next__(self):
        if self._thread is None:
            self._start()
        batch, state, error = self._made.get()
        if error is not None:
            self._halt()
            raise error
        self._state = state
        return batch

    def _halt(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def get_state(self) -> dict:
        return copy.deepcopy(self._state)

    def set_state(self, state: dict) -> None:
        self._halt()  # The batches made ahead are from the old state.
        self._parent.set_state(state)
        self._state = copy.deepcopy(state)

    def close(self) -> None:
        self._halt()
        super().close()


def _has_batching_step(dataset) -> bool:
    return isinstance(dataset, BucketedBatches) or any(_has_batching_step(p) for p in dataset.parents)


def _copied(batch):
    return jax.tree.map(np.array, batch)


def indexed_batches(batch: Callable[[int], object]) -> grain.MapDataset:
    """The endless random-access dataset whose item i is `batch(i)`."""
    return grain.MapDataset.range(_ENDLESS).map(batch)


_ENDLESS = 2**62  # As many batches as a run can take.


def dataset_stream(make_dataset: Callable[[Processes], grain.MapDataset | grain.IterDataset]):
    """The `Inputs` stream function of a Grain pipeline: `(n_devices, position=0) -> iterator`.

    Args:
        make_dataset: processes -> the dataset of batches of that process. A
            `MapDataset` (random access to batch i) starts at `position` in
            O(1); an `IterDataset` skips `position` batches (a resumed training
            run restores the iterator's state instead, in O(1)).
    """

    def stream(n_devices: int, position: int = 0) -> Iterator:
        del n_devices  # Each process reads its rows of the global batches, whatever its devices.
        dataset = make_dataset(Processes.current())
        if isinstance(dataset, grain.MapDataset):
            dataset, position = iterable(dataset[position:]), 0
        iterator = iter(read_ahead(dataset))
        _OPEN_ITERATORS.add(iterator)
        for _ in range(position):
            next(iterator)
        return iterator

    return stream
