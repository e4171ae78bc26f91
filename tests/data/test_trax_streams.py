"""Trax's remaining stream functions, on the cases of Trax's own tests (trax/data/inputs_test.py)."""

import itertools

import numpy as np
import pytest

from trax_sl import data
from trax_sl.data import trax_streams
from trax_sl.data.steps import Step


def take(generator, n):
    return list(itertools.islice(generator, n))


def numbers(start, stop, cycle=False):
    values = range(start, stop)
    return lambda: iter(itertools.cycle(values) if cycle else values)


def test_parallel_takes_turns_and_passes_a_given_generator_on():
    assert take(data.Parallel([numbers(0, 10), numbers(10, 20)])(), 6) == [0, 10, 1, 11, 2, 12]
    with_gen = data.Parallel([lambda _: iter(range(10)), lambda _: iter(range(10, 20))])
    assert take(with_gen(gen=lambda: iter([0])), 4) == [0, 10, 1, 11]


def test_parallel_with_counters():
    assert take(data.Parallel([numbers(0, 10), numbers(10, 20)], counters=(2, 1))(), 10) == [
        0, 10, 1, 11, 2, 3, 12, 4, 5, 13,
    ]  # fmt: skip
    three = data.Parallel([numbers(0, 10), numbers(10, 20), numbers(20, 30)], counters=(2, 1, 3))
    assert take(three(), 13) == [0, 10, 20, 1, 21, 22, 2, 11, 23, 3, 24, 25, 4]
    # A zero counter drops its stream.
    zero = data.Parallel([numbers(0, 10), numbers(10, 20), numbers(20, 30)], counters=[1, 0, 1])
    assert take(zero(), 8) == [0, 20, 1, 21, 2, 22, 3, 23]
    # Reweighted by the minimum: counters 10, 100 are 1, 10.
    minimum = data.Parallel([numbers(0, 10), numbers(10, 110)], counters=(10, 100), reweight_by_minimum=True)
    assert take(minimum(), 13) == [0, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 1, 20]
    # Parallels nest.
    nested = data.Parallel([data.Parallel([numbers(0, 10), numbers(10, 20)]), numbers(20, 30)])
    assert take(nested(), 11) == [0, 20, 10, 21, 1, 22, 11, 23, 2, 24, 12]
    with pytest.raises(ValueError, match="Parallel: expected one counter per stream, got 1 for 2 streams"):
        data.Parallel([numbers(0, 1), numbers(1, 2)], counters=[1])


def test_parallel_with_gradual_reweighting_and_remainders():
    one, twenty, forty = numbers(0, 1, True), numbers(10, 30, True), numbers(30, 70, True)
    gradual = data.Parallel([twenty, one, forty], counters=(20, 1, 40), gradually_reweight=True)
    expected = [0] + [x for i in range(20) for x in (10 + i, 30 + 2 * i, 31 + 2 * i)]
    assert take(gradual(), 3 * len(expected)) == 3 * expected

    fifty = numbers(30, 80, True)
    remainders = data.Parallel(
        [twenty, one, fifty], counters=(20, 1, 50), gradually_reweight=True, use_remainders=True
    )
    expected = [0] + [x for i in range(20) for x in (10 + i, 30 + 2 * i, 31 + 2 * i)] + list(range(70, 80))
    assert take(remainders(), 3 * len(expected)) == 3 * expected

    big = data.Parallel(
        [twenty, one, numbers(100, 220, True), fifty],
        counters=(20, 1, 120, 50),
        gradually_reweight=True,
        use_remainders=True,
    )
    expected = [0]
    for i in range(20):
        expected.append(10 + i)
        for j in range(2):
            expected.append(30 + 2 * i + j)
            expected += [100 + 4 * i + 2 * j + k for k in range(2)]
    expected += list(range(70, 80)) + list(range(180, 220))
    assert take(big(), 3 * len(expected)) == 3 * expected


def test_count_and_skip_continues_a_new_stream_after_the_examples_counted(monkeypatch):
    monkeypatch.setattr(trax_streams, "data_counters", {})
    examples = data.Serial(lambda _: ((i, i + 1) for i in range(10)), data.CountAndSkip("toy_data"))
    stream = examples()
    assert next(stream) == (0, 1) and trax_streams.data_counters["toy_data"] == 1
    assert next(stream) == (1, 2) and trax_streams.data_counters["toy_data"] == 2
    assert next(examples()) == (2, 3) and trax_streams.data_counters["toy_data"] == 3
    trax_streams.data_counters["toy_data"] = 0
    assert next(examples()) == (0, 1) and trax_streams.data_counters["toy_data"] == 1


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([1, 2, 3, 4, 5, 6, 7, 8], [([1, 2], [3, 4, 5]), ([6, 7], [8])]),  # The last output is short.
        ([1, 2, 3, 4, 5, 6], [([1, 2], [3, 4, 5])]),  # The last input is short: dropped.
        ([1, 2, 3, 4, 5, 6, 7], [([1, 2], [3, 4, 5])]),  # A last input without output: dropped.
    ],
)
def test_prefix_lm(tokens, expected):
    assert list(data.PrefixLM(input_length=2, output_length=3)([tokens])) == expected


