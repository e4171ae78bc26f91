"""Transformer2 (Trax's research model): an encoder, then a decoder over [encoding; target].

Names, arguments, defaults, stack semantics and layer trees are Trax's
(`trax.models.research.transformer2`), and so are its public layers
`ConcatWithPadding`, `ConcatWithPadding2` and
`StripFromConcatenateWithPadding`. The decoder has no encoder-decoder
attention: it runs causal attention over the encoded source (up to its
last real token) followed by the embedded, shifted target.

Predict mode is refused (ValueError): Trax's decodes by returning the
concatenation on the first call and the target step alone afterwards, an
output length that changes with the state, which trax_sl's streaming
contract (one block size per layer) does not allow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import trax_sl.layers as tl
from trax_sl.layers import base, streaming
from trax_sl.models import configurable_transformer as ct


def _refuse_predict(where: str, mode: str) -> None:
    if mode == "predict":
        raise ValueError(
            f"{where}: mode='predict' is not supported: Trax's predict mode concatenates on the first "
            "call only, so the output length changes between calls, which the streaming contract "
            "does not allow; use mode 'train' or 'eval'"
        )


def _concat_with_padding(vec_e, vec_d, mask_e):
    """`[b, l1, h]`, `[b, l2, h]`, `[b, l1]` -> `[b, l1 + l2, h]`: each row's real encodings, then vec_d, then zeros."""
    batch, len_e, depth = vec_e.shape
    len_d = vec_d.shape[1]
    if vec_d.shape != (batch, len_d, depth):
        raise ValueError(f"Shape of decoder vector, {vec_d.shape}, does not equal {(batch, len_d, depth)}.")
    if mask_e.shape != (batch, len_e):
        raise ValueError(f"Shape of encoder mask, {mask_e.shape}, does not equal {(batch, len_e)}.")

    def row(row_e, row_d, row_mask_e):
        padded = jnp.concatenate([row_e, jnp.zeros_like(row_d)], axis=0)
        n_real = jnp.sum(row_mask_e, dtype=jnp.int32)
        return jax.lax.dynamic_update_slice(padded, row_d, (n_real, jnp.zeros((), jnp.int32)))

    return jax.vmap(row)(vec_e, vec_d, mask_e)


def _strip_from_concatenate_with_padding(vec_ed, tok_e, tok_d):
    """`[b, l1 + l2, h]` -> `[b, l2, h]`: in each row, the l2 vectors after its real encoder tokens."""
    batch, length, depth = vec_ed.shape
    len_e, len_d = tok_e.shape[1], tok_d.shape[1]
    if length != len_e + len_d:
        raise ValueError(
            f"Length from encoder-decoder vectors ({length}) does not equal sum of lengths from "
            f"encoder ({len_e}) and decoder ({len_d})."
        )
    if tok_e.shape != (batch, len_e):
        raise ValueError(f"Shape of encoder tokens, {tok_e.shape}, does not equal {(batch, len_e)}.")
    if tok_d.shape != (batch, len_d):
        raise ValueError(f"Shape of decoder tokens, {tok_d.shape}, does not equal {(batch, len_d)}.")

    def row(row_ed, row_tok_e):
        n_real = jnp.sum(row_tok_e != 0, dtype=jnp.int32)
        return jax.lax.dynamic_slice(row_ed, (n_real, jnp.zeros((), jnp.int32)), (len_d, depth))

    return jax.vmap(row)(vec_ed, tok_e)


class StripFromConcatenateWithPadding(base.Layer):
    """Strips the leading encoder part from a `ConcatWithPadding` output.

    n_in=3, n_out=1. `(vec_ed [b, l1 + l2, h], tok_e [b, l1], tok_d [b, l2])`
    -> `vec_d [b, l2, h]`: each row's slice that starts after its real
    (non-zero) encoder tokens. Not streamable; mode 'predict' raises.
    """

    streaming_spec = streaming.NOT_STREAMING

    def __init__(self, mode="train"):
        _refuse_predict("StripFromConcatenateWithPadding", mode)
        super().__init__(n_in=3, n_out=1, name="StripFromConcatenateWithPadding")
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        return _strip_from_concatenate_with_padding(*inputs), state


class ConcatWithPadding(tl.ReversibleLayer):
    """Concatenates each row's real encoder vectors with its decoder vectors, zeros after.

    n_in=5, n_out=3. `(vec_e [b, l1, h], vec_d [b, l2, h], mask_e [b, l1],
    tok_e, tok_d)` -> `(vec_ed [b, l1 + l2, h], tok_e, tok_d)`; row i holds
    its `sum(mask_e[i])` first encoder vectors, then vec_d, then zeros.
    Reversible (the encoder vectors come back masked). Not streamable; mode
    'predict' raises.
    """

    streaming_spec = streaming.NOT_STREAMING

    def __init__(self, mode="train"):
        _refuse_predict("ConcatWithPadding", mode)
        super().__init__(n_in=5, n_out=3, name="ConcatWithPadding")
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        vec_e, vec_d, mask_e, tok_e, tok_d = inputs
        return (_concat_with_padding(vec_e, vec_d, mask_e), tok_e, tok_d), state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        vec_ed, tok_e, tok_d = output
        vec_d = _strip_from_concatenate_with_padding(vec_ed, tok_e, tok_d)
        mask_e = tok_e != 0
        vec_e = vec_ed[:, : tok_e.shape[1], :] * mask_e[:, :, None].astype(vec_ed.dtype)
        return vec_e, vec_d, mask_e, tok_e, tok_d


