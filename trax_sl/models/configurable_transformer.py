"""Configurable Transformers (Trax's research models): encoder, language model, encoder-decoder.

Names, arguments, defaults, stack semantics and layer trees are Trax's
(`trax.models.research.configurable_transformer`), and so are the public
block builders other models use: `EncoderBlock`, `DecoderBlock`,
`EncoderDecoderBlock`, `FeedForwardWithOptions`, `ApplyAttentionLayer`,
`PositionalEncoder` and `EmbeddingAndPositionalEncodings`.

Options whose layers trax_sl lacks raise a ValueError naming the model,
the option, its value and what is supported: sparse
encoder-decoder attention (`enc_dec_attention_sparsity`) and
`pos_type='time-bin'` (whose `time_bin_length` Trax's call never passes).

Differences from Trax, in the users' interest: the encoder of
`ConfigurableTransformer` is wrapped in `transformer.EncodeOnce` in every
mode (Trax wraps it in `Cache` in predict mode only), so that the weights
tree is the same in every mode; `pos_type='infinite'`/`'infinite-affine'`
get the model's `mode` (Trax's keep 'train', so they cannot stream); Trax's
shape assertions (`AssertFunction`) are plain `Serial`s, which leaves the
weights' leaves in Trax's order.

With the default options the language model streams: in predict mode the
state holds the positional encoding's count and each block's KV cache
(`CausalAttention`'s 2048 steps per row), so the stream a decoding loop
feeds (what `tl.ShiftRight` expects in predict mode: as in Trax, the
previous token, 0 first), one token at a time, gives the logits of the
whole sequence.
"""

from __future__ import annotations

import inspect

import trax_sl.layers as tl
from trax_sl.layers import base
from trax_sl.models import transformer

_POS_TYPES = (
    "None, 'sin-cos', 'fixed-base', 'infinite', 'infinite-affine', 'no', or any other value for axial"
)


def _lacking(where: str, option: str, value, needs: str, supported: str) -> ValueError:
    return ValueError(
        f"{where}: {option}={value!r} needs {needs}, which trax_sl does not have; supported: {supported}"
    )


def check_options(where: str, pos_type=None, enc_dec_attention_sparsity=0) -> None:
    """Raises a ValueError naming `where` for an option whose layers trax_sl lacks.

    Models call it first, so that the error names the model the user built.
    """
    if pos_type == "time-bin":
        raise _lacking(
            where,
            "pos_type",
            pos_type,
            "a time_bin_length for TimeBinPositionalEncoding (Trax's call passes none and fails)",
            _POS_TYPES,
        )
    if enc_dec_attention_sparsity not in (0, None) and not (
        isinstance(enc_dec_attention_sparsity, tuple)
        and all(s in (None, "noop") for s in enc_dec_attention_sparsity)
    ):
        raise _lacking(
            where,
            "enc_dec_attention_sparsity",
            enc_dec_attention_sparsity,
            "sparse query or output processors in AttentionQKV",
            "0, or a pair of None (Dense) / 'noop' (no layer)",
        )


def _FeedForward(d_model, d_ff, dropout, activation, act_dropout, use_bfloat16, mode):  # noqa: N802
    """Layers of the dense feed-forward block: Dense(d_ff), Dropout, activation, Dense(d_model)."""
    if act_dropout is None:
        act_dropout = dropout
    return [
        tl.Dense(d_ff, use_bfloat16=use_bfloat16),
        tl.Dropout(rate=act_dropout, shared_axes=[-2], mode=mode),
        activation(),
        tl.Dense(d_model, use_bfloat16=use_bfloat16, kernel_axes=("mlp", "embed")),
    ]


