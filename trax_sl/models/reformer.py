"""Reformer models (Trax's): ReformerLM, ReformerShortenLM and the encoder-decoder Reformer.

Names, arguments, defaults, stack semantics and layer trees are Trax's
(`trax.models.reformer.reformer`). The blocks are reversible: each is a pair
of `ReversibleHalfResidual`s (attention, then feed-forward) over two copies of
the activations, so `ReversibleSerial` recomputes activations in the backward
pass instead of storing them (https://arxiv.org/abs/2001.04451).

The feed-forward block, the attention builder and the embeddings are
`configurable_transformer`'s (as in Trax), with Trax's sparse feed-forward
and output layers, and so is the check that refuses options trax_sl cannot
build (`pos_type='time-bin'`).

Streaming: of the efficient attention layers, only causal `tl.SelfAttention`
with a `chunk_len` streams (`tl.LSHSelfAttention` and `tl.EncDecAttention`
raise in predict mode, saying why), so ReformerLM streams with that or
another `attention_type` that does, such as `tl.CausalAttention`; Reformer's
decoder and ReformerShortenLM do not stream.
"""

from __future__ import annotations

import sys

import jax.numpy as jnp

from trax_sl.layers import (
    activation_fns,
    attention,
    base,
    combinators,
    convolution,
    core,
    normalization,
    reversible,
)
from trax_sl.layers import rnn as rnn_layers
from trax_sl.layers.research import efficient_attention
from trax_sl.models import configurable_transformer as ct
from trax_sl.models import transformer


def DecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    d_attention_key,
    d_attention_value,
    n_heads,
    attention_type,
    dropout,
    ff_activation,
    ff_dropout,
    ff_use_sru,
    ff_chunk_size,
    ff_sparsity,
    attention_chunk_size,
    n_attention_layers=1,
    n_feedforward_layers=1,
    center_layernorm=True,
    use_bfloat16=False,
    mode="train",
) -> list:
    """Returns the layers of a reversible decoder block: `(x1, x2)` -> `(y1, y2)`.

    `n_attention_layers` times [ReversibleHalfResidual(LayerNorm, causal
    `attention_type`), ReversibleSwap], then `n_feedforward_layers` times
    [ReversibleHalfResidual(FeedForwardWithOptions), ReversibleSwap].
    `center_layernorm=False` makes the LayerNorms RMS normalizations.
    """

    def _attention_half_residual():
        attn = ct.ApplyAttentionLayer(
            attention_type,
            d_model,
            n_heads,
            d_attention_key,
            d_attention_value,
            True,  # causal
            False,  # masked
            dropout,
            dropout,
            attention_chunk_size,
            mode,
        )
        return [
            reversible.ReversibleHalfResidual(
                normalization.LayerNorm(center=center_layernorm),
                attention_layer=attn,
                name="ReversibleHalfResidualDecoderAttn",
            ),
            reversible.ReversibleSwap(),
        ]

    def _feed_forward():
        ff = ct.FeedForwardWithOptions(
            d_model,
            d_ff,
            dropout,
            [-2],
            ff_activation,
            ff_dropout,
            ff_chunk_size,
            ff_use_sru,
            ff_sparsity,
            center_layernorm,
            mode,
            use_bfloat16,
        )
        return [
            reversible.ReversibleHalfResidual(ff, name="ReversibleHalfResidualDecoderFF"),
            reversible.ReversibleSwap(),
        ]

    return [_attention_half_residual() for _ in range(n_attention_layers)] + [
        _feed_forward() for _ in range(n_feedforward_layers)
    ]


