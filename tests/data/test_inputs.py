"""Stream functions, batching with masks, Inputs and resumption: exact values on tiny examples."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import data
from trax_sl.sequence import Sequence


def _ints(*values):
    return np.array(values, np.int32)


def _assert_sequence(x, values, mask):
    assert isinstance(x, Sequence)
    np.testing.assert_array_equal(x.values, np.array(values))
    np.testing.assert_array_equal(x.mask, np.array(mask, bool))


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if isinstance(x, tuple):
            _assert_batches_equal(x, y)
        elif isinstance(x, Sequence):
            np.testing.assert_array_equal(x.values, y.values)
            np.testing.assert_array_equal(x.mask, y.mask)
        else:
            np.testing.assert_array_equal(x, y)


# --- Serial -----------------------------------------------------------------------------------------------


def test_serial_runs_steps_in_order_and_flattens_lists():
    pipeline = data.Serial(
        lambda _: iter(range(5)), [lambda g: (x * 10 for x in g), (lambda g: (x + 1 for x in g),)]
    )
    assert list(pipeline()) == [1, 11, 21, 31, 41]
    assert list(pipeline()) == [1, 11, 21, 31, 41]  # A pipeline restarts when called again.


def test_serial_rejects_non_callables():
    with pytest.raises(TypeError, match="Serial: expected stream functions.*int: 3"):
        data.Serial(lambda _: iter([]), 3)


# --- Shuffle ----------------------------------------------------------------------------------------------


def test_shuffle_is_a_seeded_permutation_within_the_queue():
    stream = list(data.Shuffle(queue_size=4, seed=7)(iter(range(50))))
    assert sorted(stream) == list(range(50))
    assert stream != list(range(50))
    assert stream == list(data.Shuffle(queue_size=4, seed=7)(iter(range(50))))
    assert stream != list(data.Shuffle(queue_size=4, seed=8)(iter(range(50))))
    # An item leaves at most queue_size - 1 places before it came in.
    assert all(position >= item - 3 for position, item in enumerate(stream))


def test_shuffle_queue_size_one_keeps_order_and_short_streams_drain():
    assert list(data.Shuffle(queue_size=1)(iter(range(6)))) == list(range(6))
    assert sorted(data.Shuffle(queue_size=100)(iter(range(6)))) == list(range(6))
    with pytest.raises(ValueError, match="queue_size must be >= 1, got queue_size=0"):
        data.Shuffle(queue_size=0)


# --- Batch ------------------------------------------------------------------------------------------------


def test_batch_pads_arrays_as_trax_does():
    # Trax's own example: features are stacked into zero-padded arrays.
    inputs, labels = next(data.batch(iter([([1] * 3, 1), ([1] * 2, 2)]), 2))
    np.testing.assert_array_equal(inputs, [[1, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(labels, [1, 2])
    x = next(data.Batch(2)(iter([np.ones((1, 3)), np.ones((2, 2))])))  # Bare-array examples: one array.
    np.testing.assert_array_equal(x, [[[1, 1, 1], [0, 0, 0]], [[1, 1, 0], [1, 1, 0]]])


def test_batch_pads_sequences_with_masks_and_stacks_scalars():
    examples = [(_ints(1, 2, 3), np.int32(7)), (_ints(4), np.int32(8)), (_ints(5, 6), np.int32(9))]
    batches = list(data.Batch(2, sequences=True)(iter(examples)))
    assert len(batches) == 1  # The incomplete last batch is dropped, as in Trax.
    inputs, labels = batches[0]
    _assert_sequence(inputs, [[1, 2, 3], [4, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    assert inputs.values.dtype == np.int32
    np.testing.assert_array_equal(labels, [7, 8])
    assert not isinstance(labels, Sequence)


def test_batch_pads_every_axis_and_masks_axis_zero():
    examples = [np.ones((1, 3), np.float32), np.ones((2, 2), np.float32)]
    (x,) = [b for b in data.Batch(2, sequences=True)(iter(examples))]
    _assert_sequence(x, [[[1, 1, 1], [0, 0, 0]], [[1, 1, 0], [1, 1, 0]]], [[1, 0], [1, 1]])


def test_batch_errors():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got batch_size=0"):
        data.Batch(0)
    with pytest.raises(TypeError, match="Batch: expected examples that are tuples.*got dict"):
        next(data.Batch(1)(iter([{"text": "a"}])))
    with pytest.raises(ValueError, match="same rank"):
        next(data.Batch(2)(iter([(_ints(1),), (np.ones((1, 1), np.int32),)])))


# --- BucketByLength and pad_to_max_dims -------------------------------------------------------------------


def test_bucket_by_length_batches_by_bucket_and_pads_to_the_boundary():
    examples = [(_ints(1),), (_ints(1, 2, 3),), (_ints(4, 5),), (_ints(6),)]
    batches = list(data.BucketByLength(boundaries=[2], batch_sizes=[2, 1], sequences=True)(iter(examples)))
    assert len(batches) == 2  # The fourth example waits in a bucket that never fills.
    _assert_sequence(batches[0][0], [[1, 2, 3]], [[1, 1, 1]])
    _assert_sequence(batches[1][0], [[1, 0], [4, 5]], [[1, 0], [1, 1]])


def test_bucket_by_length_uses_the_length_keys():
    examples = [(_ints(1, 2, 3), _ints(1)), (_ints(1), _ints(1))]
    bucket = data.BucketByLength(boundaries=[1], batch_sizes=[1, 1], length_keys=[1], sequences=True)
    first, second = list(bucket(iter(examples)))
    _assert_sequence(first[0], [[1, 2, 3]], [[1, 1, 1]])  # Length 1 (feature 1): the first bucket.
    _assert_sequence(second[0], [[1]], [[1]])


def test_bucket_by_length_names_a_feature_without_length():
    bucket = data.BucketByLength(boundaries=[1], batch_sizes=[1, 1])
    with pytest.raises(ValueError, match="feature 1 has shape \\(\\), without axis 0; set length_keys"):
        next(bucket(iter([(_ints(1), np.int32(0))])))


def test_bucket_by_length_checks_batch_sizes():
    with pytest.raises(
        ValueError, match="expected len\\(boundaries\\) \\+ 1 batch sizes.*got 2 boundaries and 2"
    ):
        data.BucketByLength(boundaries=[4, 8], batch_sizes=[2, 1])


def test_pad_to_max_dims_follows_trax_rules():
    a, b = _ints(1, 2, 3), _ints(4, 5)
    assert data.pad_to_max_dims([a, b]).shape == (2, 3)
    # Boundary 8 but lengths at most 3: the next power of two (4) instead, as in Trax.
    np.testing.assert_array_equal(data.pad_to_max_dims([a, b], boundary=8), [[1, 2, 3, 0], [4, 5, 0, 0]])
    assert data.pad_to_max_dims([a, b], boundary=4).shape == (2, 4)
    assert data.pad_to_max_dims([a, a], boundary=3).shape == (2, 3)
    # strict_pad_on_len: a multiple of the boundary.
    assert data.pad_to_max_dims([np.ones(5), b], boundary=4, strict_pad_on_len=True).shape == (2, 8)
    assert data.pad_to_max_dims([np.ones((5, 3))], boundary=[4, None]).shape == (1, 8, 3)


# --- Length steps -----------------------------------------------------------------------------------------


def test_filter_by_length():
    examples = [(_ints(*range(n)), _ints(1)) for n in (0, 1, 2, 3, 4)]
    kept = data.FilterByLength(max_length=3, min_length=2)(iter(examples))
    assert [len(x) for x, _ in kept] == [2, 3]
    kept = data.FilterByLength(max_length=None, min_length=3, length_keys=[0])(iter(examples))
    assert [len(x) for x, _ in kept] == [3, 4]
    with pytest.raises(ValueError, match="give max_length, min_length or both"):
        data.FilterByLength(max_length=None, min_length=None)


def test_truncate_to_length_on_examples_and_batches():
    ((x, y),) = data.TruncateToLength({0: (2,), 1: 1})(iter([(_ints(1, 2, 3), _ints(4, 5))]))
    np.testing.assert_array_equal(x, [1, 2])
    np.testing.assert_array_equal(y, [4])
    seq = Sequence(np.arange(6).reshape((1, 3, 2)), np.array([[True, True, False]]))
    (out,) = data.TruncateToLength({0: (2, 1)})(iter([(seq,)]))
    _assert_sequence(out[0], [[[0], [2]]], [[1, 1]])


def test_pad_to_length_on_examples():
    example = (_ints(1, 2, 3), _ints(4))
    ((x, y),) = data.PadToLength({0: 5, 1: 2}, pad_value={0: -1, 1: 9})(iter([example]))
    np.testing.assert_array_equal(x, [1, 2, 3, -1, -1])
    np.testing.assert_array_equal(y, [4, 9])
    ((x, _),) = data.PadToLength({0: 2}, multiple=True)(iter([example]))
    np.testing.assert_array_equal(x, [1, 2, 3, 0])  # The next multiple of 2.
    ((x, _),) = data.PadToLength({0: 2})(iter([example]))
    np.testing.assert_array_equal(x, [1, 2, 3])  # Longer features stay.
    with pytest.raises(ValueError, match="len_map must map feature indices"):
        data.PadToLength()
    with pytest.raises(IndexError, match="PadToLength: no feature 2 in an example with 2 features"):
        next(data.PadToLength({2: 4})(iter([example])))


def test_pad_to_length_on_a_batch_adds_invalid_steps():
    batch = next(data.Batch(2, sequences=True)(iter([(_ints(1, 2),), (_ints(3),)])))
    (x,) = next(data.PadToLength({0: 4}, multiple=True)(iter([batch])))
    _assert_sequence(x, [[1, 2, 0, 0], [3, 0, 0, 0]], [[1, 1, 0, 0], [1, 0, 0, 0]])


# --- Loss weights and small steps -------------------------------------------------------------------------


def test_add_loss_weights_masks_padding_and_id_to_mask():
    batch = next(data.Batch(2, sequences=True)(iter([(_ints(1, 2), _ints(3, 0, 5)), (_ints(6), _ints(7))])))
    ((inputs, targets, weights),) = data.AddLossWeights()(iter([batch]))
    assert inputs is batch[0] and targets is batch[1]
    assert weights.dtype == np.float32 and not isinstance(weights, Sequence)
    np.testing.assert_array_equal(weights, [[1, 1, 1], [1, 0, 0]])
    ((_, _, weights),) = data.AddLossWeights(id_to_mask=0)(iter([batch]))
    np.testing.assert_array_equal(weights, [[1, 0, 1], [1, 0, 0]])


def test_add_loss_weights_keeps_given_weights_and_other_tuples():
    example = (_ints(1), _ints(2, 3), np.array([0.5, 2.0]))
    ((_, _, weights),) = data.AddLossWeights(id_to_mask=3)(iter([example]))
    np.testing.assert_array_equal(weights, np.array([0.5, 0.0], np.float32))
    single = (_ints(1),)
    assert next(data.AddLossWeights()(iter([single]))) is single
    with pytest.raises(ValueError, match="id_to_mask needs \\(inputs, targets\\[, weights\\]\\) tuples"):
        next(data.AddLossWeights(id_to_mask=0)(iter([single])))


def test_add_loss_weights_turns_batched_weights_into_a_plain_array():
    examples = [(_ints(1, 2), _ints(3, 4), np.array([0.5, 2.0])), (_ints(5), _ints(6), np.array([3.0]))]
    batch = next(data.Batch(2, sequences=True)(iter(examples)))
    assert isinstance(batch[2], Sequence)
    ((_, _, weights),) = data.AddLossWeights()(iter([batch]))
    assert not isinstance(weights, Sequence)
    np.testing.assert_array_equal(weights, np.array([[0.5, 2.0], [3.0, 0.0]], np.float32))


def test_batches_go_to_devices_as_pytrees():
    examples = [(_ints(1, 2, 3), _ints(1, 2, 3)), (_ints(4), _ints(4))] * 4
    batch = next(data.AddLossWeights()(data.Batch(8, sequences=True)(iter(examples))))
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    on_devices = jax.device_put(batch, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch")))
    inputs = on_devices[0]
    assert isinstance(inputs, Sequence) and len(inputs.mask.sharding.device_set) == len(jax.devices())

    @jax.jit
    def weighted_sum(batch):
        inputs, _, weights = batch
        return jnp.sum(inputs.values * weights), jnp.sum(inputs.lengths())

    total, n_valid = weighted_sum(on_devices)
    assert int(total) == (1 + 2 + 3 + 4) * 4 and int(n_valid) == 16


def test_dup_and_cast_to():
    ((x, y, _),) = data.Dup()(iter([(_ints(1, 2), np.ones(2))]))
    np.testing.assert_array_equal(y, [1, 2])
    assert x is y
    ((a, b),) = data.CastTo(np.float32, indices=(1,))(iter([(_ints(1), _ints(2))]))
    assert a.dtype == np.int32 and b.dtype == np.float32


def test_log_prints_shapes_and_passes_items(capsys):
    batch = next(data.Batch(2, sequences=True)(iter([(_ints(1, 2), np.int32(0))] * 2)))
    items = list(data.Log(n_steps_per_example=2)(iter([batch] * 3)))
    assert len(items) == 3 and items[0] is batch
    assert capsys.readouterr().out == "(Sequence(i32[2,2]), i32[2])\n" * 2


# --- Inputs and resumption --------------------------------------------------------------------------------


def _pipeline():
    return data.Serial(
        lambda _: ((_ints(*range(n % 5 + 1)), np.int32(n)) for n in itertools.count()),
        data.Shuffle(queue_size=8, seed=3),
        data.BucketByLength(boundaries=[2, 4], batch_sizes=[4, 2, 1], length_keys=[0]),
    )


def test_make_inputs_restarts_at_a_position_with_the_same_batches():
    inputs = data.make_inputs(train_stream=_pipeline())
    continuing = list(itertools.islice(inputs.train_stream(1), 12))
    restarted = list(itertools.islice(inputs.train_stream(1, position=7), 5))
    _assert_batches_equal(tuple(continuing[7:]), tuple(restarted))
    assert inputs.eval_stream is not None
    _assert_batches_equal(next(inputs.eval_stream(1)), continuing[0])  # No eval stream: the train stream.


def test_inputs_peeks_at_shapes_and_seeks_with_position_when_it_can():
    calls = []

    def stream(n_devices, position=0):
        calls.append(position)
        return ((np.full((2, 3), i, np.int32), np.zeros((2,), np.float32)) for i in itertools.count(position))

    inputs = data.Inputs(stream, eval_stream=lambda n: iter([(np.zeros((4, 1)), np.ones((4,), np.int32))]))
    assert inputs.input_shape == (3,) and inputs.input_dtype == np.int32
    assert inputs.target_shape == () and inputs.target_dtype == np.float32
    assert inputs.example_shape_dtype == ([(2, 3), (2,)], [np.int32, np.float32])
    assert next(inputs.train_stream(1, position=5))[0][0, 0] == 5
    assert calls == [0, 5]
    # A stream function without `position` is replayed and skipped.
    assert len(next(inputs.eval_stream(1))) == 2
    assert list(inputs.eval_stream(1, position=1)) == []


def test_inputs_errors():
    with pytest.raises(ValueError, match="train_stream must be a function of n_devices"):
        data.Inputs(iter([1]))
    with pytest.raises(ValueError, match="the train stream yielded no batch"):
        data.Inputs(lambda n: iter([]))
    inputs = data.Inputs(lambda n: iter([(np.zeros((1, 1)),)]))
    with pytest.raises(ValueError, match="position must be an int >= 0.*got -1"):
        inputs.train_stream(1, position=-1)
    with pytest.raises(TypeError, match="make_inputs: train_stream must be a list of stream functions"):
        data.make_inputs(train_stream=iter([1]))