def FeedForwardWithOptions(  # noqa: N802
    d_model,
    d_ff,
    dropout,
    dropout_shared_axes,
    ff_activation,
    ff_dropout,
    ff_chunk_size,
    ff_use_sru,
    ff_sparsity,
    center_layernorm,
    mode,
    use_bfloat16=False,
    ff_sparsity_type="1inN",
):
    """Returns the feed-forward block with its options, as a one-item list: `[batch, time, d_model]` -> same.

    LayerNorm(center=center_layernorm), Dense(d_ff), Dropout(ff_dropout, or
    `dropout` when None, shared over time), `ff_activation`, Dense(d_model),
    Dropout(dropout). With `ff_chunk_size` > 0 the block runs on chunks of
    that many positions (all leading axes flattened into one). With
    `ff_use_sru` = n or (n, units) (units 32 when not given), the block is
    the shortcut of a Residual whose branch is LayerNorm, Dense(units), n
    SRU layers and Dense(d_model). `ff_sparsity` > 0 with `ff_sparsity_type`
    '1inN' uses `SparseFF` (its own dropout and chunks; see
    `_sparse_ff_options`), 'Block' `BlockSparseFF` and 'Switch'
    `SwitchSparseFF` with `ff_sparsity` experts; any other type uses the
    dense block, as in Trax.

    Predict mode: the SRU layers' carries, when there are SRUs; else stateless.
    """
    if ff_sparsity and ff_sparsity_type == "1inN":
        n_elements_in_block, d_lowrank, temperature, quant_prob = _sparse_ff_options(ff_sparsity, d_ff)
        ff = tl.SparseFF(
            d_ff,
            n_elements_in_block=n_elements_in_block,
            d_lowrank=d_lowrank,
            temperature=temperature,
            quant_prob=quant_prob,
            use_bfloat16=use_bfloat16,
            mode=mode,
            dropout_rate=dropout,
            dropout_shared_axes=dropout_shared_axes,
            ff_chunk_size=ff_chunk_size,
        )
    elif ff_sparsity and ff_sparsity_type == "Block":
        ff = tl.BlockSparseFF(d_ff, n_experts=ff_sparsity, mode=mode)
    elif ff_sparsity and ff_sparsity_type == "Switch":
        ff = tl.SwitchSparseFF(d_ff, n_experts=ff_sparsity, mode=mode)
    else:
        ff = _FeedForward(d_model, d_ff, dropout, ff_activation, ff_dropout, use_bfloat16, mode)
    res = [tl.LayerNorm(center=center_layernorm), ff]
    if ff_sparsity_type != "1inN" or ff_sparsity == 0:  # SparseFF has its Dropout and chunks built in.
        res.append(tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode))
        if ff_chunk_size > 0:
            res = tl.BatchLeadingAxes(tl.Chunk(tl.Serial(res), ff_chunk_size))
    if ff_use_sru:
        if isinstance(ff_use_sru, (list, tuple)):
            sru_n_layers, sru_n_units = ff_use_sru
        else:
            sru_n_layers, sru_n_units = ff_use_sru, 32
        block = [
            tl.LayerNorm(center=center_layernorm),
            tl.Dense(sru_n_units),
            *[tl.SRU(sru_n_units, mode=mode) for _ in range(sru_n_layers)],
            tl.Dense(d_model),
        ]
        res = tl.Residual(block, shortcut=res)
    return [res]


def _sparse_ff_options(ff_sparsity, d_ff) -> tuple:
    """Trax's reading of ff_sparsity for SparseFF: (n_elements_in_block, d_lowrank, temperature, quant_prob).

    An int n is (n, d_ff // n); a pair (n, d_lowrank); a 4-tuple all four; a
    string (Trax's sweep files) is the numbers it lists.
    """
    if isinstance(ff_sparsity, str):
        ff_sparsity = [float(x) if "." in x else int(x) for x in ff_sparsity.split()]
    if isinstance(ff_sparsity, (list, tuple)):
        if len(ff_sparsity) == 2:
            return (*ff_sparsity, 0.1, 0.3)
        if len(ff_sparsity) == 4:
            return tuple(ff_sparsity)
        raise ValueError(
            f"FeedForwardWithOptions: ff_sparsity={ff_sparsity!r} must be n_elements_in_block, "
            f"(n_elements_in_block, d_lowrank) or (n_elements_in_block, d_lowrank, temperature, quant_prob)"
        )
    return ff_sparsity, d_ff // ff_sparsity, 0.1, 0.3


