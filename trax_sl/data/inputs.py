"""Stream functions: the steps of a Trax-style input pipeline, and how they compose.

A stream function maps a generator of examples to a generator (the first step
of a pipeline takes `None` and makes the examples). Examples are tuples of
numpy arrays (a bare array is a one-feature example); the batching steps are
in `batching`. This module also holds `Inputs`, the streams of a training run.

Every step here is deterministic: calling a pipeline again gives the same
examples in the same order (`Shuffle` draws from its own seeded generator),
which is what lets `Inputs` restart a stream at a position.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping

import gin
import grain
import numpy as np
from absl import logging

from trax_sl import checks, shapes
from trax_sl.data.batching import example_length
from trax_sl.data.grain_batching import with_rejection_bound
from trax_sl.data.grain_streams import dataset_stream
from trax_sl.data.steps import Step, map_step, serial_step
from trax_sl.sequence import Sequence

StreamFn = Callable[[Iterator | None], Iterator]


def Serial(*fns) -> StreamFn:  # noqa: N802
    """Returns a stream function that runs `fns` one after the other.

    Nested lists and tuples of stream functions are flattened, so a gin list
    (`make_inputs.train_stream = [@data.TFDS(), @data.Shuffle(), ...]`) can be
    passed as it is. When every function is a step of `trax_sl.data` the
    result is a `Step` too: called, it streams as before; its `dataset()` is
    the pipeline on Grain, which a training run resumes in O(1). Any other
    function (a lambda over the generator) makes a plain stream function,
    which a resumed run replays from the start.
    """
    flat = tuple(_flatten_fns(fns))
    if all(isinstance(fn, Step) for fn in flat):
        return serial_step(flat)

    def composed(generator=None):
        for fn in flat:
            generator = fn(generator)
        return generator

    return composed


def _flatten_fns(fns) -> Iterator[Callable]:
    for fn in fns:
        if isinstance(fn, (list, tuple)):
            yield from _flatten_fns(fn)
        elif callable(fn):
            yield fn
        else:
            raise TypeError(f"Serial: expected stream functions (callables), got {type(fn).__name__}: {fn!r}")


# --- Shuffling ------------------------------------------------------------------------------------------


@gin.configurable(module="trax_sl.data")
def Shuffle(queue_size: int = 1024, seed: int = 0) -> StreamFn:  # noqa: N802
    """Returns a stream function that shuffles within a queue of `queue_size` examples.

    Each call of the stream function starts a fresh generator seeded with
    `seed`, so the same input stream is always shuffled the same way. In a
    pipeline on Grain (`Serial` of `trax_sl.data` steps) the examples are
    shuffled within consecutive windows of `queue_size` instead (Grain's
    window shuffle: random access, so a resumed run does not replay).
    """
    if queue_size < 1:
        raise ValueError(f"Shuffle: queue_size must be >= 1, got queue_size={queue_size}")

    def on_dataset(dataset, _):
        if isinstance(dataset, grain.MapDataset):
            return grain.experimental.WindowShuffleMapDataset(dataset, window_size=queue_size, seed=seed)
        return grain.experimental.WindowShuffleIterDataset(dataset, window_size=queue_size, seed=seed)

    return Step(
        f"Shuffle(queue_size={queue_size}, seed={seed})",
        lambda g: shuffle(g, queue_size, np.random.default_rng(seed)),
        on_dataset,
    )


def shuffle(samples: Iterable, queue_size: int, rng: np.random.Generator | None = None) -> Iterator:
    """Shuffles a stream with a random-out, next-in queue of `queue_size` samples.

    An example leaves at most `queue_size - 1` places earlier than it came in.
    When the input ends, the queue is shuffled and drained.

    Args:
        samples: The stream to shuffle.
        queue_size: How many samples the shuffling mixes at a time.
        rng: The random generator; `np.random.default_rng(0)` if None.
    """
    if queue_size < 1:
        raise ValueError(f"shuffle: queue_size must be >= 1, got queue_size={queue_size}")
    rng = np.random.default_rng(0) if rng is None else rng
    samples = iter(samples)
    queue = list(itertools.islice(samples, queue_size))
    if len(queue) == queue_size:
        for sample in samples:
            i = int(rng.integers(queue_size))
            yield queue[i]
            queue[i] = sample
    for i in rng.permutation(len(queue)):
        yield queue[i]


# --- Length-based steps ---------------------------------------------------------------------------------


@gin.configurable(module="trax_sl.data")
def FilterByLength(  # noqa: N802
    max_length: int | None,
    min_length: int | None = 0,
    length_keys: list[int] | None = None,
    length_axis: int = 0,
    max_consecutive_rejections: int = 100_000,
) -> StreamFn:
    """Returns a stream function that keeps examples with min_length <= length <= max_length.

    The length is the largest size on `length_axis` over `length_keys` (the
    first two features by default). None leaves a bound open.

    Args:
        max_length: The longest length kept; None for no upper bound.
        min_length: The shortest length kept; None for no lower bound.
        length_keys: The features whose size is the example's length.
        length_axis: The axis of those features that holds the length.
        max_consecutive_rejections: After this many examples in a row fail
            the bounds the stream raises ValueError instead of reading on: a
            repeating source whose every example is rejected would otherwise
            hang without a word.
    """
    if max_length is None and min_length is None:
        raise ValueError("FilterByLength: give max_length, min_length or both; got neither")
    checks.check_positive("FilterByLength", max_consecutive_rejections=max_consecutive_rejections)
    where = f"FilterByLength(max_length={max_length}, min_length={min_length})"

    def keep(example) -> bool:
        length = example_length(example, length_axis, length_keys)
        return (max_length is None or length <= max_length) and (min_length is None or length >= min_length)

    def filtered(generator):
        rejected = []  # The lengths of the current run of rejected examples (the first few).
        n_rejected, shortest, longest = 0, None, None
        for example in generator:
            if keep(example):
                n_rejected = 0
                yield example
                continue
            length = example_length(example, length_axis, length_keys)
            if n_rejected == 0:
                rejected, shortest, longest = [], length, length
            n_rejected += 1
            shortest, longest = min(shortest, length), max(longest, length)
            if len(rejected) < 5:
                rejected.append(length)
            if n_rejected >= max_consecutive_rejections:
                keys = "the first two features" if length_keys is None else f"features {list(length_keys)}"
                raise ValueError(
                    f"{where}: rejected {n_rejected} examples in a row, with lengths from {shortest} to "
                    f"{longest} (the first: {', '.join(map(str, rejected))}); the length is the largest size on axis "
                    f"{length_axis} of {keys}. Widen max_length/min_length, set length_keys and "
                    f"length_axis to the sequence features, or raise max_consecutive_rejections if long "
                    f"runs of rejected examples are expected"
                )

    def on_dataset(dataset, _):
        return with_rejection_bound(dataset.filter(keep), max_consecutive_rejections, where)

    return Step(where, filtered, on_dataset)


@gin.configurable(module="trax_sl.data")
def TruncateToLength(len_map: Mapping[int, int | tuple[int, ...]] | None = None) -> StreamFn:  # noqa: N802
    """Returns a stream function that cuts features to at most the sizes in `len_map`.

    Args:
        len_map: Feature index -> largest shape, e.g. `{0: (256,), 1: (256,)}`
            (an int limits axis 0). On an example the limits apply from axis
            0; on a batched `Sequence` from its time axis.
    """
    len_map = dict(len_map or {})

    def truncate(x, limit):
        limit = (limit,) if isinstance(limit, int) else tuple(limit)
        cut = tuple(slice(None, n) for n in limit)
        if isinstance(x, Sequence):
            return Sequence(x.values[(slice(None), *cut)], x.mask[:, cut[0]])
        return np.asarray(x)[cut]

    return map_step(
        f"TruncateToLength(len_map={len_map})",
        lambda example: _map_features(example, len_map, truncate, "TruncateToLength"),
    )


@gin.configurable(module="trax_sl.data")
def PadToLength(  # noqa: N802
    len_map: Mapping[int, int] | None = None,
    pad_value: float | Mapping[int, float] = 0,
    multiple: bool = False,
) -> StreamFn:
    """Returns a stream function that pads features on their length axis.

    On an example a feature's axis 0 is padded and the new steps become
    ordinary steps (as in Trax: mask them with `AddLossWeights(id_to_mask=)`).
    On a batch a `Sequence` feature's time axis is padded with invalid steps.

    Args:
        len_map: Feature index -> length to pad to (or, with `multiple`, the
            number whose multiple to pad to). Longer features are kept.
        pad_value: The value of the new steps: one for all, or a dict per feature.
        multiple: Pad to the next multiple of the `len_map` value instead.
    """
    if not len_map:
        raise ValueError(f"PadToLength: len_map must map feature indices to lengths, got len_map={len_map!r}")
    len_map = dict(len_map)

    def pad(x, key, length):
        value = pad_value[key] if isinstance(pad_value, Mapping) else pad_value
        axis = 1 if isinstance(x, Sequence) else 0
        current = x.shape[axis]
        target = length * math.ceil(current / length) if multiple else max(length, current)
        if isinstance(x, Sequence):
            widths = [(0, 0), (0, target - current)] + [(0, 0)] * (x.ndim - 2)
            return Sequence(np.pad(x.values, widths, constant_values=value), np.pad(x.mask, widths[:2]))
        x = np.asarray(x)
        return np.pad(x, [(0, target - current)] + [(0, 0)] * (x.ndim - 1), constant_values=value)

    return map_step(
        f"PadToLength(len_map={len_map})",
        lambda example: _map_features(example, len_map, pad, "PadToLength", with_key=True),
    )


def _map_features(example, key_map: Mapping, fn, where: str, with_key: bool = False):
    """Applies `fn(feature, key_map[i])` to the features listed in `key_map`."""
    bare = not isinstance(example, (tuple, list))
    features = [example] if bare else list(example)
    for key, arg in key_map.items():
        if not -len(features) <= key < len(features):
            raise IndexError(f"{where}: no feature {key} in an example with {len(features)} features")
        features[key] = fn(features[key], key, arg) if with_key else fn(features[key], arg)
    return features[0] if bare else tuple(features)


@gin.configurable(module="trax_sl.data")
def Dup() -> StreamFn:  # noqa: N802
    """Returns a stream function that copies the first feature: `(x, *rest)` -> `(x, x, *rest)`."""

    def dup(example):
        x, *rest = example if isinstance(example, (tuple, list)) else (example,)
        return (x, x, *rest)

    return map_step("Dup()", dup)


@gin.configurable(module="trax_sl.data")
def CastTo(dtype=np.int32, indices: tuple[int, ...] = (0, 1)) -> StreamFn:  # noqa: N802
    """Returns a stream function that casts the features at `indices` to `dtype`."""

    def cast(x, _):
        return x.apply_values(lambda v: v.astype(dtype)) if isinstance(x, Sequence) else x.astype(dtype)

    key_map = dict.fromkeys(indices)
    return map_step(
        f"CastTo(dtype={np.dtype(dtype).name}, indices={tuple(indices)})",
        lambda example: _map_features(example, key_map, cast, "CastTo"),
    )


@gin.configurable(module="trax_sl.data")
def Log(n_steps_per_example: int = 1, only_shapes: bool = True) -> StreamFn:  # noqa: N802
    """Returns a stream function that prints every `n_steps_per_example`-th item as it passes.

    With `only_shapes` it prints the short form (`(Sequence(i32[8,64]), f32[8,64])`).
    """

    def show(count: int, example):
        if count % n_steps_per_example == 0:
            print(_short_form(example) if only_shapes else example)
        return example

    def on_dataset(dataset, _):
        counts = itertools.count()  # One count per dataset, as one per generator on the stream path.
        return dataset.map(lambda example: show(next(counts), example))

    return Step(
        f"Log(n_steps_per_example={n_steps_per_example})",
        lambda g: (show(count, example) for count, example in enumerate(g)),
        on_dataset,
    )


def _short_form(example) -> str:
    if isinstance(example, dict):
        return "{" + ", ".join(f"{k!r}: {_short_form(v)}" for k, v in example.items()) + "}"
    if isinstance(example, (str, bytes)):
        return f"{type(example).__name__}[{len(example)}]"
    if isinstance(example, (tuple, list)):
        return "(" + ", ".join(_short_form(x) for x in example) + ")"
    return shapes.short_form(example)


# --- Inputs: the train and eval streams of a run ---------------------------------------------------------


class Inputs:
    """The train and eval streams of a training run, and the shapes of its batches (Trax's Inputs).

    A stream function takes `n_devices` and returns an iterator of batches.
    Streams restart: `train_stream(n_devices, position=k)` yields the batches
    that come after the first k of `train_stream(n_devices)`, so a run that
    saves how many batches it took (an int) continues with the same data.
    A stream function that accepts a `position` keyword seeks there itself
    (the built-in inputs do, in O(1)); for any other the first k batches are
    made again and dropped, which requires the stream to be deterministic.
    """

    def __init__(
        self,
        train_stream: Callable[..., Iterator],
        eval_stream: Callable[..., Iterator] | None = None,
        train_eval_stream: Callable[..., Iterator] | None = None,
    ):
        """Makes the bundle and peeks at one training batch for the shapes.

        Args:
            train_stream: `fn(n_devices[, position])` -> iterator of training batches.
            eval_stream: The same for evaluation batches; the train stream if None.
            train_eval_stream: Training data used for evaluation; the train
                stream if None.
        """
        for name, fn in (("train_stream", train_stream), ("eval_stream", eval_stream)):
            if fn is not None and not callable(fn):
                raise ValueError(
                    f"Inputs: {name} must be a function of n_devices returning batches (try "
                    f"`lambda n_devices: your_generator()`), got {type(fn).__name__}"
                )
        if train_stream is None:
            raise ValueError("Inputs: train_stream is required, got None")
        self._train_stream = train_stream
        self._eval_stream = eval_stream or train_stream
        self._train_eval_stream = train_eval_stream or train_stream
        stream = self.train_stream(1)
        try:
            example = next(iter(stream))
        except StopIteration:
            raise ValueError("Inputs: the train stream yielded no batch") from None
        finally:
            if isinstance(stream, grain.DatasetIterator):
                stream.close()  # Its read-ahead stops.
        example = example if isinstance(example, tuple) else (example,)
        self._example_shape = [tuple(x.shape) for x in example]
        self._example_dtype = [x.dtype for x in example]

    def train_stream(self, n_devices: int, position: int = 0) -> Iterator:
        """Training batches, starting after the first `position` ones."""
        return _start(self._train_stream, n_devices, position)

    def eval_stream(self, n_devices: int, position: int = 0) -> Iterator:
        """Evaluation batches, starting after the first `position` ones."""
        return _start(self._eval_stream, n_devices, position)

    def train_eval_stream(self, n_devices: int, position: int = 0) -> Iterator:
        """Training-data batches for evaluation, starting after the first `position` ones."""
        return _start(self._train_eval_stream, n_devices, position)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of a batch's inputs, without the batch axis."""
        return self._example_shape[0][1:]

    @property
    def input_dtype(self):
        return self._example_dtype[0]

    @property
    def target_shape(self) -> tuple[int, ...]:
        """The shape of a batch's last item (its targets or weights, as in Trax), without the batch axis."""
        return self._example_shape[-1][1:]

    @property
    def target_dtype(self):
        return self._example_dtype[-1]

    @property
    def example_shape_dtype(self) -> tuple[list[tuple[int, ...]], list]:
        """The shapes (with batch axis) and dtypes of the items of a training batch."""
        return self._example_shape, self._example_dtype


def _start(stream_fn: Callable[..., Iterator], n_devices: int, position: int) -> Iterator:
    if not isinstance(position, (int, np.integer)) or position < 0:
        raise ValueError(f"Inputs: position must be an int >= 0 (batches already taken), got {position!r}")
    if _takes_position(stream_fn):
        return iter(stream_fn(n_devices, position=int(position)))
    return _replayed(iter(stream_fn(n_devices)), int(position))


_warned_of_replay = False


def _replayed(iterator: Iterator, position: int) -> Iterator:
    """`iterator` after its first `position` batches, made and dropped (said once per process)."""
    global _warned_of_replay
    if position and not _warned_of_replay:
        _warned_of_replay = True
        logging.warning(
            "Inputs: continuing a stream at batch %d by making and dropping the batches before it, which "
            "takes as long as making them took. For a resume in O(1), build the pipeline from trax_sl.data "
            "steps only (data.Serial(data.TFDS(...), data.Tokenize(...), ..., data.Batch(...)) runs on Grain "
            "and restores its iterator state), or give a stream function that takes position=.",
            position,
        )
    return itertools.islice(iterator, position, None)


def _takes_position(fn: Callable) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "position" in parameters


@gin.configurable(module="trax_sl.data")
def make_inputs(train_stream=gin.REQUIRED, eval_stream=None) -> Inputs:
    """Makes `Inputs` from pipelines, for gin configs (Trax's make_inputs).

    Args:
        train_stream: A list of stream functions (run as `Serial`) or one
            stream function whose call with None starts the training examples.
        eval_stream: The same for evaluation; the train stream if None.
    """
    return Inputs(
        train_stream=_pipeline_stream(train_stream, "train_stream"),
        eval_stream=None if eval_stream is None else _pipeline_stream(eval_stream, "eval_stream"),
    )


def _pipeline_stream(pipeline, name: str) -> Callable[..., Iterator]:
    if isinstance(pipeline, (list, tuple)):
        pipeline = Serial(*pipeline)
    elif not callable(pipeline):
        raise TypeError(
            f"make_inputs: {name} must be a list of stream functions or a stream function, so that the "
            f"stream can restart; got {type(pipeline).__name__}"
        )
    if isinstance(pipeline, Step) and pipeline.is_source:
        return dataset_stream(pipeline.dataset)

    def stream(n_devices, position=0):
        del n_devices  # The pipeline's batching steps give each process its rows.
        return _replayed(pipeline(None), position)

    return stream
