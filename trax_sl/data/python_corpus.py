"""python_stdlib_chars: a text corpus of local source files, and character-level LM inputs over it.

`PythonStdlibChars` is a tfds builder that needs no network and no
TensorFlow: it reads local files and writes array_record files that
`tfds.data_source` (and so `TFDS(...)`) reads. Its default config takes the
top-level `*.py` modules of the running interpreter's standard library
(`sysconfig.get_paths()['stdlib']`, sorted; a few MB, prepared in seconds);
other files make a config named after them (see `prepare_python_corpus`).
Each example is one file: `{'text': its bytes, 'path': its path relative to
the corpus root}`. Files are split by position in sorted order: every tenth
file, starting with the first, goes to `validation`, the others to `train`.

`python_chars_inputs` serves language-model batches of byte ids from it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import sys
import sysconfig
from collections.abc import Sequence
from typing import ClassVar

import gin
import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core.utils import tqdm_utils

from trax_sl import checks
from trax_sl.data.grain_streams import dataset_stream, indexed_batches
from trax_sl.data.inputs import Inputs
from trax_sl.data.steps import Processes, process_rows

_VALIDATION_EVERY = 10


@dataclasses.dataclass(eq=False)
class PythonCorpusConfig(tfds.core.BuilderConfig):
    """A corpus config: `files` (absolute paths) or, if empty, the stdlib modules."""

    files: tuple[str, ...] = ()


def stdlib_files() -> list[str]:
    """The default corpus: the top-level `*.py` modules of the standard library, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    return sorted(
        os.path.join(root, name)
        for name in os.listdir(root)
        if name.endswith(".py") and os.path.isfile(os.path.join(root, name))
    )


def split_files(files: Sequence[str]) -> dict[str, list[str]]:
    """Splits sorted files: every tenth (from the first) to validation, the rest to train."""
    files = sorted(files)
    if len(files) < 2:
        raise ValueError(
            f"python_stdlib_chars: need at least 2 files (train and validation), got {len(files)}"
        )
    return {
        "train": [f for i, f in enumerate(files) if i % _VALIDATION_EVERY != 0],
        "validation": files[::_VALIDATION_EVERY],
    }