def _takes_efficient_attention_args(attention_type) -> bool:
    """Whether `attention_type` takes the efficient-attention arguments (`d_qk`, `causal`, ...).

    Trax tries that call and falls back on `TypeError`; asking the signature
    instead keeps a TypeError raised inside the constructor from being taken
    for a missing argument.
    """
    try:
        parameters = inspect.signature(attention_type).parameters
    except (TypeError, ValueError):  # No signature to read: Trax's way.
        return True
    return "d_qk" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def ApplyAttentionLayer(  # noqa: N802
    attention_type,
    d_model,
    n_heads,
    d_qk,
    d_v,
    causal,
    masked,
    attention_dropout,
    output_dropout,
    attention_chunk_size,
    mode,
):
    """Returns `attention_type` built with the arguments it takes, run on batch chunks of `attention_chunk_size`.

    Efficient-attention layers (`SelfAttention`, `LSHSelfAttention`, ...)
    get `n_heads, d_qk, d_v, causal, masked, output_dropout,
    attention_dropout, mode`; the others (`Attention`, `CausalAttention`,
    ...) get `d_model, n_heads, dropout=attention_dropout, mode`. With
    `attention_chunk_size` 0 the layer is returned as it is.
    """
    if _takes_efficient_attention_args(attention_type):
        attention = attention_type(
            n_heads=n_heads,
            d_qk=d_qk,
            d_v=d_v,
            causal=causal,
            masked=masked,
            output_dropout=output_dropout,
            attention_dropout=attention_dropout,
            mode=mode,
        )
    else:
        attention = attention_type(d_model, n_heads=n_heads, dropout=attention_dropout, mode=mode)
    return tl.Chunk(attention, attention_chunk_size)


def PositionalEncoder(  # noqa: N802
    mode,
    dropout=None,
    max_len=None,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
    use_bfloat16=False,
) -> base.Layer:
    """Returns the positional encoding layer `pos_type` names: `[..., d]` -> `[..., d]`.

    None or '': PositionalEncoding(max_len, dropout, ...); 'sin-cos':
    SinCosPositionalEncoding; 'fixed-base': FixedBasePositionalEncoding;
    'infinite' / 'infinite-affine': InfinitePositionalEncoding without / with
    affine phases; 'no': no encoding (an empty Serial); any other value:
    AxialPositionalEncoding(shape=pos_axial_shape, d_embs=pos_d_axial_embs),
    whose dropout is shared over the batch. 'time-bin' raises a ValueError
    (Trax's call lacks the layer's time_bin_length).

    Predict mode: the encodings keep each row's count of valid steps.
    """
    check_options("PositionalEncoder", pos_type=pos_type)
    dropout = 0.0 if dropout is None else dropout
    if not pos_type:
        return tl.PositionalEncoding(
            max_len=max_len,
            dropout=dropout,
            use_bfloat16=use_bfloat16,
            start_from_zero_prob=pos_start_from_zero_prob,
            max_offset_to_add=pos_max_offset_to_add,
            mode=mode,
        )
    if pos_type == "sin-cos":
        return tl.SinCosPositionalEncoding(mode=mode)
    if pos_type == "fixed-base":
        return tl.FixedBasePositionalEncoding(mode=mode)
    if pos_type == "infinite":
        return tl.InfinitePositionalEncoding(affine=False, mode=mode)
    if pos_type == "infinite-affine":
        return tl.InfinitePositionalEncoding(mode=mode)
    if pos_type == "no":
        return tl.Serial()
    if pos_axial_shape is None or pos_d_axial_embs is None:
        raise ValueError(
            f"PositionalEncoder: pos_type={pos_type!r} means axial positional encoding, which needs "
            f"pos_axial_shape and pos_d_axial_embs, got pos_axial_shape={pos_axial_shape!r}, "
            f"pos_d_axial_embs={pos_d_axial_embs!r}; the other pos_types are {_POS_TYPES}"
        )
    return tl.AxialPositionalEncoding(
        shape=pos_axial_shape,
        d_embs=pos_d_axial_embs,
        dropout_broadcast_dims=tuple(range(1, len(pos_axial_shape) + 1)),
        dropout=dropout,
        mode=mode,
    )


