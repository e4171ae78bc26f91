"""Trax's .pkl.gz weights files: read through an allowlist that runs no code, into trax_sl models."""

import gzip
import os
import pickle
import re

import jax
import numpy as np
import pytest

from trax_sl import models
from trax_sl.layers import trax_checkpoint
from trax_sl.shapes import ShapeDtype
from trax_sl.supervised import decoding

TRAX_FILE = os.path.join(
    os.path.dirname(os.path.dirname(__file__)), "testdata", "trax_transformerlm_copy.pkl.gz"
)


def copy_lm(mode):
    return models.TransformerLM(
        vocab_size=13, d_model=64, d_ff=128, n_layers=2, n_heads=2, max_len=256, dropout=0.05, mode=mode
    )


def test_a_trax_checkpoint_decodes_as_in_trax():
    # Trax's decoding_test (test_autoregressive_sample_transformerlm_quality): the same file, the same
    # prompt, the same greedy samples.
    model = copy_lm("predict")
    model.init_from_file(TRAX_FILE, weights_only=True, input_signature=ShapeDtype((1, 1), np.int32))
    prompt = np.array([[0, 3, 7, 5, 3, 2, 4, 0]], np.int32)
    np.testing.assert_array_equal(
        decoding.autoregressive_sample(model, prompt, max_length=6, temperature=0.0), [[3, 7, 5, 3, 2, 4]]
    )
    # In eval mode, with the signature stored in the file (a whole batch: the model takes its inputs).
    model = copy_lm("eval")
    weights, _ = model.init_from_file(TRAX_FILE)
    tokens = np.array([[0, 3, 7, 5, 3, 2, 4, 0, 3, 7, 5, 3, 2, 4]], np.int32)
    predicted = np.argmax(np.asarray(model(tokens)), axis=-1)
    # The model shifts its input right: position t predicts token t. After the 0, it copies.
    np.testing.assert_array_equal(predicted[0, 8:], [3, 7, 5, 3, 2, 4])
    assert jax.tree.leaves(weights)[0].shape == (13, 64)


def test_a_checkpoint_of_another_model_is_refused_with_the_counts():
    with pytest.raises(ValueError, match="the file has 38 weight arrays, this model 54"):
        models.TransformerLM(
            vocab_size=13, d_model=64, d_ff=128, n_layers=3, n_heads=2, max_len=256
        ).init_from_file(TRAX_FILE)


class RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def gzipped(tmp_path, obj, name):
    path = tmp_path / name
    with gzip.open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


def test_a_hostile_pickle_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = gzipped(tmp_path, {"flat_weights": [RunsACommand(marker)]}, "hostile.pkl.gz")
    with pytest.raises(pickle.UnpicklingError, match=r"refuses to load (posix|os)\.system"):
        copy_lm("eval").init_from_file(path)
    assert not marker.exists()
    # The reader refuses object arrays too: only pickled code fills them with objects.
    objects = gzipped(tmp_path, {"flat_weights": [np.array([1, "a"], dtype=object)]}, "objects.pkl.gz")
    with pytest.raises(ValueError, match="holds an object array"):
        trax_checkpoint.read(objects)


def test_pickle_is_read_in_this_one_module_only():
    root = os.path.dirname(os.path.dirname(trax_checkpoint.__file__))
    importing = []
    for directory, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(directory, name), encoding="utf-8") as f:
                    if re.search(
                        r"^\s*(import pickle|from pickle |import cloudpickle|import dill)",
                        f.read(),
                        re.MULTILINE,
                    ):
                        importing.append(os.path.relpath(os.path.join(directory, name), root))
    assert importing == [os.path.join("layers", "trax_checkpoint.py")]
