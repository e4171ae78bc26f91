"""Trax's test helpers (trax.layers.test_utils) run Trax's model tests as written, and can fail."""

import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl.layers import test_utils


def tiny_lm(mode, vocab_size):
    return models.TransformerLM(vocab_size, d_model=8, d_ff=16, n_layers=1, n_heads=2, max_len=8, mode=mode)


def test_eval_equals_predict_discrete_on_trax_lms():
    # As Trax's transformer_test / rnn_test: the predict model is fed 0, then each previous token.
    test_utils.test_eval_equals_predict_discrete(tiny_lm)
    test_utils.test_eval_equals_predict_discrete(
        lambda mode, vocab_size: models.GRULM(vocab_size, d_model=8, mode=mode)
    )


def test_eval_equals_predict_discrete_fails_on_a_model_that_shifts_in_predict_mode():
    def shifts_always(mode, vocab_size):
        return tl.Serial(tl.ShiftRight(mode="eval"), tl.Embedding(vocab_size, 4), tl.Dense(vocab_size))

    with pytest.raises(AssertionError):
        test_utils.test_eval_equals_predict_discrete(shifts_always)


def test_eval_equals_predict_streams_the_sequence_in_pieces():
    def causal(mode):
        return tl.Serial(tl.Dense(4), tl.CausalAttention(4, n_heads=2, max_inference_length=8, mode=mode))

    x = np.random.default_rng(0).normal(size=(2, 6, 3)).astype(np.float32)
    test_utils.test_eval_equals_predict(x, causal)
    test_utils.test_eval_equals_predict_configs(
        x,
        lambda mode, n_heads: tl.CausalAttention(3, n_heads=n_heads, mode=mode),
        [{"n_heads": 1}, {"n_heads": 3}],
    )
    test_utils.test_eval_is_deterministic(x, causal)
    with pytest.raises(AssertionError, match="Error on element"):  # Whole-sequence attention does not stream.
        test_utils.test_eval_equals_predict(
            x, lambda mode: tl.Serial(tl.Dense(4), tl.Fn("Cumsum", lambda v: jnp.cumsum(v[:, ::-1], axis=1)))
        )
