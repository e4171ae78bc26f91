"""ReZero Transformer models: Trax's rezero_test cases, exact values, streaming, the contract."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.layers import base, test_utils
from trax_sl.models import rezero, transformer
from trax_sl.shapes import ShapeDtype

SMALL = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}


def tokens(shape, seed=0, low=1, high=8):
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32))


def n_weights(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in jax.tree.leaves(weights))


def set_alphas(weights, value=0.5):
    """The weights with every ReZero alpha (the only scalar weights) set to `value`."""
    return jax.tree.map(lambda w: jnp.full_like(w, value) if w.ndim == 0 else w, weights)


class WithAlphas(base.WrapsOneLayer):
    """`model`, initialised with alphas 0.5 instead of 0, so that its blocks count in the contract."""

    def __init__(self, model):
        super().__init__(n_in=model.n_in, n_out=model.n_out, name="WithAlphas")
        self._sublayers = (model,)

    def init_with_output_signature(self, input_signature, rng):
        (weights,), state, out = super().init_with_output_signature(input_signature, rng)
        return (set_alphas(weights),), state, out

    def forward(self, x, weights, state, rng):
        y, new_state = base.call_sublayer(0, self.sublayer, x, weights[0], state[0], rng)
        return y, (new_state,)


def shifted(x):
    """What a decoding loop feeds a predict-mode LM (ShiftRight is Trax's no-op there): 0, then each previous token."""
    return jnp.concatenate([jnp.zeros_like(x[:, :1]), x[:, :-1]], axis=1)


def step_one_at_a_time(model, weights, x):
    """The predict twin of `model` fed x one step at a time; outputs joined on time."""
    predict, state = tl.start_stream(model, base.as_signature(x[:, :1]), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    outputs = []
    for t in range(x.shape[1]):
        y, state = step(x[:, t : t + 1], state)
        outputs.append(y)
    return jnp.concatenate(outputs, axis=1)


def test_trax_signatures_and_defaults():
    common = {
        "d_model": 512,
        "d_ff": 2048,
        "n_heads": 8,
        "dropout": 0.1,
        "dropout_shared_axes": None,
        "max_len": 2048,
        "mode": "train",
        "ff_activation": tl.Relu,
    }

    def signature(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    empty = inspect.Parameter.empty
    assert list(signature(rezero.ReZeroTransformerLM).items()) == [
        ("vocab_size", empty),
        ("d_model", 512),
        ("d_ff", 2048),
        ("n_layers", 6),
        ("n_heads", 8),
        ("dropout", 0.1),
        ("dropout_shared_axes", None),
        ("max_len", 2048),
        ("mode", "train"),
        ("ff_activation", tl.Relu),
    ]
    assert signature(rezero.ReZeroTransformerDecoder) == {"vocab_size": None, "n_layers": 6, **common}
    assert signature(rezero.ReZeroTransformerEncoder) == {
        "vocab_size": empty,
        "n_classes": 10,
        "n_layers": 6,
        **common,
    }
    assert list(signature(rezero.ReZeroTransformer))[:6] == [
        "input_vocab_size",
        "output_vocab_size",
        "d_model",
        "d_ff",
        "n_encoder_layers",
        "n_decoder_layers",
    ]
    assert signature(rezero.ReZeroTransformer) == {
        "input_vocab_size": empty,
        "output_vocab_size": None,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
        **common,
    }


# --- ResidualZero -----------------------------------------------------------------------


def test_residual_zero_starts_as_the_identity():
    """Trax's ResidualZeroTest.test_residual_layer_forward."""
    model = rezero.ResidualZero(tl.Dense(5))
    x = jnp.arange(5, dtype=jnp.float32)
    model.init(ShapeDtype((5,)))
    assert model(x).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_residual_zero_adds_alpha_times_the_layers():
    model = rezero.ResidualZero(tl.Dense(3), tl.Relu())
    weights, _ = model.init(ShapeDtype((2, 3)), jax.random.PRNGKey(0))
    # Serial(Branch(Serial(Select, Parallel(identity, Serial(Serial(Dense, Relu), Weights, Multiply)))), Add).
    branch = weights[0][1][1]
    (w, b), alpha = branch[0][0], branch[1]
    assert alpha.shape == () and alpha.dtype == jnp.float32 and float(alpha) == 0.0
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32))
    weights = set_alphas(weights, 0.25)
    expected = x + 0.25 * np.maximum(np.asarray(x) @ np.asarray(w) + np.asarray(b), 0.0)
    np.testing.assert_allclose(model(x, weights=weights), expected, atol=1e-6)


def test_residual_zero_with_a_shortcut():
    model = rezero.ResidualZero(tl.Dense(3), shortcut=tl.Fn("Double", lambda x: 2 * x))
    x = jnp.ones((2, 3))
    model.init(ShapeDtype((2, 3)))
    np.testing.assert_array_equal(model(x), 2 * x)


# --- ReZeroTransformerLM -------------------------------------------------------------------


def test_rezero_lm_forward_shape():
    """Trax's ReZeroTransformerLMTest: a second stack item passes through (shapes by abstract evaluation)."""
    model = rezero.ReZeroTransformerLM(16, d_model=32, d_ff=64, n_layers=2, n_heads=2, max_len=16)
    signature = (ShapeDtype((1, 8), jnp.int32), ShapeDtype((1, 8), jnp.int32))
    assert [y.shape for y in model.output_signature(signature)] == [(1, 8, 16), (1, 8)]


def test_lm_weights_are_the_transformer_lm_s_plus_one_alpha_per_residual():
    signature = ShapeDtype((2, 5), jnp.int32)
    weights, _ = rezero.ReZeroTransformerLM(8, n_layers=2, **SMALL).weights_and_state_signature(signature)
    plain, _ = transformer.TransformerLM(
        8, n_layers=2, scan_layers=False, **SMALL
    ).weights_and_state_signature(signature)
    assert n_weights(weights) == n_weights(plain) + 4
    assert (
        len(weights) == len(plain) == 10
    )  # ShiftRight, Embedding, Dropout, PositionalEncoding, 4 blocks, ...
    assert [jax.tree.structure(w) for w in weights[:4]] == [jax.tree.structure(w) for w in plain[:4]]


def test_fresh_lm_is_layer_norm_of_the_embeddings():
    """With alpha = 0 every block is the identity: logits = Dense(LayerNorm(embed(shift(x)) + positions))."""
    model = rezero.ReZeroTransformerLM(8, n_layers=2, mode="eval", **SMALL)
    x = tokens((2, 6))
    weights, _ = model.init(ShapeDtype((2, 6), jnp.int32), jax.random.PRNGKey(3))
    embedding, positions = np.asarray(weights[1]), np.asarray(weights[3])
    (scale, bias), (w, b) = weights[8], weights[9]
    shifted = np.concatenate([np.zeros((2, 1), np.int32), np.asarray(x)[:, :-1]], axis=1)
    h = embedding[shifted] + positions[None, :6]
    mean, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    h = (h - mean) / np.sqrt(var + 1e-6) * np.asarray(scale) + np.asarray(bias)
    np.testing.assert_allclose(model(x), h @ np.asarray(w) + np.asarray(b), atol=1e-5)
    # The blocks count once alpha moves.
    assert not np.allclose(model(x, weights=set_alphas(weights)), model(x), atol=1e-3)


@pytest.mark.parametrize("which", ["lm", "decoder"])
def test_stepped_one_token_at_a_time_equals_layer_wise(which):
    if which == "lm":
        model = rezero.ReZeroTransformerLM(8, n_layers=2, mode="eval", **SMALL)
        x = tokens((2, 9))
        fed = shifted(x)
    else:
        model = rezero.ReZeroTransformerDecoder(None, n_layers=2, mode="eval", **SMALL)
        x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 4)).astype(np.float32))
        fed = x
    weights, _ = model.init(base.as_signature(x), jax.random.PRNGKey(1))
    weights = set_alphas(weights)
    y = model(x, weights=weights)
    assert y.shape == (2, 9, 8)
    np.testing.assert_allclose(step_one_at_a_time(model, weights, fed), y, atol=1e-5, rtol=1e-5)
    # Causal: step t does not see the inputs after it.
    later = x.at[:, 5:].set(x[:, 5:] + 1)
    np.testing.assert_allclose(model(later, weights=weights)[:, :5], y[:, :5], atol=1e-6)