def EmbeddingAndPositionalEncodings(  # noqa: N802
    input_vocab_size,
    d_model,
    mode,
    embedding_dropout,
    dropout_shared_axes,
    max_len,
    output_vocab_size=None,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
    use_bfloat16=False,
):
    """Returns `(in_encoder, out_encoder, output_vocab_size)`: the embedders with positional encodings.

    Each encoder is Embedding(vocab_size, d_model) (Dense(d_model) for a
    vocab_size of None: inputs are vectors), Dropout and a
    `PositionalEncoder`: `[batch, time]` ids (or `[batch, time, f]` vectors)
    -> `[batch, time, d_model]`. With `output_vocab_size=None` both share
    the input embedding (one weight matrix) and the returned vocabulary size
    is `input_vocab_size`. Positional encodings are never shared. The input
    encoder runs in 'eval' mode when `mode` is 'predict': the encoder side
    is given whole, not stepped.
    """
    if not (input_vocab_size or output_vocab_size):
        raise ValueError(
            "EmbeddingAndPositionalEncodings: input_vocab_size or output_vocab_size must be given, got "
            f"input_vocab_size={input_vocab_size!r}, output_vocab_size={output_vocab_size!r}"
        )

    def Embedder(vocab_size, embedding_mode):  # noqa: N802
        if vocab_size is not None:
            embedding = tl.Embedding(vocab_size, d_model, use_bfloat16=use_bfloat16)
        else:
            embedding = tl.Dense(d_model, use_bfloat16=use_bfloat16, kernel_axes=(None, "embed"))
        return [
            embedding,
            tl.Dropout(rate=embedding_dropout, shared_axes=dropout_shared_axes, mode=embedding_mode),
        ]

    def Encoder(embedder, encoder_mode):  # noqa: N802
        return tl.Serial(
            embedder,
            PositionalEncoder(
                encoder_mode,
                dropout=embedding_dropout,
                max_len=max_len,
                pos_type=pos_type,
                pos_axial_shape=pos_axial_shape,
                pos_d_axial_embs=pos_d_axial_embs,
                pos_start_from_zero_prob=pos_start_from_zero_prob,
                pos_max_offset_to_add=pos_max_offset_to_add,
                use_bfloat16=use_bfloat16,
            ),
        )

    encoder_mode = "eval" if mode == "predict" else mode
    in_embedder = Embedder(input_vocab_size, encoder_mode)
    # The same layer objects, used twice: one shared weight matrix.
    out_embedder = in_embedder if output_vocab_size is None else Embedder(output_vocab_size, mode)
    if output_vocab_size is None:
        output_vocab_size = input_vocab_size
    return Encoder(in_embedder, encoder_mode), Encoder(out_embedder, mode), output_vocab_size


def _EmbeddingWithPositions(  # noqa: N802
    vocab_size,
    d_model,
    dropout,
    dropout_shared_axes,
    mode,
    max_len,
    pos_type,
    pos_axial_shape,
    pos_d_axial_embs,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
) -> list:
    """Trax's inline `positional_encoder`: Embedding(vocab_size, d_model), Dropout and `PositionalEncoder`.

    A list (Serial flattens it): ids `[batch, time]` -> `[batch, time,
    d_model]`. Also used by `reformer`'s language models, whose Trax code
    builds the same three layers.
    """
    return [
        tl.Embedding(vocab_size, d_model),
        tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        PositionalEncoder(
            mode,
            dropout,
            max_len,
            pos_type,
            pos_axial_shape,
            pos_d_axial_embs,
            pos_start_from_zero_prob,
            pos_max_offset_to_add,
        ),
    ]


def OutputLayer(  # noqa: N802
    vocab_size,
    d_input,
    loss_sparsity_type="mult",
    loss_sparsity=0,
    loss_d_lowrank=0,
    loss_sparsity_prob=None,
    mode="train",
    use_bfloat16=False,
):
    """The models' output layer: Trax's `SparseDenseWithOptions(vocab_size, ...)` over `d_input` features.

    Without loss sparsity (`loss_sparsity` 0 or `loss_sparsity_type` None,
    and no `loss_sparsity_prob`) a Dense whose kernel is sharded over
    ('embed', 'vocab'); else Trax's sparse output layer (FactoredDense for
    'mult', LowRankDense for 'lowrank', ..., chosen at random in training
    with `loss_sparsity_prob`). Also used by `reformer` and `terraformer`.
    """
    sparse = loss_sparsity_prob is not None or (loss_sparsity and loss_sparsity_type not in (None, "None"))
    if not sparse:
        return tl.Dense(vocab_size, use_bfloat16=use_bfloat16, kernel_axes=("embed", "vocab"))
    return tl.SparseDenseWithOptions(
        vocab_size,
        d_input=d_input,
        sparsity_type=loss_sparsity_type,
        sparsity=loss_sparsity,
        d_lowrank=loss_d_lowrank,
        prob_sparse=loss_sparsity_prob,
        mode=mode,
        use_bfloat16=use_bfloat16,
    )


