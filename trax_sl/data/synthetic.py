"""Synthetic tasks that need no download: sequence copy and addition (Trax's example formats).

Global batch i of a stream is drawn from its own generator, seeded by
`(seed, stream, i)`, and each process keeps its rows: streams are
deterministic, the same on any number of processes, and restart at any
position in O(1) (a Grain `MapDataset` of batches).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import gin
import numpy as np

from trax_sl import checks
from trax_sl.data.batching import pad_to_max_dims
from trax_sl.data.grain_streams import dataset_stream, indexed_batches
from trax_sl.data.inputs import Inputs
from trax_sl.data.steps import Processes, process_rows
from trax_sl.sequence import Sequence

_TRAIN, _EVAL = 0, 1


def indexed_stream(
    make_batch: Callable[[int, np.random.Generator], tuple],
    batch_size: int,
    per_process: bool,
    seed: int,
    stream_id: int,
    where: str,
):
    """A stream function whose global batch i is `make_batch(batch_size, generator seeded by (seed, stream_id, i))`.

    Each process keeps its rows; with `per_process`, `batch_size` is each
    process's part of the global batch.
    """

    def make_dataset(processes: Processes):
        size = batch_size * processes.count if per_process else batch_size
        return indexed_batches(
            lambda i: process_rows(
                make_batch(size, np.random.default_rng([seed, stream_id, i])), processes, where
            )
        )

    return dataset_stream(make_dataset)


def _inputs(where: str, make_train, make_eval, batch_size: int, per_process: bool, seed: int) -> Inputs:
    """Inputs whose train and eval batches are `make_train`/`make_eval(batch_size, rng)`."""
    return Inputs(
        train_stream=indexed_stream(make_train, batch_size, per_process, seed, _TRAIN, where),
        eval_stream=indexed_stream(make_eval, batch_size, per_process, seed, _EVAL, where),
    )


def _with_mask(values: np.ndarray, lengths: np.ndarray) -> Sequence:
    mask = np.arange(values.shape[1]).reshape((1, -1)) < lengths.reshape((-1, 1))
    return Sequence(values, mask)


def _pad_to_multiple_of(x: np.ndarray, multiple: int | None) -> np.ndarray:
    """Zero pads axis 1 of `x` up to a multiple of `multiple` (None: no padding)."""
    multiple = multiple or 1
    padded = -(-x.shape[1] // multiple) * multiple
    return np.pad(x, [(0, 0), (0, padded - x.shape[1])] + [(0, 0)] * (x.ndim - 2))


@gin.configurable(module="trax_sl.data")
def sequence_copy_inputs(
    vocab_size=gin.REQUIRED,
    batch_size=gin.REQUIRED,
    train_length=gin.REQUIRED,
    eval_min_length=gin.REQUIRED,
    eval_max_length=gin.REQUIRED,
    reverse: bool = False,
    pad_to_multiple: int = 32,
    seed: int = 0,
    per_process: bool = False,
) -> Inputs:
    """Inputs for the sequence copy problem: `0 w 0 w` for w in [1..vocab_size-2]* (Trax's).

    A batch is `(x, x, weights)`: x a Sequence `[batch, length]` int32 whose
    mask covers `0 w 0 w` (all rows of a batch share one length), weights
    float32, 1.0 on the second w only. Lengths are padded with zeros to a
    multiple of `pad_to_multiple`.

    Args:
        vocab_size: How many symbols to use (ids 0..vocab_size-1).
        batch_size: Examples per global batch (each process gets its rows).
        train_length: Training w are 1..train_length-1 long.
        eval_min_length: Evaluation w are eval_min_length..eval_max_length-1 long.
        eval_max_length: See eval_min_length.
        reverse: The second w is reversed.
        pad_to_multiple: Pad the length to a multiple of this.
        seed: Seeds the streams.
        per_process: batch_size is each process's part of the global batch.
    """
    checks.check_positive("sequence_copy_inputs", batch_size=batch_size, pad_to_multiple=pad_to_multiple or 1)
    if vocab_size < 3:
        raise ValueError(f"sequence_copy_inputs: vocab_size must be >= 3, got vocab_size={vocab_size}")
    train_w = list(range(1, train_length))
    eval_w = list(range(eval_min_length, eval_max_length))
    if not train_w or not eval_w or eval_min_length < 1:
        raise ValueError(
            f"sequence_copy_inputs: expected train_length >= 2 and 1 <= eval_min_length < eval_max_length, "
            f"got train_length={train_length}, eval_min_length={eval_min_length}, "
            f"eval_max_length={eval_max_length}"
        )

    def make_batch(w_lengths, batch_size, rng):
        w_length = int(rng.choice(w_lengths))
        w = rng.integers(1, vocab_size - 1, size=(batch_size, w_length), dtype=np.int32)
        zero = np.zeros((batch_size, 1), np.int32)
        x = np.concatenate([zero, w, zero, w[:, ::-1] if reverse else w], axis=1)
        weights = np.concatenate(
            [np.zeros((batch_size, w_length + 2), np.float32), np.ones((batch_size, w_length), np.float32)],
            axis=1,
        )
        lengths = np.full((batch_size,), x.shape[1])
        x = _with_mask(_pad_to_multiple_of(x, pad_to_multiple), lengths)
        return x, x, _pad_to_multiple_of(weights, pad_to_multiple)

    return _inputs(
        "sequence_copy_inputs",
        lambda size, rng: make_batch(train_w, size, rng),
        lambda size, rng: make_batch(eval_w, size, rng),
        batch_size,
        per_process,
        seed,
    )


@gin.configurable(module="trax_sl.data")
def simple_sequence_copy_inputs(
    vocab_size=gin.REQUIRED,
    batch_size=gin.REQUIRED,
    train_length=gin.REQUIRED,
    eval_min_length=gin.REQUIRED,
    eval_max_length=gin.REQUIRED,
    pad_to_multiple: int = 32,
    seed: int = 0,
    per_process: bool = False,
) -> Inputs:
    """Inputs for copying w itself, w in [1..vocab_size-2]*: batches `(w, w, weights)` (Trax's).

    w is a Sequence `[batch, length]` int32 (one length per batch: 1..train_length
    for training, eval_min_length..eval_max_length for evaluation), weights
    float32 1.0 on w; lengths padded to a multiple of `pad_to_multiple`.
    """
    checks.check_positive(
        "simple_sequence_copy_inputs",
        batch_size=batch_size,
        train_length=train_length,
        eval_min_length=eval_min_length,
    )
    if vocab_size < 3 or eval_max_length < eval_min_length:
        raise ValueError(
            f"simple_sequence_copy_inputs: expected vocab_size >= 3 and eval_min_length <= eval_max_length, "
            f"got vocab_size={vocab_size}, eval_min_length={eval_min_length}, eval_max_length={eval_max_length}"
        )

    def make_batch(lengths, batch_size, rng):
        length = int(rng.choice(lengths))
        w = rng.integers(1, vocab_size - 1, size=(batch_size, length), dtype=np.int32)
        weights = _pad_to_multiple_of(np.ones((batch_size, length), np.float32), pad_to_multiple)
        w = _with_mask(_pad_to_multiple_of(w, pad_to_multiple), np.full((batch_size,), length))
        return w, w, weights

    train_lengths = list(range(1, train_length + 1))
    eval_lengths = list(range(eval_min_length, eval_max_length + 1))
    return _inputs(
        "simple_sequence_copy_inputs",
        lambda size, rng: make_batch(train_lengths, size, rng),
        lambda size, rng: make_batch(eval_lengths, size, rng),
        batch_size,
        per_process,
        seed,
    )


@gin.configurable(module="trax_sl.data")
def sine_inputs(
    batch_size=gin.REQUIRED,
    length=gin.REQUIRED,
    max_phase: float = 2 * math.pi,
    min_period: float = 0.1,
    max_period: float = 10.0,
    seed: int = 0,
    per_process: bool = False,
) -> Inputs:
    """Sinusoids of random period and phase (Trax's): batches `(observations, actions, observations, mask)`.

    Each row is `sin((t - phase) / period)` for t in 0..length-1, the phase
    uniform in [0, max_phase], the period log-uniform in [min_period,
    max_period]; observations are float32 `[batch_size, length]`, actions
    int32 zeros and mask float32 ones of that shape.

    Args:
        batch_size: Rows per global batch (each process gets its rows).
        length: Steps per row.
        max_phase: The largest phase.
        min_period: The shortest period.
        max_period: The longest period.
        seed: Seeds the streams.
        per_process: batch_size is each process's part of the global batch.
    """
    checks.check_positive("sine_inputs", batch_size=batch_size, length=length)
    if not 0 < min_period <= max_period:
        raise ValueError(
            f"sine_inputs: expected 0 < min_period <= max_period, got min_period={min_period}, "
            f"max_period={max_period}"
        )

    def make_batch(size, rng):
        phase = rng.uniform(0, max_phase, size=(size, 1))
        period = np.exp(rng.uniform(np.log(min_period), np.log(max_period), size=(size, 1)))
        observations = np.sin((np.arange(length) - phase) / period).astype(np.float32)
        return observations, np.zeros(observations.shape, np.int32), observations, np.ones_like(observations)

    return _inputs("sine_inputs", make_batch, make_batch, batch_size, per_process, seed)


@gin.configurable(module="trax_sl.data")
def random_inputs(
    input_shape=gin.REQUIRED,
    input_dtype=np.int32,
    input_range: tuple = (0, 255),
    output_shape=gin.REQUIRED,
    output_dtype=np.int32,
    output_range: tuple = (0, 9),
    seed: int = 0,
) -> Inputs:
    """Random batches `(inputs, outputs)` for debugging (Trax's random_inputs).

    Values are uniform in `input_range`/`output_range` (both ends included
    for integer dtypes). The shapes include the batch axis, whose size is
    each process's part of the batch, as in Trax.
    """
    if input_shape[0] != output_shape[0]:
        raise ValueError(
            f"random_inputs: inputs and outputs must have the same batch size, got input_shape={input_shape}, "
            f"output_shape={output_shape}"
        )

    def draw(rng, shape, dtype, value_range):
        if np.issubdtype(np.dtype(dtype), np.floating):
            return rng.uniform(value_range[0], value_range[1], shape).astype(dtype)
        return rng.integers(value_range[0], value_range[1], shape, endpoint=True).astype(dtype)

    def make_batch(size, rng):
        inputs = draw(rng, (size, *input_shape[1:]), input_dtype, input_range)
        return inputs, draw(rng, (size, *output_shape[1:]), output_dtype, output_range)

    stream = indexed_stream(make_batch, input_shape[0], True, seed, _TRAIN, "random_inputs")
    return Inputs(train_stream=stream)


# --- Addition ---------------------------------------------------------------------------------------------


def lower_endian_to_number(digits: list[int], base: int) -> int:
    """The number whose base-`base` digits, lowest first, are `digits`."""
    return sum(d * base**i for i, d in enumerate(digits))


def number_to_lower_endian(n: int, base: int) -> list[int]:
    """The base-`base` digits of `n`, lowest first (`[0]` for 0)."""
    digits = [n % base]
    while n >= base:
        n //= base
        digits.append(n % base)
    return digits


def random_number_lower_endian(length: int, base: int, rng: np.random.Generator) -> list[int]:
    """A random `length`-digit number, lowest digit first; the top digit is nonzero unless length is 1."""
    if length == 1:
        return [int(rng.integers(base))]
    return [int(d) for d in rng.integers(base, size=length - 1)] + [int(rng.integers(base - 1)) + 1]


def _addition_example(rng, base: int, min_length: int, max_length: int, encdec: bool) -> tuple[list, ...]:
    """One example of `<S> x + y <S> (x + y)` (ids shifted by 1; 0 pads), or (x+y, sum) for encdec."""
    while True:
        add_len = (min_length - 1) // 2
        l1 = int(rng.integers((max_length - add_len + 1) // 2)) + add_len
        l2 = int(rng.integers(max_length - l1 - 1)) + 1
        n1 = random_number_lower_endian(l1, base, rng)
        n2 = random_number_lower_endian(l2, base, rng)
        total = lower_endian_to_number(n1, base) + lower_endian_to_number(n2, base)
        inp = n1 + [base] + n2
        tgt = number_to_lower_endian(total, base)
        if not encdec:
            x = [base + 2] + [i + 1 for i in inp] + [base + 2] + [i + 1 for i in tgt]
            return x, x, [0.0] * (len(inp) + 2) + [1.0] * len(tgt)
        # Trax redraws encoder-decoder examples whose parts are longer than max_length.
        if len(inp) <= max_length and len(tgt) <= max_length:
            return [i + 1 for i in inp], [i + 1 for i in tgt], [1.0] * len(tgt)


def _padded_features(examples: list[tuple[list, ...]], pad_to_multiple: int | None) -> list[np.ndarray]:
    """Each feature of the examples (lists of ints or floats) stacked, zero padded to a multiple of the length."""
    return [
        pad_to_max_dims(
            [np.asarray(f, np.float32 if isinstance(f[0], float) else np.int32) for f in feature],
            boundary=pad_to_multiple or 1,
            strict_pad_on_len=True,
        )
        for feature in zip(*examples)
    ]


@gin.configurable(module="trax_sl.data")
def addition_input_stream(
    vocab_size=gin.REQUIRED,
    batch_size=gin.REQUIRED,
    min_length=gin.REQUIRED,
    max_length=gin.REQUIRED,
    pad_to_multiple: int = 32,
    encdec: bool = False,
    seed: int = 0,
):
    """An endless stream of addition batches `(x, x, weights)` as padded arrays (Trax's addition_input_stream).

    The examples of `addition_inputs` (`<S> x + y <S> (x + y)`; with `encdec`,
    `(x + y, sum, weights)`), stacked into zero-padded arrays whose length is
    a multiple of `pad_to_multiple`; drawn from a generator seeded by `seed`.
    """
    if min(min_length, max_length) < 3:
        raise ValueError(
            f"addition_input_stream: lengths must be >= 3, got min_length={min_length}, max_length={max_length}"
        )
    checks.check_positive("addition_input_stream", batch_size=batch_size)
    base = vocab_size - 3
    rng = np.random.default_rng(seed)
    while True:
        examples = [_addition_example(rng, base, min_length, max_length, encdec) for _ in range(batch_size)]
        yield tuple(_padded_features(examples, pad_to_multiple))


@gin.configurable(module="trax_sl.data")
def addition_inputs(
    vocab_size=gin.REQUIRED,
    batch_size=gin.REQUIRED,
    train_length=gin.REQUIRED,
    eval_min_length=gin.REQUIRED,
    eval_max_length=gin.REQUIRED,
    pad_to_multiple: int = 32,
    encdec: bool = False,
    seed: int = 0,
    per_process: bool = False,
) -> Inputs:
    """Inputs for the addition problem: `<S> x + y <S> (x + y)` in base vocab_size - 3 (Trax's).

    Numbers are written lowest digit first. Ids: digit d is d + 1, `+` is
    vocab_size - 2, `<S>` is vocab_size - 1, 0 pads. A batch is `(x, x,
    weights)` with x a Sequence `[batch, length]` int32 whose mask covers each
    example's own length, and float32 weights 1.0 on the sum's digits only.
    With `encdec`, a batch is `(x + y, sum, weights)`, weights 1.0 on the sum.
    Lengths are padded to a multiple of `pad_to_multiple`.

    Args:
        vocab_size: Symbols to use; the base is vocab_size - 3 (so >= 5).
        batch_size: Examples per global batch (each process gets its rows).
        train_length: Maximal length of training examples' numbers part.
        eval_min_length: Minimal length for evaluation (>= 3).
        eval_max_length: Maximal length for evaluation (>= 3).
        pad_to_multiple: Pad the length to a multiple of this.
        encdec: Encoder-decoder examples.
        seed: Seeds the streams.
        per_process: batch_size is each process's part of the global batch.
    """
    checks.check_positive("addition_inputs", batch_size=batch_size, pad_to_multiple=pad_to_multiple or 1)
    if vocab_size < 5:
        raise ValueError(f"addition_inputs: vocab_size must be >= 5 (base >= 2), got vocab_size={vocab_size}")
    if min(train_length, eval_min_length, eval_max_length) < 3 or eval_min_length > eval_max_length:
        raise ValueError(
            f"addition_inputs: lengths must be >= 3 and eval_min_length <= eval_max_length, got "
            f"train_length={train_length}, eval_min_length={eval_min_length}, eval_max_length={eval_max_length}"
        )
    base = vocab_size - 3

    def make_batch(min_length, max_length, batch_size, rng):
        examples = [_addition_example(rng, base, min_length, max_length, encdec) for _ in range(batch_size)]
        x, y, weights = _padded_features(examples, pad_to_multiple)
        x = _with_mask(x, np.array([len(e[0]) for e in examples]))
        y = x if not encdec else _with_mask(y, np.array([len(e[1]) for e in examples]))
        return x, y, weights

    return _inputs(
        "addition_inputs",
        lambda size, rng: make_batch(3, train_length, size, rng),
        lambda size, rng: make_batch(eval_min_length, eval_max_length, size, rng),
        batch_size,
        per_process,
        seed,
    )
