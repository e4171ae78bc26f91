"""Recurrent language models: Trax's signatures, exact values, streaming one token at a time."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def np_lstm_cell(x, state, w, b):
    """Trax's LSTMCell: gates i, j, f, o on [x, h]; state is [c, h]."""
    c, h = np.split(state, 2, axis=-1)
    i, j, f, o = np.split(np.concatenate([x, h], axis=-1) @ w + b, 4, axis=-1)
    new_c = c * sigmoid(f) + sigmoid(i) * np.tanh(j)
    new_h = np.tanh(new_c) * sigmoid(o)
    return new_h, np.concatenate([new_c, new_h], axis=-1)


def tokens(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 8, size=shape).astype(np.int32))


def test_trax_signatures_and_defaults():
    params = inspect.signature(models.RNNLM).parameters
    assert {k: p.default for k, p in params.items()} == {
        "vocab_size": inspect.Parameter.empty,
        "d_model": 512,
        "n_layers": 2,
        "rnn_cell": tl.LSTMCell,
        "rnn_cell_d_state_multiplier": 2,
        "dropout": 0.1,
        "mode": "train",
    }
    params = inspect.signature(models.GRULM).parameters
    assert {k: p.default for k, p in params.items()} == {
        "vocab_size": 256,
        "d_model": 512,
        "n_layers": 1,
        "mode": "train",
    }


def test_rnnlm_is_a_two_layer_lstm_over_shifted_embeddings():
    d, vocab = 4, 8
    model = models.RNNLM(vocab, d_model=d, mode="eval")
    x = tokens((2, 5))
    weights, _ = model.init(ShapeDtype((2, 5), jnp.int32), jax.random.PRNGKey(0))
    # Trax's tree: Serial(ShiftRight, Embedding, Dropout, Branch, Scan((MultiRNNCell,)), Select, Dense).
    embedding, cells, (w_out, b_out) = weights[1], weights[4][0][1], weights[6]
    (w1, b1), (w2, b2) = cells[0], cells[2]
    assert embedding.shape == (vocab, d) and w1.shape == w2.shape == (2 * d, 4 * d) and b1.shape == (4 * d,)
    assert w_out.shape == (d, vocab)

    f64 = [np.asarray(a, np.float64) for a in (embedding, w1, b1, w2, b2, w_out, b_out)]
    embedding, w1, b1, w2, b2, w_out, b_out = f64
    shifted = np.concatenate([np.zeros((2, 1), np.int32), np.asarray(x)[:, :-1]], axis=1)
    s1, s2 = np.zeros((2, 2 * d)), np.zeros((2, 2 * d))
    expected = []
    for t in range(5):
        h1, s1 = np_lstm_cell(embedding[shifted[:, t]], s1, w1, b1)
        h2, s2 = np_lstm_cell(h1, s2, w2, b2)
        expected.append(h2 @ w_out + b_out)
    np.testing.assert_allclose(model(x), np.stack(expected, axis=1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_layers", [1, 3])
def test_rnnlm_takes_any_number_of_layers(n_layers):
    model = models.RNNLM(8, d_model=4, n_layers=n_layers, mode="eval")
    weights, _ = model.init(ShapeDtype((2, 3), jnp.int32))
    assert len(weights[4][0][1]) == 2 * n_layers  # A cell and a Select per layer.
    assert model(tokens((2, 3))).shape == (2, 3, 8)


def test_rnnlm_rejects_bad_sizes():
    with pytest.raises(ValueError, match="RNNLM: n_layers must be an integer >= 1, got n_layers=0"):
        models.RNNLM(8, n_layers=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda mode: models.RNNLM(8, d_model=8, mode=mode),
        lambda mode: models.RNNLM(
            8, d_model=8, n_layers=1, rnn_cell=tl.GRUCell, rnn_cell_d_state_multiplier=1, mode=mode
        ),
        lambda mode: models.GRULM(8, d_model=8, n_layers=2, mode=mode),
    ],
    ids=["lstm", "gru-cell", "grulm"],
)
def test_stepped_one_token_at_a_time_equals_layer_wise(make):
    model = make("eval")
    x = tokens((2, 7), seed=1)
    weights, _ = model.init(ShapeDtype((2, 7), jnp.int32), jax.random.PRNGKey(1))
    y = model(x)
    predict = model.with_mode("predict")
    _, state = tl.start_stream(model, ShapeDtype((2, 1), jnp.int32), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    outputs = []
    shifted = jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]  # As in Trax: 0, then each previous token.
    for t in range(7):
        y_t, state = step(shifted[:, t : t + 1], state)
        outputs.append(y_t)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), y, atol=1e-5, rtol=1e-5)


def test_rnnlm_contract():
    test_utils.verify_contract(
        lambda mode: models.RNNLM(8, d_model=8, mode=mode), ShapeDtype((2, 8), jnp.int32)
    )


def test_grulm_contract():
    test_utils.verify_contract(
        lambda mode: models.GRULM(8, d_model=8, mode=mode), ShapeDtype((2, 8), jnp.int32)
    )


def test_padding_does_not_advance_the_carry():
    model = models.RNNLM(8, d_model=4, mode="eval")
    x = tokens((1, 6), seed=2)
    model.init(ShapeDtype((1, 6), jnp.int32))
    padded = seq.Sequence.from_lengths(x, [4])
    np.testing.assert_allclose(model(padded).values[:, :4], model(x[:, :4]), atol=1e-6)
