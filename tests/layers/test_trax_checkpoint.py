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


def copy_lm(mode, scan_layers=True):
    return models.TransformerLM(
        vocab_size=13,
        d_model=64,
        d_ff=128,
        n_layers=2,
        n_heads=2,
        max_len=256,
        dropout=0.05,
        mode=mode,
        scan_layers=scan_layers,
    )


@pytest.mark.parametrize("scan_layers", [True, False], ids=["scanned blocks", "Trax's layout"])
def test_a_trax_checkpoint_decodes_as_in_trax(scan_layers):
    # Trax's decoding_test (test_autoregressive_sample_transformerlm_quality): the same file, the same
    # prompt, the same greedy samples.
    model = copy_lm("predict", scan_layers)
    model.init_from_file(TRAX_FILE, weights_only=True, input_signature=ShapeDtype((1, 1), np.int32))
    prompt = np.array([[0, 3, 7, 5, 3, 2, 4, 0]], np.int32)
    np.testing.assert_array_equal(
        decoding.autoregressive_sample(model, prompt, max_length=6, temperature=0.0), [[3, 7, 5, 3, 2, 4]]
    )
    # In eval mode, with the signature stored in the file (a whole batch: the model takes its inputs).
    model = copy_lm("eval", scan_layers)
    weights, _ = model.init_from_file(TRAX_FILE)
    tokens = np.array([[0, 3, 7, 5, 3, 2, 4, 0, 3, 7, 5, 3, 2, 4]], np.int32)
    predicted = np.argmax(np.asarray(model(tokens)), axis=-1)
    # The model shifts its input right: position t predicts token t. After the 0, it copies.
    np.testing.assert_array_equal(predicted[0, 8:], [3, 7, 5, 3, 2, 4])
    assert jax.tree.leaves(weights)[0].shape == (13, 64)


def test_scanned_blocks_hold_trax_s_arrays_copy_by_copy():
    scanned, unrolled = copy_lm("eval"), copy_lm("eval", scan_layers=False)
    scanned_weights, _ = scanned.init_from_file(TRAX_FILE)
    unrolled_weights, _ = unrolled.init_from_file(TRAX_FILE)
    in_file = [np.asarray(x) for x in trax_checkpoint.read(TRAX_FILE)["flat_weights"] if np.ndim(x)]
    in_order = trax_checkpoint.in_trax_order(scanned, scanned_weights)
    assert len(in_order) == len(in_file) == len(jax.tree.leaves(unrolled_weights)) == 38
    for ours, theirs, unrolled_leaf in zip(in_order, in_file, jax.tree.leaves(unrolled_weights)):
        np.testing.assert_array_equal(np.reshape(ours, theirs.shape), theirs)
        np.testing.assert_array_equal(ours, unrolled_leaf)
    # Block 1's first LayerNorm scale is the file's array 2 (after the embedding and positions).
    np.testing.assert_array_equal(jax.tree.leaves(scanned_weights[4])[0][1], in_file[2 + 16])
    tokens = np.array([[0, 3, 7, 5, 3, 2, 4, 0, 3]], np.int32)
    np.testing.assert_allclose(scanned(tokens), unrolled(tokens), rtol=1e-5, atol=1e-5)


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


def test_convert_weights_between_scanned_and_unrolled_blocks():
    signature = ShapeDtype((1, 9), np.int32)
    scanned, unrolled = copy_lm("eval"), copy_lm("eval", scan_layers=False)
    weights, _ = scanned.init(signature)
    unrolled_weights = trax_checkpoint.convert_weights(weights, scanned, unrolled, signature)
    assert len(unrolled_weights) == 10 and len(weights) == 7
    unrolled.init(signature)
    tokens = np.array([[0, 3, 7, 5, 3, 2, 4, 0, 3]], np.int32)
    np.testing.assert_allclose(
        unrolled(tokens, weights=unrolled_weights), scanned(tokens), rtol=1e-5, atol=1e-5
    )
    # And back: the same arrays.
    back = trax_checkpoint.convert_weights(unrolled_weights, unrolled, scanned, signature)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(weights)):
        np.testing.assert_array_equal(a, b)
    deeper = models.TransformerLM(13, d_model=64, d_ff=128, n_layers=3, n_heads=2, max_len=256)
    with pytest.raises(ValueError, match=r"TransformerLM's tree has 38 weight arrays, this model 54"):
        trax_checkpoint.convert_weights(weights, scanned, deeper, signature)


def test_a_predict_mode_state_in_trax_s_order_fills_each_block_s_own_state():
    signature = ShapeDtype((1, 1), np.int32)
    scanned, unrolled = copy_lm("predict"), copy_lm("predict", scan_layers=False)
    _, unrolled_state = unrolled.init(signature)
    # Each array its own values (a fresh stream state is mostly zeros), so that order shows.
    leaves, treedef = jax.tree.flatten(unrolled_state)
    unrolled_state = treedef.unflatten([np.full(a.shape, i + 1, a.dtype) for i, a in enumerate(leaves)])
    _, scanned_state = scanned.weights_and_state_signature(signature)
    assert len(scanned_state[4]) == 2  # In predict mode, one state per block.
    placed = trax_checkpoint.assign(jax.tree.leaves(unrolled_state), scanned, scanned_state, "state", "test")
    for a, b in zip(jax.tree.leaves(placed), jax.tree.leaves(unrolled_state), strict=True):
        np.testing.assert_array_equal(a, b)
