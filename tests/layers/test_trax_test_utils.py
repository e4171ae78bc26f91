"""Trax's test helpers (trax.layers.test_utils) run Trax's model tests as written, and can fail."""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl.layers import test_utils
from trax_sl.supervised import decoding


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


# --- MockTransformerLM (Trax's test_utils_test) -------------------------------------------------


def arithmetic_sequence(tokens, limit=10):
    return (tokens[-1] + 1) % limit


def test_mock_transformer_lm_eval_equals_predict():
    model_fn = functools.partial(test_utils.MockTransformerLM, sequence_fn=arithmetic_sequence, vocab_size=10)
    test_utils.test_eval_equals_predict_discrete(model_fn, vocab_size=10)
    # The logits are 1000 at the next token: here the token after each input.
    logits = model_fn(mode="eval")(np.array([[3, 7]]))
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), [[1, 4]])  # After 0, after 3.
    assert float(logits.max()) == 1000.0


def test_mock_transformer_lm_decodes_and_rewinds_with_trax_eager_sampling():
    model = test_utils.MockTransformerLM(sequence_fn=arithmetic_sequence, vocab_size=10, mode="predict")
    sample_3 = functools.partial(decoding.autoregressive_sample, max_length=3, eos_id=-1, accelerate=False)
    np.testing.assert_array_equal(sample_3(model, start_id=0), [[1, 2, 3]])
    state = model.state
    np.testing.assert_array_equal(sample_3(model, start_id=3), [[4, 5, 6]])  # Goes on from the model's state.
    model.state = state
    np.testing.assert_array_equal(sample_3(model, start_id=3), [[4, 5, 6]])
    model.assert_prediction_buffers_equal([[0, 1, 2, 3, 4, 5]])  # The last sampled token is not fed.
    with pytest.raises(ValueError, match="vocab_size=10"):
        test_utils.MockTransformerLM(lambda tokens: 12, "eval", 10)(np.zeros((1, 2), np.int32))


def test_eager_sampling_of_a_predict_model_carries_its_stream_on():
    model = tiny_lm("predict", 8)
    model.init(jnp.zeros((1, 1), jnp.int32))
    first = decoding.autoregressive_sample(model, temperature=0.0, max_length=3, eos_id=99, accelerate=False)
    whole = decoding.autoregressive_sample(
        model.with_mode("eval"), temperature=0.0, max_length=6, eos_id=99, weights=model.weights
    )
    np.testing.assert_array_equal(first, whole[:, :3])  # The compiled loop from a fresh stream agrees.
    # Fed the last token, the model's stream goes on where it stopped.
    then = decoding.autoregressive_sample(
        model, temperature=0.0, max_length=3, start_id=int(first[0, -1]), eos_id=99, accelerate=False
    )
    np.testing.assert_array_equal(then, whole[:, 3:])
