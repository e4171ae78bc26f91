"""ReZero Transformer models (Trax's): encoder, decoder, language model and encoder-decoder.

ReZero (https://arxiv.org/abs/2003.04887) changes one thing in the
Transformer: each residual branch is scaled by a learnable scalar alpha,
initialised to zero, before it is added to the shortcut, so that every
block starts as the identity. Names, arguments, defaults, stack semantics
and weights trees are Trax's (`trax.models.research.rezero`); the blocks
are those of `trax_sl.models.transformer` with `ResidualZero` in place of
`Residual`.

The decoder side streams in predict mode as the Transformer's does (KV
caches and position counts in the state; as in Trax, the predict-mode
ShiftRight is a no-op, so a decoding loop feeds the shifted tokens). Unlike
Trax's, ReZeroTransformerDecoder and ReZeroTransformerEncoder pass `mode` to
their PositionalEncoding, so that the (causal) decoder streams too; in
'train' and 'eval' mode that changes nothing.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl.layers import attention, base, combinators, core, normalization, position
from trax_sl.layers.combinators import stack
from trax_sl.models import transformer


def _zeros(shape, rng):
    """ReZero's alpha initializer: zeros (float32), whatever the rng."""
    del rng
    return jnp.zeros(shape, jnp.float32)


def ResidualZero(*layers, shortcut=None) -> base.Layer:  # noqa: N802
    """Returns a ReZero residual: `shortcut(x) + alpha * layers(x)`, alpha a learnable scalar from 0.

    Stack: `x ...` -> `shortcut(x ...) + alpha * layers(x ...)` (the shortcut
    is the identity when None), as Trax's `Residual` with a `Weights` scalar
    (initialised to zero) and a `Multiply` after the layers. Weights: those of
    `Serial(Branch(shortcut, Serial(layers, Weights, Multiply)), Add)`, the
    last leaf of the branch being alpha (`f32[]`). A fresh ResidualZero is
    thus the identity (with the identity shortcut).

    Predict mode: streams as its layers do; the state holds theirs.
    """
    layers = stack._ensure_flat(layers)  # Residual's flattening: nested lists, None dropped.
    layer = layers[0] if len(layers) == 1 else combinators.Serial(layers)
    # Residual's Serial(Branch(shortcut, Serial(...)), Add), with alpha and the product in the branch.
    return combinators.Residual(
        combinators.Serial(layer, core.Weights(_zeros), combinators.Multiply()), shortcut=shortcut
    )


def _positional_encoder(embedder, dropout, dropout_shared_axes, max_len, mode):
    """Trax's `positional_encoder`: the embedder, Dropout and PositionalEncoding (a list, flattened by Serial)."""
    return [
        embedder,
        core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        position.PositionalEncoding(max_len=max_len, mode=mode),
    ]


def ReZeroTransformerEncoder(  # noqa: N802
    vocab_size: int,
    n_classes: int = 10,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    dropout_shared_axes=None,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
) -> base.Layer:
    """Returns a ReZero Transformer encoder for N-way classification of token sequences.

    n_in=1, n_out=1. Token ids `[batch, time]` (0 marks padding; a Sequence's
    invalid steps are padding too) -> activations `[batch, n_classes]`:
    Branch(embedding, dropout and positional encoding; PaddingMask),
    `n_layers` encoder blocks with ReZero residuals, LayerNorm, the mean over
    time (over valid steps for a Sequence) and Dense(n_classes).

    Not streamable: every step attends to the whole sequence and the output
    is a mean over time (supports_step is False).
    """
    embedder = core.Embedding(vocab_size, d_model)
    return combinators.Serial(
        combinators.Branch(
            _positional_encoder(embedder, dropout, dropout_shared_axes, max_len, mode),
            attention.PaddingMask(),
        ),  # vecs masks
        _encoder_blocks(d_model, d_ff, n_layers, n_heads, dropout, dropout_shared_axes, mode, ff_activation),
        combinators.Select([0], n_in=2),  # Drops the masks.
        normalization.LayerNorm(),
        core.Mean(axis=1),
        core.Dense(n_classes, kernel_axes=("embed", None)),
        name="ReZeroTransformerEncoder",
    )


def ReZeroTransformerDecoder(  # noqa: N802
    vocab_size: int | None = None,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    dropout_shared_axes=None,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
) -> base.Layer:
    """Returns a ReZero Transformer decoder (causal attention, no shift): `[batch, time, ...]` -> `[batch, time, d_model]`.

    n_in=1, n_out=1. Token ids `[batch, time]` (with `vocab_size`) or vectors
    `[batch, time, d]` (`vocab_size=None`: a Dense layer embeds them); output
    step t sees input steps <= t. `n_layers` decoder blocks with ReZero
    residuals, then LayerNorm. Streams with block_size 1 and no latency.

    Predict mode: the state holds each block's KV cache (`max_len` steps per
    row) and the positional encoding's count of valid steps per row.
    """
    if vocab_size is not None:
        embedder = core.Embedding(vocab_size, d_model)
    else:
        embedder = core.Dense(d_model, kernel_axes=(None, "embed"))
    return combinators.Serial(
        _positional_encoder(embedder, dropout, dropout_shared_axes, max_len, mode),
        _decoder_blocks(
            d_model, d_ff, n_layers, n_heads, dropout, dropout_shared_axes, max_len, mode, ff_activation
        ),
        normalization.LayerNorm(),
        name="ReZeroTransformerDecoder",
    )


