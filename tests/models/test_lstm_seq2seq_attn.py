"""LSTMSeq2SeqAttn: Trax's rnn_test case, its weights, the source mask, streaming the target."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.layers import base
from trax_sl.models import rnn
from trax_sl.shapes import ShapeDtype


def tokens(shape, seed=0, low=1, high=8):
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32))


def shifted(x):
    """What a decoding loop feeds a predict-mode model: 0, then each previous token."""
    return jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def test_trax_signature_and_defaults():
    params = inspect.signature(rnn.LSTMSeq2SeqAttn).parameters
    assert {k: p.default for k, p in params.items()} == {
        "input_vocab_size": 256,
        "target_vocab_size": 256,
        "d_model": 512,
        "n_encoder_layers": 2,
        "n_decoder_layers": 2,
        "n_attention_heads": 1,
        "attention_dropout": 0.0,
        "mode": "train",
    }
    assert list(params)[:2] == ["input_vocab_size", "target_vocab_size"]


def test_lstmseq2seqattn_forward_shape():
    """Trax's RNNTest.test_lstmseq2seqattn_forward_shape (shapes by abstract evaluation)."""
    model = rnn.LSTMSeq2SeqAttn(input_vocab_size=20, target_vocab_size=20, d_model=16)
    signature = (ShapeDtype((3, 28), jnp.int32), ShapeDtype((3, 28), jnp.int32))
    assert [y.shape for y in model.output_signature(signature)] == [(3, 28, 20), (3, 28)]


def test_weights_are_trax_s():
    model = rnn.LSTMSeq2SeqAttn(input_vocab_size=7, target_vocab_size=5, d_model=4, n_attention_heads=2)
    signature = (ShapeDtype((2, 6), jnp.int32), ShapeDtype((2, 3), jnp.int32))
    weights, _ = model.weights_and_state_signature(signature)
    # Serial(Select, Parallel(EncodeOnce(encoder), pre-attention decoder), PrepareAttentionInputs,
    #        Residual(AttentionQKV), Select, LSTM, LSTM, Dense, LogSoftmax).
    assert len(weights) == 9
    (encoder,), decoder = weights[1]
    assert encoder[0].shape == (7, 4) and decoder[1].shape == (5, 4)
    lstm_cell = ((8, 16), (16,))  # Trax's LSTMCell on [x, h]: 4 gates.
    assert [tuple(w.shape for w in lstm[1][0]) for lstm in encoder[1:]] == [lstm_cell, lstm_cell]
    assert tuple(w.shape for w in decoder[2][1][0]) == lstm_cell
    assert [tuple(w.shape for w in lstm[1][0]) for lstm in weights[5:7]] == [lstm_cell, lstm_cell]
    assert weights[7][0].shape == (4, 5)
    n = sum(int(np.prod(w.shape)) for w in jax.tree.leaves(weights))
    lstm = 8 * 16 + 16
    attention = 4 * (4 * 4 + 4)
    assert n == 7 * 4 + 2 * lstm + 5 * 4 + lstm + attention + 2 * lstm + 4 * 5 + 5


def test_source_padding_is_masked_out():
    """Token 0 in the source is padding: trailing padding gives what the unpadded source gives."""
    model = rnn.LSTMSeq2SeqAttn(input_vocab_size=8, target_vocab_size=8, d_model=8, mode="eval")
    source, target = tokens((2, 4)), tokens((2, 5), seed=1)
    weights, _ = model.init(
        (ShapeDtype((2, 7), jnp.int32), ShapeDtype((2, 5), jnp.int32)), jax.random.PRNGKey(0)
    )
    weights = jax.tree.map(
        lambda w: 4 * w, weights
    )  # Larger than at init, so that the source counts clearly.

    def log_probs(source):
        return model((source, target), weights=weights)[0]

    expected = log_probs(source)
    padded = jnp.concatenate([source, jnp.zeros((2, 3), jnp.int32)], axis=1)
    np.testing.assert_allclose(log_probs(padded), expected, atol=1e-6)
    # The same three steps, not padding, are attended to; other content changes the output too.
    longer = jnp.concatenate([source, tokens((2, 3), seed=5)], axis=1)
    assert np.abs(log_probs(longer) - expected).max() > 1e-2
    assert np.abs(log_probs(source.at[:, 0].set(8 - source[:, 0])) - expected).max() > 1e-2


def test_stepped_one_target_token_at_a_time_equals_layer_wise():
    model = rnn.LSTMSeq2SeqAttn(
        input_vocab_size=8, target_vocab_size=8, d_model=8, n_attention_heads=2, mode="eval"
    )
    source, target = tokens((2, 5)), tokens((2, 6), seed=1)
    weights, _ = model.init(base.as_signature((source, target)), jax.random.PRNGKey(1))
    log_probs, _ = model((source, target))
    predict, state = tl.start_stream(model, base.as_signature((source, target[:, :1])), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    fed = shifted(target)
    outputs = []
    for t in range(6):
        (y, y_target), state = step((source, fed[:, t : t + 1]), state)
        outputs.append(y)
        np.testing.assert_array_equal(y_target, fed[:, t : t + 1])
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), log_probs, atol=1e-5, rtol=1e-5)
    assert predict.supports_step
    # LogSoftmax: each step's probabilities sum to 1.
    np.testing.assert_allclose(jnp.exp(log_probs).sum(-1), np.ones((2, 6)), atol=1e-5)