def ConfigurableTransformerEncoder(  # noqa: N802
    vocab_size,
    n_classes=10,
    d_model=transformer.D_MODEL,
    d_ff=transformer.D_FF,
    n_layers=transformer.N_LAYERS,
    n_heads=transformer.N_HEADS,
    max_len=transformer.MAX_SEQUENCE_LENGTH,
    dropout=transformer.DROPOUT_RATE,
    dropout_shared_axes=transformer.DROPOUT_SHARED_AXES,
    mode=transformer.MODE,
    ff_activation=tl.Relu,
    ff_dropout=0.1,
    ff_chunk_size=0,
    ff_use_sru=0,
    ff_sparsity=0,
    ff_sparsity_type="1inN",
    attention_chunk_size=0,
    attention_type=tl.Attention,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
) -> base.Layer:
    """Returns a configurable Transformer encoder for N-way classification of token sequences.

    n_in=1, n_out=1. Token ids `[batch, time]` (0 marks padding) ->
    activations `[batch, n_classes]`: embedding, Dropout, positional encoding
    (`pos_type`), `n_layers` `EncoderBlock`s (attention `attention_type`
    over the whole sequence, masked by padding; `FeedForwardWithOptions`),
    LayerNorm, the mean over time and Dense(n_classes).

    Not streamable: every step attends to the whole sequence and the output
    is a mean over time.
    """
    check_options("ConfigurableTransformerEncoder", pos_type=pos_type)
    positional_encoder = tl.Serial(
        _EmbeddingWithPositions(
            vocab_size,
            d_model,
            dropout,
            dropout_shared_axes,
            mode,
            max_len,
            pos_type,
            pos_axial_shape,
            pos_d_axial_embs,
        )
    )
    encoder_blocks = [
        EncoderBlock(
            d_model,
            d_ff,
            n_heads,
            dropout,
            dropout_shared_axes,
            mode,
            ff_activation,
            ff_dropout,
            ff_chunk_size,
            ff_use_sru,
            ff_sparsity,
            ff_sparsity_type,
            attention_chunk_size,
            attention_type,
        )
        for _ in range(n_layers)
    ]
    return tl.Serial(  # toks
        tl.Branch(positional_encoder, tl.PaddingMask()),  # vecs masks
        encoder_blocks,  # vecs masks
        tl.Select([0], n_in=2),  # vecs
        tl.LayerNorm(),  # vecs
        tl.Mean(axis=1),  # vecs
        tl.Dense(n_classes, kernel_axes=("embed", None)),  # vecs
        name="ConfigurableTransformerEncoder",
    )