def ReZeroTransformerLM(  # noqa: N802
    vocab_size: int,
    d_model: int = 512,
    d_ff: int = 2048,
    n_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    dropout_shared_axes=None,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
) -> base.Layer:
    """Returns a ReZero Transformer language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding, Dropout, PositionalEncoding,
    `n_layers` decoder blocks with ReZero residuals, LayerNorm,
    Dense(vocab_size): the logits at step t predict token t from tokens < t.
    Streams with block_size 1 and no latency.

    Predict mode: the state holds each row's count of valid steps
    (PositionalEncoding) and each block's KV cache of `max_len` steps per
    row. As in Trax, feed the shifted tokens (0, then each previous token),
    one (or more) per step: the logits of step t are those the whole
    sequence gives at t.
    """
    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        _positional_encoder(core.Embedding(vocab_size, d_model), dropout, dropout_shared_axes, max_len, mode),
        _decoder_blocks(
            d_model, d_ff, n_layers, n_heads, dropout, dropout_shared_axes, max_len, mode, ff_activation
        ),
        normalization.LayerNorm(),
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="ReZeroTransformerLM",
    )


def ReZeroTransformer(  # noqa: N802
    input_vocab_size: int,
    output_vocab_size: int | None = None,
    d_model: int = 512,
    d_ff: int = 2048,
    n_encoder_layers: int = 6,
    n_decoder_layers: int = 6,
    n_heads: int = 8,
    dropout: float = 0.1,
    dropout_shared_axes=None,
    max_len: int = 2048,
    mode: str = "train",
    ff_activation=transformer.FF_ACTIVATION_TYPE,
) -> base.Layer:
    """Returns an encoder-decoder ReZero Transformer: `(source, target)` -> `(logits, target)`.

    n_in=2, n_out=2. Source ids `[batch, source_time]` and target ids
    `[batch, time]` (0 marks padding; Sequences' invalid steps too) ->
    logits `[batch, time, output_vocab_size]` (step t predicts target token
    t from the source and target tokens < t) and the target ids, as in Trax.
    With `output_vocab_size=None` source and target share one vocabulary and
    one embedding (and its Dropout, as in Trax); the positional encodings
    are never shared.

    Streams in the target (block_size 1, no latency); the source is given
    whole at every step. Predict mode: as `Transformer`'s, the encoder runs
    once per stream in 'eval' mode (`EncodeOnce`, Trax's `Cache`); the state
    holds its outputs, the cross attentions' keys and values, the target's
    position count and the decoder's KV caches. As in Trax, feed the shifted
    target (0, then each previous token).
    """

    def Embedder(vocab_size):  # noqa: N802
        return [
            core.Embedding(vocab_size, d_model),
            core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        ]

    in_embedder = Embedder(input_vocab_size)
    out_embedder = in_embedder if output_vocab_size is None else Embedder(output_vocab_size)
    if output_vocab_size is None:
        output_vocab_size = input_vocab_size

    encoder = combinators.Serial(
        in_embedder,
        # EncodeOnce runs the encoder in 'eval' mode when predicting: the source is not streamed.
        position.PositionalEncoding(max_len=max_len, mode=mode),
        _encoder_blocks(
            d_model, d_ff, n_encoder_layers, n_heads, dropout, dropout_shared_axes, mode, ff_activation
        ),
        normalization.LayerNorm(),
        name="Encoder",
    )
    return combinators.Serial(
        combinators.Select([0, 1, 1]),  # tok_e tok_d tok_d
        # Encode.
        combinators.Branch([], attention.PaddingMask()),  # tok_e masks tok_d tok_d
        transformer.EncodeOnce(encoder, mode=mode),  # vec_e masks tok_d tok_d
        # Decode.
        combinators.Select([2, 1, 0]),  # tok_d masks vec_e tok_d
        attention.ShiftRight(mode=mode),
        out_embedder,
        position.PositionalEncoding(max_len=max_len, mode=mode),  # vec_d masks vec_e tok_d
        combinators.Branch([], attention.EncoderDecoderMask()),  # vec_d masks vec_e tok_d
        [
            transformer._EncoderDecoderBlock(
                d_model,
                d_ff,
                n_heads,
                dropout,
                dropout_shared_axes,
                mode,
                ff_activation,
                max_len,
                ResidualZero,
            )
            for _ in range(n_decoder_layers)
        ],
        normalization.LayerNorm(),
        combinators.Select([0], n_in=3),  # vec_d tok_d
        core.Dense(output_vocab_size, kernel_axes=("embed", "vocab")),
        name="ReZeroTransformer",
    )


def _encoder_blocks(d_model, d_ff, n_layers, n_heads, dropout, dropout_shared_axes, mode, ff_activation):
    """`n_layers` Transformer encoder blocks with ReZero residuals (masked attention over the whole sequence)."""
    return [
        transformer._EncoderBlock(
            d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, ResidualZero
        )
        for _ in range(n_layers)
    ]


def _decoder_blocks(
    d_model, d_ff, n_layers, n_heads, dropout, dropout_shared_axes, max_len, mode, ff_activation
):
    """`n_layers` Transformer decoder blocks with ReZero residuals (causal attention, streaming)."""
    return [
        transformer._DecoderBlock(
            d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, max_len, ResidualZero
        )
        for _ in range(n_layers)
    ]
