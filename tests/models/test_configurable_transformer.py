"""Configurable Transformers: Trax's configurable_transformer_test cases, weights, streaming, options.

Mirrors trax/models/research/configurable_transformer_test.py, including
test_sparse_configurable_transformer_fast_inference with Trax's sparsity layers
(MultiplicativeConvCausalAttention, SparseFF, FactoredDense).
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from tests.models.test_transformer import defaults, n_weights, step_one_at_a_time, tokens
from trax_sl.layers import test_utils
from trax_sl.models import configurable_transformer as ct
from trax_sl.models import transformer
from trax_sl.shapes import ShapeDtype

SMALL = {"d_model": 8, "d_ff": 16, "n_heads": 2, "max_len": 16}
IDS = ShapeDtype((2, 6), jnp.int32)


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
        "ff_dropout": 0.1,
        "ff_chunk_size": 0,
        "ff_use_sru": 0,
        "ff_sparsity": 0,
        "ff_sparsity_type": "1inN",
        "attention_chunk_size": 0,
        "pos_type": None,
        "pos_axial_shape": None,
        "pos_d_axial_embs": None,
    }
    loss = {"loss_sparsity_type": "mult", "loss_sparsity": 0, "loss_d_lowrank": 0, "loss_sparsity_prob": None}
    assert defaults(ct.ConfigurableTransformerEncoder) == {
        **common,
        "n_classes": 10,
        "n_layers": 6,
        "attention_type": tl.Attention,
    }
    assert defaults(ct.ConfigurableTransformerLM) == {
        **common,
        **loss,
        "n_layers": 6,
        "attention_type": tl.CausalAttention,
        "pos_start_from_zero_prob": 1.0,
        "pos_max_offset_to_add": 0,
    }
    assert defaults(ct.ConfigurableTransformer) == {
        **common,
        **loss,
        "output_vocab_size": None,
        "n_encoder_layers": 6,
        "n_decoder_layers": 6,
        "encoder_attention_type": tl.Attention,
        "encoder_decoder_attention_type": tl.CausalAttention,
        "enc_dec_attention_sparsity": 0,
    }
    block = [
        "d_model",
        "d_ff",
        "n_heads",
        "dropout",
        "dropout_shared_axes",
        "mode",
        "ff_activation",
        "ff_dropout",
        "ff_chunk_size",
        "ff_use_sru",
        "ff_sparsity",
        "ff_sparsity_type",
        "attention_chunk_size",
        "attention_type",
    ]
    for fn, extra in [
        (ct.EncoderBlock, ["n_attention_layers", "n_feedforward_layers"]),
        (ct.DecoderBlock, ["n_attention_layers", "n_feedforward_layers"]),
        (ct.EncoderDecoderBlock, ["enc_dec_attention_sparsity"]),
    ]:
        assert list(inspect.signature(fn).parameters) == block + extra
    assert list(inspect.signature(ct.ApplyAttentionLayer).parameters) == [
        "attention_type",
        "d_model",
        "n_heads",
        "d_qk",
        "d_v",
        "causal",
        "masked",
        "attention_dropout",
        "output_dropout",
        "attention_chunk_size",
        "mode",
    ]
    assert defaults(ct.PositionalEncoder) == {
        "dropout": None,
        "max_len": None,
        "pos_type": None,
        "pos_axial_shape": None,
        "pos_d_axial_embs": None,
        "pos_start_from_zero_prob": 1.0,
        "pos_max_offset_to_add": 0,
        "use_bfloat16": False,
    }
    assert defaults(ct.FeedForwardWithOptions) == {"use_bfloat16": False, "ff_sparsity_type": "1inN"}


# --- Shapes (Trax's test_transformer_lm_forward_shape, test_transformer_forward_shape) -------


def test_transformer_lm_forward_shape():
    model = ct.ConfigurableTransformerLM(16, d_model=32, d_ff=64, n_layers=2, n_heads=2)
    assert model.output_signature(ShapeDtype((3, 5), jnp.int32)).shape == (3, 5, 16)


@pytest.mark.parametrize(
    ("input_vocab_size", "output_vocab_size"),
    [(16, None), (16, 16), (16, 50)],
    ids=["same_vocab", "same_size", "different_size"],
)
def test_transformer_forward_shape(input_vocab_size, output_vocab_size):
    model = ct.ConfigurableTransformer(
        input_vocab_size,
        output_vocab_size,
        d_model=32,
        d_ff=64,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
    )
    logits, targets = model.output_signature((ShapeDtype((3, 5), jnp.int32), ShapeDtype((3, 5), jnp.int32)))
    assert logits.shape == (3, 5, output_vocab_size or input_vocab_size)
    assert targets.shape == (3, 5)


def test_transformer_shares_the_embedding_without_output_vocab():
    signature = (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 4), jnp.int32))
    shared = ct.ConfigurableTransformer(8, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights, _ = shared.weights_and_state_signature(signature)
    # Serial(Select, Branch, EncodeOnce(Serial(in_encoder, ...)), Select, ShiftRight, out_encoder, ...).
    assert weights[2][0][0][0].shape == (8, 8) and weights[5][0] is tl.SHARED
    separate = ct.ConfigurableTransformer(8, 6, n_encoder_layers=1, n_decoder_layers=1, **SMALL)
    weights_separate, _ = separate.weights_and_state_signature(signature)
    assert weights_separate[5][0].shape == (6, 8) and weights_separate[-1][0].shape == (8, 6)
    assert n_weights(weights_separate) == n_weights(weights) + 6 * 8 - 2 * 8 - 2


# --- The language model: Trax's weights and layer-wise math, streaming ----------------------


def shifted(x):
    """What a decoding loop feeds a predict-mode model (whose ShiftRight is Trax's no-op): 0, x_0, x_1, ..."""
    return jnp.pad(x, ((0, 0), (1, 0)))[:, :-1]


def test_lm_is_transformer_lm_with_its_weights_and_streams():
    """TransformerLM's weights, in the same order, give the same eval logits; step-wise equals layer-wise."""
    model = ct.ConfigurableTransformerLM(8, n_layers=2, mode="eval", **SMALL)
    reference = transformer.TransformerLM(8, n_layers=2, mode="eval", scan_layers=False, **SMALL)
    x = tokens((2, 5))
    reference_weights, _ = reference.init(ShapeDtype((2, 5), jnp.int32), jax.random.PRNGKey(1))
    weights_signature, _ = model.weights_and_state_signature(ShapeDtype((2, 5), jnp.int32))
    # Serial(ShiftRight, Embedding, Dropout, PositionalEncoding, 4 Residuals, LayerNorm, Dense), as Trax's.
    assert (
        len(weights_signature) == 10 and n_weights(weights_signature) == n_weights(reference_weights) == 1480
    )
    weights = jax.tree.unflatten(jax.tree.structure(weights_signature), jax.tree.leaves(reference_weights))
    model.init(ShapeDtype((2, 5), jnp.int32))
    y = model(x, weights=weights)
    assert y.shape == (2, 5, 8)
    np.testing.assert_allclose(y, reference(x), atol=1e-5, rtol=1e-5)

    y_step = step_one_at_a_time(model, weights, (shifted(x),), (True,))
    np.testing.assert_allclose(y_step, y, atol=1e-5, rtol=1e-5)


def test_dot_product_causal_attention_fast_inference():
    """Trax's case as written: its all-zero input is the same shifted or not."""
    model_fn = functools.partial(
        ct.ConfigurableTransformerLM, vocab_size=16, d_model=4, d_ff=8, n_layers=2, n_heads=2
    )
    test_utils.test_eval_equals_predict(np.zeros((2, 5), np.int32), model_fn)


@pytest.mark.parametrize(
    ("ff_sparsity", "ff_sparsity_type", "sparse_ff"),
    [
        (2, "1inN", "BatchLeadingAxes"),
        ("4 2 0.1 0.3", "1inN", "BatchLeadingAxes"),
        (2, "Block", "BlockSparseFF"),
        (2, "Switch", "SwitchSparseFF"),
    ],
)
def test_sparse_feed_forward_blocks_stream(ff_sparsity, ff_sparsity_type, sparse_ff):
    """Trax's FeedForwardWithOptions: ff_sparsity picks SparseFF (a BatchLeadingAxes, as Trax's), BlockSparseFF or
    SwitchSparseFF."""
    model_fn = functools.partial(
        ct.ConfigurableTransformerLM,
        d_model=8,
        d_ff=16,
        n_layers=1,
        n_heads=2,
        max_len=16,
        ff_sparsity=ff_sparsity,
        ff_sparsity_type=ff_sparsity_type,
    )
    (block,) = ct.FeedForwardWithOptions(
        8, 16, 0.0, None, tl.Relu, None, 0, 0, ff_sparsity, True, "eval", ff_sparsity_type=ff_sparsity_type
    )
    assert sparse_ff in (type(block[1]).__name__, block[1].name)  # [LayerNorm, the sparse block, ...]
    test_utils.test_eval_equals_predict_discrete(model_fn, vocab_size=8, length=4, batch_size=2)


def test_sparse_configurable_transformer_fast_inference():
    """Trax's case as written: sparse attention, feed-forward and output layers, SRUs; the target streams."""
    attention = functools.partial(tl.MultiplicativeConvCausalAttention, sparsity=2, length_kernel_size=1)
    model_fn = functools.partial(
        ct.ConfigurableTransformer,
        input_vocab_size=16,
        d_model=4,
        d_ff=8,
        n_encoder_layers=2,
        n_decoder_layers=2,
        n_heads=2,
        loss_sparsity=2,
        ff_sparsity=2,
        encoder_decoder_attention_type=attention,
        ff_use_sru=(1, 4),
    )
    # loss_sparsity=2 ('mult'): the output layer is FactoredDense(2, 4, 16), of weights [2, 4], [4, 8], [16].
    output_weights, _ = model_fn(mode="eval").sublayers[-1].weights_and_state_signature(ShapeDtype((2, 5, 4)))
    assert [w.shape for w in jax.tree.leaves(output_weights)] == [(2, 4), (4, 8), (16,)]
    inp = tokens((2, 5), high=16)
    test_utils.test_eval_equals_predict((inp, np.zeros((2, 5), np.int32)), model_fn, seq_tensor=1)


def test_transformer_with_sru_and_fixed_base_positions_streams_in_the_target():
    """Dense layers, fixed-base positions and SRUs: the target streams exactly, token by token."""
    model = ct.ConfigurableTransformer(
        16,
        d_model=8,
        d_ff=8,
        n_encoder_layers=1,
        n_decoder_layers=1,
        n_heads=2,
        ff_use_sru=(1, 4),
        pos_type="fixed-base",
        mode="eval",
    )
    source, target = tokens((2, 5), high=16), tokens((2, 5), seed=1, high=16)
    signature = (ShapeDtype((2, 5), jnp.int32), ShapeDtype((2, 5), jnp.int32))
    weights, _ = model.init(signature, jax.random.PRNGKey(3))
    # The feed-forward Residual(Residual(LayerNorm, Dense(4), SRU(4), Dense(8), shortcut=FF)): SRU's Dense(12).
    sru_dense = [w.shape for w in jax.tree.leaves(weights[9]) if w.shape == (4, 12)]
    assert sru_dense == [(4, 12)]
    logits, _ = model((source, target))
    logits_step, _ = step_one_at_a_time(model, weights, (source, shifted(target)), (False, True))
    np.testing.assert_allclose(logits_step, logits, atol=1e-5, rtol=1e-5)


# --- The encoder ------------------------------------------------------------------------


def test_encoder_classifies_and_chunking_changes_nothing():
    plain = ct.ConfigurableTransformerEncoder(8, n_classes=3, n_layers=1, mode="eval", **SMALL)
    chunked = ct.ConfigurableTransformerEncoder(
        8, n_classes=3, n_layers=1, mode="eval", ff_chunk_size=3, attention_chunk_size=1, **SMALL
    )
    x = tokens((2, 6))
    weights, _ = plain.init(IDS)
    chunked_signature, _ = chunked.weights_and_state_signature(IDS)
    chunked_weights = jax.tree.unflatten(jax.tree.structure(chunked_signature), jax.tree.leaves(weights))
    chunked.init(IDS)
    y = plain(x)
    assert y.shape == (2, 3)
    np.testing.assert_allclose(chunked(x, weights=chunked_weights), y, atol=1e-5, rtol=1e-5)
    assert not plain.supports_step


# --- Building blocks ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pos_type", "layer_name"),
    [
        (None, "PositionalEncoding"),
        ("fixed-base", "FixedBasePositionalEncoding"),
        ("infinite", "InfinitePositionalEncoding"),
        ("infinite-affine", "InfinitePositionalEncoding"),
        ("sin-cos", "SinCosPositionalEncoding"),
        ("axial", "AxialPositionalEncoding"),
        ("no", "Serial"),
    ],
)
def test_positional_encoder(pos_type, layer_name):
    """Trax's test_positional_encoder (which passes its cases as pos_axial_shape, so only ever tests None)."""
    batch, length, dim = 2, 32, 8  # dim divides FixedBasePositionalEncoding's n_digits.
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, length, dim)).astype(np.float32))
    encoder = ct.PositionalEncoder(
        "train",
        dropout=0.1,
        max_len=length,
        pos_type=pos_type,
        pos_axial_shape=(2, 16),
        pos_d_axial_embs=(4, 4),
    )
    assert type(encoder).__name__ == layer_name or encoder.name == layer_name
    assert encoder.output_signature(ShapeDtype(x.shape)).shape == (batch, length, dim)
    if pos_type == "no":
        np.testing.assert_array_equal(encoder(x), x)
    if pos_type == "axial":
        weights, _ = encoder.weights_and_state_signature(ShapeDtype(x.shape))
        assert [w.shape for w in weights] == [(1, 2, 1, 4), (1, 1, 16, 4)]


