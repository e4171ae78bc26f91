"""Trax's test helpers (`trax.layers.test_utils`), and the old name of `trax_sl.layers.contract`.

`test_eval_is_deterministic`, `test_eval_equals_predict`,
`test_eval_equals_predict_configs` and `test_eval_equals_predict_discrete`
take Trax's arguments, so Trax's model tests run as written;
`MockTransformerLM` is Trax's stand-in language model for testing decoding
loops. Their checks are
a subset of `verify_contract`'s (which also checks padding and batch
invariance, chunkings and gradients): new code uses
`from trax_sl.layers import contract` (or `tl.contract.verify_contract`).
"""

import copy
import functools

import jax
import numpy as np

from trax_sl import shapes
from trax_sl.layers import base
from trax_sl.layers.contract import *
from trax_sl.layers.contract import ContractReport, verify_contract
from trax_sl.layers.core import one_hot

__all__ = [
    "ContractReport",
    "MockTransformerLM",
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


class MockTransformerLM(base.Layer):
    """A perfectly trained, deterministic language model, for testing decoding loops (Trax's).

    `sequence_fn(tokens)` (a 1-D numpy array of the tokens so far, 0 first)
    gives the next token. A call takes token ids `[batch, length]` and gives
    logits `[batch, length, vocab_size]`: 1000 at the next token, 0 elsewhere.
    In predict mode a call appends its tokens to its row's buffer and gives
    the token after the buffer, once per call (so `length` is 1 out); in the
    other modes every position gives the token after the tokens before it,
    after a leading 0 (as `ShiftRight`). The buffers are the model's
    `state`, plain Python lists: save and restore `model.state` to rewind.
    Python state, as Trax's: call it (e.g. from `autoregressive_sample(...,
    accelerate=False)`); it does not run under jit or `tl.Accelerate`.
    """

    def __init__(self, sequence_fn, mode, vocab_size):
        super().__init__(name="MockTransformerLM")
        self._sequence_fn = sequence_fn
        self._mode = mode
        self._vocab_size = vocab_size
        self._buffers = None

    @property
    def state(self):
        return copy.deepcopy(self._buffers)

    @state.setter
    def state(self, state):
        # init's empty state (`()`) is a fresh model, as in Trax, whose init leaves the buffers unset.
        self._buffers = copy.deepcopy(state) if state else None

    def __call__(self, inputs, rng=None):
        del rng
        inputs = np.asarray(inputs)
        if inputs.ndim != 2:
            raise ValueError(
                f"MockTransformerLM: expected token ids [batch, length], got shape {inputs.shape}"
            )
        if self._buffers is None:
            self._buffers = [[] for _ in range(inputs.shape[0])]
        if self._mode == "predict":
            next_tokens = [self._next_after_buffer(row, buffer) for row, buffer in zip(inputs, self._buffers)]
        else:
            next_tokens = [self._next_at_each_position(row) for row in inputs]
        next_tokens = np.array(next_tokens)
        if not np.issubdtype(next_tokens.dtype, np.integer) or (next_tokens < 0).any():
            raise ValueError(f"MockTransformerLM: sequence_fn must give token ids >= 0, got {next_tokens}")
        if (next_tokens >= self._vocab_size).any():
            raise ValueError(
                f"MockTransformerLM: sequence_fn gave a token >= vocab_size={self._vocab_size}: {next_tokens}"
            )
        return one_hot(next_tokens, self._vocab_size) * 1000.0

    def _next_after_buffer(self, tokens, buffer):
        buffer.extend(tokens)
        return [self._sequence_fn(np.array(buffer))]

    def _next_at_each_position(self, tokens):
        shifted = np.concatenate([[0], tokens])
        return [self._sequence_fn(shifted[:end]) for end in range(1, len(shifted))]

    def assert_prediction_buffers_equal(self, expected_buffers):
        """Asserts that the predict-mode buffers (the tokens fed so far, per row) are `expected_buffers`."""
        actual = np.zeros((len(expected_buffers), 0)) if self._buffers is None else np.array(self._buffers)
        np.testing.assert_array_equal(actual, expected_buffers)
