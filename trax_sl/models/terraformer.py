"""The Terraformer (Trax's research model): a reversible encoder-decoder over one concatenated sequence.

Names, arguments, defaults, stack semantics and layer trees are Trax's
(`trax.models.research.terraformer`). The reversible blocks are
`reformer.EncoderBlock` and `reformer.DecoderBlock`; the layers Trax borrows
from `transformer2` (`ConcatWithPadding`, `ConcatWithPadding2`,
`StripFromConcatenateWithPadding`) are here. The encoder runs over the source; its
valid vectors and the embedded target are then concatenated per row (the
target right after the source's last valid step) and the decoder blocks run
causally over that sequence; the target's positions are cut out again for
the output layer.

Not streamable: Trax's predict mode feeds the whole source with the first
target token and patches a mask into the attention and SRU classes at
runtime; trax_sl keeps layers stateless, so `mode='predict'` raises a
ValueError (and the 'train'/'eval' model's predict twin reports that it
does not stream). Sparse feed-forward (`ff_sparsity`) and output layers
(`loss_sparsity`, `loss_sparsity_prob`) are Trax's, as in
`configurable_transformer`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import trax_sl.layers as tl
from trax_sl.layers import base
from trax_sl.models import configurable_transformer as ct
from trax_sl.models import reformer


def ConfigurableTerraformer(  # noqa: N802
    input_vocab_size,
    output_vocab_size=None,
    d_model=512,
    d_ff=2048,
    d_attention_key=None,
    d_attention_value=None,
    n_encoder_layers=6,
    n_decoder_layers=6,
    n_heads=8,
    dropout=0.1,
    max_len=2048,
    encoder_attention_type=tl.SelfAttention,
    encoder_decoder_attention_type=tl.SelfAttention,
    pos_type="fixed-base",
    pos_axial_shape=(),
    pos_d_axial_embs=None,
    pos_start_from_zero_prob=1.0,
    pos_max_offset_to_add=0,
    ff_activation=tl.Relu,
    ff_use_sru=0,
    ff_chunk_size=0,
    ff_dropout=None,
    ff_sparsity=0,
    loss_sparsity_type="mult",
    loss_sparsity=0,
    loss_d_lowrank=0,
    loss_sparsity_prob=None,
    attention_chunk_size=0,
    n_layers_forget=0,
    forget_dense=True,
    n_decoder_attention_layers=2,
    use_bfloat16=False,
    reversible_encoder=False,
    use_two_swaps_per_encoder_block=True,
    center_layernorm=True,
    half_before_layer=None,
    double_after_layer=None,
    mode="train",
) -> base.Layer:
    """Returns a configurable Terraformer encoder-decoder: `(source, target)` -> `(logits, target)`.

    With `input_vocab_size`: n_in=2, source ids `[batch, source_time]` and
    target ids `[batch, time]` (0 marks padding). With
    `input_vocab_size=None`: n_in=3, source vectors `[batch, source_time,
    f]`, the source mask `[batch, source_time]` and target ids. n_out=2:
    logits `[batch, time, output_vocab_size]` (step t predicts target token t
    from the source and the target tokens < t) and the target ids.

    Embedding with positional encoding (`pos_type`); `n_encoder_layers`
    reversible encoder blocks (`encoder_attention_type`) on a pair of
    copies, averaged, Dense and LayerNorm (or kept as a pair with
    `reversible_encoder`); the source's valid steps and the shifted, embedded
    target concatenated per row; `n_decoder_layers` reversible decoder blocks
    (each with `n_decoder_attention_layers` causal attentions of
    `encoder_decoder_attention_type`, which may be a list cycled over the
    layers), a forgetting layer every `n_layers_forget` layers, the average
    of the pair, LayerNorm, the target's positions and Dense. The first
    `half_before_layer` decoder layers (and the encoder) run at half width;
    those after `double_after_layer` at double width.

    Not streamable (mode 'predict' raises a ValueError; see the module).
    """
    ct.check_options("ConfigurableTerraformer", pos_type=pos_type)
    if mode == "predict":
        raise ValueError(
            "ConfigurableTerraformer: mode='predict' is not supported (Trax's predict mode patches a mask "
            "into attention and SRU classes at runtime, which trax_sl's stateless layers do not allow); "
            "supported: mode='train' or 'eval'"
        )
    if d_model % 2 or (d_model // 2) % n_heads:
        raise ValueError(
            f"ConfigurableTerraformer: n_heads must divide d_model/2, got n_heads={n_heads}, d_model={d_model}"
        )
    if d_attention_key is None:
        d_attention_key = d_model // n_heads
    if d_attention_value is None:
        d_attention_value = d_model // n_heads

    # Widths of the first stage (the encoder and the layers before half_before_layer) ...
    d_model1, d_ff1, d_key1, d_value1 = d_model, d_ff, d_attention_key, d_attention_value
    if half_before_layer:
        d_model1, d_ff1, d_key1, d_value1 = (
            _half("d_model", d_model),
            _half("d_ff", d_ff),
            _half("d_attention_key", d_attention_key),
            _half("d_attention_value", d_attention_value),
        )
    # ... and of the last (the layers after double_after_layer).
    d_model2, d_ff2, d_key2, d_value2 = d_model, d_ff, d_attention_key, d_attention_value
    if double_after_layer:
        d_model2, d_ff2, d_key2, d_value2 = 2 * d_model, 2 * d_ff, 2 * d_attention_key, 2 * d_attention_value

    in_encoder, out_encoder, output_vocab_size = ct.EmbeddingAndPositionalEncodings(
        input_vocab_size,
        d_model1,
        mode,
        dropout,
        [-2],  # dropout_shared_axes
        max_len,
        output_vocab_size=output_vocab_size,
        pos_type=pos_type,
        pos_axial_shape=pos_axial_shape,
        pos_d_axial_embs=pos_d_axial_embs,
        pos_start_from_zero_prob=pos_start_from_zero_prob,
        pos_max_offset_to_add=pos_max_offset_to_add,
        use_bfloat16=use_bfloat16,
    )

    def _EncoderBlock():  # noqa: N802
        return reformer.EncoderBlock(
            d_model1,
            d_ff1,
            n_heads,
            encoder_attention_type,
            dropout=dropout,
            ff_activation=ff_activation,
            ff_dropout=ff_dropout,
            ff_use_sru=ff_use_sru,
            ff_chunk_size=ff_chunk_size,
            ff_sparsity=ff_sparsity,
            attention_chunk_size=attention_chunk_size,
            center_layernorm=center_layernorm,
            use_bfloat16=use_bfloat16,
            use_two_swaps_per_block=use_two_swaps_per_encoder_block,
            mode=mode,
        )

    encoder = [  # vec_e mask_e tok_e vec_d tok_d
        tl.ReversibleSelect([0, 0]),  # vec_e1 vec_e2 mask_e tok_e vec_d tok_d
        _ReversibleSerialForget(
            [_EncoderBlock() for _ in range(n_encoder_layers)], d_model1, n_layers_forget, forget_dense
        ),
    ]
    if not reversible_encoder:
        encoder += [reformer._XYAvg(), tl.Dense(d_model1, use_bfloat16=use_bfloat16), tl.LayerNorm()]

    if isinstance(encoder_decoder_attention_type, (tuple, list)):
        if n_decoder_layers % len(encoder_decoder_attention_type):
            raise ValueError(
                "ConfigurableTerraformer: n_decoder_layers must be a multiple of the number of "
                f"encoder_decoder_attention_types, got n_decoder_layers={n_decoder_layers} and "
                f"{len(encoder_decoder_attention_type)} types"
            )
        attention_types = list(encoder_decoder_attention_type)
    else:
        attention_types = [encoder_decoder_attention_type]
    decoder_blocks = []
    for layer_idx in range(n_decoder_layers):
        d_m, d_f, d_k, d_v = d_model1, d_ff1, d_key1, d_value1
        if half_before_layer and layer_idx >= half_before_layer:
            d_m, d_f, d_k, d_v = d_model, d_ff, d_attention_key, d_attention_value
        if double_after_layer and layer_idx > double_after_layer:
            d_m, d_f, d_k, d_v = d_model2, d_ff2, d_key2, d_value2
        decoder_blocks.append(
            reformer.DecoderBlock(
                d_m,
                d_f,
                d_k,
                d_v,
                n_heads,
                attention_type=attention_types[layer_idx % len(attention_types)],
                dropout=dropout,
                ff_activation=ff_activation,
                ff_dropout=ff_dropout,
                ff_use_sru=ff_use_sru,
                ff_chunk_size=ff_chunk_size,
                ff_sparsity=ff_sparsity,
                attention_chunk_size=attention_chunk_size,
                n_attention_layers=n_decoder_attention_layers,
                center_layernorm=center_layernorm,
                use_bfloat16=use_bfloat16,
                mode=mode,
            )
        )
        # Concatenating the pair doubles the width for the next stage.
        if half_before_layer and layer_idx == half_before_layer - 1:
            decoder_blocks.append(tl.ReversibleConcatenatePair())
        if double_after_layer and layer_idx == double_after_layer:
            decoder_blocks.append(tl.ReversibleConcatenatePair())

    if reversible_encoder:
        enc_dec_concat = [
            tl.ReversibleSelect([0, 1, 4, 2, 3]),  # vec_e1 vec_e2 vec_d mask_e tok_e tok_d
            ConcatWithPadding2(mode=mode),  # vec_ed1 vec_ed2 tok_e tok_d
        ]
    else:
        enc_dec_concat = [
            tl.ReversibleSelect([0, 3, 1, 2]),  # vec_e vec_d mask_e tok_e tok_d
            ConcatWithPadding(mode=mode),  # vec_ed tok_e tok_d
            tl.ReversibleSelect([0, 0]),  # vec_ed vec_ed tok_e tok_d
        ]

    if input_vocab_size is not None:
        inputs = tl.Serial(  # tok_e tok_d
            tl.Select([0, 0, 0, 1]),
            tl.Parallel(in_encoder, [tl.PaddingMask(), reformer._RemoveAxes12()]),
        )  # vec_e mask_e tok_e tok_d
    else:
        # Where later layers want tok_e, they get mask_e: they only look at padding or not.
        inputs = tl.Serial(  # vec_e mask_e tok_d
            tl.Select([0, 1, 1, 2]),
            tl.Parallel(in_encoder, [], _AsTokenIDs()),
        )  # vec_e mask_e tok_e tok_d

    return tl.Serial(
        inputs,  # vec_e mask_e tok_e tok_d
        tl.Select([0, 1, 2, 3, 3]),  # Copies the decoder tokens for the loss.
        # Embeds the target (after the source: the embedding may be shared).
        tl.Parallel([], [], [], [tl.ShiftRight(mode=mode), out_encoder]),  # vec_e mask_e tok_e vec_d tok_d
        tl.Serial(encoder),  # vec_e mask_e tok_e vec_d tok_d
        enc_dec_concat,  # vec_ed vec_ed tok_e tok_d
        _ReversibleSerialForget(decoder_blocks, d_model2, n_layers_forget, forget_dense),
        reformer._XYAvg(),  # vec_ed tok_e tok_d
        tl.LayerNorm(),  # vec_ed tok_e tok_d
        tl.Select([0, 1, 2, 2]),  # vec_ed tok_e tok_d tok_d
        StripFromConcatenateWithPadding(mode=mode),  # vec_d tok_d
        ct.OutputLayer(
            output_vocab_size,
            d_model2,
            loss_sparsity_type,
            loss_sparsity,
            loss_d_lowrank,
            loss_sparsity_prob,
            mode,
            use_bfloat16,
        ),  # logits tok_d
        name="ConfigurableTerraformer",
    )


def _half(name: str, value: int) -> int:
    if value % 2:
        raise ValueError(
            f"ConfigurableTerraformer: half_before_layer halves {name}, which must be even, got {value}"
        )
    return value // 2


def _ReversibleSerialForget(layers, d_model, n_layers, forget_dense=True):  # noqa: N802
    """ReversibleSerial of `layers`, with a forgetting layer after every `n_layers` of them.

    The forgetting layer replaces the pair `(x1, x2)` by two copies of
    Dense(d_model) of their average (`forget_dense`), or keeps it as it is.
    """
    if not n_layers or len(layers) <= n_layers + 1:
        return tl.ReversibleSerial(layers)
    if forget_dense:
        forgetting_layer = tl.Serial(reformer._XYAvg(), tl.Dense(d_model), tl.Dup())
    else:
        forgetting_layer = tl.Select([0, 1])
    return tl.Serial(
        tl.ReversibleSerial(layers[:n_layers]),
        forgetting_layer,
        _ReversibleSerialForget(layers[n_layers:], d_model, n_layers, forget_dense),
    )


def _AsTokenIDs():  # noqa: N802
    """A mask as int32 "token ids": nonzero where valid."""
    return tl.Fn("AsTokenIDs", lambda x: x.astype(jnp.int32))


# --- Concatenating the source and the target (Trax's transformer2) -----------------------


def concat_with_padding(vec_e, vec_d, mask_e):
    """Per row, the target vectors right after the source's valid ones: `[batch, L1 + L2, d]`.

    `vec_e` `[batch, L1, d]`, `vec_d` `[batch, L2, d]`, `mask_e` `[batch, L1]`
    (nonzero where valid, valid steps first). Positions after a row's
    `len_e + L2` steps are zero; the source's invalid steps are overwritten
    by the target or zeroed.
    """
    batch, len_e, depth = vec_e.shape
    if vec_d.shape[0] != batch or vec_d.shape[2] != depth:
        raise ValueError(
            f"ConcatWithPadding: decoder vectors {vec_d.shape} do not match encoder vectors {vec_e.shape}"
        )
    if mask_e.shape != (batch, len_e):
        raise ValueError(f"ConcatWithPadding: encoder mask {mask_e.shape} is not {(batch, len_e)}")

    def row(e, d, m):
        n_valid = jnp.sum(m != 0, dtype=jnp.int32)
        joined = jnp.concatenate([e, jnp.zeros_like(d)], axis=0)
        return jax.lax.dynamic_update_slice(joined, d, (n_valid, jnp.int32(0)))

    return jax.vmap(row)(vec_e, vec_d, mask_e)


def strip_from_concatenate_with_padding(vec_ed, tok_e, tok_d):
    """Per row, the `L2` target steps of `concat_with_padding`'s output: `[batch, L2, d]`."""
    _, length, depth = vec_ed.shape
    len_e, len_d = tok_e.shape[1], tok_d.shape[1]
    if length != len_e + len_d:
        raise ValueError(
            f"StripFromConcatenateWithPadding: length {length} is not the encoder's {len_e} plus the "
            f"decoder's {len_d}"
        )

    def row(ed, e):
        n_valid = jnp.sum(e != 0, dtype=jnp.int32)
        return jax.lax.dynamic_slice(ed, (n_valid, jnp.int32(0)), (len_d, depth))

    return jax.vmap(row)(vec_ed, tok_e)


