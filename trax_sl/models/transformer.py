"""Transformer models (Trax's): encoder, decoder, language model and encoder-decoder.

Names, arguments, defaults and stack semantics are Trax's
(`trax.models.transformer`); so are the weights trees with
`scan_layers=False`. The decoder side streams in predict mode: the
KV caches of `CausalAttention` and the position count of
`PositionalEncoding` live in the state, so that autoregressive decoding feeds
one token at a time and gets what the whole sequence gives layer-wise. As in
Trax, the predict-mode `ShiftRight` is a no-op: a decoding loop feeds the
start token, then each previous token (the shifted stream).

The blocks run as one `Repeat` by default (`scan_layers=True`): one
compiled body, traced once whatever the depth, with each weight of the
blocks stacked on a leading 'layers' axis. `scan_layers=False` gives
Trax's layout, each block's layers in the model's Serial; Trax's weights
files load into either (`init_from_file`), and
`trax_checkpoint.convert_weights` moves weights between the two. Decoding
runs faster unrolled on a CPU, where taking each block's weights out of
their stack at every token copies them (the KV caches are each block's
own in predict mode). `remat` ('none', 'full',
'dots_saveable', 'minimal': `tl.repeat.REMAT_POLICIES`) rematerialises
each block in training without changing the weights tree.

The KV caches hold `max_len` tokens per row (`CausalAttention`'s
`max_inference_length`), as many as `PositionalEncoding` has positions; past
that a row's outputs are invalid (mask False) or NaN, never silently wrong.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl.layers import (
    activation_fns,
    attention,
    base,
    combinators,
    core,
    normalization,
    position,
    repeat,
    streaming,
)

# Defaults used across Transformer variants (Trax's).
MODE = "train"
D_MODEL = 512
D_FF = 2048
N_LAYERS = 6
N_HEADS = 8
MAX_SEQUENCE_LENGTH = 2048
DROPOUT_RATE = 0.1
DROPOUT_SHARED_AXES = None
FF_ACTIVATION_TYPE = activation_fns.Relu


def TransformerEncoder(  # noqa: N802
    vocab_size: int,
    n_classes: int = 10,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes=DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation=FF_ACTIVATION_TYPE,
    remat: str = "none",
    scan_layers: bool = True,
) -> base.Layer:
    """Returns a Transformer encoder for N-way classification of token sequences.

    n_in=1, n_out=1. Token ids `[batch, time]` (0 marks padding; a Sequence's
    invalid steps are padding too) -> activations `[batch, n_classes]`:
    embedding, positional encoding, `n_layers` encoder blocks (self-attention
    over the whole sequence, feed-forward), LayerNorm, the mean over time
    (over valid steps for a Sequence) and a Dense layer.

    Not streamable: every step attends to the whole sequence and the output
    is a mean over time (supports_step is False).
    """

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return combinators.Serial(
        combinators.Branch([], attention.PaddingMask()),  # Creates masks from copy of the tokens.
        core.Embedding(vocab_size, d_model),
        _Dropout(),
        position.PositionalEncoding(max_len=max_len, mode=mode),
        _blocks(
            lambda: _EncoderBlock(d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation),
            n_layers,
            remat,
            scan_layers,
        ),
        combinators.Select([0], n_in=2),  # Drops the masks.
        normalization.LayerNorm(),
        core.Mean(axis=1),
        core.Dense(n_classes, kernel_axes=("embed", None)),
        name="TransformerEncoder",
    )


def TransformerDecoder(  # noqa: N802
    vocab_size: int | None = None,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes=DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation=FF_ACTIVATION_TYPE,
    remat: str = "none",
    scan_layers: bool = True,
) -> base.Layer:
    """Returns a Transformer decoder (causal attention, no shift): `[batch, time, ...]` -> `[batch, time, d_model]`.

    n_in=1, n_out=1. Token ids `[batch, time]` (with `vocab_size`) or vectors
    `[batch, time, d_model]` (`vocab_size=None`: a Dense layer embeds them);
    output step t sees input steps <= t. Streams with block_size 1 and no
    latency.

    Predict mode: the state holds each block's KV cache (`max_len` steps per
    row) and the positional encoding's count of valid steps per row.
    """
    if vocab_size is not None:
        embedder = core.Embedding(vocab_size, d_model)
    else:
        embedder = core.Dense(d_model, kernel_axes=(None, "embed"))
    return combinators.Serial(
        embedder,
        core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        position.PositionalEncoding(max_len=max_len, mode=mode),
        _blocks(
            lambda: _DecoderBlock(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, max_len
            ),
            n_layers,
            remat,
            scan_layers,
        ),
        normalization.LayerNorm(),
        name="TransformerDecoder",
    )


def TransformerLM(  # noqa: N802
    vocab_size: int,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes=DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation=FF_ACTIVATION_TYPE,
    remat: str = "none",
    scan_layers: bool = True,
) -> base.Layer:
    """Returns a Transformer language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding, Dropout, PositionalEncoding,
    `n_layers` decoder blocks (Residual(LayerNorm, CausalAttention, Dropout),
    Residual(LayerNorm, feed-forward, Dropout)), LayerNorm, Dense(vocab_size):
    the logits at step t predict token t from tokens < t. A Sequence input
    gives logits with its mask. Streams with block_size 1 and no latency.

    Predict mode: the state holds each row's count of valid steps
    (PositionalEncoding) and each block's KV cache of `max_len` steps per
    row. As in Trax, feed the shifted tokens (0, then each previous token),
    one (or more) per step: the logits of step t are those the whole
    sequence gives at t.
    """

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        core.Embedding(vocab_size, d_model),
        _Dropout(),
        position.PositionalEncoding(max_len=max_len, mode=mode),
        _blocks(
            lambda: _DecoderBlock(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, max_len
            ),
            n_layers,
            remat,
            scan_layers,
        ),
        normalization.LayerNorm(),
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="TransformerLM",
    )


def Transformer(  # noqa: N802
    input_vocab_size: int,
    output_vocab_size: int | None = None,
    d_model: int = D_MODEL,
    d_ff: int = D_FF,
    n_encoder_layers: int = N_LAYERS,
    n_decoder_layers: int = N_LAYERS,
    n_heads: int = N_HEADS,
    max_len: int = MAX_SEQUENCE_LENGTH,
    dropout: float = DROPOUT_RATE,
    dropout_shared_axes=DROPOUT_SHARED_AXES,
    mode: str = MODE,
    ff_activation=FF_ACTIVATION_TYPE,
    remat: str = "none",
    scan_layers: bool = True,
) -> base.Layer:
    """Returns an encoder-decoder Transformer: `(source, target)` -> `(logits, target)`.

    n_in=2, n_out=2. Source ids `[batch, source_time]` and target ids
    `[batch, time]` (0 marks padding; Sequences' invalid steps too) ->
    logits `[batch, time, output_vocab_size]` (step t predicts target token
    t from the source and target tokens < t) and the target ids, as in Trax.
    With `output_vocab_size=None` source and target share one vocabulary and
    one embedding.

    Streams in the target (block_size 1, no latency); the source is given
    whole at every step. Predict mode: the state holds the encoded source
    (encoded once, on the first step, by the encoder in 'eval' mode), the
    cross attentions' projected keys and values (computed on the first
    step), the target's position count and the decoder's KV caches
    (`max_len` steps per row). As in Trax, feed the shifted target (0, then
    each previous token).
    """
    in_embedder = core.Embedding(input_vocab_size, d_model)
    if output_vocab_size is None:
        out_embedder = in_embedder  # Shared: one weight matrix, used twice.
        output_vocab_size = input_vocab_size
    else:
        out_embedder = core.Embedding(output_vocab_size, d_model)

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    encoder = combinators.Serial(
        in_embedder,
        _Dropout(),
        position.PositionalEncoding(max_len=max_len, mode=mode),
        _blocks(
            lambda: _EncoderBlock(d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation),
            n_encoder_layers,
            remat,
            scan_layers,
        ),
        normalization.LayerNorm(),
        name="Encoder",
    )
    # Input to model is encoder-side tokens and decoder-side tokens: tok_e, tok_d.
    # Model output is decoder-side vectors and decoder-side tokens: vec_d, tok_d.
    return combinators.Serial(
        combinators.Select([0, 1, 1]),  # Copies decoder tokens for use in loss.
        # Encode.
        combinators.Branch([], attention.PaddingMask()),  # tok_e masks tok_d tok_d
        EncodeOnce(encoder, mode=mode),  # vec_e masks tok_d tok_d
        # Decode.
        combinators.Select([2, 1, 0]),  # tok_d masks vec_e tok_d
        attention.ShiftRight(mode=mode),
        out_embedder,
        _Dropout(),
        position.PositionalEncoding(max_len=max_len, mode=mode),
        combinators.Branch([], attention.EncoderDecoderMask()),  # vec_d masks vec_e tok_d
        _blocks(
            lambda: _EncoderDecoderBlock(
                d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, max_len
            ),
            n_decoder_layers,
            remat,
            scan_layers,
        ),
        normalization.LayerNorm(),
        combinators.Select([0], n_in=3),  # Drops masks and encoding vectors.
        # Map vectors to match output vocab size.
        core.Dense(output_vocab_size, kernel_axes=("embed", "vocab")),
        name="Transformer",
    )


class EncodeOnce(base.Layer):
    """Runs an encoder over a whole (non-streamed) input; in predict mode once per stream.

    n_in, n_out: the encoder's. In 'train' and 'eval' mode it is the encoder
    (weights `(encoder_weights,)`). In predict mode the encoder runs in
    'eval' mode on the first step (its input is the whole source, given
    again at every step) and its outputs are reused after: the source is not
    streamed, so its positions and attention are those of the whole source,
    as layer-wise. Streams trivially (block_size 1, no latency) in the items
    that flow past it. Trax's Transformer wraps its encoder in `Cache` for
    this.

    Predict mode: the state holds whether each row's input is encoded
    (`[batch]`, so that a row's stream restarts alone), the encoder's
    outputs, and the ('eval'-mode) encoder's state.
    """

    handles_sequences = True

    def __init__(self, encoder: base.Layer, mode: str = "train"):
        super().__init__(
            n_in=encoder.n_in, n_out=encoder.n_out, name="EncodeOnce", sublayers_to_print=[encoder]
        )
        self._sublayers = (encoder,)
        # The 'eval' twin has the same weights tree; with_mode copies share it.
        self._eval_encoder = encoder.with_mode("eval")
        self._mode = mode

    # The source is encoded whole; the items flowing past step pointwise.
    streaming_spec = streaming.POINTWISE

    def init_with_output_signature(self, input_signature, rng):
        encoder = self.sublayers[0]
        # The weights come from the sublayer itself, so that layers shared with
        # the rest of the model are marked SHARED exactly as in the other modes.
        weights, state, out = base.init_sublayer(0, encoder, input_signature, rng)
        if self._mode != "predict":
            return (weights,), (state,), out
        eval_state = self._eval_encoder.init_tree(input_signature, rng)[1]
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)
        stored = jnp.zeros((jax.tree.leaves(out)[0].shape[0],), jnp.bool_)  # Per row: streams restart alone.
        return (weights,), (stored, zeros, eval_state), out

    def forward(self, x, weights, state, rng):
        if self._mode != "predict":
            y, new_state = base.call_sublayer(0, self.sublayers[0], x, weights[0], state[0], rng)
            return y, (new_state,)
        stored, cached, inner = state
        y, inner, stored = attention.compute_once_per_row(
            stored,
            cached,
            inner,
            lambda: base.call_sublayer(0, self._eval_encoder, x, weights[0], inner, rng),
        )
        return y, (stored, y, inner)


def _check_d_model(model: str, d_model: int, n_heads: int) -> None:
    if d_model % n_heads:
        raise ValueError(
            f"{model}: d_model must be a multiple of n_heads, got d_model={d_model}, n_heads={n_heads}"
        )


def _blocks(make_block, n_blocks: int, remat: str, scan_layers: bool):
    """`n_blocks` blocks from `make_block()` (Trax's list of layers), in series.

    With `scan_layers` they are one `Repeat` of the block: one compiled body
    whose weights are stacked on a leading 'layers' axis, traced once
    whatever `n_blocks` is; else Trax's layout, each block's layers in the
    model's Serial. `remat` ('none' or a name of `REMAT_POLICIES`)
    rematerialises each block in training, without changing the weights
    tree, so a checkpoint loads whatever `remat` trained it.
    """
    if remat != "none" and remat not in repeat.REMAT_POLICIES:
        raise ValueError(f"remat must be 'none' or one of {sorted(repeat.REMAT_POLICIES)}, got {remat!r}")
    if scan_layers and n_blocks:
        return repeat.Repeat(combinators.Serial(make_block()), n_blocks, remat=remat)
    if remat == "none":
        return [make_block() for _ in range(n_blocks)]
    return [
        [repeat.CheckpointGradient(layer, policy=remat) for layer in make_block()] for _ in range(n_blocks)
    ]


def _EncoderBlock(  # noqa: N802
    d_model, d_ff, n_heads, dropout, dropout_shared_axes, mode, ff_activation, residual=combinators.Residual
):
    """Layers of an encoder block: `(activations, mask)` -> same; attention over the whole sequence.

    `residual` wraps each sub-block (ReZero's models pass their `ResidualZero`).
    """
    _check_d_model("Transformer encoder block", d_model, n_heads)

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [
        residual(
            normalization.LayerNorm(),
            attention.Attention(d_model, n_heads=n_heads, dropout=dropout, mode=mode),
            _Dropout(),
        ),
        residual(
            normalization.LayerNorm(),
            _FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation),
            _Dropout(),
        ),
    ]


def _DecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    max_len,
    residual=combinators.Residual,
):
    """Layers of a decoder block: `activations` -> same; causal attention, streaming.

    `residual` wraps each sub-block (ReZero's models pass their `ResidualZero`).
    """
    _check_d_model("Transformer decoder block", d_model, n_heads)

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [
        residual(
            normalization.LayerNorm(),
            attention.CausalAttention(
                d_model, n_heads=n_heads, dropout=dropout, max_inference_length=max_len, mode=mode
            ),
            _Dropout(),
        ),
        residual(
            normalization.LayerNorm(),
            _FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation),
            _Dropout(),
        ),
    ]


def _EncoderDecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    max_len,
    residual=combinators.Residual,
):
    """Layers of an encoder-decoder block: `(vec_d, masks, vec_e)` -> same.

    `residual` wraps each sub-block (ReZero's models pass their `ResidualZero`).
    """
    _check_d_model("Transformer encoder-decoder block", d_model, n_heads)

    def _Dropout():  # noqa: N802
        return core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [  # vec_d masks vec_e
        residual(
            normalization.LayerNorm(),
            # No attention dropout here, as in Trax.
            attention.CausalAttention(d_model, n_heads=n_heads, max_inference_length=max_len, mode=mode),
            _Dropout(),
        ),
        residual(
            normalization.LayerNorm(),
            combinators.Select([0, 2, 2, 1, 2]),  # vec_d vec_e vec_e masks vec_e
            attention.AttentionQKV(
                d_model, n_heads=n_heads, dropout=dropout, mode=mode, cache_KV_in_predict=True
            ),  # vec_d masks vec_e
            _Dropout(),
        ),
        residual(
            normalization.LayerNorm(),
            _FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation),
            _Dropout(),
        ),
    ]


def _FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, activation):  # noqa: N802
    """Layers of the feed-forward block: Dense(d_ff), activation, Dropout, Dense(d_model)."""
    return [
        core.Dense(d_ff),
        activation(),
        core.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        core.Dense(d_model, kernel_axes=("mlp", "embed")),
    ]
