"""Trax's test helpers (`trax.layers.test_utils`), and the old name of `trax_sl.layers.contract`.

`test_eval_is_deterministic`, `test_eval_equals_predict`,
`test_eval_equals_predict_configs` and `test_eval_equals_predict_discrete`
take Trax's arguments, so Trax's model tests run as written. Their checks are
a subset of `verify_contract`'s (which also checks padding and batch
invariance, chunkings and gradients): new code uses
`from trax_sl.layers import contract` (or `tl.contract.verify_contract`).
"""

import functools

import jax
import numpy as np

from trax_sl import shapes
from trax_sl.layers.contract import *
from trax_sl.layers.contract import ContractReport, verify_contract

__all__ = [
    "ContractReport",
    "test_eval_equals_predict",
    "test_eval_equals_predict_configs",
    "test_eval_equals_predict_discrete",
    "test_eval_is_deterministic",
    "verify_contract",
]


def _as_list(outputs) -> list:
    """A model's outputs as a list of numpy arrays."""
    return [np.asarray(o) for o in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


def _twins_with_one_weights(model_fn, modes, input_signature):
    """Models `model_fn(mode=m)` for each mode, initialized, all holding the first one's weights."""
    models = [model_fn(mode=mode) for mode in modes]
    for model in models:
        model.init(input_signature)
    for model in models[1:]:
        model.weights = models[0].weights
    return models


def test_eval_is_deterministic(inp, model_fn, message=""):
    """Asserts that two eval-mode models with the same weights give the same outputs on `inp`."""
    rng = jax.random.PRNGKey(0)
    first, second = _twins_with_one_weights(model_fn, ("eval", "eval"), shapes.signature(inp))
    outputs_1, outputs_2 = _as_list(first(inp, rng=rng)), _as_list(second(inp, rng=rng))
    np.testing.assert_equal(len(outputs_1), len(outputs_2))
    for a, b in zip(outputs_1, outputs_2):
        np.testing.assert_array_almost_equal(a, b, decimal=5, err_msg=f"Non-deterministic.{message}")


def test_eval_equals_predict(inp, model_fn, seq_axis=1, seq_tensor=None, init_tokens=3, message=""):
    """Asserts that the predict-mode model fed `inp` in pieces gives the eval-mode outputs.

    The first call takes `init_tokens` steps, then one step per call, along
    `seq_axis` of `inp` (of `inp[seq_tensor]` when `inp` is a tuple; the other
    items are given whole at every call).
    """
    rng = jax.random.PRNGKey(0)
    model_eval, model_predict = _twins_with_one_weights(model_fn, ("eval", "predict"), shapes.signature(inp))
    expected = _as_list(model_eval(inp, rng=rng))
    streamed = np.asarray(inp if seq_tensor is None else inp[seq_tensor])
    length = streamed.shape[seq_axis]
    if length < init_tokens + 2:
        raise ValueError(
            f"test_eval_equals_predict: needs at least init_tokens + 2 = {init_tokens + 2} steps, got {length}"
        )
    pieces = [(0, init_tokens)] + [(i, i + 1) for i in range(init_tokens, length)]
    for start, end in pieces:
        piece = np.take(streamed, np.arange(start, end), axis=seq_axis)
        if seq_tensor is not None:
            piece = tuple(piece if i == seq_tensor else item for i, item in enumerate(inp))
        outputs = _as_list(model_predict(piece, rng=rng))
        np.testing.assert_equal(len(outputs), len(expected))
        for got, want in zip(outputs, expected):
            np.testing.assert_array_almost_equal(
                np.take(want, np.arange(start, end), axis=seq_axis),
                np.take(got, np.arange(0, end - start), axis=seq_axis),
                decimal=5,
                err_msg=f"Error on element {(start, end)} out of {length}.{message}",
            )


def test_eval_equals_predict_configs(inp, model_fn, configs, seq_axis=1, seq_tensor=None, message=""):
    """`test_eval_equals_predict` for `model_fn` with each config (a dict of keyword arguments)."""
    for config in configs:
        test_eval_equals_predict(
            inp,
            functools.partial(model_fn, **config),
            seq_axis=seq_axis,
            seq_tensor=seq_tensor,
            message=f" Config: {config}.{message}",
        )


def test_eval_equals_predict_discrete(model_fn, vocab_size=10, length=5, batch_size=3):
    """Asserts that a predict-mode token model fed the previous token gives the eval-mode logits.

    `model_fn(mode=..., vocab_size=...)` builds a language model that shifts
    its input (Trax's `ShiftRight`, a no-op in predict mode): the eval model
    reads the tokens so far, the predict model one token per call, 0 first.
    """
    rng = jax.random.PRNGKey(0)
    draw = np.random.default_rng(0)
    model_eval, model_predict = _twins_with_one_weights(
        lambda mode: model_fn(mode=mode, vocab_size=vocab_size),
        ("eval", "predict"),
        shapes.ShapeDtype((batch_size, 1), np.int32),
    )
    tokens = np.zeros((batch_size, length), np.int32)
    next_token = np.zeros((batch_size, 1), np.int32)
    for index in range(length):
        np.testing.assert_array_almost_equal(
            model_eval(tokens, rng=rng)[:, index, :], model_predict(next_token, rng=rng)[:, 0, :], decimal=5
        )
        next_token = draw.integers(vocab_size, size=(batch_size, 1)).astype(np.int32)
        tokens[:, index] = next_token[:, 0]
