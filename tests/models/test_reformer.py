"""Reformer models: Trax's signatures and layer trees, reversible blocks, causality, streaming.

Mirrors trax/models/reformer/reformer_test.py: test_reformer_lm_forward_shape
(as Trax's) and test_reformer_lm_lsh (at a tiny size; Trax's runs 65536
tokens with d_model 256, a memory test). reformer_e2e_test.py (training
from gin configs on WMT data) is not mirrored.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import shapes
from trax_sl.layers import test_utils
from trax_sl.models import reformer
from trax_sl.shapes import ShapeDtype

TINY = {"d_model": 8, "d_ff": 16, "d_attention_key": 4, "d_attention_value": 4, "n_heads": 2, "max_len": 16}


def defaults(fn) -> dict:
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def tokens(shape, seed=0, low=1, high=8):
    return jnp.asarray(np.random.default_rng(seed).integers(low, high, size=shape).astype(np.int32))


# --- Signatures ---------------------------------------------------------------------------


def test_trax_signatures_and_defaults():
    lm = {
        "d_model": 512,
        "d_ff": 2048,
        "d_attention_key": 64,
        "d_attention_value": 64,
        "n_layers": 6,
        "n_heads": 8,
        "dropout": 0.1,
        "max_len": 2048,
        "attention_type": tl.SelfAttention,
        "pos_type": None,
        "pos_axial_shape": (),
        "pos_d_axial_embs": None,
        "ff_activation": tl.FastGelu,
        "ff_use_sru": 0,
        "ff_chunk_size": 0,
        "ff_sparsity": 0,
        "attention_chunk_size": 0,
        "mode": "train",
    }
    assert defaults(reformer.ReformerLM) == {
        **lm,
        "pos_start_from_zero_prob": 1.0,
        "pos_max_offset_to_add": 0,
        "loss_sparsity_type": "mult",
        "loss_sparsity": 0,
        "loss_d_lowrank": 0,
        "loss_sparsity_prob": None,
    }
    assert defaults(reformer.ReformerShortenLM) == {**lm, "shorten_factor": 1, "d_embedding": 256}
    assert list(inspect.signature(reformer.ReformerShortenLM).parameters)[:4] == [
        "vocab_size",
        "shorten_factor",
        "d_embedding",
        "d_model",
    ]
    assert defaults(reformer.Reformer) == {
        "output_vocab_size": None,
        "d_model": 512,
        "d_ff": 2048,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
        "n_heads": 8,
        "dropout": 0.1,
        "max_len": 2048,
        "ff_activation": tl.Relu,
        "ff_dropout": None,
        "mode": "train",
        "pos_type": None,
        "pos_axial_shape": None,
        "pos_d_axial_embs": None,
        "ff_use_sru": 0,
        "ff_chunk_size": 0,
        "ff_sparsity": 0,
    }
    assert list(inspect.signature(reformer.DecoderBlock).parameters) == [
        "d_model",
        "d_ff",
        "d_attention_key",
        "d_attention_value",
        "n_heads",
        "attention_type",
        "dropout",
        "ff_activation",
        "ff_dropout",
        "ff_use_sru",
        "ff_chunk_size",
        "ff_sparsity",
        "attention_chunk_size",
        "n_attention_layers",
        "n_feedforward_layers",
        "center_layernorm",
        "use_bfloat16",
        "mode",
    ]
    assert defaults(reformer.EncoderBlock) == {
        "ff_use_sru": 0,
        "ff_chunk_size": 0,
        "ff_sparsity": 0,
        "attention_chunk_size": 0,
        "center_layernorm": True,
        "use_bfloat16": False,
        "use_two_swaps_per_block": True,
        "mode": "train",
    }
    assert list(inspect.signature(reformer.EncoderDecoderBlock).parameters)[:7] == [
        "d_model",
        "d_ff",
        "n_heads",
        "dropout",
        "ff_activation",
        "ff_dropout",
        "mode",
    ]


# --- ReformerLM (Trax's tests) ------------------------------------------------------------


def test_reformer_lm_forward_shape():
    # Trax's test_reformer_lm_forward_shape: a second input passes through the model.
    model = reformer.ReformerLM(
        16, d_model=32, d_ff=64, d_attention_key=16, d_attention_value=16, n_layers=1, n_heads=2, max_len=16
    )
    xs = [np.ones((1, 8)).astype(np.int32), np.ones((1, 8)).astype(np.int32)]
    model.init(shapes.signature(xs))
    ys = model(xs)
    assert [y.shape for y in ys] == [(1, 8, 16), (1, 8)]


def test_reformer_lm_lsh():
    # Trax's test_reformer_lm_lsh at a tiny size: time-bin (chunked) and LSH attention in
    # turn, chunked feed-forward, a jitted training step through the reversible layers.
    lsh_self_attention = functools.partial(
        tl.LSHSelfAttention,
        attention_dropout=0.0,
        chunk_len=4,
        n_buckets=[2, 2],
        n_chunks_after=0,
        n_chunks_before=1,
        n_hashes=1,
        n_parallel_heads=None,  # Trax's 1 saves memory; all heads at once compile faster.
        predict_drop_len=8,
        predict_mem_len=16,
    )
    timebin_self_attention = functools.partial(
        tl.SelfAttention,
        attention_dropout=0.05,
        chunk_len=4,
        n_chunks_before=1,
        n_parallel_heads=None,
        use_reference_code=False,
    )
    model = reformer.ReformerLM(
        vocab_size=16,
        d_model=8,
        d_ff=16,
        d_attention_key=4,
        d_attention_value=4,
        n_layers=2,
        n_heads=2,
        dropout=0.05,
        max_len=64,
        attention_type=[timebin_self_attention, lsh_self_attention],
        pos_axial_shape=(4, 4),  # Ignored without pos_type, as in Trax: learned positions.
        pos_d_axial_embs=(2, 6),
        ff_activation=tl.Relu,
        ff_use_sru=0,
        ff_chunk_size=8,
        mode="train",
    )
    x = np.ones((1, 16)).astype(np.int32)

    @jax.jit
    def mock_training_step(x, weights, state, rng):
        def compute_mock_loss(weights):
            logits, new_state = model.pure_fn(x, weights, state, rng)
            return jnp.mean(logits[..., 0]), (new_state, logits)

        gradients, (new_state, logits) = jax.grad(compute_mock_loss, has_aux=True)(weights)
        new_weights = jax.tree.map(lambda w, g: w - 1e-4 * g, weights, gradients)
        return new_weights, new_state, logits, gradients

    weights, state = model.init(shapes.signature(x))
    new_weights, new_state, logits, gradients = mock_training_step(x, weights, state, jax.random.PRNGKey(0))
    assert logits.shape == (1, 16, 16)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(gradients))
    # The loss reads logit 0 only: the output Dense's column 0 moves, the others do not.
    w_out, new_w_out = weights[-1][0], new_weights[-1][0]
    assert not np.allclose(new_w_out[:, 0], w_out[:, 0])
    np.testing.assert_array_equal(new_w_out[:, 1:], w_out[:, 1:])
    # The layers alternate: SelfAttention in block 0, LSHSelfAttention (hashing key in its state) in block 1.
    attentions = [block.sublayers[1] for block in model.sublayers[5].sublayers[0::4]]
    assert [a.name for a in attentions] == ["SelfAttention", "LSHSelfAttention"]
    assert not np.array_equal(new_state[5][4][1], state[5][4][1])  # A fresh hashing key per call.


# --- ReformerLM: layer tree, causality, streaming -----------------------------------------


def test_lm_weights_are_trax_s_and_the_same_in_every_mode():
    model = reformer.ReformerLM(10, n_layers=2, **TINY)
    weights, _ = model.weights_and_state_signature(ShapeDtype((2, 8), jnp.int32))
    # Serial(ShiftRight, Embedding, Dropout, PositionalEncoding, Dup, ReversibleSerial,
    #        Concatenate, LayerNorm, Dropout, Dense); the Dense reads both halves.
    assert len(weights) == 10
    assert weights[1].shape == (10, 8) and weights[3].shape == (16, 8)
    assert [w.shape for w in weights[9]] == [(16, 10), (10,)]
    blocks = weights[5]
    assert len(blocks) == 8  # Per layer: attention half-residual, swap, feed-forward half-residual, swap.
    layer_norm, attention_weights = blocks[0]
    assert [w.shape for w in layer_norm[0]] == [(8,), (8,)]
    assert [w.shape for w in attention_weights] == [(2, 8, 4)] * 3 + [(2, 4, 8)]  # q, k, v, o per head.
    # LayerNorm, Dense(d_ff), Dropout, activation, Dense(d_model), Dropout.
    assert [jax.tree.map(lambda s: s.shape, w) for w in blocks[2][0]] == [
        ((8,), (8,)),
        ((8, 16), (16,)),
        (),
        (),
        ((16, 8), (8,)),
        (),
    ]
    trees = [
        jax.tree.structure(
            reformer.ReformerLM(
                10, n_layers=1, attention_type=tl.CausalAttention, mode=mode, **TINY
            ).weights_and_state_signature(ShapeDtype((2, 1), jnp.int32))[0]
        )
        for mode in ("train", "eval", "predict")
    ]
    assert trees[0] == trees[1] == trees[2]


def test_lm_eval_mode_with_the_default_attention_is_causal_and_does_not_stream():
    model = reformer.ReformerLM(8, n_layers=1, mode="eval", **TINY)
    x = tokens((2, 8))
    model.init(ShapeDtype((2, 8), jnp.int32), jax.random.PRNGKey(3))
    y = model(x)
    assert y.shape == (2, 8, 8) and np.isfinite(y).all()
    # Logits at step t predict token t: they do not depend on tokens >= t.
    x2 = x.at[:, 5].set(8 - x[:, 5])
    y2 = model(x2)
    np.testing.assert_allclose(y2[:, :6], y[:, :6], atol=1e-6)
    assert not np.allclose(y2[:, 6], y[:, 6])
    # Unchunked tl.SelfAttention sees the whole past, so it does not stream: the model says so.
    assert not model.supports_step
    with pytest.raises(tl.LayerError, match="does not stream"):
        model.with_mode("predict").weights_and_state_signature(ShapeDtype((2, 1), jnp.int32))


@pytest.mark.parametrize(
    "attention",
    [tl.CausalAttention, functools.partial(tl.SelfAttention, chunk_len=2, n_chunks_before=1)],
    ids=["causal", "chunked-self-attention"],
)
def test_lm_in_predict_mode_equals_eval(attention):
    # Trax's idiom (its transformer_test): token by token in predict mode, the eval-mode logits;
    # chunked SelfAttention streams past its first chunks (7 tokens: 4 chunks of 2).
    assert reformer.ReformerLM(8, n_layers=1, attention_type=attention, **TINY).supports_step
    test_utils.test_eval_equals_predict_discrete(
        lambda mode, vocab_size: reformer.ReformerLM(
            vocab_size, n_layers=2, attention_type=attention, mode=mode, **TINY
        ),
        vocab_size=8,
        length=7,
        batch_size=2,
    )


def test_lm_refuses_options_it_cannot_build():
    with pytest.raises(ValueError, match="n_layers must be a multiple of the number of attention types"):
        reformer.ReformerLM(8, n_layers=3, attention_type=[tl.SelfAttention, tl.LSHSelfAttention], **TINY)
    with pytest.raises(ValueError, match="ReformerShortenLM: pos_type='time-bin' needs a time_bin_length"):
        reformer.ReformerShortenLM(8, n_layers=1, pos_type="time-bin", **TINY)
    with pytest.raises(ValueError, match="needs pos_axial_shape and pos_d_axial_embs"):
        reformer.ReformerLM(8, n_layers=1, pos_type="axial", pos_axial_shape=(4, 4), **TINY)


def test_lm_options_build_trax_s_layers():
    model = reformer.ReformerLM(
        8,
        n_layers=1,
        pos_type="axial",
        pos_axial_shape=(4, 4),
        pos_d_axial_embs=(2, 6),
        ff_use_sru=(1, 4),
        ff_chunk_size=8,
        attention_chunk_size=1,
        **TINY,
    )
    weights, _ = model.weights_and_state_signature(ShapeDtype((2, 16), jnp.int32))
    assert [w.shape for w in weights[3]] == [(1, 4, 1, 2), (1, 1, 4, 6)]  # Axial positions.
    attention_half, _, ff_half, _ = model.sublayers[5].sublayers
    assert attention_half.sublayers[1].name == "Chunk"
    (sru_residual,) = ff_half.sublayers[0].sublayers
    # Residual(LayerNorm, Dense(4), SRU(4), Dense(d_model), shortcut=the chunked feed-forward).
    assert "SRU" in str(sru_residual) and "BatchLeadingAxes" in str(sru_residual)


# --- ReformerShortenLM ------------------------------------------------------------------


def test_shorten_lm_is_causal_across_groups():
    model = reformer.ReformerShortenLM(8, shorten_factor=2, d_embedding=4, n_layers=1, mode="eval", **TINY)
    x = tokens((1, 8), seed=2)
    model.init(ShapeDtype((1, 8), jnp.int32), jax.random.PRNGKey(5))
    y = model(x)
    assert y.shape == (1, 8, 8)
    # The extra shift keeps each group of two from seeing what it predicts: no logit
    # before t depends on token t (the group [t-1, t] alone would leak it to t-1).
    for t in (4, 5):
        y2 = model(x.at[:, t].set(8 - x[:, t]))
        np.testing.assert_allclose(y2[:, : t + 1], y[:, : t + 1], atol=1e-6)
        assert not np.allclose(y2[:, t + 1 :], y[:, t + 1 :])
    with pytest.raises(tl.LayerError, match="multiple of shorten_factor=2"):
        model(x[:, :7])
    with pytest.raises(ValueError, match="mode='predict' is not supported"):
        reformer.ReformerShortenLM(8, shorten_factor=2, mode="predict")


# --- Reformer (encoder-decoder) -------------------------------------------------------------


def test_reformer_outputs_logits_and_targets_and_shares_the_embedding():
    small = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}
    model = reformer.Reformer(8, n_encoder_layers=1, n_decoder_layers=1, mode="eval", **small)
    source, target = tokens((2, 6)), tokens((2, 5), seed=1)
    signature = (ShapeDtype((2, 6), jnp.int32), ShapeDtype((2, 5), jnp.int32))
    weights, _ = model.init(signature, jax.random.PRNGKey(2))
    logits, targets = model((source, target))
    assert logits.shape == (2, 5, 8)
    np.testing.assert_array_equal(targets, target)
    # The source matters; its padding (token 0) is masked: a padded source gives what the
    # source without the padding gives.
    changed, _ = model((source.at[:, 0].set(8 - source[:, 0]), target))
    assert not np.allclose(changed, logits)
    padded, _ = model((source.at[:, 4:].set(0), target))
    np.testing.assert_allclose(padded, model((source[:, :4], target))[0], atol=1e-5)
    # Shared embedding: the decoder's Embedding and Dropout are the encoder's.
    # Serial(Select, Branch, EncodeOnce, Select, ShiftRight, out_encoder, Dup, ReversibleSerial,
    #        XYAvg, LayerNorm, Select, Dense).
    assert len(weights) == 12
    assert weights[5][0] is tl.SHARED and weights[2][0][0][0].shape == (8, 8)
    separate = reformer.Reformer(8, 6, n_encoder_layers=1, n_decoder_layers=1, **small)
    weights_separate, _ = separate.weights_and_state_signature(signature)
    assert weights_separate[5][0].shape == (6, 8) and weights_separate[-1][0].shape == (8, 6)
    assert not separate.supports_step  # The decoder's efficient attention does not stream here.


def test_encoder_block_masks_padding_for_efficient_and_standard_attention():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 8)).astype(np.float32))
    mask = jnp.asarray([[True, True, True, False]])
    for attention_type in (tl.SelfAttention, tl.Attention):
        block = tl.Serial(
            tl.Dup(),
            tl.ReversibleSerial(
                reformer.EncoderBlock(8, 16, 2, attention_type, 0.0, tl.Relu, 0.0, mode="eval")
            ),
            tl.Select([0], n_in=3),
        )
        block.init((ShapeDtype((1, 4, 8)), ShapeDtype((1, 4), jnp.bool_)), jax.random.PRNGKey(0))
        y = block((x, mask))
        y2 = block((x.at[:, 3].set(5.0), mask))
        np.testing.assert_allclose(y2[:, :3], y[:, :3], atol=1e-6)
        assert not np.allclose(y2[:, 3], y[:, 3])


def test_lm_with_sparse_feed_forward_and_output_layers():
    """Trax's sparse options: SparseFF blocks, and FactoredDense over the 2 * d_model features for the logits."""
    model = reformer.ReformerLM(
        8, n_layers=1, loss_sparsity=4, ff_sparsity=4, attention_type=tl.CausalAttention, mode="eval", **TINY
    )
    weights, _ = model.init(ShapeDtype((2, 8), np.int32))
    assert [w.shape for w in jax.tree.leaves(weights[-1])] == [
        (4, 16),
        (16, 2),
        (8,),
    ]  # FactoredDense(4, 16, 8)
    assert model(tokens((2, 8))).shape == (2, 8, 8)