def ReformerLM(  # noqa: N802
    vocab_size,
    d_model=512,
    d_ff=2048,
    d_attention_key=64,
    d_attention_value=64,
    n_layers=6,
    n_heads=8,
    dropout=0.1,
    max_len=2048,
    attention_type=efficient_attention.SelfAttention,
    pos_type=None,
    pos_axial_shape=(),
    pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
    ff_activation=activation_fns.FastGelu,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_sparsity=0,
    loss_sparsity_type="mult",
    loss_sparsity=0,
    loss_d_lowrank=0,
    loss_sparsity_prob=None,
    attention_chunk_size=0,
    mode="train",
) -> base.Layer:
    """Returns a reversible Transformer language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding(vocab_size, d_model), Dropout,
    the positional encoding of `pos_type` (see ct.PositionalEncoder), Dup,
    ReversibleSerial of `n_layers` DecoderBlocks over the two copies,
    Concatenate (so the features are `2 * d_model` wide), LayerNorm, Dropout
    and Dense(vocab_size). `attention_type` is a layer class or a list of them
    used in turn over the layers (n_layers must be a multiple of its length);
    it is built with `d_attention_key`/`d_attention_value` per head, or as
    `attention_type(d_model, n_heads=, dropout=, mode=)` when it takes no
    `d_qk` (e.g. tl.CausalAttention). The output layer is ct.OutputLayer (a
    Dense, or Trax's sparse output layers with `loss_sparsity`).

    Predict mode: decodes as TransformerLM does when the attention streams
    (e.g. tl.CausalAttention, whose state holds the KV caches; the state also
    holds the positional encoding's count), or tl.SelfAttention with a
    `chunk_len` (a window of past chunks). The default tl.SelfAttention (no
    chunk_len) and tl.LSHSelfAttention do not stream: predict mode raises at
    init, saying why.
    """
    ct.check_options("ReformerLM", pos_type=pos_type)
    positional_embedder = ct._EmbeddingWithPositions(
        vocab_size,
        d_model,
        dropout,
        [-2],  # dropout_shared_axes
        mode,
        max_len,
        pos_type,
        pos_axial_shape,
        pos_d_axial_embs,
        pos_start_from_zero_prob,
        pos_max_offset_to_add,
    )
    decoder_blocks = _decoder_blocks(
        "ReformerLM",
        n_layers,
        attention_type,
        d_model=d_model,
        d_ff=d_ff,
        d_attention_key=d_attention_key,
        d_attention_value=d_attention_value,
        n_heads=n_heads,
        dropout=dropout,
        ff_activation=ff_activation,
        ff_use_sru=ff_use_sru,
        ff_chunk_size=ff_chunk_size,
        ff_sparsity=ff_sparsity,
        attention_chunk_size=attention_chunk_size,
        mode=mode,
    )
    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        positional_embedder,
        combinators.Dup(),
        reversible.ReversibleSerial(decoder_blocks),
        combinators.Concatenate(),
        # Trax's TODO: whether dropout should go before or after the LayerNorm.
        normalization.LayerNorm(),
        core.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
        # Trax passes d_input=d_model, which fails for sparse output layers: the features are 2 * d_model.
        ct.OutputLayer(
            vocab_size,
            2 * d_model,
            loss_sparsity_type,
            loss_sparsity,
            loss_d_lowrank,
            loss_sparsity_prob,
            mode,
        ),
        name="ReformerLM",
    )


