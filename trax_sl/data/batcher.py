"""Trax's `batcher`: `Inputs` from streams of single examples, with Trax's bucketing heuristic.

Trax configs build their inputs as `train.inputs = @trax.data.batcher` with
`batcher.data_streams = ...`, `batcher.batch_size_per_device = ...`,
`batcher.buckets = ...`; the same gin names work here (`trax_sl.data.`).
Batch sizes are per process, as in Trax: `batch_size_per_device` times the
process's devices (or `batch_size`); every process reads the same examples
and keeps its rows of the global batch, which is that size times the
process count. The streams are plain Python streams, which a resumed run
replays (see `trax_sl.data`).
"""

from __future__ import annotations

from collections.abc import Iterator

import gin

from trax_sl.data.batching import Batch, BucketByLength, add_loss_weights
from trax_sl.data.inputs import Inputs, Serial, shuffle
from trax_sl.data.trax_streams import Parallel


@gin.configurable(module="trax_sl.data")
def batcher(
    data_streams=gin.REQUIRED,
    variable_shapes: bool = True,
    batch_size_per_device: int = 32,
    batch_size: int | None = None,
    eval_batch_size: int = 32,
    bucket_length: int = 32,
    buckets: tuple[list[int], list[int]] | None = None,
    buckets_include_inputs_in_length: bool = False,
    batch_shuffle_size: int | None = None,
    max_eval_length: int | None = None,
    id_to_mask: int | None = None,
    strict_pad_on_len: bool = False,
) -> Inputs:
    """Makes `Inputs` whose batches group the examples of `data_streams` (Trax's batcher).

    Args:
        data_streams: `(train_fn, eval_fn)`, each returning an iterator of
            examples `(inputs, targets[, weights])`, or a function returning that pair.
        variable_shapes: Without `buckets`, bucket by length with Trax's
            heuristic (`bucket_length`); else batch in order.
        batch_size_per_device: Training examples per device of this process.
        batch_size: Training examples per process; overrides batch_size_per_device.
        eval_batch_size: Evaluation examples per process.
        bucket_length: The middle bucket boundary of the heuristic.
        buckets: `(boundaries, batch_sizes)` to bucket by instead.
        buckets_include_inputs_in_length: An example's length is the longer of
            inputs and targets; else the targets' length.
        batch_shuffle_size: Shuffle training batches in a queue of this many.
        max_eval_length: The longest evaluation bucket of the heuristic.
        id_to_mask: Weights are 0 where targets equal this (e.g. 0, the padding).
        strict_pad_on_len: Pad lengths to a multiple of the bucket boundary.
    """
    settings = dict(locals())  # The arguments, passed on to batch_fn.
    train_fn, eval_fn = data_streams() if callable(data_streams) else data_streams
    del settings["data_streams"]
    return Inputs(
        train_stream=lambda n_devices: batch_fn(train_fn(), True, n_devices, **settings),
        eval_stream=lambda n_devices: batch_fn(eval_fn(), False, n_devices, **settings),
        train_eval_stream=lambda n_devices: batch_fn(train_fn(), False, n_devices, **settings),
    )


def batch_fn(
    dataset: Iterator,
    training: bool,
    n_devices: int,
    variable_shapes: bool,
    batch_size_per_device: int = 32,
    batch_size: int | None = None,
    eval_batch_size: int = 32,
    bucket_length: int = 32,
    buckets: tuple[list[int], list[int]] | None = None,
    buckets_include_inputs_in_length: bool = False,
    batch_shuffle_size: int | None = None,
    max_eval_length: int | None = None,
    id_to_mask: int | None = None,
    strict_pad_on_len: bool = False,
) -> Iterator:
    """Batches (or buckets) a stream of examples and adds loss weights, as Trax's `batch_fn`.

    Batch sizes are made divisible by `n_devices`; this process keeps its rows
    of batches that are that size times the process count.
    """
    size = batch_size or batch_size_per_device * n_devices
    size = max((size if training else eval_batch_size) // n_devices, 1) * n_devices
    if buckets is None and variable_shapes:
        buckets = trax_length_buckets(bucket_length, size, max_eval_length, n_devices, training)
    if buckets:
        boundaries, batch_sizes = buckets
        length_keys = [0, 1] if buckets_include_inputs_in_length else [1]
        step = BucketByLength(
            list(boundaries),
            list(batch_sizes),
            length_keys=length_keys,
            strict_pad_on_len=strict_pad_on_len,
            per_process=True,
        )
    else:
        step = Batch(size, per_process=True)
    batches = step(dataset)
    if training and batch_shuffle_size is not None:
        batches = shuffle(batches, batch_shuffle_size)
    return add_loss_weights(batches, id_to_mask)


def trax_length_buckets(
    bucket_length: int, batch_size: int, max_eval_length: int | None, n_devices: int, training: bool
) -> tuple[list[int], list[int]]:
    """Trax's heuristic buckets: `(boundaries, batch_sizes)` around `bucket_length` and `batch_size`.

    Boundaries L/4, L/2, L, 2L, 4L, 8L, 16L take 4b, 2b, b, b/2, b/4, b/8, b/16
    examples and longer ones 1. For evaluation the boundaries below
    `max_eval_length` (32 L by default) are kept and `max_eval_length` ends
    them; its bucket takes the next size of the list, or `b // max_eval_length`
    when all seven were kept (what Trax's examples up to max_eval_length get;
    Trax fails on longer ones, which here come one at a time). Sizes are
    rounded down to multiples of `n_devices` (at least n_devices).
    """
    boundaries = [bucket_length // 4, bucket_length // 2] + [bucket_length * 2**k for k in range(5)]
    sizes = [batch_size * 4, batch_size * 2] + [batch_size // 2**k for k in range(5)] + [1]
    if not training:
        max_eval_length = max_eval_length or bucket_length * 32
        boundaries = [b for b in boundaries if b < max_eval_length]
        n = len(boundaries)
        last = sizes[n] if n < 7 else batch_size // max_eval_length
        boundaries, sizes = boundaries + [max_eval_length], sizes[:n] + [last, 1]
    return boundaries, [max(size // n_devices, 1) * n_devices for size in sizes]


@gin.configurable(module="trax_sl.data")
def make_additional_stream(stream=gin.REQUIRED) -> Iterator:
    """The examples of the pipeline `stream` (a stream function or a list of them), for gin configs."""
    return Serial(stream)()


@gin.configurable(module="trax_sl.data")
def make_parallel_stream(streams=gin.REQUIRED, counters=None) -> Iterator:
    """The examples of `Parallel(streams, counters)`, for gin configs."""
    return Parallel(streams, counters=counters)()
