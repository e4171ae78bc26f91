"""Transformer2: mirrors Trax's transformer2_test.py (train/eval; predict mode is refused)."""

import inspect

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import transformer2
from trax_sl.shapes import ShapeDtype

# Trax's test arrays: two rows of 2 and 3 real encoder vectors, 2 decoder vectors each.
VEC_E = np.array(
    [
        [[7, 5, 2, 8, 8, 8, 6, 7], [8, 2, 6, 2, 1, 1, 4, 2]] + [[0] * 8] * 4,
        [[4, 3, 1, 7, 5, 6, 2, 1], [6, 9, 9, 4, 1, 3, 2, 1], [3, 8, 2, 4, 7, 9, 4, 1]] + [[0] * 8] * 3,
    ]
)
MASK_E = VEC_E[:, :, 0] != 0
VEC_D = np.array(
    [
        [[4, 7, 7, 4, 8, 9, 9, 9], [6, 8, 2, 9, 3, 6, 6, 8]] + [[0] * 8] * 2,
        [[3, 7, 5, 6, 2, 9, 3, 1], [4, 7, 3, 2, 1, 1, 1, 6]] + [[0] * 8] * 2,
    ]
)
ZEROS = np.zeros((2, 8), VEC_E.dtype)
CONCATENATED = np.stack(
    [
        np.concatenate([VEC_E[0, :2], VEC_D[0], ZEROS, ZEROS]),
        np.concatenate([VEC_E[1, :3], VEC_D[1], ZEROS, ZEROS[:1]]),
    ]
)


def test_trax_signature_and_defaults():
    params = inspect.signature(transformer2.Transformer2).parameters
    assert list(params)[:3] == ["input_vocab_size", "output_vocab_size", "d_model"]
    assert {k: p.default for k, p in params.items() if k != "input_vocab_size"} == {
        "output_vocab_size": None,
        "d_model": 512,
        "d_ff": 2048,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
        "n_heads": 8,
        "dropout": 0.1,
        "dropout_shared_axes": None,
        "max_len": 2048,
        "mode": "train",
        "ff_activation": tl.Relu,
        "ff_dropout": 0.1,
        "ff_chunk_size": 0,
        "ff_use_sru": 0,
        "ff_sparsity": 0,
        "ff_sparsity_type": "1inN",
        "attention_chunk_size": 0,
        "encoder_attention_type": tl.Attention,
        "n_encoder_attention_layers": 1,
        "decoder_attention_type": tl.CausalAttention,
        "n_decoder_attention_layers": 2,
        "pos_type": None,
        "pos_axial_shape": None,
        "pos_d_axial_embs": None,
    }


def test_concat_with_padding():  # Trax: test_concat_with_padding.
    layer = transformer2.ConcatWithPadding(mode="train")
    y, tok_e, tok_d = layer((VEC_E, VEC_D, MASK_E, VEC_E, VEC_D))
    np.testing.assert_array_equal(y, CONCATENATED)
    np.testing.assert_array_equal(tok_d, VEC_D)
    # Reversing gives the inputs back, the encoder vectors masked (here: unchanged).
    tok_e, tok_d = VEC_E[:, :, 0], VEC_D[:, :, 0]
    back = layer.reverse((y, tok_e, tok_d))
    for got, want in zip(back, (VEC_E, VEC_D, MASK_E, tok_e, tok_d)):
        np.testing.assert_array_equal(got, want)


def test_concat_with_padding2():  # Trax: test_concat_with_padding2.
    y1, y2, _, _ = transformer2.ConcatWithPadding2(mode="train")((VEC_E, VEC_E, VEC_D, MASK_E, VEC_E, VEC_D))
    np.testing.assert_array_equal(y1, CONCATENATED)
    np.testing.assert_array_equal(y2, CONCATENATED)