def ReformerShortenLM(  # noqa: N802
    vocab_size,
    shorten_factor=1,
    d_embedding=256,
    d_model=512,
    d_ff=2048,
    d_attention_key=64,
    d_attention_value=64,
    n_layers=6,
    n_heads=8,
    dropout=0.1,
    max_len=2048,
    attention_type=efficient_attention.SelfAttention,
    pos_type=None,
    pos_axial_shape=(),
    pos_d_axial_embs=None,
    ff_activation=activation_fns.FastGelu,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_sparsity=0,
    attention_chunk_size=0,
    mode="train",
) -> base.Layer:
    """Returns a reversible language model that runs its body on `shorten_factor` times fewer steps.

    n_in=1, n_out=1; token ids `[batch, time]` -> logits `[batch, time,
    vocab_size]`, time a multiple of `shorten_factor` (F). The shifted-right
    tokens are embedded (`d_embedding`), shifted F - 1 steps further (so that
    no group of F steps sees the tokens it predicts), grouped F steps to a
    vector (`[batch, time / F, F * d_embedding]`), projected to d_model and
    run through `n_layers` reversible DecoderBlocks; the output half is
    projected back to F * d_embedding, ungrouped, concatenated with the
    embeddings, and CausalConv, Relu, SRU and Dense(vocab_size) give the
    logits.

    Not streamable: 'predict' mode raises ValueError (as Trax asserts).
    """
    if mode == "predict":
        raise ValueError(
            "ReformerShortenLM: mode='predict' is not supported (as in Trax, there is no fast "
            "inference); use mode='train' or 'eval'"
        )
    ct.check_options("ReformerShortenLM", pos_type=pos_type)
    positional_embedder = ct._EmbeddingWithPositions(
        vocab_size, d_embedding, dropout, [-2], mode, max_len, pos_type, pos_axial_shape, pos_d_axial_embs
    )
    decoder_blocks = _decoder_blocks(
        "ReformerShortenLM",
        n_layers,
        attention_type,
        d_model=d_model,
        d_ff=d_ff,
        d_attention_key=d_attention_key,
        d_attention_value=d_attention_value,
        n_heads=n_heads,
        dropout=dropout,
        ff_activation=ff_activation,
        ff_use_sru=ff_use_sru,
        ff_chunk_size=ff_chunk_size,
        ff_sparsity=ff_sparsity,
        attention_chunk_size=attention_chunk_size,
        mode=mode,
    )

    def shorten(x):
        if x.shape[1] % shorten_factor:
            raise ValueError(
                f"ReformerShortenLM: the length must be a multiple of shorten_factor={shorten_factor}, "
                f"got {x.shape[1]}"
            )
        return jnp.reshape(x, (x.shape[0], x.shape[1] // shorten_factor, -1))

    def prolong_back(x):
        return jnp.reshape(x, (x.shape[0], x.shape[1] * shorten_factor, -1))

    return combinators.Serial(
        attention.ShiftRight(),
        positional_embedder,
        combinators.Dup(),  # x x; the first is shortened.
        # Shifting F - 1 more steps keeps each group of F steps from seeing what it predicts:
        # with F = 2, ABCD -> 0ABC would group [0A][BC], whose [BC] sees C when predicting C.
        attention.ShiftRight(n_positions=shorten_factor - 1),
        base.Fn("Shorten", shorten, supports_step=False),
        core.Dense(d_model),
        combinators.Dup(),  # short_x short_x x
        reversible.ReversibleSerial(decoder_blocks),
        combinators.Select([0], n_in=2),
        normalization.LayerNorm(),
        core.Dropout(rate=dropout, shared_axes=[-2], mode=mode),
        core.Dense(shorten_factor * d_embedding),
        base.Fn("ProlongBack", prolong_back, supports_step=False),
        combinators.Concatenate(),  # With the embeddings.
        convolution.CausalConv(d_embedding),
        activation_fns.Relu(),
        rnn_layers.SRU(d_embedding),  # One RNN layer for conditional dependence.
        ct.OutputLayer(vocab_size, d_embedding),
        name="ReformerShortenLM",
    )


def EncoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    attention_type,
    dropout,
    ff_activation,
    ff_dropout,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_sparsity=0,
    attention_chunk_size=0,
    center_layernorm=True,
    use_bfloat16=False,
    use_two_swaps_per_block=True,
    mode="train",
) -> list:
    """Returns the layers of a reversible encoder block: `(x1, x2, mask)` -> same.

    `mask [batch, time]` (True = valid) masks the keys of the (non-causal)
    attention, `attention_type` with `d_model // n_heads` per head; an
    attention with n_out=2 (tl.Attention) gets the mask as `[batch, 1, 1,
    time]`. ReversibleHalfResidual(LayerNorm, attention), ReversibleSwap,
    ReversibleHalfResidual(FeedForwardWithOptions) and, with
    `use_two_swaps_per_block`, a second ReversibleSwap. The encoder sees
    whole sequences, so 'predict' mode builds the 'eval' block.
    """
    if mode == "predict":
        mode = "eval"
    attn = ct.ApplyAttentionLayer(
        attention_type=attention_type,
        d_model=d_model,
        n_heads=n_heads,
        d_qk=d_model // n_heads,
        d_v=d_model // n_heads,
        causal=False,
        masked=True,
        attention_dropout=dropout,
        output_dropout=dropout,
        attention_chunk_size=attention_chunk_size,
        mode=mode,
    )
    if attn.n_out == 2:  # Standard attention: (x, mask [batch, 1, 1, time]) -> (y, mask).
        attn = combinators.Serial(
            combinators.Parallel([], _InsertAxes12()),
            attn,
            combinators.Select([0], n_in=2),
        )
    ff = ct.FeedForwardWithOptions(
        d_model,
        d_ff,
        dropout,
        [-2],
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        center_layernorm,
        mode,
        use_bfloat16,
    )
    layers = [
        reversible.ReversibleHalfResidual(
            normalization.LayerNorm(center=center_layernorm),
            attention_layer=attn,
            name="ReversibleHalfResidualEncoderAttn",
        ),
        reversible.ReversibleSwap(),
        reversible.ReversibleHalfResidual(ff, name="ReversibleHalfResidualEncoderFF"),
    ]
    if use_two_swaps_per_block:
        layers.append(reversible.ReversibleSwap())
    return layers


def EncoderDecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    ff_activation,
    ff_dropout,
    mode,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_sparsity=0,
) -> list:
    """Returns the layers of a reversible encoder-decoder block: `(d1, d2, vec_e, mask)` -> same.

    ReversibleHalfResidual(LayerNorm, causal tl.SelfAttention), ReversibleSwap,
    ReversibleHalfResidual(LayerNorm, tl.EncDecAttention over `vec_e` with
    `mask [batch, source_time]`), ReversibleSwap,
    ReversibleHalfResidual(FeedForwardWithOptions), ReversibleSwap; attention
    with `d_model // n_heads` per head.
    """
    d_head = d_model // n_heads
    causal_attention = efficient_attention.SelfAttention(
        n_heads=n_heads,
        d_qk=d_head,
        d_v=d_head,
        causal=True,
        attention_dropout=dropout,
        output_dropout=dropout,
        mode=mode,
    )
    enc_dec_attention = efficient_attention.EncDecAttention(
        n_heads=n_heads,
        d_qk=d_head,
        d_v=d_head,
        attention_dropout=dropout,
        output_dropout=dropout,
        mode=mode,
    )
    feed_forward = ct.FeedForwardWithOptions(
        d_model,
        d_ff,
        dropout,
        [-2],
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        True,
        mode,
    )
    return [  # vec_d1 vec_d2 vec_e masks
        reversible.ReversibleHalfResidual(normalization.LayerNorm(), attention_layer=causal_attention),
        reversible.ReversibleSwap(),
        reversible.ReversibleHalfResidual(normalization.LayerNorm(), attention_layer=enc_dec_attention),
        reversible.ReversibleSwap(),
        reversible.ReversibleHalfResidual(feed_forward),
        reversible.ReversibleSwap(),
    ]