def ConfigurableTransformerLM(  # noqa: N802
    vocab_size,
    d_model=transformer.D_MODEL,
    d_ff=transformer.D_FF,
    n_layers=transformer.N_LAYERS,
    n_heads=transformer.N_HEADS,
    max_len=transformer.MAX_SEQUENCE_LENGTH,
    dropout=transformer.DROPOUT_RATE,
    dropout_shared_axes=transformer.DROPOUT_SHARED_AXES,
    mode=transformer.MODE,
    ff_activation=tl.Relu,
    ff_dropout=0.1,
    ff_chunk_size=0,
    ff_use_sru=0,
    ff_sparsity=0,
    ff_sparsity_type="1inN",
    loss_sparsity_type="mult",
    loss_sparsity=0,
    loss_d_lowrank=0,
    loss_sparsity_prob=None,
    attention_chunk_size=0,
    attention_type=tl.CausalAttention,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
) -> base.Layer:
    """Returns a configurable Transformer language model: ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding, Dropout, positional encoding
    (`pos_type`), `n_layers` `DecoderBlock`s (causal `attention_type`,
    `FeedForwardWithOptions`), LayerNorm, Dense(vocab_size): the logits at
    step t predict token t from tokens < t. The output layer is `OutputLayer`
    (a Dense, or Trax's sparse output layers with `loss_sparsity`).

    Predict mode (default options, and any options whose layers stream):
    the state holds each row's count of valid steps (positional encoding),
    each block's KV cache (2048 steps per row) and any SRU carries. Feed
    what `tl.ShiftRight` expects in predict mode (as in Trax: the previous
    token, 0 first), one or more steps per call.
    """
    check_options("ConfigurableTransformerLM", pos_type=pos_type)
    positional_encoder = _EmbeddingWithPositions(
        vocab_size,
        d_model,
        dropout,
        dropout_shared_axes,
        mode,
        max_len,
        pos_type,
        pos_axial_shape,
        pos_d_axial_embs,
        pos_start_from_zero_prob,
        pos_max_offset_to_add,
    )
    decoder_blocks = [
        DecoderBlock(
            d_model,
            d_ff,
            n_heads,
            dropout,
            dropout_shared_axes,
            mode,
            ff_activation,
            ff_dropout,
            ff_chunk_size,
            ff_use_sru,
            ff_sparsity,
            ff_sparsity_type,
            attention_chunk_size,
            attention_type,
        )
        for _ in range(n_layers)
    ]
    return tl.Serial(  # toks
        tl.ShiftRight(mode=mode),  # toks
        positional_encoder,  # vecs
        decoder_blocks,  # vecs
        tl.LayerNorm(),  # vecs
        OutputLayer(
            vocab_size, d_model, loss_sparsity_type, loss_sparsity, loss_d_lowrank, loss_sparsity_prob, mode
        ),  # logits
        name="ConfigurableTransformerLM",
    )


def ConfigurableTransformer(  # noqa: N802
    input_vocab_size,
    output_vocab_size=None,
    d_model=transformer.D_MODEL,
    d_ff=transformer.D_FF,
    n_encoder_layers=transformer.N_LAYERS,
    n_decoder_layers=transformer.N_LAYERS,
    n_heads=transformer.N_HEADS,
    max_len=transformer.MAX_SEQUENCE_LENGTH,
    dropout=transformer.DROPOUT_RATE,
    dropout_shared_axes=transformer.DROPOUT_SHARED_AXES,
    mode=transformer.MODE,
    ff_activation=tl.Relu,
    ff_dropout=0.1,
    ff_chunk_size=0,
    ff_use_sru=0,
    ff_sparsity=0,
    ff_sparsity_type="1inN",
    loss_sparsity_type="mult",
    loss_sparsity=0,
    loss_d_lowrank=0,
    loss_sparsity_prob=None,
    attention_chunk_size=0,
    encoder_attention_type=tl.Attention,
    encoder_decoder_attention_type=tl.CausalAttention,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
    enc_dec_attention_sparsity=0,
) -> base.Layer:
    """Returns a configurable encoder-decoder Transformer: `(source, target)` -> `(logits, target)`.

    n_in=2, n_out=2. Source ids `[batch, source_time]` and target ids
    `[batch, time]` (0 marks padding) -> logits `[batch, time,
    output_vocab_size]` (step t predicts target token t from the source and
    target tokens < t) and the target ids, as in Trax. With
    `output_vocab_size=None` source and target share one embedding.

    Streams in the target with the default options (the source given whole
    at every step). Predict mode: the state holds the encoded source
    (`transformer.EncodeOnce`: encoded on the first step in 'eval' mode), the
    cross attentions' keys and values, the target's position count and the
    decoder's KV caches; the target stream is fed as `tl.ShiftRight`
    expects in predict mode.
    """
    check_options(
        "ConfigurableTransformer", pos_type=pos_type, enc_dec_attention_sparsity=enc_dec_attention_sparsity
    )
    in_encoder, out_encoder, output_vocab_size = EmbeddingAndPositionalEncodings(
        input_vocab_size,
        d_model,
        mode,
        dropout,
        dropout_shared_axes,
        max_len,
        output_vocab_size=output_vocab_size,
        pos_type=pos_type,
        pos_axial_shape=pos_axial_shape,
        pos_d_axial_embs=pos_d_axial_embs,
    )
    block_options = (
        d_model,
        d_ff,
        n_heads,
        dropout,
        dropout_shared_axes,
        mode,
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        ff_sparsity_type,
        attention_chunk_size,
    )
    encoder_blocks = [EncoderBlock(*block_options, encoder_attention_type) for _ in range(n_encoder_layers)]
    encoder = tl.Serial(in_encoder, encoder_blocks, tl.LayerNorm())
    encoder_decoder_blocks = [
        EncoderDecoderBlock(*block_options, encoder_decoder_attention_type, enc_dec_attention_sparsity)
        for _ in range(n_decoder_layers)
    ]
    return tl.Serial(
        tl.Select([0, 1, 1]),  # tok_e tok_d tok_d: copies the decoder tokens for the loss.
        tl.Branch([], tl.PaddingMask()),  # tok_e masks tok_d tok_d
        transformer.EncodeOnce(encoder, mode=mode),  # vec_e masks tok_d tok_d
        tl.Select([2, 1, 0]),  # tok_d masks vec_e tok_d
        tl.ShiftRight(mode=mode),  # tok_d masks vec_e tok_d
        out_encoder,  # vec_d masks vec_e tok_d
        tl.Branch([], tl.EncoderDecoderMask()),  # vec_d masks vec_e tok_d
        encoder_decoder_blocks,  # vec_d masks vec_e tok_d
        tl.LayerNorm(),  # vec_d masks vec_e tok_d
        tl.Select([0], n_in=3),  # vec_d tok_d
        OutputLayer(
            output_vocab_size,
            d_model,
            loss_sparsity_type,
            loss_sparsity,
            loss_d_lowrank,
            loss_sparsity_prob,
            mode,
        ),  # logits tok_d
        name="ConfigurableTransformer",
    )