@pytest.mark.parametrize(
    ("input_vocab_size", "output_vocab_size"),
    [(32, None), (None, 32), (32, 32), (32, 16)],
    ids=["input_vocab_size_only", "output_vocab_size_only", "same_sizes", "different_sizes"],
)
def test_embedding_and_positional_encodings(input_vocab_size, output_vocab_size):
    d_model, max_len, batch = 16, 32, 2
    in_encoder, out_encoder, vocab_size = ct.EmbeddingAndPositionalEncodings(
        input_vocab_size, d_model, "train", 0.1, [-2], max_len, output_vocab_size=output_vocab_size
    )
    assert vocab_size == (output_vocab_size or input_vocab_size)
    in_signature = (
        ShapeDtype((batch, max_len, 2))
        if input_vocab_size is None
        else ShapeDtype((batch, max_len), jnp.int32)
    )
    assert in_encoder.output_signature(in_signature).shape == (batch, max_len, d_model)
    assert out_encoder.output_signature(ShapeDtype((batch, max_len), jnp.int32)).shape == (
        batch,
        max_len,
        d_model,
    )
    # Without output_vocab_size the two share the embedding layer (one weight matrix).
    assert (in_encoder.sublayers[0] is out_encoder.sublayers[0]) == (output_vocab_size is None)