def ConcatWithPadding(mode="train"):  # noqa: N802
    """`(vec_e, vec_d, mask_e, tok_e, tok_d)` -> `(vec_ed, tok_e, tok_d)` (`concat_with_padding`).

    n_in=5, n_out=3. Not streamable (Trax's predict mode concatenates on the
    first step only).
    """
    del mode  # Trax's argument, for predict mode, which this layer does not stream.
    return tl.Fn(
        "ConcatWithPadding",
        lambda vec_e, vec_d, mask_e, tok_e, tok_d: (concat_with_padding(vec_e, vec_d, mask_e), tok_e, tok_d),
        n_out=3,
        supports_step=False,
    )


def ConcatWithPadding2(mode="train"):  # noqa: N802
    """`(vec_e1, vec_e2, vec_d, mask_e, tok_e, tok_d)` -> `(vec_ed1, vec_ed2, tok_e, tok_d)`.

    n_in=6, n_out=4: `concat_with_padding` on each of the encoder's pair.
    Not streamable.
    """
    del mode  # As ConcatWithPadding's.

    def concat_pair(vec_e1, vec_e2, vec_d, mask_e, tok_e, tok_d):
        return (
            concat_with_padding(vec_e1, vec_d, mask_e),
            concat_with_padding(vec_e2, vec_d, mask_e),
            tok_e,
            tok_d,
        )

    return tl.Fn("ConcatWithPadding2", concat_pair, n_out=4, supports_step=False)


def StripFromConcatenateWithPadding(mode="train"):  # noqa: N802
    """`(vec_ed, tok_e, tok_d)` -> `vec_d` (`strip_from_concatenate_with_padding`).

    n_in=3, n_out=1. Not streamable.
    """
    del mode  # As ConcatWithPadding's.
    return tl.Fn("StripFromConcatenateWithPadding", strip_from_concatenate_with_padding, supports_step=False)