def Reformer(  # noqa: N802
    input_vocab_size,
    output_vocab_size=None,
    d_model=512,
    d_ff=2048,
    n_encoder_layers=6,
    n_decoder_layers=6,
    n_heads=8,
    dropout=0.1,
    max_len=2048,
    ff_activation=activation_fns.Relu,
    ff_dropout=None,
    mode="train",
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_sparsity=0,
) -> base.Layer:
    """Returns a reversible encoder-decoder Transformer: `(source, target)` -> `(logits, target)`.

    n_in=2, n_out=2. Source ids `[batch, source_time]` and target ids
    `[batch, time]` (0 marks padding) -> logits `[batch, time,
    output_vocab_size]` (step t predicts target token t from the source and
    target tokens < t) and the target ids, as in Trax. The encoder: embedding
    and positional encoding, Dup, `n_encoder_layers` reversible EncoderBlocks
    (tl.SelfAttention masked by the source's padding), the average of the
    two halves, LayerNorm. The decoder: ShiftRight, embedding and positional
    encoding, Dup, `n_decoder_layers` EncoderDecoderBlocks, the average of
    the halves, LayerNorm, Dense(output_vocab_size). With
    `output_vocab_size=None` source and target share one embedding. As in
    Trax, only dot-product attention (tl.SelfAttention) is used.

    The encoder is wrapped in EncodeOnce in every mode (Trax wraps it in
    Cache in predict mode only), so that the weights tree is the same in
    every mode. Not streamable: the decoder's tl.SelfAttention and
    tl.EncDecAttention do not run in predict mode here (they raise).
    """
    ct.check_options("Reformer", pos_type=pos_type)
    in_encoder, out_encoder, output_vocab_size = ct.EmbeddingAndPositionalEncodings(
        input_vocab_size,
        d_model,
        mode,
        dropout,
        [-2],  # dropout_shared_axes
        max_len,
        output_vocab_size=output_vocab_size,
        pos_type=pos_type,
        pos_axial_shape=pos_axial_shape,
        pos_d_axial_embs=pos_d_axial_embs,
    )
    encoder_blocks = [
        EncoderBlock(
            d_model,
            d_ff,
            n_heads,
            efficient_attention.SelfAttention,
            dropout,
            ff_activation,
            ff_dropout,
            mode=mode,
            ff_use_sru=ff_use_sru,
            ff_chunk_size=ff_chunk_size,
            ff_sparsity=ff_sparsity,
        )
        for _ in range(n_encoder_layers)
    ]
    encoder = combinators.Serial(
        in_encoder,
        combinators.Dup(),
        reversible.ReversibleSerial(encoder_blocks),
        _XYAvg(),
        normalization.LayerNorm(),
        name="Encoder",
    )
    encoder_decoder_blocks = [
        EncoderDecoderBlock(
            d_model,
            d_ff,
            n_heads,
            dropout,
            ff_activation,
            ff_dropout,
            mode,
            ff_use_sru=ff_use_sru,
            ff_chunk_size=ff_chunk_size,
            ff_sparsity=ff_sparsity,
        )
        for _ in range(n_decoder_layers)
    ]
    return combinators.Serial(
        combinators.Select([0, 1, 1]),  # tok_e tok_d tok_d
        combinators.Branch([], [attention.PaddingMask(), _RemoveAxes12()]),  # tok_e mask tok_d tok_d
        # Encode.
        transformer.EncodeOnce(encoder, mode=mode),  # vec_e mask tok_d tok_d
        # Decode.
        combinators.Select([2, 0, 1]),  # tok_d vec_e mask tok_d
        attention.ShiftRight(mode=mode),
        out_encoder,  # vec_d vec_e mask tok_d
        combinators.Dup(),  # vec_d1 vec_d2 vec_e mask tok_d
        reversible.ReversibleSerial(encoder_decoder_blocks),
        _XYAvg(),  # vec_d vec_e mask tok_d
        normalization.LayerNorm(),
        # Map to output vocab.
        combinators.Select([0], n_in=3),  # vec_d tok_d
        ct.OutputLayer(output_vocab_size, d_model),
        name="Reformer",
    )


