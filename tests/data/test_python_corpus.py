"""The local corpus builder (no network, no TensorFlow) and python_chars_inputs over it."""

import itertools
import logging
import os
import sys

import gin
import jax
import numpy as np
import pytest
from tensorflow_datasets.core.utils import tqdm_utils

from trax_sl import data
from trax_sl.data import python_corpus

TEXTS = {
    "a.py": "import os\nA = 1\n",
    "b.py": "def b():\n    return 'bé'\n",
    "sub/c.py": "C = [1, 2, 3]\n" * 3,
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small files, prepared once: returns (files, data_dir, tfds name)."""
    root = tmp_path_factory.mktemp("sources")
    files = []
    for name, text in TEXTS.items():
        path = root / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    return files, data_dir, data.prepare_python_corpus(files, data_dir=data_dir)


def test_split_by_file_and_stdlib_default():
    files = [f"f{i:02d}.py" for i in range(21)]
    split = python_corpus.split_files(reversed(files))
    assert split["validation"] == ["f00.py", "f10.py", "f20.py"]
    assert split["train"] == [f for f in files if f not in split["validation"]]
    with pytest.raises(ValueError, match="need at least 2 files \\(train and validation\\), got 1"):
        python_corpus.split_files(["x.py"])
    stdlib = python_corpus.stdlib_files()
    assert stdlib == sorted(stdlib) and os.path.join(os.path.dirname(os.__file__), "os.py") in stdlib
    assert all(f.endswith(".py") and "site-packages" not in f for f in stdlib)


def test_builder_writes_array_record_without_tensorflow(corpus):
    files, data_dir, name = corpus
    assert name.startswith("python_stdlib_chars/files_")
    version_dir = os.path.join(data_dir, name, "1.0.0")
    written = sorted(os.listdir(version_dir))
    assert "python_stdlib_chars-train.array_record-00000-of-00001" in written
    assert "python_stdlib_chars-validation.array_record-00000-of-00001" in written
    assert "tensorflow" not in sys.modules
    assert data.prepare_python_corpus(files, data_dir=data_dir) == name  # Prepared once, then reused.


def test_first_build_says_one_line_and_no_tfds_download_noise(tmp_path, capfd, caplog):
    # Issue 15: tfds announced "Downloading and preparing dataset Unknown size ..." and warned
    # "Variant folder ... has no dataset_info.json" on every first run, downloading nothing.
    files = []
    for name, text in TEXTS.items():
        path = tmp_path / "sources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(str(path))
    data_dir = str(tmp_path / "tfds")
    caplog.set_level(logging.DEBUG, logger="absl")
    name = data.prepare_python_corpus(files, data_dir=data_dir)
    out, err = capfd.readouterr()
    size = sum(len(t.encode()) for t in TEXTS.values()) / 1e6
    assert out == (
        f"Preparing the Python-sources corpus (3 files, {size:.1f} MB) in {data_dir}/{name}/1.0.0 "
        "(first run only; later runs reuse it)\n"
    )
    logged = " ".join(r.getMessage() for r in caplog.records)
    for noise in ("Downloading", "download", "dataset_info.json", "Using custom data configuration"):
        assert noise not in out + err + logged
    assert "Generating" not in err  # tfds' progress bars ...
    assert tqdm_utils._active  # ... are back on for other datasets.
    data.prepare_python_corpus(files, data_dir=data_dir)
    assert capfd.readouterr() == ("", "")  # Later runs say nothing.


def test_a_failing_first_build_still_raises(tmp_path, monkeypatch):
    path = tmp_path / "a.py"
    path.write_text("A = 1\n")

    def broken(self, files, root):
        raise OSError(f"cannot read {files[0]}")
        yield

    monkeypatch.setattr(python_corpus.PythonStdlibChars, "_generate_examples", broken)
    with pytest.raises(OSError, match="cannot read .*a.py"):
        data.prepare_python_corpus([str(path), str(path)], data_dir=str(tmp_path / "tfds"))
    assert tqdm_utils._active


def test_tfds_reads_the_splits_in_file_order(corpus):
    _, data_dir, name = corpus
    train = data.TFDS(name, data_dir=data_dir, keys=("path", "text"), shuffle_train=False)()
    assert list(itertools.islice(train, 5)) == [
        (b"b.py", TEXTS["b.py"].encode()),
        (b"sub/c.py", TEXTS["sub/c.py"].encode()),
    ] * 2 + [(b"b.py", TEXTS["b.py"].encode())]  # Repeats forever, as in Trax.
    evaluation = data.TFDS(name, data_dir=data_dir, keys=("path",), train=False)()
    assert list(itertools.islice(evaluation, 2)) == [(b"a.py",), (b"a.py",)]
    whole = next(data.TFDS(name, data_dir=data_dir, train=False)())
    assert whole == {"path": b"a.py", "text": TEXTS["a.py"].encode()}


def test_tfds_shuffles_with_a_seed_and_pipelines_compose(corpus):
    _, data_dir, name = corpus
    paths = [p for (p,) in itertools.islice(data.TFDS(name, data_dir=data_dir, keys=("path",), seed=3)(), 40)]
    assert paths == [
        p for (p,) in itertools.islice(data.TFDS(name, data_dir=data_dir, keys=("path",), seed=3)(), 40)
    ]
    epochs = [sorted(paths[i : i + 2]) for i in range(0, 40, 2)]
    assert all(e == [b"b.py", b"sub/c.py"] for e in epochs)  # Each epoch is a permutation.
    assert len({tuple(paths[i : i + 2]) for i in range(0, 40, 2)}) == 2  # ... in both orders.
    pipeline = data.Serial(
        data.TFDS(name, data_dir=data_dir, keys=("text",), shuffle_train=False),
        data.ConvertToUnicode(),
        data.Tokenize(),
        data.Batch(2, sequences=True),
    )
    (text,) = next(pipeline())
    assert text.shape == (2, len(TEXTS["sub/c.py"])) and text.mask.sum() == len(TEXTS["b.py"].encode()) + 42
    assert data.detokenize(text.values[0][text.mask[0]]) == TEXTS["b.py"]


def test_tfds_host_shards_and_holdout(corpus):
    _, data_dir, name = corpus

    def first_paths(**kwargs):
        stream = data.TFDS(name, data_dir=data_dir, keys=("path",), shuffle_train=False, **kwargs)()
        return [p for (p,) in itertools.islice(stream, 3)]

    assert first_paths(host_id=0, n_hosts=2) == [b"b.py"] * 3
    assert first_paths(host_id=1, n_hosts=2) == [b"sub/c.py"] * 3
    assert first_paths(host_id=1, n_hosts=2, train=False) == [b"a.py"] * 3  # Eval is not sharded.
    assert first_paths(eval_holdout_size=0.5) == [b"b.py"] * 3
    assert first_paths(eval_holdout_size=0.5, train=False) == [b"sub/c.py"] * 3
    with pytest.raises(ValueError, match="has no examples for split 'train' on host 0 of 3"):
        data.TFDS(name, data_dir=data_dir, host_id=0, n_hosts=3, eval_holdout_size=0.5)
    with pytest.raises(ValueError, match="expected 0 <= host_id < n_hosts, got host_id=2, n_hosts=2"):
        data.TFDS(name, data_dir=data_dir, host_id=2, n_hosts=2)


def test_tfds_missing_dataset_names_it_and_the_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"no dataset 'no_such_corpus' in data_dir '{tmp_path}'"):
        data.TFDS("no_such_corpus", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no dataset 'python_stdlib_chars/files_0123' in data_dir"):
        data.TFDS("python_stdlib_chars/files_0123", data_dir=str(tmp_path))


def test_tfds_use_tf_without_tensorflow_is_a_clear_error(corpus, monkeypatch):
    _, data_dir, name = corpus
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # As if it were not installed.
    with pytest.raises(ImportError, match="TFDS\\(use_tf=True\\) needs TensorFlow.*leave use_tf=False"):
        data.TFDS(name, data_dir=data_dir, use_tf=True)


def test_changed_files_make_a_new_corpus(corpus, tmp_path):
    files, _, name = corpus
    copy = tmp_path / "a.py"
    copy.write_text("x = 1\n")
    new_files = [str(copy), *files[1:]]
    first = python_corpus._config_for(new_files).name
    copy.write_text("x = 12\n")
    assert python_corpus._config_for(new_files).name != first
    assert f"python_stdlib_chars/{first}" != name
    with pytest.raises(FileNotFoundError, match="no such files: .*missing.py"):
        python_corpus._config_for([str(tmp_path / "missing.py")])


def test_python_chars_inputs_windows(corpus):
    files, data_dir, _ = corpus
    inputs = data.python_chars_inputs(batch_size=3, sequence_length=8, data_dir=data_dir, files=files)
    train_text = (TEXTS["b.py"] + TEXTS["sub/c.py"]).encode()
    for x, y, weights in itertools.islice(inputs.train_stream(1), 4):
        assert y is x and x.shape == (3, 8) and x.dtype == np.int32
        np.testing.assert_array_equal(weights, np.ones((3, 8), np.float32))
        for row in x:
            assert bytes(row.astype(np.uint8)) in train_text
    x, _, _ = next(inputs.eval_stream(1))
    # Validation is a.py (16 bytes): its two windows in a fixed shuffled order, then around again.
    rows = [data.detokenize(row) for row in x]
    assert sorted(rows[:2]) == ["import o", "s\nA = 1\n"] and rows[2] == rows[0]
    again = data.python_chars_inputs(batch_size=3, sequence_length=8, data_dir=data_dir, files=files)
    np.testing.assert_array_equal(next(again.eval_stream(1))[0], x)  # The order is fixed.
    assert inputs.input_shape == (8,)


def test_python_chars_inputs_restart_at_a_position(corpus):
    files, data_dir, _ = corpus
    inputs = data.python_chars_inputs(batch_size=2, sequence_length=4, data_dir=data_dir, files=files)
    continuing = list(itertools.islice(inputs.train_stream(1), 6))
    for a, b in zip(continuing[4:], itertools.islice(inputs.train_stream(1, position=4), 2)):
        np.testing.assert_array_equal(a[0], b[0])
    first_eval, second_eval = (batch[0] for batch in itertools.islice(inputs.eval_stream(1), 2))
    np.testing.assert_array_equal(next(inputs.eval_stream(1, position=1))[0], second_eval)
    # Two batches of two visit the four windows of the validation split once each.
    windows = [data.detokenize(row) for row in np.concatenate([first_eval, second_eval])]
    assert sorted(windows) == sorted(["impo", "rt o", "s\nA ", "= 1\n"])
    with pytest.raises(ValueError, match="sequence_length=17 is longer than the corpus allows"):
        data.python_chars_inputs(batch_size=2, sequence_length=17, data_dir=data_dir, files=files)


def test_python_chars_inputs_batches_are_global_and_each_process_reads_its_rows(corpus, monkeypatch):
    files, data_dir, _ = corpus

    def first_batches(n_processes, batch_size, **kwargs):
        monkeypatch.setattr(jax, "process_count", lambda: n_processes)
        rows = []
        for process in range(n_processes):
            monkeypatch.setattr(jax, "process_index", lambda process=process: process)
            inputs = data.python_chars_inputs(
                batch_size, sequence_length=4, data_dir=data_dir, files=files, **kwargs
            )
            rows.append(
                [
                    batch[0]
                    for stream in (inputs.train_stream(1), inputs.eval_stream(1, position=1))
                    for batch in [next(stream)]
                ]
            )
        return [np.concatenate(parts) for parts in zip(*rows)]

    one = first_batches(1, batch_size=4)
    # batch_size is global: 2 processes take 2 rows each of the same batches, 4 processes 1 row each.
    for n_processes in (2, 4):
        for got, expected in zip(first_batches(n_processes, batch_size=4), one):
            np.testing.assert_array_equal(got, expected)
    # per_process=True: batch_size is each process's part (2 x 2 rows = the 4-row global batch).
    for got, expected in zip(first_batches(2, batch_size=2, per_process=True), one):
        np.testing.assert_array_equal(got, expected)
    with pytest.raises(ValueError, match="the global batch of 4 rows does not split evenly over 3 processes"):
        first_batches(3, batch_size=4)


def test_python_chars_inputs_default_is_the_stdlib(tmp_path):
    inputs = data.python_chars_inputs(batch_size=8, sequence_length=64, data_dir=str(tmp_path))
    validation = python_corpus.split_files(python_corpus.stdlib_files())["validation"]
    texts = {}
    for path in validation:
        with open(path, "rb") as f:
            texts[path] = f.read()
    x, _, _ = next(inputs.eval_stream(1))
    # The first eval batch (the set a fixed evaluation reuses) spreads over the split's files.
    homes = {path for row in x for path, text in texts.items() if bytes(row.astype(np.uint8)) in text}
    assert len(homes) >= 4
    assert next(inputs.train_stream(1))[0].shape == (8, 64)


def test_gin_configures_inputs_with_trax_names(corpus):
    _, data_dir, name = corpus
    config = f"""
        make_inputs.train_stream = [@train/data.TFDS(), @data.Tokenize(), @data.Shuffle(), @data.Batch()]
        train/data.TFDS.dataset_name = '{name}'
        train/data.TFDS.data_dir = '{data_dir}'
        train/data.TFDS.keys = ('text',)
        data.Tokenize.vocab_type = 'char'
        trax_sl.data.Shuffle.queue_size = 2
        Batch.batch_size = 2
    """
    try:
        gin.parse_config(config)
        inputs = gin.get_configurable("trax_sl.data.make_inputs")()
    finally:
        gin.clear_config()
    assert inputs.example_shape_dtype == ([(2, len(TEXTS["sub/c.py"]))], [np.int32])


def test_tfds_preprocess_fn_runs_on_the_example_dicts(corpus):
    _, data_dir, name = corpus
    source = data.TFDS(
        name,
        data_dir=data_dir,
        keys=("path",),
        shuffle_train=False,
        tfds_preprocess_fn=lambda examples: ({**e, "path": e["path"].upper()} for e in examples),
    )
    paths = [example[0] for example in itertools.islice(source(), 2)]
    assert all(p == p.upper() for p in paths) and len(set(paths)) == 2


def test_data_streams_gives_trax_train_and_eval_stream_functions(corpus):
    _, data_dir, name = corpus
    train_fn, eval_fn = data.data_streams(name, data_dir=data_dir, input_name="path", target_name="text")
    train = list(itertools.islice(train_fn(), 4))
    assert sorted(train[:2]) == [(b"b.py", TEXTS["b.py"].encode()), (b"sub/c.py", TEXTS["sub/c.py"].encode())]
    assert sorted(train[2:]) == sorted(train[:2])  # Shuffled per epoch, repeated.
    assert list(itertools.islice(eval_fn(), 2)) == [(b"a.py", TEXTS["a.py"].encode())] * 2
    # Trax's batcher takes the pair; gin finds it under Trax's name.
    gin.parse_config(f"data_streams.dataset_name = '{name}'")
    gin.clear_config()
    with pytest.raises(ValueError, match="no supervised keys; name its features"):
        data.data_streams(name, data_dir=data_dir)
    with pytest.raises(ValueError, match="Tensor2Tensor"):
        data.data_streams("t2t_translate_ende_wmt32k")
    with pytest.raises(ValueError, match="tf.data.Dataset"):
        data.data_streams(name, data_dir=data_dir, bare_preprocess_fn=lambda ds, training: ds)
