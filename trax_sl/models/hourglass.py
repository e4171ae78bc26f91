"""Hourglass (Trax's research model): a hierarchical Transformer language model.

Names, arguments, defaults and layer trees are Trax's
(`trax.models.research.hourglass`, https://arxiv.org/abs/2110.13711). Its
relative attention (`RelativeAttentionWrapper`) is
`trax_sl.layers.research.rel_attention`'s, its shortening and upsampling
layers (`AttentionResampling`, `LinearPooling`, ...) are
`trax_sl.layers.research.resampling`'s; all are in `tl`, as in Trax.
`mode='predict'` raises a ValueError (Trax asserts it away: none of these
layers stream).
"""

from __future__ import annotations

import trax_sl.layers as tl
from trax_sl.layers import base
from trax_sl.layers.research.rel_attention import RelativeAttentionWrapper, get_rel_att_inputs
from trax_sl.layers.research.resampling import (
    AttentionResampling,
    AveragePooling,
    FeedForwardBlock,
    LinearUpsampling,
)
from trax_sl.models import configurable_transformer as ct

# --- The model -----------------------------------------------------------------------


def _RelativeDecoderBlock(  # noqa: N802
    attention_type,
    d_model,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    context_bias_layer,
    location_bias_layer,
    total_pooling,
):
    """Layers of a decoder block: Residual(LayerNorm, causal attention, Dropout), Residual(LayerNorm, FF, Dropout)."""
    if attention_type == RelativeAttentionWrapper:
        attention = RelativeAttentionWrapper(
            d_model,
            n_heads,
            dropout,
            mode=mode,
            context_bias_layer=context_bias_layer,
            location_bias_layer=location_bias_layer,
            total_pooling=total_pooling,
        )
    else:
        attention = ct.ApplyAttentionLayer(
            attention_type,
            d_model,
            n_heads,
            d_model // n_heads,
            d_model // n_heads,
            causal=True,
            masked=False,
            attention_dropout=dropout,
            output_dropout=dropout,
            attention_chunk_size=0,
            mode=mode,
        )
    feed_forward = FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation)

    def _Dropout():  # noqa: N802
        return tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [
        tl.Residual(tl.LayerNorm(), attention, _Dropout()),
        tl.Residual(tl.LayerNorm(), feed_forward, _Dropout()),
    ]


