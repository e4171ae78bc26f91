"""More of Trax's stream functions: mixing streams, LM-shaped examples, unbatching, counting, span noise.

Names, arguments and behaviour are those of `trax.data.inputs`. The steps
that map or filter single examples (`AppendValue`, `ConcatenateToLMInput`,
`FilterEmptyExamples`) are `Step`s, so a pipeline of them still runs on
Grain; the ones that mix streams or turn one item into several (`Parallel`,
`PrefixLM`, `UnBatch`, `CountAndSkip`) are plain stream functions, so a
pipeline holding them is replayed on resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import gin
import numpy as np

from trax_sl.data.steps import Step, map_step

# Examples counted by `CountAndSkip`, by name (Trax's `data.inputs.data_counters`).
data_counters: dict[str, int] = {}


@gin.configurable(module="trax_sl.data")
def Parallel(  # noqa: N802
    fns: Sequence[Callable] | None = None,
    counters: Sequence[int] | None = None,
    reweight_by_minimum: bool = False,
    gradually_reweight: bool = False,
    use_remainders: bool = False,
) -> Callable:
    """Returns a stream function that mixes the streams of `fns` (Trax's Parallel).

    Without counters the streams take turns. With `counters=(2, 1)` each
    round takes 2 items of the first and 1 of the second, in turns while
    each has some left (`0, 10, 1, 2, 11, ...`); a zero counter drops its
    stream.

    Args:
        fns: Stream functions; each is called with the generator given to
            the result, or with no argument when it is None.
        counters: Items per round of each stream; 1 each if None.
        reweight_by_minimum: Divide the counters by the smallest (10, 100 -> 1, 10).
        gradually_reweight: Nest the streams by counter instead: with counters
            1, 20, 40, a round is `a (b c c)^20`.
        use_remainders: With gradually_reweight, end each round with the items
            the nesting left out (counters 1, 20, 45: 5 more of the last).
    """
    fns = list(fns or [])
    counters = [1] * len(fns) if counters is None else list(counters)
    if len(counters) != len(fns):
        raise ValueError(
            f"Parallel: expected one counter per stream, got {len(counters)} for {len(fns)} streams"
        )
    if any(c < 0 for c in counters):
        raise ValueError(f"Parallel: counters must be >= 0, got {counters}")
    kept = [i for i, c in enumerate(counters) if c]
    fns, counters = [fns[i] for i in kept], [counters[i] for i in kept]
    if not fns:
        raise ValueError("Parallel: needs at least one stream with a nonzero counter")
    if reweight_by_minimum:
        counters = [c // min(counters) for c in counters]

    def parallel(gen=None) -> Iterator:
        streams = [iter(fn() if gen is None else fn(gen)) for fn in fns]
        if gradually_reweight:
            return _nested_rounds(streams, counters, use_remainders)
        return _weighted_turns(streams, counters)

    return parallel


def _weighted_turns(streams: list[Iterator], counters: list[int]) -> Iterator:
    """Streams in turn, stream i skipped once it gave counters[i] items this round; a round ends when all did."""
    taken = [0] * len(streams)
    while True:
        for i, stream in enumerate(streams):
            if taken[i] < counters[i]:
                taken[i] += 1
                if taken == counters:
                    taken = [0] * len(streams)
                yield next(stream)


def _nested_rounds(streams: list[Iterator], counters: list[int], use_remainders: bool) -> Iterator:
    """Rounds of `a (b c^(c_c // c_b))^(c_b // c_a)`, streams ordered by counter, then the remainders."""
    order = sorted(range(len(streams)), key=lambda i: counters[i])
    levels = [(streams[i], counters[i]) for i in order]

    def nested(level: int, outer_count: int) -> Iterator:
        if level == len(levels):
            return
        stream, count = levels[level]
        for _ in range(count // outer_count):
            yield next(stream)
            yield from nested(level + 1, count)

    while True:
        yield from nested(0, levels[0][1])
        if use_remainders:
            given = 1  # Items of a stream per round so far: the product of the ratios above it.
            for level, (stream, count) in enumerate(levels):
                for _ in range(count - given):
                    yield next(stream)
                if level + 1 < len(levels):
                    given *= levels[level + 1][1] // count


@gin.configurable(module="trax_sl.data")
def PrefixLM(input_length: int = 128, output_length: int = 512) -> Callable:  # noqa: N802
    """Returns a stream function that cuts each token sequence into `(input, output)` pairs (Trax's PrefixLM).

    From the start: `input_length` tokens, then up to `output_length`, and
    again after them, while a whole input and at least one output token fit.
    """

    def prefix_lm(generator) -> Iterator:
        for example in generator:
            start = 0
            while start + input_length < len(example):
                middle = start + input_length
                end = min(middle + output_length, len(example))
                yield example[start:middle], example[middle:end]
                start = end

    return prefix_lm


@gin.configurable(module="trax_sl.data")
def ConcatenateToLMInput(pad_to_length: int | None = None) -> Step:  # noqa: N802
    """Returns a step that makes `(input, target)` into an LM example (Trax's ConcatenateToLMInput).

    `(input, target)` becomes `(x, x, weights)` with x their concatenation
    (zero padded to `pad_to_length` if given) and weights 1 on the target's
    tokens only; a 1-tuple or a bare array `x` becomes `(x, x)`.
    """

    def concatenate(example):
        if isinstance(example, np.ndarray):
            return example, example
        if not isinstance(example, (list, tuple)) or len(example) not in (1, 2):
            raise ValueError(
                f"ConcatenateToLMInput: expected (input, target), (x,) or an array, got {example!r}"
            )
        if len(example) == 1:
            return example[0], example[0]
        inputs, targets = np.asarray(example[0]), np.asarray(example[1])
        x = np.concatenate([inputs, targets], axis=-1)
        weights = np.concatenate([np.zeros_like(inputs), np.ones_like(targets)])
        if pad_to_length is not None:
            padding = pad_to_length - len(x)
            if padding < 0:
                raise ValueError(
                    f"ConcatenateToLMInput: example lengths ({len(inputs)}, {len(targets)}) are longer than "
                    f"pad_to_length ({pad_to_length})"
                )
            x, weights = np.pad(x, (0, padding)), np.pad(weights, (0, padding))
        return x, x, weights

    return map_step(f"ConcatenateToLMInput(pad_to_length={pad_to_length})", concatenate)


@gin.configurable(module="trax_sl.data")
def AppendValue(val: dict | None = None) -> Step:  # noqa: N802
    """Returns a step that appends `val[i]` to feature i on the last axis (Trax's AppendValue).

    A bare array example gets `val[0]` appended. None leaves examples as they are.
    """

    def append(example):
        if isinstance(example, tuple):
            features = list(example)
            for key, value in (val or {}).items():
                features[key] = np.append(features[key], value, -1)
            return tuple(features)
        if not isinstance(example, np.ndarray):
            raise ValueError(f"AppendValue: expected a tuple of arrays or an array, got {example!r}")  # noqa: TRY004  (Trax's)
        return example if val is None else np.append(example, val[0])

    return map_step(f"AppendValue(val={val})", append)


@gin.configurable(module="trax_sl.data")
def FilterEmptyExamples(axes: Sequence[int] | None = None, debug: bool = False) -> Step:  # noqa: N802
    """Returns a step that drops examples with an empty feature (shape `(0,)`) among `axes` (all if None)."""
    del debug  # Trax logs each dropped example with it; FilterByLength's counts say more.

    def keep(example) -> bool:
        return not any(
            np.shape(feature) == (0,) for i, feature in enumerate(example) if axes is None or i in axes
        )

    return Step(
        f"FilterEmptyExamples(axes={axes})",
        lambda g: filter(keep, g),
        lambda dataset, _: dataset.filter(keep),
    )


@gin.configurable(module="trax_sl.data")
def UnBatch() -> Callable:  # noqa: N802
    """Returns a stream function that yields the examples of each batch (a tuple of arrays), one by one."""

    def unbatch(generator) -> Iterator:
        for batch in generator:
            if not isinstance(batch, tuple):
                raise TypeError(
                    f"UnBatch: expected batches that are tuples of arrays, got {type(batch).__name__}"
                )
            sizes = {np.shape(x)[0] for x in batch}
            if len(sizes) != 1:
                raise ValueError(f"UnBatch: the items of a batch differ in batch size: {sorted(sizes)}")
            for i in range(sizes.pop()):
                yield tuple(x[i] for x in batch)

    return unbatch


@gin.configurable(module="trax_sl.data")
def CountAndSkip(name: str) -> Callable:  # noqa: N802
    """Returns a stream function that counts its examples in `data_counters[name]` and skips those counted.

    A new stream from the same pipeline starts after the examples already
    counted (Trax's way to resume a deterministic stream); set
    `data_counters[name] = 0` to start over. A training run resumes its data
    from the checkpoint itself (see `trax_sl.data`).
    """

    def count_and_skip(generator) -> Iterator:
        for seen, example in enumerate(generator, start=1):
            if seen > data_counters.setdefault(name, 0):
                data_counters[name] += 1
                yield example

    return count_and_skip


def random_spans_noise_mask(
    length: int,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    seed1: int | None = None,
    seed2: int | None = None,
    example=None,
) -> np.ndarray:
    """A bool mask of `length` with spans of noise, as T5's span corruption draws them (Trax's).

    About `noise_density * length` tokens are noise, in spans of mean length
    `mean_noise_span_length`, alternating with non-noise spans and starting
    with one. `seed1`/`seed2` seed the noise and non-noise span lengths.
    """
    del example  # Trax passes it along for debugging.
    n = max(length, 2)
    n_noise = min(max(round(n * noise_density), 1), n - 1)
    n_spans = max(round(n_noise / mean_noise_span_length), 1)
    noise_spans = _random_segment_lengths(n_noise, n_spans, seed1)
    other_spans = _random_segment_lengths(n - n_noise, n_spans, seed2)
    span_lengths = np.stack([other_spans, noise_spans], axis=1).reshape(-1)
    starts = np.zeros(n)
    starts[np.cumsum(span_lengths)[:-1]] = 1
    return (np.cumsum(starts) % 2 == 1)[:length]


def _random_segment_lengths(n_items: int, n_segments: int, seed: int | None) -> np.ndarray:
    """The lengths of `n_segments` nonempty segments of `n_items` items, at random."""
    rng = np.random.default_rng(seed)
    boundaries = np.arange(n_items - 1) < n_segments - 1  # Which gaps between items start a segment.
    rng.shuffle(boundaries)
    segment_of_item = np.cumsum(np.concatenate([[False], boundaries]))
    return np.bincount(segment_of_item, minlength=n_segments)
