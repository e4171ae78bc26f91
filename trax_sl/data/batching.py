"""Batching: examples to zero-padded batches (or masked Sequences), and loss weights.

`Batch` and `BucketByLength` stack examples (tuples of numpy arrays) into
batches of zero-padded arrays, as Trax's do; with `sequences=True` a feature
of rank >= 1 per example becomes a `trax_sl.Sequence` instead (values zero
padded, mask True on each example's own steps), a scalar feature stays a
plain array. `AddLossWeights` then adds float32 weights, 0 on the padding of
Sequences (and on `id_to_mask`). The `trax_sl.data` docstring gives the
whole batch format.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gin
import grain
import numpy as np

from trax_sl import shapes
from trax_sl.data.grain_batching import BucketedBatches
from trax_sl.data.steps import Processes, Step, map_step, process_rows
from trax_sl.sequence import Sequence


@gin.configurable(module="trax_sl.data")
def Batch(batch_size: int, per_process: bool = False, sequences: bool = False) -> Step:  # noqa: N802
    """Returns a step that groups examples into padded batches of `batch_size`; see `batch`.

    `batch_size` is the global batch: every process makes the same batches
    and keeps its own rows (so a run on 1, 2 or 4 processes trains on the same
    data). With `per_process`, `batch_size` is each process's part instead
    (the global batch is `batch_size` times the process count). With
    `sequences`, features of rank >= 1 become masked `Sequence`s.
    """
    if batch_size < 1:
        raise ValueError(f"Batch: batch_size must be >= 1, got batch_size={batch_size}")
    where = f"Batch(batch_size={batch_size}{', per_process=True' if per_process else ''})"

    def stack(examples, _):
        return _stack_examples(examples, None, False, "Batch", sequences)

    return _batching_step(where, [batch_size], per_process, lambda _: 0, stack)


def batch(generator: Iterable, batch_size: int, sequences: bool = False) -> Iterator:
    """Groups examples into batches of `batch_size`, padding as tf.data's `padded_batch` (Trax's batch).

    Each feature is stacked into one array, zero padded to the largest size
    on each axis. With `sequences`, a feature of rank >= 1 per example becomes
    a `Sequence` instead: those values, with a mask True on each example's
    first `shape[0]` steps (a scalar feature stays a plain `[batch]` array).
    A last incomplete batch is dropped, as in Trax.
    """
    if batch_size < 1:
        raise ValueError(f"batch: batch_size must be >= 1, got batch_size={batch_size}")
    iterator = iter(generator)
    while True:
        examples = list(itertools.islice(iterator, batch_size))
        if len(examples) < batch_size:
            return
        yield _stack_examples(examples, None, False, "Batch", sequences)


@gin.configurable(module="trax_sl.data")
def BucketByLength(  # noqa: N802
    boundaries: list[int],
    batch_sizes: list[int],
    length_keys: list[int] | None = None,
    length_axis: int = 0,
    strict_pad_on_len: bool = False,
    per_process: bool = False,
    sequences: bool = False,
) -> Step:
    """Returns a step that batches examples of similar length; see `bucket_by_length`.

    Args:
        boundaries: Increasing bucket boundaries; an example of length l goes
            to the first bucket whose boundary is >= l, or to the last bucket.
        batch_sizes: One batch size per bucket: `len(boundaries) + 1` of them.
        length_keys: The features whose largest size on `length_axis` is an
            example's length; the first two features by default, as in Trax.
        length_axis: The axis that holds the length.
        strict_pad_on_len: Pad every axis to a multiple of the bucket's
            boundary instead of Trax's nearest-power-of-two rule.
        per_process: `batch_sizes` are each process's part instead of global
            batch sizes (see `Batch`).
        sequences: Features of rank >= 1 become masked `Sequence`s.
    """
    if len(batch_sizes) != len(boundaries) + 1:
        raise ValueError(
            f"BucketByLength: expected len(boundaries) + 1 batch sizes (one per bucket, the last "
            f"for longer examples), got {len(boundaries)} boundaries and {len(batch_sizes)} batch sizes"
        )
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"BucketByLength: batch sizes must be >= 1, got batch_sizes={list(batch_sizes)}")
    boundaries = list(boundaries)
    where = f"BucketByLength(boundaries={boundaries}, batch_sizes={list(batch_sizes)})"
    bucket_of, stack = _length_buckets(
        lambda x: example_length(x, length_axis, length_keys), boundaries, strict_pad_on_len, sequences
    )
    return _batching_step(where, batch_sizes, per_process, bucket_of, stack)


def _batching_step(where: str, batch_sizes, per_process: bool, bucket_of, stack) -> Step:
    """A step that batches by buckets: a generator path (`bucketed`) and a Grain path (`BucketedBatches`)."""

    def global_sizes(processes: Processes) -> list[int]:
        return [size * processes.count for size in batch_sizes] if per_process else list(batch_sizes)

    def on_stream(generator):
        processes = Processes.current()
        batches = _bucketed(generator, bucket_of, global_sizes(processes), stack)
        return (process_rows(b, processes, where) for b in batches)

    def on_dataset(dataset, processes):
        if not isinstance(dataset, grain.MapDataset):
            raise TypeError(
                f"{where}: batches a dataset of examples (random access), got {type(dataset).__name__}; "
                f"put it before the steps that work on batches"
            )
        return BucketedBatches(dataset, bucket_of, global_sizes(processes), stack, processes, where)

    return Step(where, on_stream, on_dataset)


def _bucketed(generator: Iterable, bucket_of, batch_sizes: list[int], stack) -> Iterator:
    """Puts examples in buckets and yields a bucket, stacked, once full (the rest is dropped)."""
    buckets: list[list] = [[] for _ in batch_sizes]
    for example in generator:
        index = bucket_of(example)
        buckets[index].append(example)
        if len(buckets[index]) == batch_sizes[index]:
            yield stack(buckets[index], index)
            buckets[index] = []


def bucket_by_length(
    generator: Iterable,
    length_fn: Callable[[Any], int],
    boundaries: list[int],
    batch_sizes: list[int],
    strict_pad_on_len: bool = False,
    sequences: bool = False,
) -> Iterator:
    """Puts examples in buckets by `length_fn` and yields a bucket as a batch once full.

    Batches are padded as in `batch` (with `sequences`, into `Sequence`s),
    except that sizes are rounded up towards the bucket boundary (Trax's
    `pad_to_max_dims`). Examples left in buckets that never fill are dropped,
    as in Trax.
    """
    bucket_of, stack = _length_buckets(length_fn, boundaries, strict_pad_on_len, sequences)
    return _bucketed(generator, bucket_of, batch_sizes, stack)


def _length_buckets(
    length_fn: Callable[[Any], int], boundaries: list[int], strict_pad_on_len: bool, sequences: bool
):
    """`bucket_of(example)` (the first bucket whose boundary is >= its length) and `stack(examples, bucket)`."""

    def bucket_of(example) -> int:
        length = length_fn(example)
        return next((i for i, b in enumerate(boundaries) if length <= b), len(boundaries))

    def stack(examples, bucket):
        boundary = boundaries[bucket] if bucket < len(boundaries) else None
        return _stack_examples(examples, boundary, strict_pad_on_len, "BucketByLength", sequences)

    return bucket_of, stack


def _stack_examples(examples: list, boundary, strict_pad_on_len: bool, where: str, sequences: bool):
    """Turns a list of examples into one batch: padded arrays, or Sequences for rank >= 1 features."""
    first = examples[0]
    if isinstance(first, np.ndarray) or np.isscalar(first):
        return _stack_feature([np.asarray(e) for e in examples], boundary, strict_pad_on_len, sequences)
    if not isinstance(first, (tuple, list)):
        raise TypeError(
            f"{where}: expected examples that are tuples of arrays (or bare arrays), got "
            f"{type(first).__name__}; select features first, e.g. TFDS(..., keys=('text', 'label'))"
        )
    n_features = {len(e) for e in examples}
    if len(n_features) != 1:
        raise ValueError(f"{where}: examples differ in their number of features: {sorted(n_features)}")
    features = zip(*examples)
    return tuple(
        _stack_feature([np.asarray(x) for x in f], boundary, strict_pad_on_len, sequences) for f in features
    )


def _stack_feature(arrays: list[np.ndarray], boundary, strict_pad_on_len: bool, sequences: bool):
    if arrays[0].ndim == 0:
        return np.stack(arrays)
    values = pad_to_max_dims(arrays, boundary, strict_pad_on_len)
    if not sequences:
        return values
    lengths = np.array([a.shape[0] for a in arrays])
    mask = np.arange(values.shape[1]).reshape((1, -1)) < lengths.reshape((-1, 1))
    return Sequence(values, mask)


def pad_to_max_dims(tensors: list[np.ndarray], boundary=None, strict_pad_on_len: bool = False) -> np.ndarray:
    """Pads arrays with zeros to a joint shape and stacks them (Trax's rule).

    Without `boundary`, each axis is padded to its largest size. With an int
    `boundary`, an axis whose sizes differ (or differ from the boundary) is
    padded to `max(largest, boundary)`, or to the next power of two when that
    is less than half. With `strict_pad_on_len` (or a per-axis list of
    boundaries), each axis is padded to the next multiple of its boundary.
    """
    ndim = tensors[0].ndim
    if any(t.ndim != ndim for t in tensors):
        raise ValueError(
            f"pad_to_max_dims: arrays to batch must have the same rank, got shapes {[t.shape for t in tensors]}"
        )
    max_dims = [max(t.shape[i] for t in tensors) for i in range(ndim)]
    if boundary is not None and (strict_pad_on_len or isinstance(boundary, (list, tuple))):
        per_axis = list(boundary) if isinstance(boundary, (list, tuple)) else [boundary] * ndim
        if len(per_axis) != ndim:
            raise ValueError(
                f"pad_to_max_dims: expected one boundary per axis ({ndim}), got boundary={boundary}"
            )
        target = [m if not b else b * math.ceil(m / b) for m, b in zip(max_dims, per_axis)]
    elif boundary is None:
        target = max_dims
    else:
        target = []
        for i, max_len in enumerate(max_dims):
            min_len = min(t.shape[i] for t in tensors)
            size = max(max_len, boundary)
            if not (max_len == min_len == boundary) and 2 * max_len < size:
                size = 2 ** math.ceil(math.log2(max_len)) if max_len > 0 else 0
            target.append(size)
    return np.stack([np.pad(t, [(0, n - s) for n, s in zip(target, t.shape)]) for t in tensors])


def example_length(example, length_axis: int, length_keys) -> int:
    """The largest size on `length_axis` over the `length_keys` features."""
    features = example if isinstance(example, (tuple, list)) else (example,)
    keys = length_keys or range(min(2, len(features)))
    lengths = []
    for k in keys:
        shape = np.shape(features[k])
        if not -len(shape) <= length_axis < len(shape):
            raise ValueError(
                f"example length: feature {k} has shape {shape}, without axis {length_axis}; "
                f"set length_keys to the sequence features (the first two by default)"
            )
        lengths.append(shape[length_axis])
    return max(lengths)


@gin.configurable(module="trax_sl.data")
def AddLossWeights(id_to_mask: int | None = None) -> Step:  # noqa: N802
    """Returns a step that adds or completes loss weights; see `add_loss_weights`."""
    return map_step(
        f"AddLossWeights(id_to_mask={id_to_mask})", lambda example: _with_loss_weights(example, id_to_mask)
    )


def add_loss_weights(generator: Iterable, id_to_mask: int | None = None) -> Iterator:
    """Makes `(inputs, targets[, weights])` into `(inputs, targets, weights)`.

    `weights` is a plain float32 array shaped like the targets' values: the
    given weights or ones, times 0 where the targets' mask is False (when
    targets is a Sequence) and where the targets equal `id_to_mask`. Other
    tuples pass unchanged; `id_to_mask` cannot apply to them.
    """
    return (_with_loss_weights(example, id_to_mask) for example in generator)


def _with_loss_weights(example, id_to_mask: int | None):
    if not isinstance(example, tuple) or len(example) not in (2, 3):
        if id_to_mask is not None:
            raise ValueError(
                f"AddLossWeights: id_to_mask needs (inputs, targets[, weights]) tuples, got "
                f"{shapes.short_form(example)}"
            )
        return example
    targets = example[1]
    target_values = targets.values if isinstance(targets, Sequence) else np.asarray(targets)
    if len(example) == 2:
        weights = np.ones(target_values.shape, np.float32)
    else:
        weights = _plain(example[2]).astype(np.float32)
    if isinstance(targets, Sequence):
        weights = weights * _expand(targets.mask, weights.ndim)
    if id_to_mask is not None:
        weights = weights * (target_values != id_to_mask)
    return (example[0], targets, weights.astype(np.float32))


def _plain(x) -> np.ndarray:
    """A Sequence's values with zeros at invalid steps; an array as it is."""
    if isinstance(x, Sequence):
        return np.where(_expand(x.mask, x.values.ndim), x.values, 0)
    return np.asarray(x)


def _expand(mask: np.ndarray, ndim: int) -> np.ndarray:
    return mask.reshape(mask.shape + (1,) * (ndim - mask.ndim))