class ConcatWithPadding2(tl.ReversibleLayer):
    """`ConcatWithPadding` on a pair of encoder vectors, for reversible networks.

    n_in=6, n_out=4. `(vec_e1, vec_e2, vec_d, mask_e, tok_e, tok_d)` ->
    `(vec_ed1, vec_ed2, tok_e, tok_d)`, each `vec_edi` as `ConcatWithPadding`
    makes it from `vec_ei` and `vec_d`. Reversible. Not streamable; mode
    'predict' raises.
    """

    streaming_spec = streaming.NOT_STREAMING

    def __init__(self, mode="train"):
        _refuse_predict("ConcatWithPadding2", mode)
        super().__init__(n_in=6, n_out=4, name="ConcatWithPadding2")
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        vec_e1, vec_e2, vec_d, mask_e, tok_e, tok_d = inputs
        vec_ed1 = _concat_with_padding(vec_e1, vec_d, mask_e)
        vec_ed2 = _concat_with_padding(vec_e2, vec_d, mask_e)
        return (vec_ed1, vec_ed2, tok_e, tok_d), state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        vec_ed1, vec_ed2, tok_e, tok_d = output
        vec_d = _strip_from_concatenate_with_padding(vec_ed1, tok_e, tok_d)
        mask_e = tok_e != 0
        mask = mask_e[:, :, None].astype(vec_ed1.dtype)
        len_e = tok_e.shape[1]
        return vec_ed1[:, :len_e, :] * mask, vec_ed2[:, :len_e, :] * mask, vec_d, mask_e, tok_e, tok_d


def Transformer2(  # noqa: N802
    input_vocab_size,
    output_vocab_size=None,
    d_model=512,
    d_ff=2048,
    n_encoder_layers=6,
    n_decoder_layers=6,
    n_heads=8,
    dropout=0.1,
    dropout_shared_axes=None,
    max_len=2048,
    mode="train",
    ff_activation=tl.Relu,
    ff_dropout=0.1,
    ff_chunk_size=0,
    ff_use_sru=0,
    ff_sparsity=0,
    ff_sparsity_type="1inN",
    attention_chunk_size=0,
    encoder_attention_type=tl.Attention,
    n_encoder_attention_layers=1,
    decoder_attention_type=tl.CausalAttention,
    n_decoder_attention_layers=2,
    pos_type=None,
    pos_axial_shape=None,
    pos_d_axial_embs=None,
) -> base.Layer:
    """Returns a Transformer without encoder-decoder attention: `(source, target)` -> `(logits, target)`.

    n_in=2, n_out=2. Source ids `[batch, l1]` and target ids `[batch, l2]`
    (0 marks padding) -> logits `[batch, l2, output_vocab_size]` and the
    target ids, as in Trax. The source goes through a `ct.EncoderBlock`
    encoder; each row's real encodings are followed by its embedded, shifted
    target (`ConcatWithPadding`), run through `n_decoder_layers`
    `ct.DecoderBlock`s (causal `decoder_attention_type`, repeated
    `n_decoder_attention_layers` times per block), and the target part is
    cut out again (`StripFromConcatenateWithPadding`). With
    `output_vocab_size=None` source and target share one embedding. The
    feed-forward and positional options are `ConfigurableTransformer`'s.

    Not streamable: mode 'predict' raises a ValueError (see the module
    docstring), as do the sparse feed-forward options.
    """
    _refuse_predict("Transformer2", mode)
    ct.check_options("Transformer2", pos_type=pos_type)
    in_encoder, out_encoder, output_vocab_size = ct.EmbeddingAndPositionalEncodings(
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
    encoder_blocks = [
        ct.EncoderBlock(*block_options, encoder_attention_type, n_encoder_attention_layers)
        for _ in range(n_encoder_layers)
    ]
    encoder = tl.Serial(in_encoder, encoder_blocks, tl.LayerNorm())
    decoder_blocks = [
        ct.DecoderBlock(*block_options, decoder_attention_type, n_decoder_attention_layers)
        for _ in range(n_decoder_layers)
    ]
    return tl.Serial(
        tl.Select([0, 0, 1, 1]),  # tok_e tok_e tok_d tok_d: copies the decoder tokens for the loss.
        tl.Branch([], tl.PaddingMask()),  # tok_e mask_e tok_e tok_d tok_d
        encoder,  # vec_e mask_e tok_e tok_d tok_d
        tl.Select([2, 0, 2], n_in=3),  # tok_e vec_e tok_e tok_d tok_d: a mask without extra axes ...
        tl.Fn("EncoderMask", lambda x: x != 0),  # mask_e vec_e tok_e tok_d tok_d
        tl.Select([3, 1, 0, 2]),  # tok_d vec_e mask_e tok_e tok_d
        tl.ShiftRight(mode=mode),  # stok_d vec_e mask_e tok_e tok_d
        out_encoder,  # svec_d vec_e mask_e tok_e tok_d
        tl.Select([1, 0]),  # vec_e svec_d mask_e tok_e tok_d
        ConcatWithPadding(mode=mode),  # vec_ed tok_e tok_d
        decoder_blocks,  # vec_ed tok_e tok_d
        tl.LayerNorm(),  # vec_ed tok_e tok_d
        tl.Select([0, 1, 2, 2]),  # vec_ed tok_e tok_d tok_d
        StripFromConcatenateWithPadding(mode=mode),  # vec_d tok_d
        tl.Dense(output_vocab_size),  # logits tok_d
        name="Transformer2",
    )
