"""sequence_copy_inputs, simple_sequence_copy_inputs, addition_inputs: Trax's formats, masks, resumption."""

import itertools

import numpy as np
import pytest

from trax_sl import data
from trax_sl.data import synthetic
from trax_sl.sequence import Sequence


def _take(stream, n):
    return list(itertools.islice(stream, n))


def _copy_inputs(**kwargs):
    args = {"vocab_size": 6, "batch_size": 3, "train_length": 5, "eval_min_length": 7, "eval_max_length": 9}
    args["pad_to_multiple"] = 8
    return data.sequence_copy_inputs(**{**args, **kwargs})


@pytest.mark.parametrize("reverse", [False, True])
def test_sequence_copy_format(reverse):
    inputs = _copy_inputs(reverse=reverse)
    for stream, w_lengths in ((inputs.train_stream(1), range(1, 5)), (inputs.eval_stream(1), range(7, 9))):
        for x, targets, weights in _take(stream, 6):
            assert targets is x and isinstance(x, Sequence) and x.values.dtype == np.int32
            assert weights.dtype == np.float32 and weights.shape == x.shape
            length = int(x.mask[0].sum())
            n = length // 2 - 1  # 0 w 0 w
            assert n in w_lengths and x.shape[1] == -(-length // 8) * 8
            np.testing.assert_array_equal(x.mask, np.arange(x.shape[1])[None, :].repeat(3, 0) < length)
            v = x.values
            w = v[:, 1 : n + 1]
            assert np.all(v[:, 0] == 0) and np.all(v[:, n + 1] == 0) and np.all(v[:, length:] == 0)
            assert w.min() >= 1 and w.max() <= 4
            np.testing.assert_array_equal(v[:, n + 2 : length], w[:, ::-1] if reverse else w)
            expected = np.zeros(x.shape[1])
            expected[n + 2 : length] = 1
            np.testing.assert_array_equal(weights, np.tile(expected, (3, 1)))


def test_sequence_copy_is_deterministic_and_restarts_at_a_position():
    a, b = _copy_inputs(), _copy_inputs()
    continuing = _take(a.train_stream(1), 8)
    restarted = _take(b.train_stream(1, position=5), 3)
    for (x, _, w), (y, _, v) in zip(continuing[5:], restarted):
        np.testing.assert_array_equal(x.values, y.values)
        np.testing.assert_array_equal(w, v)
    other_seed = next(_copy_inputs(seed=1).train_stream(1))[0]
    assert not np.array_equal(other_seed.values, continuing[0][0].values)
    lengths = {int(x.mask[0].sum()) for x, _, _ in continuing}
    assert len(lengths) > 1  # The length is drawn per batch.


def test_sequence_copy_checks_lengths():
    with pytest.raises(ValueError, match="expected train_length >= 2.*got train_length=1"):
        _copy_inputs(train_length=1)
    with pytest.raises(ValueError, match="vocab_size must be >= 3, got vocab_size=2"):
        _copy_inputs(vocab_size=2)


def test_simple_sequence_copy_format():
    inputs = data.simple_sequence_copy_inputs(
        vocab_size=5, batch_size=2, train_length=3, eval_min_length=4, eval_max_length=4, pad_to_multiple=4
    )
    for x, y, weights in _take(inputs.train_stream(1), 5):
        length = int(x.mask[0].sum())
        assert y is x and 1 <= length <= 3 and x.shape == (2, 4)
        assert x.values[:, :length].min() >= 1 and x.values[:, :length].max() <= 3
        np.testing.assert_array_equal(weights, x.mask.astype(np.float32))
    x, _, _ = next(inputs.eval_stream(1))
    assert x.mask.sum() == 8


def test_number_helpers():
    assert synthetic.number_to_lower_endian(10, 3) == [1, 0, 1]
    assert synthetic.number_to_lower_endian(0, 7) == [0]
    assert synthetic.lower_endian_to_number([1, 0, 1], 3) == 10
    rng = np.random.default_rng(0)
    for length in (1, 2, 5):
        digits = synthetic.random_number_lower_endian(length, 4, rng)
        assert len(digits) == length and all(0 <= d < 4 for d in digits)
        assert length == 1 or digits[-1] != 0


def _decode_number(ids, base):
    return synthetic.lower_endian_to_number([i - 1 for i in ids], base)


def test_addition_format_and_arithmetic():
    vocab_size, base = 13, 10
    inputs = data.addition_inputs(
        vocab_size=vocab_size,
        batch_size=4,
        train_length=6,
        eval_min_length=7,
        eval_max_length=9,
        pad_to_multiple=8,
    )
    start, plus = vocab_size - 1, vocab_size - 2
    for x, targets, weights in _take(inputs.train_stream(1), 5):
        assert targets is x and x.shape[1] % 8 == 0 and weights.dtype == np.float32
        for row, mask, w in zip(x.values, x.mask, weights):
            length = int(mask.sum())
            np.testing.assert_array_equal(mask, np.arange(len(row)) < length)
            ids = row[:length].tolist()
            assert np.all(row[length:] == 0) and ids[0] == start and ids.count(start) == 2
            second = ids.index(start, 1)
            n1, n2 = ids[1 : ids.index(plus)], ids[ids.index(plus) + 1 : second]
            total = ids[second + 1 :]
            assert _decode_number(n1, base) + _decode_number(n2, base) == _decode_number(total, base)
            assert 1 <= len(n1) <= 3 and len(n1) + len(n2) <= 5
            np.testing.assert_array_equal(w, (np.arange(len(row)) > second) & mask)


def test_addition_encdec_format():
    inputs = data.addition_inputs(
        vocab_size=7,
        batch_size=3,
        train_length=5,
        eval_min_length=3,
        eval_max_length=5,
        pad_to_multiple=4,
        encdec=True,
    )
    x, y, weights = next(inputs.eval_stream(1))
    plus = 7 - 3 + 1
    for row, x_mask, target, y_mask, w in zip(x.values, x.mask, y.values, y.mask, weights):
        ids = row[: x_mask.sum()].tolist()
        n1, n2 = ids[: ids.index(plus)], ids[ids.index(plus) + 1 :]
        total = target[: y_mask.sum()].tolist()
        assert _decode_number(n1, 4) + _decode_number(n2, 4) == _decode_number(total, 4)
        assert len(ids) <= 5 and len(total) <= 5
        np.testing.assert_array_equal(w, y_mask.astype(np.float32))


def test_addition_restarts_and_checks_arguments():
    args = {"vocab_size": 8, "batch_size": 2, "train_length": 8, "eval_min_length": 4, "eval_max_length": 8}
    continuing = _take(data.addition_inputs(**args).eval_stream(1), 4)
    restarted = next(data.addition_inputs(**args).eval_stream(1, position=3))
    np.testing.assert_array_equal(continuing[3][0].values, restarted[0].values)
    np.testing.assert_array_equal(continuing[3][2], restarted[2])
    with pytest.raises(ValueError, match="vocab_size must be >= 5 \\(base >= 2\\), got vocab_size=4"):
        data.addition_inputs(**{**args, "vocab_size": 4})
    with pytest.raises(ValueError, match="lengths must be >= 3.*eval_min_length=4, eval_max_length=2"):
        data.addition_inputs(**{**args, "eval_max_length": 2})