def _Dropout(dropout, dropout_shared_axes, mode):  # noqa: N802
    return tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)


def EncoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    ff_dropout,
    ff_chunk_size,
    ff_use_sru,
    ff_sparsity,
    ff_sparsity_type,
    attention_chunk_size,
    attention_type,
    n_attention_layers=1,
    n_feedforward_layers=1,
):
    """Returns the layers of a Transformer encoder block: `(activations, mask)` -> same.

    `n_attention_layers` Residual(LayerNorm, `attention_type` (not causal,
    masked by the padding mask), Dropout), then `n_feedforward_layers`
    Residual(`FeedForwardWithOptions`).
    """
    return _AttentionBlocks(
        n_attention_layers,
        attention_type,
        d_model,
        n_heads,
        dropout,
        dropout_shared_axes,
        attention_chunk_size,
        mode,
        causal=False,
        masked=True,
    ) + _FeedForwards(
        n_feedforward_layers,
        d_model,
        d_ff,
        dropout,
        dropout_shared_axes,
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        mode,
        ff_sparsity_type,
    )


def DecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    ff_dropout,
    ff_chunk_size,
    ff_use_sru,
    ff_sparsity,
    ff_sparsity_type,
    attention_chunk_size,
    attention_type,
    n_attention_layers=1,
    n_feedforward_layers=1,
):
    """Returns the layers of a Transformer decoder block: `activations` -> same.

    `n_attention_layers` Residual(LayerNorm, causal `attention_type`,
    Dropout), then `n_feedforward_layers` Residual(`FeedForwardWithOptions`).
    Streams when its attention does (CausalAttention: a KV cache in the state).
    """
    return _AttentionBlocks(
        n_attention_layers,
        attention_type,
        d_model,
        n_heads,
        dropout,
        dropout_shared_axes,
        attention_chunk_size,
        mode,
        causal=True,
        masked=False,
    ) + _FeedForwards(
        n_feedforward_layers,
        d_model,
        d_ff,
        dropout,
        dropout_shared_axes,
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        mode,
        ff_sparsity_type,
    )