# --- Helpers -------------------------------------------------------------------------------


def _decoder_blocks(model, n_layers, attention_type, **options) -> list:
    """`n_layers` DecoderBlocks, the attention types (one or a list) used in turn."""
    types = list(attention_type) if isinstance(attention_type, (tuple, list)) else [attention_type]
    if not types or n_layers % len(types):
        raise ValueError(
            f"{model}: n_layers must be a multiple of the number of attention types, got "
            f"n_layers={n_layers} and {len(types)} attention types"
        )
    return [
        DecoderBlock(
            attention_type=types[i % len(types)],
            ff_dropout=options["dropout"],
            **options,
        )
        for i in range(n_layers)
    ]


def _InsertAxes12() -> base.Layer:  # noqa: N802
    """`[batch, time]` -> `[batch, 1, 1, time]`."""
    return base.Fn("InsertAxes12", lambda x: jnp.reshape(x, (x.shape[0], 1, 1, x.shape[1])))


def _RemoveAxes12() -> base.Layer:  # noqa: N802
    """`[batch, 1, 1, time]` -> `[batch, time]`."""
    return base.Fn("RemoveAxes12", lambda x: jnp.squeeze(x, (1, 2)))


def _XYAvg() -> base.Layer:  # noqa: N802
    """`(x, y)` -> `(x + y) / 2`, elementwise."""
    return base.Fn("XYAvg", lambda x, y: (x + y) / 2.0)


# Trax keeps this module at `trax.models.reformer.reformer` (a package of one module): that path,
# renamed, is this module too (`from trax_sl.models.reformer import reformer`, or imported whole).
__path__: list[str] = []  # A package for the import system, whose one submodule is itself.
reformer = sys.modules[__name__]
sys.modules[f"{__name__}.reformer"] = reformer
