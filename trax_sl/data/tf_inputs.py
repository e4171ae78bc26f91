"""TFDS: a stream of examples from a TensorFlow Datasets dataset, with or without TensorFlow.

By default examples are read through tfds data sources (random access to
array_record files, which need no TensorFlow) as a Grain `MapDataset`:
shuffling is a seeded permutation of the whole split, a new one each epoch,
so a pipeline is deterministic and a resumed run seeks instead of replaying.
With `use_tf=True` (TensorFlow installed, the `tf` extra) the dataset is read
with `tfds` `as_dataset` as in Trax, for datasets prepared in the tfrecord
format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import gin
import grain
import numpy as np
import tensorflow_datasets as tfds

from trax_sl import checks
from trax_sl.data.inputs import StreamFn
from trax_sl.data.steps import Step, iterable


@gin.configurable(module="trax_sl.data")
def TFDS(  # noqa: N802
    dataset_name: str,
    data_dir: str | None = None,
    tfds_preprocess_fn: Callable | None = None,
    keys: Sequence[str] | None = None,
    train: bool = True,
    use_alt_eval: bool = False,
    shuffle_train: bool = True,
    host_id: int | None = None,
    n_hosts: int | None = None,
    eval_holdout_size: float = 0,
    use_tf: bool = False,
    seed: int = 0,
) -> StreamFn:
    """Returns a stream function of examples from the tfds dataset `dataset_name` (Trax's TFDS).

    The stream repeats forever. Every process reads the same examples (the
    batching steps make global batches and give each process its rows); with
    `host_id`/`n_hosts` given, host `host_id` of `n_hosts` reads only its own
    contiguous part of the train split instead, as in Trax. A dataset that is
    not prepared in `data_dir` is prepared first (the builders of
    `trax_sl.data` generate locally; others download).

    Args:
        dataset_name: The tfds name, with config and version if needed
            (`'python_stdlib_chars'`, `'mnist:3.0.1'`).
        data_dir: Where the prepared data is; tfds' default if None.
        tfds_preprocess_fn: Applied before selecting `keys`: a stream function
            over example dicts, or with `use_tf` a `tf.data.Dataset` function.
        keys: The features to yield, as a tuple per example; if None, the
            dataset's supervised keys, or else the whole example dict.
        train: Read the train split; else the eval split (validation, or test).
        use_alt_eval: For `glue/mnli`, evaluate on validation_mismatched.
        shuffle_train: Shuffle training examples (a seeded permutation per epoch).
        host_id: Read only this host's part of the train split (see n_hosts).
        n_hosts: Split the train split into this many parts.
        eval_holdout_size: A fraction of the train split, taken from its end,
            used as evaluation data instead of the eval split.
        use_tf: Read with TensorFlow (`tfds` `as_dataset`) instead of data sources.
        seed: Seeds the training shuffle.
    """
    split_by_host = host_id is not None or n_hosts is not None
    host_id = host_id or 0
    n_hosts = n_hosts or 1
    if not 0 <= host_id < n_hosts:
        raise ValueError(f"TFDS: expected 0 <= host_id < n_hosts, got host_id={host_id}, n_hosts={n_hosts}")
    checks.check_rate("TFDS", eval_holdout_size=eval_holdout_size)
    if use_tf:
        _require_tensorflow()
    builder = _prepared_builder(dataset_name, data_dir, "tfrecord" if use_tf else "array_record")
    split, (start, stop) = _split_and_range(builder, dataset_name, train, use_alt_eval, eval_holdout_size)
    if train and split_by_host:
        start, stop = (
            start + (stop - start) * host_id // n_hosts,
            start + (stop - start) * (host_id + 1) // n_hosts,
        )
    if stop <= start:
        raise ValueError(
            f"TFDS: dataset {dataset_name!r} (data_dir {data_dir!r}) has no examples for split {split!r} "
            f"on host {host_id} of {n_hosts} (examples {start}..{stop})"
        )
    if keys is None and builder.info.supervised_keys:
        keys = builder.info.supervised_keys
    if use_tf:
        return _tf_stream(
            builder, f"{split}[{start}:{stop}]", train and shuffle_train, seed, tfds_preprocess_fn, keys
        )

    source = builder.as_data_source(split=split)
    shuffled = train and shuffle_train

    def examples(_, processes) -> grain.MapDataset:
        del processes  # Every process reads the same examples; batching steps take each one's rows.
        dataset = grain.MapDataset.source(source)[start:stop]
        if shuffled:
            dataset = dataset.shuffle(seed=seed)  # A new order each epoch.
        return dataset.repeat()

    if tfds_preprocess_fn is not None:
        # A stream function over example dicts: the pipeline runs as a generator from here.
        def stream(generator=None):
            del generator  # TFDS starts a pipeline.
            items = tfds_preprocess_fn(iter(iterable(examples(None, None))))
            return (_select(example, keys) for example in items)

        return stream

    def selected(dataset, processes):
        return examples(dataset, processes).map(lambda example: _select(example, keys))

    return Step(f"TFDS({dataset_name!r}, train={train})", None, selected, is_source=True)


def no_preprocess(dataset, training):
    """Trax's default preprocess_fn of `data_streams`: the dataset unchanged."""
    del training
    return dataset


@gin.configurable(module="trax_sl.data")
def data_streams(
    dataset_name: str,
    data_dir: str | None = None,
    preprocess_fn: Callable = no_preprocess,
    bare_preprocess_fn: Callable | None = None,
    shuffle_buffer_size: int = 1024,
    eval_holdout_size: float = 0,
    input_name: str | None = None,
    target_name: str | None = None,
) -> tuple[StreamFn, StreamFn]:
    """`(train_fn, eval_fn)`: stream functions of `(input, target)` examples of a tfds dataset (Trax's).

    Read as `TFDS` reads, without TensorFlow: the train stream shuffles (a
    seeded permutation per epoch, so `shuffle_buffer_size` has no use), both
    repeat forever, and uint8 features become int32 as in Trax. This is what
    `batcher(data_streams=...)` takes.

    Args:
        dataset_name: A tfds name (`'mnist'`, `'imdb_reviews'`); Trax's `t2t_`
            names need Tensor2Tensor, which trax_sl does not support.
        data_dir: Where the prepared data is; tfds' default if None.
        preprocess_fn: Trax's `(tf.data.Dataset, training) -> Dataset`; only
            the default (`no_preprocess`) runs here, as there is no tf.data.
        bare_preprocess_fn: Likewise; only None.
        shuffle_buffer_size: Accepted for Trax's configs; the shuffle is exact.
        eval_holdout_size: A fraction of the train split used for evaluation
            instead of the eval split.
        input_name: The input feature; by default the first supervised key.
        target_name: The target feature; by default the second supervised key.
    """
    del shuffle_buffer_size  # A seeded permutation of the whole split needs no buffer.
    if dataset_name.startswith("t2t_"):
        raise ValueError(
            f"data_streams: {dataset_name!r} is a Tensor2Tensor problem, which trax_sl does not read; "
            f"use a TensorFlow Datasets name"
        )
    if preprocess_fn not in (None, no_preprocess) or bare_preprocess_fn is not None:
        raise ValueError(
            f"data_streams({dataset_name!r}): preprocess_fn and bare_preprocess_fn are Trax's functions "
            f"of a tf.data.Dataset, which trax_sl's data_streams does not build; preprocess the examples "
            f"with stream steps instead (trax_sl.data.Serial(TFDS(...), ...)), or TFDS(use_tf=True, "
            f"tfds_preprocess_fn=...) with TensorFlow"
        )
    keys = _prepared_builder(dataset_name, data_dir, "array_record").info.supervised_keys or (None, None)
    names = (input_name or keys[0], target_name or keys[1])
    if None in names:
        raise ValueError(
            f"data_streams: dataset {dataset_name!r} has no supervised keys; name its features with "
            f"input_name= and target_name="
        )

    def stream_fn(train: bool) -> StreamFn:
        examples = TFDS(
            dataset_name, data_dir=data_dir, keys=names, train=train, eval_holdout_size=eval_holdout_size
        )

        def stream(generator=None) -> Iterator:
            del generator  # A source.
            return (tuple(_int32_if_uint8(x) for x in example) for example in examples())

        return stream

    return stream_fn(True), stream_fn(False)


def _int32_if_uint8(x):
    return x.astype(np.int32) if getattr(x, "dtype", None) == np.uint8 else x


def _prepared_builder(dataset_name: str, data_dir: str | None, file_format: str):
    """The dataset's builder, prepared in `data_dir` (in `file_format` if it must be prepared here)."""
    where = f"dataset {dataset_name!r} in data_dir {data_dir!r}" + (
        " (tfds' default)" if data_dir is None else ""
    )
    try:
        builder = tfds.builder(dataset_name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError) as e:
        # tfds' own message lists every dataset it knows; the first line says what went wrong.
        cause = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise FileNotFoundError(
            f"TFDS: no {where}: no tfds builder of that name (and config/version) is registered and no "
            f"prepared copy is there ({cause})"
        ) from e
    if not builder.is_prepared():
        try:
            builder.download_and_prepare(file_format=file_format)
        except Exception as e:
            raise RuntimeError(f"TFDS: {where} is not prepared, and preparing it failed: {e}") from e
    prepared_as = str(getattr(builder.info.file_format, "value", builder.info.file_format))
    if file_format == "array_record" and prepared_as != "array_record":
        raise ValueError(
            f"TFDS: {where} is prepared as {prepared_as!r}, but reading without TensorFlow needs array_record: "
            f"prepare it with file_format='array_record' or pass use_tf=True (needs TensorFlow)"
        )
    return builder


def _split_and_range(builder, dataset_name: str, train: bool, use_alt_eval: bool, eval_holdout_size: float):
    """The split to read and the example range [start, stop) in it."""
    splits = builder.info.splits
    if "train" not in splits:
        raise ValueError(
            f"TFDS: to train, dataset {dataset_name!r} needs a train split; it has {sorted(splits)}"
        )
    n_train = splits["train"].num_examples
    n_holdout = int(n_train * eval_holdout_size)
    if n_holdout > 0:
        return "train", ((0, n_train - n_holdout) if train else (n_train - n_holdout, n_train))
    if train:
        return "train", (0, n_train)
    if dataset_name.startswith("glue/mnli"):
        split = "validation_mismatched" if use_alt_eval else "validation_matched"
    elif "validation" in splits:
        split = "validation"
    elif "test" in splits:
        split = "test"
    else:
        raise ValueError(
            f"TFDS: to evaluate, dataset {dataset_name!r} needs a validation or test split (or set "
            f"eval_holdout_size); it has {sorted(splits)}"
        )
    return split, (0, splits[split].num_examples)


def _select(example, keys):
    return example if keys is None else tuple(example[k] for k in keys)


def _require_tensorflow():
    try:
        import tensorflow  # noqa: F401  (tfds' as_dataset needs it)
    except ImportError as e:
        raise ImportError(
            "TFDS(use_tf=True) needs TensorFlow, which is not installed: pip install 'trax_sl[tf]', or "
            "leave use_tf=False to read array_record data sources without it"
        ) from e


def _tf_stream(builder, split: str, shuffle_files: bool, seed: int, preprocess_fn, keys) -> StreamFn:
    """Trax's path: tf.data through `as_dataset`, repeated."""
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    dataset = builder.as_dataset(split=split, shuffle_files=shuffle_files, read_config=read_config)
    if preprocess_fn is not None:
        dataset = preprocess_fn(dataset)
    if keys is not None:
        dataset = dataset.map(lambda example: tuple(example[k] for k in keys))
    dataset = dataset.repeat()

    def stream(generator=None) -> Iterator:
        del generator
        return iter(tfds.as_numpy(dataset))

    return stream