def _AttentionBlocks(  # noqa: N802
    n_layers,
    attention_type,
    d_model,
    n_heads,
    dropout,
    dropout_shared_axes,
    attention_chunk_size,
    mode,
    causal,
    masked,
):
    """`n_layers` Residual(LayerNorm, `ApplyAttentionLayer` with `d_model // n_heads` per head, Dropout).

    The attention half of Trax's `EncoderBlock` (not causal, masked),
    `DecoderBlock` (causal, not masked) and `EncoderDecoderBlock` (causal,
    masked); `dropout` is also the attention's and its output's dropout.
    """
    return [
        tl.Residual(
            tl.LayerNorm(),
            ApplyAttentionLayer(
                attention_type,
                d_model,
                n_heads,
                d_model // n_heads,
                d_model // n_heads,
                causal=causal,
                masked=masked,
                attention_dropout=dropout,
                output_dropout=dropout,
                attention_chunk_size=attention_chunk_size,
                mode=mode,
            ),
            _Dropout(dropout, dropout_shared_axes, mode),
        )
        for _ in range(n_layers)
    ]


def _FeedForwards(  # noqa: N802
    n_layers,
    d_model,
    d_ff,
    dropout,
    dropout_shared_axes,
    ff_activation,
    ff_dropout,
    ff_chunk_size,
    ff_use_sru,
    ff_sparsity,
    mode,
    ff_sparsity_type,
):
    """`n_layers` Residual(FeedForwardWithOptions) with centred LayerNorm and float32 weights, as Trax's blocks."""
    return [
        tl.Residual(
            FeedForwardWithOptions(
                d_model,
                d_ff,
                dropout,
                dropout_shared_axes,
                ff_activation,
                ff_dropout,
                ff_chunk_size,
                ff_use_sru,
                ff_sparsity,
                True,
                mode,
                False,
                ff_sparsity_type,
            )
        )
        for _ in range(n_layers)
    ]


def EncoderDecoderBlock(  # noqa: N802
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    ff_dropout,
    ff_chunk_size,
    ff_use_sru,
    ff_sparsity,
    ff_sparsity_type,
    attention_chunk_size,
    attention_type,
    enc_dec_attention_sparsity=0,
):
    """Returns the layers of a Transformer encoder-decoder block: `(vec_d, masks, vec_e)` -> same.

    Residual(LayerNorm, causal `attention_type`, Dropout), Residual(LayerNorm,
    attention to the encoder (`AttentionQKV`, its keys and values cached in
    predict mode), Dropout), Residual(`FeedForwardWithOptions`).
    `enc_dec_attention_sparsity` may be 0 or a pair of None / 'noop' for the
    query and output projections; sparse ones need layers trax_sl lacks.
    """
    check_options("EncoderDecoderBlock", enc_dec_attention_sparsity=enc_dec_attention_sparsity)
    if isinstance(enc_dec_attention_sparsity, tuple):
        q_sparsity, result_sparsity = enc_dec_attention_sparsity
    else:
        q_sparsity, result_sparsity = None, None
    attention_qkv = tl.AttentionQKV(
        d_model,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
        cache_KV_in_predict=True,
        q_sparsity=q_sparsity,
        result_sparsity=result_sparsity,
    )
    causal_attention = _AttentionBlocks(  # vec_d masks vec_e
        1,
        attention_type,
        d_model,
        n_heads,
        dropout,
        dropout_shared_axes,
        attention_chunk_size,
        mode,
        causal=True,
        masked=True,
    )
    feed_forward = _FeedForwards(  # vec_d masks vec_e
        1,
        d_model,
        d_ff,
        dropout,
        dropout_shared_axes,
        ff_activation,
        ff_dropout,
        ff_chunk_size,
        ff_use_sru,
        ff_sparsity,
        mode,
        ff_sparsity_type,
    )
    encoder_attention = tl.Residual(
        tl.LayerNorm(),  # vec_d masks vec_e
        tl.Select([0, 2, 2, 1, 2]),  # vec_d vec_e vec_e masks vec_e
        attention_qkv,  # vec_d masks vec_e
        _Dropout(dropout, dropout_shared_axes, mode),  # vec_d masks vec_e
    )
    return [*causal_attention, encoder_attention, *feed_forward]  # vec_d masks vec_e