def test_lm_contract():
    test_utils.verify_contract(
        lambda mode: WithAlphas(rezero.ReZeroTransformerLM(8, n_layers=1, mode=mode, **SMALL)),
        ShapeDtype((2, 4), jnp.int32),
        # The blocks are TransformerLM's, whose contract (gradients, chunkings, resets) test_transformer
        # checks in full; here ResidualZero's alphas are what is new.
        check_gradients=False,
        chunkings=[[1], [3, 1]],
        check_reset=False,
    )


# --- ReZeroTransformerEncoder ----------------------------------------------------------------


def test_encoder_classifies_and_does_not_stream():
    model = rezero.ReZeroTransformerEncoder(8, n_classes=3, n_layers=1, mode="eval", **SMALL)
    weights, _ = model.init(ShapeDtype((2, 6), jnp.int32))
    # Trax's Branch(positional_encoder, PaddingMask()) first: the embedder sits inside the Branch.
    assert weights[0][1][0][0].shape == (8, 8)
    assert model(tokens((2, 6))).shape == (2, 3)
    assert not model.supports_step


# --- ReZeroTransformer (encoder-decoder) ----------------------------------------------------------


def test_rezero_forward_shape():
    """Trax's ReZeroTransformerTest (shapes by abstract evaluation)."""
    model = rezero.ReZeroTransformer(
        16, d_model=32, d_ff=64, n_encoder_layers=2, n_decoder_layers=2, n_heads=2, max_len=16
    )
    signature = (ShapeDtype((1, 8), jnp.int32), ShapeDtype((1, 8), jnp.int32))
    assert [y.shape for y in model.output_signature(signature)] == [(1, 8, 16), (1, 8)]


