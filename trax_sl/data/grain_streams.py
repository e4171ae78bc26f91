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
import weakref
from collections.abc import Callable, Iterator

import gin
import grain

from trax_sl import checks
from trax_sl.data.steps import Processes

# Iterators whose read-ahead threads or workers run: closed at exit, before the interpreter tears
# down the modules their threads use (else Grain's finalizers print errors on the way out).
_OPEN_ITERATORS: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_open_iterators() -> None:
    for iterator in list(_OPEN_ITERATORS):
        iterator.close()


@gin.configurable(module="trax_sl.data")
def read_ahead(
    dataset: grain.IterDataset, buffer_size: int = 2, worker_processes: int = 0
) -> grain.IterDataset:
    """`dataset` with batches prepared ahead of use.

    Args:
        dataset: A Grain dataset of batches.
        buffer_size: How many batches a thread prepares ahead; 0 reads in the
            training thread (nothing ahead).
        worker_processes: Prepare batches in this many worker processes
            instead of a thread (for pipelines whose Python work would hold
            the training thread's GIL); each keeps `buffer_size` batches ahead.
    """
    checks.check_non_negative("read_ahead", buffer_size=buffer_size, worker_processes=worker_processes)
    if worker_processes:
        options = grain.MultiprocessingOptions(
            num_workers=worker_processes, per_worker_buffer_size=max(buffer_size, 1)
        )
        return dataset.mp_prefetch(options)
    if buffer_size:
        return grain.experimental.ThreadPrefetchIterDataset(dataset, prefetch_buffer_size=buffer_size)
    return dataset


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
            dataset, position = dataset[position:].to_iter_dataset(), 0
        iterator = iter(read_ahead(dataset))
        _OPEN_ITERATORS.add(iterator)
        for _ in range(position):
            next(iterator)
        return iterator

    return stream