def test_embedding_and_positional_encodings_run_the_input_side_in_eval_when_predicting():
    in_encoder, out_encoder, _ = ct.EmbeddingAndPositionalEncodings(8, 8, "predict", 0.1, None, 16)
    assert [layer.mode for layer in in_encoder.sublayers[1:]] == [
        "eval",
        "eval",
    ]  # Dropout, PositionalEncoding.
    assert out_encoder.sublayers[-1].mode == "predict"


def test_apply_attention_layer_passes_each_kind_its_arguments():
    causal = ct.ApplyAttentionLayer(tl.CausalAttention, 8, 2, 4, 4, True, False, 0.0, 0.0, 0, "eval")
    assert causal.name == "CausalAttention"
    efficient = ct.ApplyAttentionLayer(
        functools.partial(tl.SelfAttention, chunk_len=4), 8, 2, 3, 5, True, False, 0.0, 0.0, 0, "eval"
    )
    assert efficient.name == "SelfAttention"
    weights, _ = efficient.weights_and_state_signature(ShapeDtype((1, 8, 8)))
    assert [w.shape for w in jax.tree.leaves(weights)] == [(2, 8, 3), (2, 8, 3), (2, 8, 5), (2, 5, 8)]
    chunked = ct.ApplyAttentionLayer(tl.CausalAttention, 8, 2, 4, 4, True, False, 0.0, 0.0, 2, "eval")
    assert chunked.name == "Chunk"


