"""Batching on Grain: global batches from a random-access dataset, with a resumable state of a few integers.

`BucketedBatches` reads the examples of a Grain `MapDataset` in index order
(skipping the ones a filter dropped, which read as None), puts each into its
bucket and yields a bucket as a batch once it is full; `Batch` is the case of
one bucket. Every process reads the same examples and makes the same global
batches (so that all pad alike) and keeps its own rows.

The iterator's state is the index of the next example to read and the
indices of the examples waiting in buckets: `set_state` reads those few
examples again instead of replaying the stream, so a run resumed at batch
100,000 starts as fast as one at batch 10.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import grain

from trax_sl.data.steps import Processes, process_rows

_READ_CHUNK = 64  # Examples read per call of the parent; batched reads of array_record files are much faster.


_REJECTION_BOUND = "trax_sl_rejection_bound"  # The attribute `with_rejection_bound` sets.


def with_rejection_bound(dataset: grain.MapDataset, bound: int, filter_name: str) -> grain.MapDataset:
    """Marks a filtered dataset: a batching step after it raises after `bound` dropped examples in a row."""
    setattr(dataset, _REJECTION_BOUND, (bound, filter_name))
    return dataset


def _rejection_bound(dataset) -> tuple[int, str]:
    """The bound of the nearest marked filter among `dataset` and its ancestors."""
    if hasattr(dataset, _REJECTION_BOUND):
        return getattr(dataset, _REJECTION_BOUND)
    for parent in dataset.parents:
        return _rejection_bound(parent)
    return 100_000, "a filter"


class BucketedBatches(grain.IterDataset):
    """Global batches of the examples of `parent`, bucketed; each process gets its rows.

    Args:
        parent: A `grain.MapDataset` of examples, None where a filter dropped one.
        bucket_of: example -> its bucket's index.
        batch_sizes: The global batch size of each bucket.
        stack: `(examples, bucket index) -> batch`.
        processes: Which rows of each batch this process keeps.
        where: The step's name, for errors.

    After `max_consecutive_rejections` dropped examples in a row (the bound of
    the nearest filter before it, see `with_rejection_bound`) it raises: a
    repeating source whose every example a filter drops would otherwise hang.
    """

    def __init__(
        self,
        parent: grain.MapDataset,
        bucket_of: Callable[[Any], int],
        batch_sizes: list[int],
        stack: Callable[[list, int], Any],
        processes: Processes,
        where: str,
    ):
        super().__init__(parent)
        self.bucket_of = bucket_of
        self.batch_sizes = list(batch_sizes)
        self.stack = stack
        self.processes = processes
        self.where = where
        self.max_consecutive_rejections, self.filter_name = _rejection_bound(parent)

    def __iter__(self) -> grain.DatasetIterator:
        return _BucketedBatchesIterator(self)

    def __str__(self) -> str:
        return f"BucketedBatches({self.where})"


class _BucketedBatchesIterator(grain.DatasetIterator):
    def __init__(self, dataset: BucketedBatches):
        super().__init__()
        self._dataset = dataset
        self._parent_dataset: grain.MapDataset = dataset._parent
        self._next_index = 0  # The first example not yet taken into a bucket.
        self._read_ahead: collections.deque = collections.deque()  # (index, example) from _next_index on.
        self._buckets: list[list[tuple[int, Any]]] = [[] for _ in dataset.batch_sizes]

    def __next__(self):
        dataset = self._dataset
        while True:
            index, example = self._next_example()
            bucket = dataset.bucket_of(example)
            self._buckets[bucket].append((index, example))
            if len(self._buckets[bucket]) == dataset.batch_sizes[bucket]:
                examples = [example for _, example in self._buckets[bucket]]
                self._buckets[bucket] = []
                return process_rows(dataset.stack(examples, bucket), dataset.processes, dataset.where)

    def _next_example(self) -> tuple[int, Any]:
        dropped = 0
        while True:
            if not self._read_ahead:
                indices = list(range(self._next_index, self._next_index + _READ_CHUNK))
                self._read_ahead.extend(zip(indices, self._parent_dataset._getitems(indices)))
            index, example = self._read_ahead.popleft()
            self._next_index = index + 1
            if example is not None:
                return index, example
            dropped += 1
            if dropped >= self._dataset.max_consecutive_rejections:
                raise ValueError(
                    f"{self._dataset.where}: {self._dataset.filter_name} before it dropped {dropped} examples "
                    f"in a row (up to example {index}); widen the filter's bounds, or raise its "
                    f"max_consecutive_rejections if long runs of dropped examples are expected"
                )

    def get_state(self) -> dict[str, Any]:
        return {
            "next_index": self._next_index,
            "buckets": [[index for index, _ in bucket] for bucket in self._buckets],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        buckets = state["buckets"]
        if len(buckets) != len(self._buckets):
            raise ValueError(
                f"{self._dataset.where}: the saved data state has {len(buckets)} buckets, this pipeline "
                f"{len(self._buckets)}; it was saved by another pipeline"
            )
        self._next_index = int(state["next_index"])
        self._read_ahead.clear()
        self._buckets = [
            list(zip(indices, self._parent_dataset._getitems(list(indices)))) if indices else []
            for indices in buckets
        ]