def test_concatenate_to_lm_input():
    step = data.ConcatenateToLMInput(pad_to_length=10)
    assert isinstance(step, Step)
    x, y, weights = next(step([(np.zeros(5), np.ones(3))]))
    np.testing.assert_array_equal(x, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(weights, [0, 0, 0, 0, 0, 1, 1, 1, 0, 0])
    x, _, weights = next(data.ConcatenateToLMInput()([(np.zeros(5), np.ones(3))]))
    assert x.shape == weights.shape == (8,)
    single = np.arange(3)
    for example in ((single,), single):
        a, b = next(data.ConcatenateToLMInput()([example]))
        np.testing.assert_array_equal(a, single) and np.testing.assert_array_equal(b, single)
    with pytest.raises(ValueError, match=r"example lengths \(5, 3\) are longer than pad_to_length \(6\)"):
        next(data.ConcatenateToLMInput(pad_to_length=6)([(np.zeros(5), np.ones(3))]))


def test_filter_empty_examples():
    examples = [(np.zeros((0,)), np.ones((1, 5))), (np.zeros((1, 5)), np.ones((1, 5)))]
    first = next(data.FilterEmptyExamples()(examples))
    assert first[0].shape == first[1].shape == (1, 5)
    first = next(data.FilterEmptyExamples(axes=[1])(examples))
    assert first[0].shape == (0,) and first[1].shape == (1, 5)


def test_append_value():
    examples = [(np.zeros((1, 5)), np.ones((1, 5)))]
    unchanged = next(data.AppendValue()(examples))
    assert unchanged[0].shape == unchanged[1].shape == (1, 5)
    appended = next(data.AppendValue({0: [[5]], 1: [[4]]})(examples))
    np.testing.assert_array_equal(appended[0], [[0, 0, 0, 0, 0, 5]])
    np.testing.assert_array_equal(appended[1], [[1, 1, 1, 1, 1, 4]])
    np.testing.assert_array_equal(next(data.AppendValue({0: 7})([np.arange(2)])), [0, 1, 7])


def test_unbatch():
    batches = [
        tuple(np.arange(3 * n).reshape(3, -1) for n in (2, 3, 4)),
        tuple(np.arange(4 * n).reshape(4, -1) for n in (2, 3, 4)),
    ]
    examples = list(data.UnBatch()(batches))
    assert len(examples) == 3 + 4
    np.testing.assert_array_equal(examples[4][1], [3, 4, 5])
    with pytest.raises(ValueError, match=r"UnBatch: the items of a batch differ in batch size: \[2, 3\]"):
        list(data.UnBatch()([(np.zeros((2, 1)), np.zeros((3, 1)))]))


def test_random_spans_noise_mask_has_the_density_and_mean_span_length():
    for seed1, seed2 in np.random.default_rng(0).integers(0, 100, (5, 2)):
        is_noise = data.random_spans_noise_mask(100, 0.15, 3.0, seed1=seed1, seed2=seed2)
        assert is_noise.dtype == bool and is_noise.shape == (100,)
        assert is_noise.sum() == 15
        starts = np.flatnonzero(np.diff(np.concatenate([[0], is_noise.astype(int)])) == 1)
        ends = np.flatnonzero(np.diff(np.concatenate([is_noise.astype(int), [0]])) == -1)
        assert np.mean(ends - starts + 1) == 3.0
        assert not is_noise[0]  # It starts with a non-noise span.
    np.testing.assert_array_equal(
        data.random_spans_noise_mask(100, seed1=1, seed2=2),
        data.random_spans_noise_mask(100, seed1=1, seed2=2),
    )
    assert data.random_spans_noise_mask(1).shape == (1,)


def test_sine_inputs():
    inputs = data.sine_inputs(batch_size=3, length=5)
    for batch in (next(inputs.train_stream(n_devices=1)), next(inputs.eval_stream(n_devices=1))):
        observations, actions, targets, mask = batch
        assert [x.shape for x in batch] == [(3, 5)] * 4
        assert actions.dtype == np.int32 and not actions.any() and mask.all()
        np.testing.assert_array_equal(targets, observations)
        assert np.abs(observations).max() <= 1