def _parse_hierarchy(hierarchy_str):
    """Returns `(n_layers per level, shorten factor per level)` of a palindrome like '1@2 2@6 1@2'.

    Each level `n@k` has n layers at total shortening k; the factor of a
    level is its k over the previous level's.
    """
    levels = hierarchy_str.split(" ")
    if levels != levels[::-1]:
        raise ValueError("Hierarchy is not a palindrome")
    pairs = [level.split("@") for level in levels[: 1 + len(levels) // 2]]
    n_layers = [int(n) for n, _ in pairs]
    totals = [int(k) for _, k in pairs]
    shorten_factors = []
    for total, previous in zip(totals, [1] + totals[:-1]):
        if total % previous:
            raise ValueError(f"Hierarchy not divisible by previous level: {total}, {previous}")
        shorten_factors.append(total // previous)
    return n_layers, shorten_factors


def HourglassLM(  # noqa: N802
    vocab_size,
    d_model=512,
    d_ff=2048,
    vanilla_layers=(1, 1),
    hierarchy="6@3",
    n_heads=8,
    dropout=0.1,
    dropout_shared_axes=None,
    mode="train",
    ff_activation=tl.FastGelu,
    vanilla_attn_type=RelativeAttentionWrapper,
    middle_attn_type=RelativeAttentionWrapper,
    downsampling_fn=AttentionResampling,
    upsampling_fn=AttentionResampling,
    attention_downsampling_fn=AveragePooling,
    attention_upsampling_fn=LinearUpsampling,
) -> base.Layer:
    """Returns the Hourglass language model: ids `[batch, length]` -> logits `[batch, length, vocab_size]`.

    n_in=1, n_out=1; 0 marks padding. The shifted tokens are embedded and
    run through `vanilla_layers[0]` decoder blocks; then each level of
    `hierarchy` (a palindrome 'n@k ...': n blocks at total shortening k)
    shifts right by its factor - 1, shortens (`downsampling_fn`), runs its
    blocks (and the deeper levels between two halves), upsamples
    (`upsampling_fn`), and adds LayerNorm of that to its input; then
    `vanilla_layers[1]` blocks and Dense(vocab_size). Attention is causal,
    so step t depends on tokens < t only. The length must be divisible by
    the total shortening. Relative attention layers share one pair of
    biases (`get_rel_att_inputs`).

    Not streamable: mode 'predict' raises a ValueError (Trax asserts it away).
    """
    if mode == "predict":
        raise ValueError("HourglassLM: mode='predict' is not supported (nor in Trax); use 'train' or 'eval'")
    hierarchy_n_layers, hierarchy_shorten_factors = _parse_hierarchy(hierarchy)
    token_encoder = [
        tl.Embedding(vocab_size, d_model),
        tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
    ]
    context_bias_layer, location_bias_layer = get_rel_att_inputs(d_model, n_heads)
    n_pre_decoder_blocks, n_post_decoder_blocks = vanilla_layers

    def create_decoder_blocks(n_layers, total_pooling, attention_type):
        blocks = [
            _RelativeDecoderBlock(
                attention_type,
                d_model,
                d_ff,
                n_heads,
                dropout,
                dropout_shared_axes,
                mode,
                ff_activation,
                context_bias_layer,
                location_bias_layer,
                total_pooling,
            )
            for _ in range(n_layers)
        ]
        return blocks + [tl.LayerNorm()]

    def resampling(fn, shorten_factor, is_upsampling, total_pooling, resampling_fn):
        return fn(
            shorten_factor,
            d_model=d_model,
            is_upsampling=is_upsampling,
            d_ff=d_ff,
            n_heads=n_heads,
            dropout=dropout,
            dropout_shared_axes=dropout_shared_axes,
            mode=mode,
            ff_activation=ff_activation,
            context_bias_layer=context_bias_layer,
            location_bias_layer=location_bias_layer,
            total_pooling=total_pooling,
            resampling_fn=resampling_fn,
        )

    def create_hourglass_valley(shorten_factors, n_layers, total_pooling):
        shorten_factor, level_n_layers = shorten_factors[0], n_layers[0]
        shortening = resampling(
            downsampling_fn, shorten_factor, False, total_pooling, attention_downsampling_fn
        )
        upsampling = resampling(upsampling_fn, shorten_factor, True, total_pooling, attention_upsampling_fn)
        inner_pooling = total_pooling * shorten_factor
        if len(shorten_factors) > 1:
            middle = [
                create_decoder_blocks(level_n_layers, inner_pooling, middle_attn_type),
                *create_hourglass_valley(shorten_factors[1:], n_layers[1:], inner_pooling),
                create_decoder_blocks(level_n_layers, inner_pooling, middle_attn_type),
            ]
        else:
            middle = create_decoder_blocks(level_n_layers, inner_pooling, middle_attn_type)
        return [
            tl.Dup(),  # x x
            tl.ShiftRight(shorten_factor - 1, mode=mode),  # Each shortened step sees only the past.
            shortening,  # short x
            middle,
            upsampling,  # y x
            tl.LayerNorm(),
            tl.Add(),  # x + LayerNorm(y)
        ]

    return tl.Serial(
        tl.ShiftRight(mode=mode),  # toks
        token_encoder,  # vecs
        create_decoder_blocks(n_pre_decoder_blocks, 1, vanilla_attn_type),  # vecs
        create_hourglass_valley(hierarchy_shorten_factors, hierarchy_n_layers, 1),  # vecs
        create_decoder_blocks(n_post_decoder_blocks, 1, vanilla_attn_type),  # vecs
        tl.Dense(vocab_size),  # logits
        name="HourglassLM",
    )