def test_feed_forward_with_options_layers():
    plain = tl.Serial(ct.FeedForwardWithOptions(8, 16, 0.1, None, tl.Relu, None, 0, 0, 0, True, "train"))
    assert [layer.name for layer in plain.sublayers] == [
        "LayerNorm",
        "Dense_16",
        "Dropout",
        "Relu",
        "Dense_8",
        "Dropout",
    ]
    (sru,) = ct.FeedForwardWithOptions(8, 16, 0.1, None, tl.Relu, None, 4, 2, 0, False, "train")
    weights, _ = sru.weights_and_state_signature(ShapeDtype((2, 4, 8)))
    # Residual(LayerNorm, Dense(32), SRU, SRU, Dense(8), shortcut=BatchLeadingAxes(Chunk(...))).
    assert n_weights(weights) == n_weights(plain.weights_and_state_signature(ShapeDtype((2, 4, 8)))[0]) + (
        2 * 8 + (8 * 32 + 32) + 2 * (32 * 96 + 96) + (32 * 8 + 8)
    )


# --- Options trax_sl lacks ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "option", "value", "supported"),
    [
        (ct.ConfigurableTransformerLM, "pos_type", "time-bin", "'fixed-base'"),
        (ct.ConfigurableTransformer, "enc_dec_attention_sparsity", 2, "'noop'"),
    ],
)
def test_options_needing_layers_trax_sl_lacks_raise(model, option, value, supported):
    with pytest.raises(
        ValueError, match=rf"^{model.__name__}: {option}={value!r} needs .*supported: .*{supported}"
    ):
        model(8, **{option: value})


def test_options_trax_falls_back_on_are_accepted():
    # Sparsity of an unknown type uses the dense block in Trax; no loss sparsity type means a Dense.
    ct.ConfigurableTransformerLM(8, n_layers=1, ff_sparsity=2, ff_sparsity_type="dense", **SMALL)
    model = ct.ConfigurableTransformerLM(8, n_layers=1, loss_sparsity=2, loss_sparsity_type=None, **SMALL)
    assert model.sublayers[-1].name == "Dense_8"


def test_axial_positions_need_their_shape():
    with pytest.raises(ValueError, match="pos_type='axial' means axial positional encoding, which needs"):
        ct.PositionalEncoder("train", pos_type="axial")