class PythonStdlibChars(tfds.core.GeneratorBasedBuilder):
    """Source files as a text corpus, one example per file, generated locally."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: ClassVar[list[PythonCorpusConfig]] = [
        PythonCorpusConfig(
            name=f"stdlib_py{sys.version_info.major}{sys.version_info.minor}",
            description="The top-level *.py modules of the Python standard library.",
        )
    ]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # tfds 4.9's own lookup imports the importlib_resources backport, absent on Python >= 3.9.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Local text files (by default Python's standard library), one example per file.",
            features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
            # Keep the sorted file order instead of tfds' order by key hash.
            disable_shuffling=True,
        )

    # tfds announces every first build as "Downloading and preparing dataset Unknown size ...",
    # though this one downloads nothing; these two hooks (tfds' own) say what happens instead.
    def _log_download_bytes(self) -> None:
        files = list(self.builder_config.files) or stdlib_files()
        megabytes = sum(os.path.getsize(f) for f in files) / 1e6
        print(
            f"Preparing the Python-sources corpus ({len(files)} files, {megabytes:.1f} MB) in "
            f"{self.data_dir} (first run only; later runs reuse it)",
            flush=True,
        )

    def _log_download_done(self) -> None:
        pass

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything is local.
        files = list(self.builder_config.files) or stdlib_files()
        root = os.path.commonpath([os.path.dirname(f) for f in files])
        return {split: self._generate_examples(names, root) for split, names in split_files(files).items()}

    def _generate_examples(self, files: list[str], root: str):
        for path in files:
            with open(path, "rb") as f:
                text = f.read()
            relative = os.path.relpath(path, root)
            yield relative, {"text": text, "path": relative}


def _config_for(files: Sequence[str] | None) -> PythonCorpusConfig | None:
    """The default config for None; else one named after the files' paths, sizes and mtimes."""
    if files is None:
        return None
    paths = sorted(os.path.abspath(f) for f in files)
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"python_stdlib_chars: no such files: {missing}")
    digest = hashlib.sha1()
    for p in paths:
        stat = os.stat(p)
        digest.update(f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return PythonCorpusConfig(name=f"files_{digest.hexdigest()[:12]}", files=tuple(paths))


def prepare_python_corpus(files: Sequence[str] | None = None, data_dir: str | None = None) -> str:
    """Prepares the corpus of `files` (the stdlib modules if None) and returns its name for `TFDS`.

    Changing a file (its size or mtime) makes a new config, prepared anew.

    Example:
        `TFDS(prepare_python_corpus(my_files, d), data_dir=d, keys=('text',))`
    """
    builder = _builder(files, data_dir)
    return f"{builder.name}/{builder.builder_config.name}"


def _builder(files, data_dir) -> PythonStdlibChars:
    """The corpus builder, prepared (once per data_dir and config) without tfds' first-run noise."""
    with _without_absl_records(_FIRST_RUN_WARNINGS):
        builder = PythonStdlibChars(config=_config_for(files), data_dir=data_dir)
        if not builder.is_prepared():
            # tfds' switch is global: turned off for this build only, then put back as it was.
            progress_bar = getattr(tqdm_utils, "_active", True)
            tfds.display_progress_bar(False)
            try:
                builder.download_and_prepare(file_format="array_record")
            finally:
                tfds.display_progress_bar(progress_bar)
    return builder


# What tfds warns while it makes a builder whose data is not there yet: expected on a first
# run, and for a `files` config (not one of BUILDER_CONFIGS) on every run.
_FIRST_RUN_WARNINGS = ("Variant folder ", "Using custom data configuration: ")


@contextlib.contextmanager
def _without_absl_records(prefixes: tuple[str, ...]):
    """Drops the records of absl's logger (which tfds logs to) whose message starts with `prefixes`."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(prefixes)

    logger = logging.getLogger("absl")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _read_split(builder, split: str) -> np.ndarray:
    """The split's files concatenated in order, as uint8 byte ids."""
    source = builder.as_data_source(split=split)
    texts = source.__getitems__(list(range(len(source))))
    return np.frombuffer(b"".join(example["text"] for example in texts), np.uint8)


@gin.configurable(module="trax_sl.data")
def python_chars_inputs(
    batch_size=gin.REQUIRED,
    sequence_length=gin.REQUIRED,
    data_dir: str | None = None,
    files: Sequence[str] | None = None,
    seed: int = 0,
    per_process: bool = False,
) -> Inputs:
    """Language-model inputs of byte ids from the python_stdlib_chars corpus.

    A batch is `(x, x, weights)` (Trax's LM convention: the model shifts the
    targets itself): x a plain int32 array `[batch_size, sequence_length]` of
    UTF-8 byte ids (vocab_size 256, the ids of `Tokenize(vocab_type='char')`),
    weights float32 ones; nothing is padded. Training windows start at
    uniformly random places in the train split (global batch i from a
    generator seeded by `(seed, i)`); evaluation walks the validation split's
    non-overlapping windows in one fixed shuffled order and cycles, so the
    first batches (the set a fixed evaluation reuses) spread over the whole
    split, not its first file. Batches are global: each process reads only its
    rows, so a run on 1, 2 or 4 processes sees the same data. Both streams
    restart at any position in O(1) (Grain `MapDataset`s of batches). The
    corpus is prepared on first use; in a multi-host run with a shared
    `data_dir`, prepare it once beforehand (`prepare_python_corpus`) so that
    hosts do not race to write it.

    Args:
        batch_size: Windows per global batch.
        sequence_length: Bytes per window.
        data_dir: Where the corpus is prepared; tfds' default if None
            (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
        files: Text files to use instead of the stdlib modules.
        seed: Seeds the training windows.
        per_process: batch_size is each process's part of the global batch.
    """
    checks.check_positive("python_chars_inputs", batch_size=batch_size, sequence_length=sequence_length)
    builder = _builder(files, data_dir)
    train, validation = _read_split(builder, "train"), _read_split(builder, "validation")
    eval_windows = np.random.default_rng(seed).permutation(len(validation) // sequence_length)
    if len(train) < sequence_length or len(eval_windows) == 0:
        raise ValueError(
            f"python_chars_inputs: sequence_length={sequence_length} is longer than the corpus allows: "
            f"{len(train)} train bytes, {len(validation)} validation bytes"
        )
    steps = np.arange(sequence_length).reshape((1, -1))

    def batch_of(corpus, starts):
        x = corpus[starts.reshape((-1, 1)) + steps].astype(np.int32)
        return x, x, np.ones(x.shape, np.float32)

    def train_starts(i, size):
        return np.random.default_rng([seed, i]).integers(0, len(train) - sequence_length + 1, size=size)

    def eval_starts(i, size):
        return eval_windows[np.arange(i * size, (i + 1) * size) % len(eval_windows)] * sequence_length

    def stream(corpus, starts_of):
        def make_dataset(processes: Processes):
            size = batch_size * processes.count if per_process else batch_size

            def rows(i):  # Only this process's rows are read: the starts of all rows are cheap to draw.
                return batch_of(corpus, process_rows(starts_of(i, size), processes, "python_chars_inputs"))

            return indexed_batches(rows)

        return dataset_stream(make_dataset)

    return Inputs(train_stream=stream(train, train_starts), eval_stream=stream(validation, eval_starts))