def test_strip_from_concatenate_with_padding():  # Trax: test_strip_from_concatenate_with_padding.
    enc_dec = CONCATENATED.copy()
    enc_dec[1, 5] = enc_dec[1, 4]  # A third decoder vector in row 1, as in Trax's test.
    tok_e = np.array([[7, 8, 0, 0, 0, 0], [4, 6, 3, 0, 0, 0]])
    tok_d = np.array([[4, 6, 0, 0], [3, 4, 1, 0]])
    y = transformer2.StripFromConcatenateWithPadding(mode="train")((enc_dec, tok_e, tok_d))
    expected = VEC_D.copy()
    expected[1, 2] = VEC_D[1, 1]
    np.testing.assert_array_equal(y, expected)


@pytest.mark.parametrize(
    "make",
    [
        lambda: transformer2.ConcatWithPadding(mode="predict"),
        lambda: transformer2.StripFromConcatenateWithPadding(mode="predict"),
        lambda: transformer2.Transformer2(16, mode="predict"),
    ],
)
def test_predict_mode_is_refused(make):  # Trax's *_predict tests: its predict mode changes the output length.
    with pytest.raises(ValueError, match="mode='predict' is not supported"):
        make()


def test_transformer_noencdec_forward_shape_and_causality():  # Trax: test_transformer_noencdec_forward_shape.
    vocab_size = 16
    model = transformer2.Transformer2(
        vocab_size,
        vocab_size,
        d_model=8,
        d_ff=16,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_heads=2,
        mode="eval",
    )
    enc_toks = np.array([[6, 2, 0, 0, 0, 0], [6, 3, 7, 0, 0, 0]], np.int32)
    dec_toks = np.array([[4, 2, 0, 0], [8, 5, 0, 0]], np.int32)
    model.init((ShapeDtype(enc_toks.shape, np.int32), ShapeDtype(dec_toks.shape, np.int32)))
    logits, toks = model((enc_toks, dec_toks), rng=jax.random.PRNGKey(0))
    assert logits.shape == (2, 4, vocab_size)
    np.testing.assert_array_equal(toks, dec_toks)
    # Target step t sees target tokens < t only, and no padding past the source's real tokens.
    changed_dec = dec_toks.copy()
    changed_dec[:, 1] = [9, 9]
    changed_enc = enc_toks.copy()
    changed_enc[0, 4] = 0  # Padding stays padding: nothing changes.
    logits2, _ = model((changed_enc, changed_dec), rng=jax.random.PRNGKey(0))
    np.testing.assert_allclose(logits2[:, :2], logits[:, :2], atol=1e-5)
    assert not np.allclose(logits2[:, 2], logits[:, 2])
    # The source matters.
    changed_enc[1, 0] = 1
    logits3, _ = model((changed_enc, dec_toks), rng=jax.random.PRNGKey(0))
    assert not np.allclose(logits3[1, 0], logits[1, 0])


def test_weights_tree_has_trax_blocks():
    """Encoder blocks have one attention, decoder blocks n_decoder_attention_layers=2 causal ones."""
    model = transformer2.Transformer2(8, d_model=4, d_ff=8, n_encoder_layers=1, n_decoder_layers=1, n_heads=1)
    names = [layer.name for layer in model.sublayers]
    assert names == [
        "Select[0, 0, 1, 1]",
        "Branch",
        "Serial",
        "Select[2, 0, 2]",
        "EncoderMask",
        "Select[3, 1, 0, 2]",
        "ShiftRight_1",
        "Serial",
        "Select[1, 0]",
        "ConcatWithPadding",
        "Residual",  # Decoder block: two causal attentions ...
        "Residual",
        "Residual",  # ... and the feed-forward block.
        "LayerNorm",
        "Select[0, 1, 2, 2]",
        "StripFromConcatenateWithPadding",
        "Dense_8",
    ]
    encoder_blocks = [layer.name for layer in model.sublayers[2].sublayers[1:]]
    assert encoder_blocks == ["Residual", "Residual", "LayerNorm"]  # One attention, one feed-forward.


def test_sparse_feed_forward_is_trax_sparse_ff():
    model = transformer2.Transformer2(
        8, ff_sparsity=4, d_model=8, d_ff=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1
    )
    assert "BatchLeadingAxes" in repr(model)  # SparseFF, as Trax builds it
