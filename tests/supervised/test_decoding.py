"""Autoregressive sampling: greedy equals layer-wise argmax, seeds reproduce, rows stop at eos, one compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.supervised import decoding

VOCAB = 8


def attention_lm(mode="train"):
    return tl.Serial(
        tl.ShiftRight(mode=mode),
        tl.Embedding(VOCAB, 16),
        tl.CausalAttention(16, n_heads=2, max_inference_length=64, mode=mode),
        tl.Dense(VOCAB),
    )


def lstm_lm(mode="train"):
    return tl.Serial(
        tl.ShiftRight(mode=mode), tl.Embedding(VOCAB, 16), tl.LSTM(16, mode=mode), tl.Dense(VOCAB)
    )


@pytest.fixture(params=[attention_lm, lstm_lm], ids=["attention", "lstm"])
def model(request):
    model = request.param("eval")
    model.init(jax.ShapeDtypeStruct((2, 12), jnp.int32), jax.random.PRNGKey(3))
    return model


def test_greedy_samples_are_the_layer_wise_argmax(model):
    tokens = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=12, eos_id=99)
    assert tokens.shape == (2, 12) and tokens.dtype == np.int32
    # Each greedy token is the argmax of the whole-sequence model on the tokens before it.
    np.testing.assert_array_equal(np.argmax(model(jnp.asarray(tokens)), axis=-1), tokens)


def test_context_is_fed_before_sampling(model):
    context = np.array([[3, 4, 5], [6, 7, 2]], np.int32)
    tokens = decoding.autoregressive_sample(
        model, context=context, batch_size=2, temperature=0.0, max_length=6, eos_id=99
    )
    full = np.concatenate([context, tokens], axis=1)
    np.testing.assert_array_equal(np.argmax(model(jnp.asarray(full)), axis=-1)[:, 3:], tokens)


def test_temperature_sampling_is_reproducible_per_seed(model):
    def sample(seed):
        return decoding.autoregressive_sample(
            model, batch_size=2, temperature=1.0, max_length=20, eos_id=99, rng=jax.random.PRNGKey(seed)
        )

    np.testing.assert_array_equal(sample(0), sample(0))
    assert not np.array_equal(sample(0), sample(1))


def test_rows_stop_at_eos_and_the_output_is_cut_after_the_last():
    model = attention_lm("eval")
    weights, _ = model.init(jax.ShapeDtypeStruct((2, 12), jnp.int32), jax.random.PRNGKey(0))
    # Make token 1 (eos) likely for every position, and token 2 for row-dependent contexts.
    w, b = weights[3]
    weights = weights[:3] + ((w, b.at[1].set(5.0)),)
    tokens = decoding.autoregressive_sample(
        model, batch_size=2, temperature=0.0, max_length=10, eos_id=1, weights=weights
    )
    assert tokens.shape == (2, 1) and (tokens == 1).all()
    # eval_min_length forbids eos before that many tokens.
    tokens = decoding.autoregressive_sample(
        model,
        batch_size=2,
        temperature=0.0,
        max_length=10,
        eos_id=1,
        weights=weights,
        eval_mode=True,
        eval_min_length=3,
    )
    assert tokens.shape == (2, 4) and (tokens[:, :3] != 1).all() and (tokens[:, 3] == 1).all()


def test_the_decode_loop_compiles_once(model):
    decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=5, eos_id=99)
    before = decoding._decode._cache_size()
    for seed in range(3):
        decoding.autoregressive_sample(
            model, batch_size=2, temperature=0.5, max_length=5, eos_id=99, rng=jax.random.PRNGKey(seed)
        )
    assert decoding._decode._cache_size() == before + 1  # A new temperature, then no new compiles.


def test_stream_yields_the_greedy_tokens(model):
    expected = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=10, eos_id=99)
    stream = decoding.autoregressive_sample_stream(model, batch_size=2, temperature=0.0, chunk_length=4)
    np.testing.assert_array_equal(np.stack([next(stream) for _ in range(10)], axis=1), expected)


def test_encoder_decoder_decoding_feeds_the_target_path():
    from trax_sl import models

    model = models.Transformer(
        8,
        d_model=16,
        d_ff=16,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_heads=2,
        max_len=16,
        dropout=0.0,
        mode="eval",
    )
    source = np.array([[3, 4, 5, 6], [2, 2, 7, 1]], np.int32)
    model.init(
        (jax.ShapeDtypeStruct((2, 4), jnp.int32), jax.ShapeDtypeStruct((2, 6), jnp.int32)),
        jax.random.PRNGKey(2),
    )
    tokens = decoding.autoregressive_sample(
        model, inputs=source, batch_size=2, temperature=0.0, max_length=6, eos_id=99
    )
    # Trax's positional order: model, inputs, batch_size, temperature, start_id, eos_id, max_length.
    np.testing.assert_array_equal(decoding.autoregressive_sample(model, source, 2, 0.0, 0, 99, 6), tokens)
    logits = model((jnp.asarray(source), jnp.asarray(tokens)))[0]
    np.testing.assert_array_equal(np.argmax(logits, axis=-1), tokens)


def positional_lm(max_len=8):
    model = tl.Serial(
        tl.ShiftRight(mode="eval"),
        tl.Embedding(VOCAB, 16),
        tl.PositionalEncoding(max_len=max_len, mode="eval"),
        tl.CausalAttention(16, n_heads=2, max_inference_length=64, mode="eval"),
        tl.Dense(VOCAB),
    )
    model.init(jax.ShapeDtypeStruct((2, max_len), jnp.int32), jax.random.PRNGKey(1))
    return model


def test_a_prompt_and_max_length_past_the_cache_are_refused_before_compiling():
    model = positional_lm(max_len=8)
    before = decoding._decode._cache_size()
    with pytest.raises(ValueError) as caught:
        decoding.autoregressive_sample(model, max_length=12)
    assert str(caught.value).startswith(
        "autoregressive_sample: a prompt of 1 token(s) (start_id and the context) and max_length=12 "
        "need 12 positions, but the model's predict-mode stream holds 8 (PositionalEncoding max_len=8); "
        "pass max_length <= 8 or build the model with a larger cache"
    )
    with pytest.raises(ValueError, match=r"a prompt of 4 token\(s\) .* and max_length=6 need 9 positions"):
        decoding.autoregressive_sample(model, context=np.zeros((1, 3), np.int32), max_length=6)
    assert decoding._decode._cache_size() == before
    # The KV cache bounds the stream too, named by its own argument.
    with pytest.raises(ValueError, match=r"holds 64 \(DotProductCausalAttention max_inference_length=64\)"):
        decoding.autoregressive_sample(positional_lm(max_len=100), max_length=65)
    # Exactly full is fine, and equals the layer-wise greedy choice at every position.
    tokens = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=8, eos_id=99)
    assert tokens.shape == (2, 8) and np.isfinite(model(jnp.asarray(tokens))).all()
    np.testing.assert_array_equal(np.argmax(model(jnp.asarray(tokens)), axis=-1), tokens)


def test_a_stream_ends_at_the_cache_with_an_error_not_garbage():
    model = positional_lm(max_len=8)
    expected = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=8, eos_id=99)
    stream = decoding.autoregressive_sample_stream(model, batch_size=2, temperature=0.0, chunk_length=3)
    tokens = [next(stream) for _ in range(8)]
    np.testing.assert_array_equal(np.stack(tokens, axis=1), expected)
    with pytest.raises(
        ValueError, match=r"holds 8 positions \(PositionalEncoding max_len=8\) and all 8 tokens"
    ):
        next(stream)


# --- Beam search -----------------------------------------------------------------------------


def _sequence_log_probs(model, sequences):
    """log p(sequence) under the whole-sequence model (start_id 0 shifted in by the model)."""
    log_probs = jax.nn.log_softmax(model(jnp.asarray(sequences)), axis=-1)
    return np.take_along_axis(np.asarray(log_probs), sequences[..., None], axis=-1)[..., 0].sum(axis=-1)


def test_beam_search_with_every_beam_is_exhaustive_search(model):
    # VOCAB**2 beams hold every 3-token sequence's best extensions: the beams are the 4 best of all 512.
    beams = decoding.beam_search(model, batch_size=2, n_beams=VOCAB**2, max_length=3, eos_id=-1)
    every = np.stack(np.meshgrid(*[np.arange(VOCAB)] * 3, indexing="ij"), axis=-1).reshape((-1, 3))
    for row in range(2):
        scores = _sequence_log_probs(model, every)
        best = np.argsort(-scores, kind="stable")[:4]
        for (tokens, log_prob), index in zip(beams[:4], best):
            np.testing.assert_array_equal(tokens[row], every[index])
            np.testing.assert_allclose(log_prob[row], scores[index], rtol=1e-5)


def test_one_beam_is_greedy_decoding(model):
    ((tokens, log_prob),) = decoding.beam_search(model, batch_size=2, n_beams=1, max_length=6, eos_id=99)
    greedy = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=6, eos_id=99)
    np.testing.assert_array_equal(tokens, greedy)
    np.testing.assert_allclose(log_prob, _sequence_log_probs(model, greedy), rtol=1e-5)


def test_a_beam_ends_at_eos_and_keeps_its_score(model):
    # With eos the greedy first token, the best beam ends at once: eos-padded, scored by that token alone.
    eos = int(
        decoding.autoregressive_sample(model, batch_size=1, temperature=0.0, max_length=1, eos_id=99)[0, 0]
    )
    beams = decoding.beam_search(model, n_beams=3, max_length=4, eos_id=eos, length_penalty=0.0)
    tokens, log_prob = beams[0]
    np.testing.assert_array_equal(tokens, [[eos] * 4])
    np.testing.assert_allclose(log_prob, _sequence_log_probs(model, np.array([[eos]])), rtol=1e-5)
    assert all(eos not in t[0][:-1] or (t[0][list(t[0]).index(eos) :] == eos).all() for t, _ in beams)


def test_beam_search_of_an_encoder_decoder_repeats_the_inputs_per_beam():
    from trax_sl import models

    model = models.Transformer(
        8, d_model=16, d_ff=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, max_len=16, mode="eval"
    )
    source = np.array([[3, 4, 5, 6], [2, 2, 7, 1]], np.int32)
    model.init((jax.ShapeDtypeStruct((2, 4), jnp.int32),) * 2, jax.random.PRNGKey(2))
    beams = decoding.beam_search(model, source, batch_size=2, n_beams=3, max_length=4, eos_id=99)
    greedy = decoding.autoregressive_sample(model, source, 2, 0.0, 0, 99, 4)
    for tokens, log_prob in beams:  # Each beam's score is its tokens' log-probability given the source.
        np.testing.assert_allclose(log_prob, _sequence_log_probs_of(model, source, tokens), rtol=1e-5)
    assert (beams[0][1] >= _sequence_log_probs_of(model, source, greedy) - 1e-5).all()


def _sequence_log_probs_of(model, source, tokens):
    logits = model((jnp.asarray(source), jnp.asarray(tokens)))[0]
    log_probs = np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), tokens[..., None], axis=-1)
    return log_probs[..., 0].sum(axis=-1)
