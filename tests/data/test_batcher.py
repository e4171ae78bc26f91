"""Trax's batcher: Inputs from single-example streams, Trax's gin names and its bucketing heuristic."""

import gin
import jax
import numpy as np
import pytest

from trax_sl import data
from trax_sl.data.batcher import batch_fn, trax_length_buckets


def examples(lengths):
    def stream():
        for n in lengths:
            x = np.arange(1, n + 1, dtype=np.int32)
            yield x, x

    return stream


@gin.configurable
def toy_streams():
    return examples([1, 3, 2, 4, 1, 2] * 100), examples([5, 5, 1, 1] * 100)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # The values Trax's _buckets_for_length gives (to examples up to max_eval_length).
        ((32, 32, None, 1, True), ([8, 16, 32, 64, 128, 256, 512], [128, 64, 32, 16, 8, 4, 2, 1])),
        ((32, 32, None, 8, True), ([8, 16, 32, 64, 128, 256, 512], [128, 64, 32, 16, 8, 8, 8, 8])),
        ((32, 32, None, 1, False), ([8, 16, 32, 64, 128, 256, 512, 1024], [128, 64, 32, 16, 8, 4, 2, 1, 1])),
        ((32, 32, 100, 1, False), ([8, 16, 32, 64, 100], [128, 64, 32, 16, 8, 1])),
    ],
)
def test_trax_length_buckets(args, expected):
    assert trax_length_buckets(*args) == expected


def test_a_trax_config_of_batcher_parses_and_batches_as_trax(monkeypatch):
    config = """
    train.inputs = @trax_sl.data.batcher
    batcher.data_streams = @toy_streams()
    batcher.batch_size_per_device = 2
    batcher.eval_batch_size = 2
    batcher.buckets = ([2], [2, 1])
    batcher.id_to_mask = 0
    """
    with gin.unlock_config():
        gin.parse_config(config)
    try:
        inputs = data.batcher()
    finally:
        gin.clear_config()
    first, second = (batch for batch, _ in zip(inputs.train_stream(1), range(2)))
    # Lengths 1, 3, 2, 4, 1, 2: bucket <= 2 takes (1, 2), then (1, 2); the longer ones go one at a time.
    x, y, weights = first
    np.testing.assert_array_equal(x, [[1, 2, 3]])  # The first full bucket: the one for length 3.
    assert y.shape == weights.shape == (1, 3) and weights.dtype == np.float32
    x, _, weights = second
    np.testing.assert_array_equal(x, [[1, 0], [1, 2]])  # Zero padded arrays, as in Trax.
    np.testing.assert_array_equal(weights, [[1, 0], [1, 1]])  # id_to_mask=0 masks the padding.
    # Two processes: batch sizes are per process (Trax's), each keeps its rows of the joint batch.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    rows = []
    for process in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda process=process: process)
        stream = batch_fn(examples([1, 2, 2, 1])(), True, 1, variable_shapes=False, batch_size=2)
        rows.append(next(stream)[0])
    np.testing.assert_array_equal(np.concatenate(rows), [[1, 0], [1, 2], [1, 2], [1, 0]])


def test_batcher_buckets_by_trax_heuristic_without_buckets():
    inputs = data.batcher(toy_streams(), batch_size_per_device=2, bucket_length=4)
    batch = next(inputs.train_stream(1))
    # Boundaries 1, 2, 4, ... take 8, 4, 2, ... examples: lengths 3 and 4 fill the 2-example bucket first.
    np.testing.assert_array_equal(batch[0], [[1, 2, 3, 0], [1, 2, 3, 4]])
    np.testing.assert_array_equal(next(data.make_additional_stream(lambda _: examples([2])()))[0], [1, 2])
    np.testing.assert_array_equal(next(data.make_parallel_stream([examples([1]), examples([2])]))[0], [1])