def test_transformer_shares_the_embedding_without_output_vocab():
    signature = (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32))
    shared = rezero.ReZeroTransformer(8, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights, _ = shared.weights_and_state_signature(signature)
    assert weights[5] is tl.SHARED and weights[6] is tl.SHARED  # Embedding and its Dropout, as in Trax.
    separate = rezero.ReZeroTransformer(8, 6, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights_separate, _ = separate.weights_and_state_signature(signature)
    assert weights_separate[5].shape == (6, 8) and weights_separate[-1][0].shape == (8, 6)
    # One alpha per residual: 2 per encoder block, 3 per encoder-decoder block.
    plain, _ = transformer.Transformer(8, 6, n_encoder_layers=1, n_decoder_layers=1, **SMALL).init(signature)
    assert n_weights(weights_separate) == n_weights(plain) + 5


def test_transformer_decoder_steps_with_the_source_cached():
    model = rezero.ReZeroTransformer(8, n_encoder_layers=1, n_decoder_layers=1, mode="eval", **SMALL)
    source, target = tokens((2, 5)), tokens((2, 6), seed=1)
    weights, _ = model.init(base.as_signature((source, target)), jax.random.PRNGKey(4))
    weights = set_alphas(weights)
    logits, targets = model((source, target), weights=weights)
    np.testing.assert_array_equal(targets, target)

    predict, state = tl.start_stream(model, base.as_signature((source, target[:, :1])), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    fed = shifted(target)
    outputs = []
    for t in range(6):
        (y, _), state = step((source, fed[:, t : t + 1]), state)
        outputs.append(y)
    np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), logits, atol=1e-5, rtol=1e-5)
