"""Pipelines of trax_sl.data steps on Grain: resumable state, global batches, read-ahead."""

import itertools

import gin
import jax
import numpy as np
import pytest

import trax_sl
from trax_sl import data
from trax_sl.data import inputs as inputs_module
from trax_sl.data.steps import Processes, Step

# 40 files of 3..120 characters: examples of many lengths, so buckets fill at different rates.
TEXTS = {f"m{i:02d}.py": "x = 1\n" * (1 + (i * 7) % 20) for i in range(40)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The files prepared once as a tfds dataset: returns (tfds name, data_dir, files)."""
    root = tmp_path_factory.mktemp("sources")
    files = []
    for name, text in TEXTS.items():
        (root / name).write_text(text)
        files.append(str(root / name))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return data.prepare_python_corpus(files, data_dir=data_dir), data_dir, files


def text_pipeline(corpus, *middle, batching=None):
    name, data_dir, _ = corpus
    return data.Serial(
        data.TFDS(name, data_dir=data_dir, keys=("text",)),
        data.Tokenize(keys=[0], vocab_type="char"),
        *middle,
        data.Dup(),
        data.FilterByLength(max_length=100, min_length=8),
        data.Shuffle(8),
        batching or data.BucketByLength(boundaries=[20, 50], batch_sizes=[4, 2, 2], sequences=True),
        data.AddLossWeights(),
    )


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        jax.tree.map(np.testing.assert_array_equal, a, b)


def test_a_pipeline_of_steps_is_a_step_whose_stream_is_its_grain_dataset(corpus):
    pipeline = text_pipeline(corpus)
    assert isinstance(pipeline, Step) and pipeline.is_source
    assert repr(pipeline).startswith("Serial(TFDS(") and "BucketByLength(" in repr(pipeline)
    from_stream = list(itertools.islice(pipeline(), 12))
    assert_same_batches(from_stream, list(itertools.islice(iter(pipeline.dataset()), 12)))
    inputs_, _, weights = from_stream[0]
    assert isinstance(inputs_, trax_sl.Sequence) and weights.dtype == np.float32
    # With a plain function in it, a Serial is a plain stream function (replayed on resume).
    assert not isinstance(text_pipeline(corpus, lambda g: g), Step)


def test_restoring_the_state_continues_exactly_even_with_examples_waiting_in_buckets(corpus):
    pipeline = text_pipeline(corpus)
    continuing = iter(pipeline.dataset())
    states, batches = [], []
    for _ in range(30):
        states.append(continuing.get_state())
        batches.append(next(continuing))
    waiting = [state for state in states if any(state["buckets"])]
    assert waiting, "the test needs states with examples waiting in buckets"
    assert all(sum(map(len, state["buckets"])) <= 8 for state in states)  # O(1): a few indices.
    for k in (0, 1, 7, 19, 28):
        resumed = iter(pipeline.dataset())
        resumed.set_state(states[k])
        assert_same_batches([next(resumed), next(resumed)], batches[k : k + 2])


def test_processes_keep_their_rows_of_the_same_global_batches(corpus):
    def first_batches(pipeline, processes):
        return list(itertools.islice(iter(pipeline.dataset(processes)), 10))

    pipeline = text_pipeline(corpus)
    one = first_batches(pipeline, Processes(0, 1))
    halves = [first_batches(pipeline, Processes(i, 2)) for i in (0, 1)]
    for whole, first, second in zip(one, *halves):
        joined = jax.tree.map(lambda a, b: np.concatenate([a, b]), first, second)
        jax.tree.map(np.testing.assert_array_equal, joined, whole)
        assert first[2].shape[0] * 2 == whole[2].shape[0]
    # per_process=True: each process's part is the batch size (2 processes x 2 rows: a global batch of 4).
    per_process = text_pipeline(corpus, batching=data.Batch(2, per_process=True))
    global_4 = first_batches(text_pipeline(corpus, batching=data.Batch(4)), Processes(0, 1))
    parts = [first_batches(per_process, Processes(i, 2)) for i in (0, 1)]
    for whole, first, second in zip(global_4, *parts):
        joined = jax.tree.map(lambda a, b: np.concatenate([a, b]), first, second)
        jax.tree.map(np.testing.assert_array_equal, joined, whole)
    with pytest.raises(
        ValueError, match=r"Batch\(batch_size=3\): the global batch of 3 rows does not split evenly"
    ):
        next(iter(text_pipeline(corpus, batching=data.Batch(3)).dataset(Processes(0, 2))))


def test_a_filter_that_drops_every_example_fails_with_the_batching_steps_name(corpus):
    name, data_dir, _ = corpus
    pipeline = data.Serial(
        data.TFDS(name, data_dir=data_dir, keys=("text",)),
        data.Tokenize(keys=[0]),
        data.FilterByLength(max_length=1, max_consecutive_rejections=500),
        data.Shuffle(4),  # The filter's bound reaches the batching step through the steps between.
        data.Batch(2),
    )
    message = (
        r"^Batch\(batch_size=2\): FilterByLength\(max_length=1, min_length=0\) before it dropped 500 examples"
    )
    with pytest.raises(ValueError, match=message):
        next(pipeline())


def test_make_inputs_resumes_a_step_pipeline_by_state_and_replays_a_plain_one_with_one_warning(
    corpus, monkeypatch
):
    warnings = []
    monkeypatch.setattr(inputs_module, "_warned_of_replay", False)
    monkeypatch.setattr(
        inputs_module.logging, "warning", lambda message, *args: warnings.append(message % args)
    )
    grain_inputs = data.make_inputs(train_stream=text_pipeline(corpus))
    expected = list(itertools.islice(grain_inputs.train_stream(1), 8))
    # A position seeks (the built-in inputs) or skips batches; a Loop restores the iterator's state instead.
    assert_same_batches(list(itertools.islice(grain_inputs.train_stream(1, position=5), 3)), expected[5:])
    assert warnings == []
    plain = data.make_inputs(train_stream=text_pipeline(corpus, lambda g: g))
    expected = list(itertools.islice(plain.train_stream(1), 8))  # Shuffle's queue here, not Grain's windows.
    assert_same_batches(list(itertools.islice(plain.train_stream(1, position=5), 3)), expected[5:])
    assert_same_batches(list(itertools.islice(plain.train_stream(1, position=6), 2)), expected[6:])
    assert len(warnings) == 1
    assert warnings[0].startswith("Inputs: continuing a stream at batch 5 by making and dropping the batches")
    assert "For a resume in O(1), build the pipeline from trax_sl.data steps only" in warnings[0]


@pytest.mark.parametrize("buffer_size", [0, 1, 4])
def test_read_ahead_in_a_thread_keeps_the_state_of_the_batches_taken(corpus, buffer_size):
    with gin.config_scope(None):
        gin.bind_parameter("trax_sl.data.read_ahead.buffer_size", buffer_size)
        try:
            stream = data.make_inputs(train_stream=text_pipeline(corpus)).train_stream(1)
        finally:
            gin.clear_config()
    unbuffered = iter(text_pipeline(corpus).dataset())
    for _ in range(6):
        assert_same_batches([next(stream)], [next(unbuffered)])
        assert stream.get_state() == unbuffered.get_state()
    stream.set_state(unbuffered.get_state())
    assert_same_batches([next(stream)], [next(unbuffered)])
    stream.close()


def test_worker_processes_make_the_same_batches_in_order_and_resume(corpus):
    _, data_dir, files = corpus
    inputs = data.python_chars_inputs(batch_size=4, sequence_length=8, data_dir=data_dir, files=files)
    expected = list(itertools.islice(inputs.train_stream(1), 6))
    gin.bind_parameter("trax_sl.data.read_ahead.worker_processes", 2)
    try:
        stream = inputs.train_stream(1)
        assert_same_batches([next(stream) for _ in range(4)], expected[:4])
        state = stream.get_state()
        resumed = inputs.train_stream(1)
        resumed.set_state(state)
        assert_same_batches([next(resumed), next(resumed)], expected[4:6])
        stream.close()
        resumed.close()
        with pytest.raises(
            ValueError, match="worker_processes=2 needs a dataset with random access to its batches"
        ):
            data.make_inputs(train_stream=text_pipeline(corpus))
    finally:
        gin.clear_config()


def test_tfds_splits_the_train_split_only_when_asked(corpus):
    name, data_dir, _ = corpus

    def paths(**kwargs):
        source = data.TFDS(name, data_dir=data_dir, keys=("path",), shuffle_train=False, **kwargs)
        return {example[0] for example in itertools.islice(source(), 36)}

    first, second = paths(host_id=0, n_hosts=2), paths(host_id=1, n_hosts=2)
    assert len(paths()) == 36 and len(first) == len(second) == 18
    assert first | second == paths() and first.isdisjoint(second)
