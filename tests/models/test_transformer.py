"""Transformer models: Trax's signatures and weights, streaming decoders, the contract."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import base, test_utils
from trax_sl.shapes import ShapeDtype
from trax_sl.supervised import decoding

SMALL = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}


def n_weights(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in jax.tree.leaves(weights))


def defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def tokens(shape, seed=0, low=1, high=8):
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32))


def shift_right(x):
    """What Trax's decoding loop feeds a predict-mode model (its ShiftRight is a no-op): 0, then each previous token."""
    return jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]


def step_one_at_a_time(model, weights, items, streamed):
    """Runs model's predict twin on `items`, streamed ones one step at a time; outputs joined on time."""
    predict = model.with_mode("predict")
    first = tuple(x[:, :1] if s else x for x, s in zip(items, streamed))
    _, state = tl.start_stream(model, base.as_signature(first if len(items) > 1 else first[0]), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    outputs = []
    for t in range(next(x for x, s in zip(items, streamed) if s).shape[1]):
        block = tuple(x[:, t : t + 1] if s else x for x, s in zip(items, streamed))
        y, state = step(block if len(items) > 1 else block[0], state)
        outputs.append(y)
    if isinstance(outputs[0], tuple):
        return tuple(jnp.concatenate([o[i] for o in outputs], axis=1) for i in range(len(outputs[0])))
    return jnp.concatenate(outputs, axis=1)


# --- Signatures -------------------------------------------------------------------------


def test_trax_signatures_and_defaults():
    common = {
        "d_model": 512,
        "d_ff": 2048,
        "n_heads": 8,
        "max_len": 2048,
        "dropout": 0.1,
        "dropout_shared_axes": None,
        "mode": "train",
        "ff_activation": tl.Relu,
        "remat": "none",  # Ours, after Trax's arguments: rematerialisation is off, as in Trax.
        "scan_layers": True,  # Ours: the blocks are one Repeat (scan_layers=False: Trax's layout).
    }
    assert defaults(models.TransformerLM) == {**common, "n_layers": 6}
    assert defaults(models.TransformerEncoder) == {**common, "n_classes": 10, "n_layers": 6}
    assert defaults(models.TransformerDecoder) == {**common, "vocab_size": None, "n_layers": 6}
    assert defaults(models.Transformer) == {
        **common,
        "output_vocab_size": None,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
    }
    assert list(inspect.signature(models.Transformer).parameters)[:2] == [
        "input_vocab_size",
        "output_vocab_size",
    ]


def test_d_model_must_split_into_heads():
    with pytest.raises(ValueError, match="d_model must be a multiple of n_heads, got d_model=10, n_heads=4"):
        models.TransformerLM(8, d_model=10, n_heads=4)


# --- TransformerLM ------------------------------------------------------------------------


def test_lm_weights_are_trax_s_without_scan_layers():
    model = models.TransformerLM(8, n_layers=2, scan_layers=False, **SMALL)
    weights, _ = model.weights_and_state_signature(ShapeDtype((2, 5), jnp.int32))
    d, d_ff, vocab, max_len = 8, 16, 8, 16
    per_layer = 2 * d + 4 * (d * d + d) + 2 * d + (d * d_ff + d_ff + d_ff * d + d)
    assert n_weights(weights) == vocab * d + max_len * d + 2 * per_layer + 2 * d + d * vocab + vocab == 1480
    # Serial(ShiftRight, Embedding, Dropout, PositionalEncoding, 4 Residuals, LayerNorm, Dense).
    assert len(weights) == 10
    assert weights[1].shape == (8, 8) and weights[3].shape == (16, 8)
    assert [w.shape for w in weights[9]] == [(8, 8), (8,)]
    # The attention's q, k, v and output Dense layers.
    attention = weights[4][0][1][1][1]
    assert [w[0][0].shape for w in attention[0][1]] == [(8, 8)] * 3 and attention[3][0].shape == (8, 8)


def test_lm_scanned_blocks_stack_trax_s_block_weights():
    signature = ShapeDtype((2, 5), jnp.int32)
    unrolled, _ = models.TransformerLM(8, n_layers=3, scan_layers=False, **SMALL).weights_and_state_signature(
        signature
    )
    scanned, _ = models.TransformerLM(8, n_layers=3, **SMALL).weights_and_state_signature(signature)
    # Serial(ShiftRight, Embedding, Dropout, PositionalEncoding, Repeat(Serial(2 Residuals)), LayerNorm, Dense).
    assert len(scanned) == 7 and len(unrolled) == 12
    assert scanned[:4] == unrolled[:4] and scanned[5:] == unrolled[10:]
    # Each weight of the block, with a leading axis of the 3 blocks.
    for stacked, *per_block in zip(
        jax.tree.leaves(scanned[4]), *(jax.tree.leaves(unrolled[4 + 2 * i : 6 + 2 * i]) for i in range(3))
    ):
        assert stacked.shape == (3, *per_block[0].shape) and all(b == per_block[0] for b in per_block)
    assert n_weights(scanned) == n_weights(unrolled)


def test_lm_compiles_one_block_whatever_the_depth():
    x = tokens((2, 6))

    def n_equations(n_layers):
        model = models.TransformerLM(8, n_layers=n_layers, mode="eval", **SMALL)
        weights, state = model.init(ShapeDtype((2, 6), jnp.int32))
        return len(jax.make_jaxpr(lambda w: model.pure_fn(x, w, state, None))(weights).jaxpr.eqns)

    assert n_equations(1) == n_equations(6)


def test_lm_weights_tree_is_the_same_in_every_mode():
    signature = ShapeDtype((2, 1), jnp.int32)
    trees = [
        jax.tree.structure(
            models.TransformerLM(8, n_layers=1, mode=mode, **SMALL).weights_and_state_signature(signature)[0]
        )
        for mode in ("train", "eval", "predict")
    ]
    assert trees[0] == trees[1] == trees[2]


@pytest.mark.parametrize("scan_layers", [True, False])
def test_lm_stepped_one_token_at_a_time_equals_layer_wise(scan_layers):
    model = models.TransformerLM(8, n_layers=2, mode="eval", scan_layers=scan_layers, **SMALL)
    x = tokens((2, 10))
    weights, _ = model.init(ShapeDtype((2, 10), jnp.int32), jax.random.PRNGKey(1))
    y = model(x)
    y_step = step_one_at_a_time(model, weights, (shift_right(x),), (True,))
    assert y.shape == (2, 10, 8)
    np.testing.assert_allclose(y_step, y, atol=1e-5, rtol=1e-5)
    # Logits at step t do not depend on token t (the model predicts it).
    x2 = x.at[:, 4].set(7 - x[:, 4])
    np.testing.assert_array_equal(model(x2)[:, :5], y[:, :5])
    assert not np.allclose(model(x2)[:, 5], y[:, 5])


def test_lm_greedy_decoding_agrees_with_layer_wise_argmax():
    model = models.TransformerLM(8, n_layers=1, mode="eval", **SMALL)
    model.init(ShapeDtype((2, 8), jnp.int32), jax.random.PRNGKey(2))
    sampled = decoding.autoregressive_sample(model, batch_size=2, temperature=0.0, max_length=8, eos_id=99)
    np.testing.assert_array_equal(np.argmax(model(jnp.asarray(sampled)), axis=-1), sampled)


def test_lm_cache_holds_max_len_tokens_then_marks_outputs_invalid():
    model = models.TransformerLM(8, n_layers=1, d_model=8, d_ff=16, n_heads=2, max_len=4, mode="predict")
    block = seq.Sequence.from_values(tokens((1, 1)))
    weights, state = model.init(block)
    step = jax.jit(lambda x, s: model.pure_fn(x, weights, s, None))
    masks = []
    for t in range(6):
        y, state = step(seq.Sequence.from_values(tokens((1, 1), seed=t)), state)
        masks.append(bool(y.mask[0, 0]))
    assert masks == [True] * 4 + [False] * 2


@pytest.mark.parametrize("scan_layers", [True, False])
def test_lm_contract(scan_layers):
    test_utils.verify_contract(
        lambda mode: models.TransformerLM(8, n_layers=2, mode=mode, scan_layers=scan_layers, **SMALL),
        ShapeDtype((2, 8), jnp.int32),
    )


def test_decoder_contract_on_vectors():
    test_utils.verify_contract(
        lambda mode: models.TransformerDecoder(None, n_layers=1, mode=mode, **SMALL),
        ShapeDtype((2, 8, 8)),
        check_gradients=False,  # The same blocks as TransformerLM's, whose gradients are checked.
    )


# --- TransformerEncoder -----------------------------------------------------------------


def test_encoder_classifies_and_does_not_stream():
    model = models.TransformerEncoder(8, n_classes=3, n_layers=1, mode="eval", **SMALL)
    x = tokens((2, 6))
    model.init(ShapeDtype((2, 6), jnp.int32))
    assert model(x).shape == (2, 3)
    assert not model.supports_step
    # A Sequence's padding (garbage past the lengths) is ignored: the same as the valid prefix.
    padded = seq.Sequence.from_lengths(jnp.concatenate([x[:, :4], tokens((2, 2), seed=5)], axis=1), [4, 4])
    np.testing.assert_allclose(model(padded), model(x[:, :4]), atol=1e-6)
    predict = model.with_mode("predict")
    weights, state = predict.init(ShapeDtype((2, 1), jnp.int32))
    with pytest.raises(tl.LayerError, match="does not stream"):
        predict.pure_fn(x[:, :1], weights, state, None)


# --- Transformer (encoder-decoder) ---------------------------------------------------------


def test_transformer_shares_the_embedding_without_output_vocab():
    signature = (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32))
    shared = models.Transformer(8, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights, _ = shared.weights_and_state_signature(signature)
    assert weights[5] is tl.SHARED and weights[2][0][0].shape == (8, 8)
    separate = models.Transformer(8, 6, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights_separate, _ = separate.weights_and_state_signature(signature)
    assert weights_separate[5].shape == (6, 8) and weights_separate[-1][0].shape == (8, 6)
    assert n_weights(weights_separate) == n_weights(weights) + 6 * 8 - 2 * 8 - 2


def test_transformer_outputs_logits_and_targets():
    model = models.Transformer(8, n_encoder_layers=1, n_decoder_layers=1, mode="eval", **SMALL)
    source, target = tokens((2, 5)), tokens((2, 4), seed=1)
    model.init((ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32)))
    logits, targets = model((source, target))
    assert logits.shape == (2, 4, 8)
    np.testing.assert_array_equal(targets, target)
    # The source matters; padding it (token 0) is not the same as leaving it out.
    other_logits, _ = model((source.at[:, 0].set(7 - source[:, 0]), target))
    assert not np.allclose(other_logits, logits)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_transformer_decoder_steps_with_the_source_cached(scan_layers):
    model = models.Transformer(
        8, n_encoder_layers=2, n_decoder_layers=2, mode="eval", scan_layers=scan_layers, **SMALL
    )
    source, target = tokens((2, 5)), tokens((2, 7), seed=1)
    weights, _ = model.init(
        (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 7), jnp.int32)), jax.random.PRNGKey(4)
    )
    logits, _ = model((source, target))
    logits_step, targets_step = step_one_at_a_time(
        model, weights, (source, shift_right(target)), (False, True)
    )
    np.testing.assert_allclose(logits_step, logits, atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(targets_step, shift_right(target))  # What was fed, as in Trax.

    # The source is encoded on the first step only (and its keys and values cached):
    # after it, a different source changes nothing.
    predict = model.with_mode("predict")
    _, state = tl.start_stream(model, (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 1), jnp.int32)), weights)
    step = jax.jit(lambda x, s: predict.pure_fn(x, weights, s, None))
    _, state = step((source, jnp.zeros_like(target[:, :1])), state)
    y1, _ = step((tokens((2, 5), seed=9), target[:, :1]), state)
    np.testing.assert_allclose(y1[0], logits[:, 1:2], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_transformer_contract_with_a_padded_source(scan_layers):
    source = seq.Sequence(ShapeDtype((2, 6), jnp.int32), ShapeDtype((2, 6), jnp.bool_))
    test_utils.verify_contract(
        lambda mode: models.Transformer(
            8, n_encoder_layers=2, n_decoder_layers=2, mode=mode, scan_layers=scan_layers, **SMALL
        ),
        (source, ShapeDtype((2, 8), jnp.int32)),
        streamed=(False, True),
        # The decoder blocks' layers are gradient-checked on their own; the step loop's
        # backward pass through the whole model takes XLA half a minute to compile on CPU.
        check_gradients=False,
    )


def test_encode_once_is_the_encoder_layer_wise():
    encoder = tl.Serial(tl.Dense(4), tl.Relu())
    wrapped = models.transformer.EncodeOnce(encoder)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 5)).astype(np.float32))
    weights, _ = wrapped.init(ShapeDtype((2, 3, 5)))
    np.testing.assert_array_equal(wrapped(x), encoder(x, weights=weights[0]))


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("remat", ["full", "dots_saveable", "minimal"])
def test_remat_keeps_the_weights_tree_and_gradients_and_checkpoints_every_block(remat, scan_layers):
    from tests.layers.test_repeat import checkpoint_policies_in

    x = jax.random.randint(jax.random.PRNGKey(0), (2, 8), 1, 32)
    signature = (ShapeDtype((2, 8), jnp.int32),) * 2

    def with_loss(remat):
        lm = models.TransformerLM(
            32,
            d_model=16,
            d_ff=32,
            n_layers=2,
            n_heads=2,
            max_len=16,
            dropout=0.0,
            remat=remat,
            scan_layers=scan_layers,
        )
        return tl.Serial(lm, tl.CategoryCrossEntropy())

    plain, rematerialised = with_loss("none"), with_loss(remat)
    weights, state = plain.init(signature)
    assert jax.tree.structure(rematerialised.init(signature)[0]) == jax.tree.structure(weights)

    def grad(model):
        return jax.grad(lambda w: model.pure_fn((x, x), w, state, None)[0])

    for a, b in zip(jax.tree.leaves(grad(rematerialised)(weights)), jax.tree.leaves(grad(plain)(weights))):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # Scanned: the one block body is the rematerialised region. Else two blocks of two residual
    # layers (attention, feed-forward), each its own region.
    policies = checkpoint_policies_in(grad(rematerialised), weights)
    assert len(policies) == (1 if scan_layers else 4) and len(set(policies)) == 1
    assert checkpoint_policies_in(grad(plain), weights) == []


def test_remat_names_the_policies():
    with pytest.raises(
        ValueError, match=r"remat must be 'none' or one of \['dots_saveable', 'full', 'minimal'\]"
    ):
        models.TransformerLM(32, n_layers=1, remat="all")
