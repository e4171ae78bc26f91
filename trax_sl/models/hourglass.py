"""Hourglass (Trax's research model): a hierarchical Transformer language model.

Names, arguments, defaults and layer trees are Trax's
(`trax.models.research.hourglass`, https://arxiv.org/abs/2110.13711).
trax_sl has no `layers/research/rel_attention.py` or `resampling.py` yet,
so the parts of them Hourglass uses live here, with Trax's names and
arguments: the relative (Transformer-XL, Funnel-style) attention
`RelativeAttentionWrapper`, `RelativeAttentionLMLayer`,
`RelativeAttentionLayer`, `RelativeAttention`, `PositionalEmbeddings`,
`CreateAttentionMaskLayer`, `get_rel_att_inputs`, and the resampling
layers `AttentionResampling`, `AveragePooling`, `LinearPooling`,
`LinearUpsampling`, `NaiveUpsampling`, `NoUpsampling`, `FeedForwardBlock`.
Trax's `separate_cls=True` (Funnel's CLS handling, which Trax's own
`PositionalEmbeddings` refuses) raises a ValueError, and so does
`mode='predict'` (Trax asserts it away: none of these layers stream).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.layers import base, streaming
from trax_sl.models import configurable_transformer as ct

# --- Relative attention (Trax's trax/layers/research/rel_attention.py) -------------


def _refuse_separate_cls(where: str, separate_cls) -> None:
    if separate_cls:
        raise ValueError(
            f"{where}: separate_cls=True is not supported (Trax's PositionalEmbeddings refuses it too); "
            "use separate_cls=False"
        )


def get_rel_att_inputs(d_model, n_heads):
    """Returns `(context_bias_layer, location_bias_layer)`: two `Weights` of shape `[1, n_heads, 1, d_head]`.

    The global biases of Transformer-XL attention, one pair shared by every
    relative attention layer of a model (pass the same layer objects).
    """
    if d_model % n_heads or d_model % 2:
        raise ValueError(
            f"get_rel_att_inputs: d_model must be even and a multiple of n_heads, got d_model={d_model}, "
            f"n_heads={n_heads}"
        )
    shape = (1, n_heads, 1, d_model // n_heads)
    initializer = tl.RandomNormalInitializer(1e-6)
    return tl.Weights(initializer, shape=shape), tl.Weights(initializer, shape=shape)


def calc_funnel_ratio(keys_len, queries_len):
    """Returns `(funnel_factor, is_upsampling)`: how many queries per key, or keys per query."""
    if queries_len > keys_len:
        if queries_len % keys_len:
            raise ValueError(f"queries_len={queries_len} is not a multiple of keys_len={keys_len}")
        return queries_len // keys_len, True
    if keys_len % queries_len:
        raise ValueError(f"keys_len={keys_len} is not a multiple of queries_len={queries_len}")
    return keys_len // queries_len, False


def _relative_positions(queries_len, keys_len, total_kv_pooling):
    """The distances (in token units) the positional embeddings are computed for, Trax's.

    Same lengths: the K distances -(K-1)..0 times the pooling. Keys longer
    (downsampling): -(K-1)..K-1 times the pooling. Queries longer
    (upsampling): -(Q-1)..Q-1, unscaled.
    """
    funnel_factor, is_upsampling = calc_funnel_ratio(keys_len, queries_len)
    if funnel_factor == 1:
        return (jnp.arange(keys_len) - (keys_len - 1)) * total_kv_pooling
    if is_upsampling:
        return jnp.arange(-queries_len + 1, queries_len, 1.0)
    return jnp.arange(-keys_len + 1, keys_len, 1.0) * total_kv_pooling


def _position_index(queries_len, keys_len):
    """`[Q, K]` indices into the positions above: the distance of key j from query i.

    Downsampling or same lengths: key j is at j, query i at i * f: index
    K - 1 + j - i * f. Upsampling: key j at j * f, query i at i: index
    Q - 1 + j * f - i. Entries the causal mask hides are clipped (their
    values never count); the visible ones equal Trax's `_fast_matrix_shift`.
    """
    funnel_factor, is_upsampling = calc_funnel_ratio(keys_len, queries_len)
    i = np.arange(queries_len)[:, None]
    j = np.arange(keys_len)[None, :]
    if is_upsampling:
        index = queries_len - 1 + j * funnel_factor - i
        n_positions = 2 * queries_len - 1
    else:
        index = keys_len - 1 + j - i * funnel_factor
        n_positions = keys_len if funnel_factor == 1 else 2 * keys_len - 1
    return np.clip(index, 0, n_positions - 1)


def PositionalEmbeddings(d_feature, separate_cls, total_kv_pooling):  # noqa: N802
    """Returns a layer `(queries, keys)` -> sinusoidal embeddings `[P, d_feature]` of the relative distances.

    The distances are `_relative_positions` of the queries' and keys'
    lengths; each embedding is `[sin(p * w), cos(p * w)]` with
    `w = 1 / 10000 ** (arange(0, d_feature, 2) / d_feature)`.
    """
    _refuse_separate_cls("PositionalEmbeddings", separate_cls)

    def positions_vectors(queries, keys):
        return _relative_positions(queries.shape[-2], keys.shape[-2], total_kv_pooling)

    def sinusoidal_embeddings(positions):
        inv_freq = 1 / (10000 ** (jnp.arange(0.0, d_feature, 2.0) / d_feature))
        angles = positions[:, None] * inv_freq[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)

    return tl.Serial(
        tl.Fn("Generate positions vectors", positions_vectors, supports_step=False),
        tl.Fn("Transform to sinusoidal encodings", sinusoidal_embeddings, supports_step=False),
    )


def _split_heads(x, n_heads):
    batch, length, depth = x.shape
    return x.reshape(batch, length, n_heads, depth // n_heads).transpose(0, 2, 1, 3)


class RelativeAttention(base.Layer):
    """The core of relative attention: Transformer-XL scores, Funnel-style lengths.

    n_in=7, n_out=2. `(location_bias, context_bias, pos_emb [P, d], q [b, Q, d],
    k [b, K, d], v [b, K, d], mask [b, 1, Q, K])` -> `(activations [b, Q, d],
    mask)`. Per head (d_head = d / n_heads) the scores are
    `((q + context_bias) k^T + (q + location_bias) r^T) / sqrt(d_head)`, r
    the positional embedding of each key's distance from the query
    (`_position_index`); masked scores get -1e9; softmax; Dropout on the
    weights in 'train' mode. Not streamable.
    """

    streaming_spec = streaming.NOT_STREAMING

    def __init__(self, separate_cls, n_heads=1, dropout=0.0, mode="train"):
        _refuse_separate_cls("RelativeAttention", separate_cls)
        if dropout >= 1.0:
            raise ValueError(f"RelativeAttention: dropout must be < 1, got dropout={dropout}")
        super().__init__(n_in=7, n_out=2, name="RelativeAttention")
        self._separate_cls = separate_cls
        self._n_heads = n_heads
        self._dropout = dropout
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        location_bias, context_bias, pos_emb, q, k, v, mask = inputs
        n_heads = self._n_heads
        d_feature = q.shape[-1]
        if d_feature % n_heads:
            raise ValueError(
                f"Dimensionality of feature embedding ({d_feature}) is not a multiple of the requested "
                f"number of attention heads ({n_heads})."
            )
        queries, keys, values = (_split_heads(x, n_heads) for x in (q, k, v))
        d_head = d_feature // n_heads
        pos_emb = pos_emb.reshape(-1, n_heads, d_head)
        content = jnp.einsum("bnid,bnjd->bnij", queries + context_bias, keys)
        location = jnp.einsum("bnid,pnd->bnip", queries + location_bias, pos_emb)
        index = _position_index(queries.shape[-2], keys.shape[-2])
        location = jnp.take_along_axis(
            location, jnp.broadcast_to(index, location.shape[:2] + index.shape), axis=-1
        )
        dots = (content + location) / np.sqrt(d_head)
        dots = jnp.where(mask, dots, jnp.full_like(dots, -1e9))
        dots = jax.nn.softmax(dots, axis=-1)
        if self._dropout > 0.0 and self._mode == "train" and rng is not None:
            keep = jax.random.bernoulli(rng, 1.0 - self._dropout, dots.shape)
            dots = jnp.where(keep, dots / (1.0 - self._dropout), jnp.zeros_like(dots))
        out = (dots @ values).astype(jnp.float32)
        batch, _, length, _ = out.shape
        return (out.transpose(0, 2, 1, 3).reshape(batch, length, d_feature), mask), state


def CreateAttentionMaskLayer():  # noqa: N802
    """Returns a layer `(q, k, v)` -> `(q, k, v, mask [b, 1, Q, K])` with the causal funnel mask.

    Same lengths: lower-triangular. Downsampling (K = f * Q): query i sees
    keys < (i + 1) * f. Upsampling (Q = f * K): query i sees keys <= i // f.
    """

    def calculate_mask(queries, keys):
        batch_size, queries_len, keys_len = queries.shape[0], queries.shape[-2], keys.shape[-2]
        funnel_factor, is_upsampling = calc_funnel_ratio(keys_len, queries_len)
        if funnel_factor == 1:
            mask = jnp.tril(jnp.ones((queries_len, queries_len), jnp.bool_))
        elif is_upsampling:
            mask = jnp.repeat(jnp.tril(jnp.ones((keys_len, keys_len), jnp.bool_)), funnel_factor, axis=-2)
        else:
            mask = jnp.repeat(
                jnp.tril(jnp.ones((queries_len, queries_len), jnp.bool_)), funnel_factor, axis=-1
            )
        return jnp.broadcast_to(mask[None, None], (batch_size, 1) + mask.shape)

    return tl.Branch(
        tl.Select([0]),
        tl.Select([1]),
        tl.Select([2]),
        tl.Fn("create attention mask layer", calculate_mask, supports_step=False),
    )


def RelativeAttentionLayer(  # noqa: N802
    d_feature,
    context_bias_layer,
    location_bias_layer,
    total_kv_pooling,
    separate_cls,
    n_heads=1,
    dropout=0.0,
    mode="train",
):
    """Returns a layer `(q, k, v, mask)` -> `(activations, mask)`: projected relative attention.

    `PositionalEmbeddings`, then Dense(d_feature) on each of the positional
    embeddings, queries, keys and values, the two shared biases,
    `RelativeAttention`, and a final Dense(d_feature).
    """
    return tl.Serial(
        tl.Branch(
            PositionalEmbeddings(d_feature, separate_cls, total_kv_pooling), tl.Select([0]), tl.Select([1])
        ),
        tl.Parallel(tl.Dense(d_feature), tl.Dense(d_feature), tl.Dense(d_feature), tl.Dense(d_feature)),
        context_bias_layer,
        location_bias_layer,
        RelativeAttention(separate_cls=separate_cls, n_heads=n_heads, dropout=dropout, mode=mode),
        tl.Dense(d_feature),
    )


def RelativeAttentionLMLayer(  # noqa: N802
    d_feature,
    context_bias_layer,
    location_bias_layer,
    total_kv_pooling,
    separate_cls=False,
    n_heads=1,
    dropout=0.0,
    mode="train",
):
    """Returns a layer `(q, k, v)` -> activations `[b, Q, d_feature]`: causal relative attention.

    `CreateAttentionMaskLayer`, then `RelativeAttentionLayer`; the mask is dropped.
    """
    return tl.Serial(
        CreateAttentionMaskLayer(),
        RelativeAttentionLayer(
            d_feature,
            context_bias_layer,
            location_bias_layer,
            total_kv_pooling,
            separate_cls,
            n_heads=n_heads,
            dropout=dropout,
            mode=mode,
        ),
        tl.Select([0], n_in=2),
    )


def RelativeAttentionWrapper(  # noqa: N802
    d_feature,
    n_heads=1,
    dropout=0.0,
    max_inference_length=2048,
    mode="train",
    context_bias_layer=None,
    location_bias_layer=None,
    total_pooling=None,
):
    """Returns causal relative self-attention: `[b, L, d_feature]` -> same.

    `RelativeAttentionLMLayer` with queries, keys and values all the input.
    `max_inference_length` is unused (no predict mode), as in Trax.
    """
    del max_inference_length
    attention = RelativeAttentionLMLayer(
        d_feature,
        context_bias_layer,
        location_bias_layer,
        total_pooling,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
    )
    return tl.Serial(tl.Select([0, 0, 0]), attention)


# --- Resampling (Trax's trax/layers/research/resampling.py) ------------------------


def AveragePooling(shorten_factor, *args, **kwargs):  # noqa: N802
    """Returns AvgPool over `shorten_factor` steps, stride `shorten_factor`: `[b, L, d]` -> `[b, L / k, d]`."""
    del args, kwargs
    return tl.AvgPool(pool_size=(shorten_factor,), strides=(shorten_factor,))


def LinearPooling(shorten_factor, d_model, *args, dropout=0.0, mode="train", **kwargs):  # noqa: N802
    """Returns shortening by a Dense on each `shorten_factor` steps moved to depth: `[b, L, d]` -> `[b, L / k, d_model]`."""
    del args, kwargs
    return tl.Serial(
        tl.Fn(
            "Shorten",
            lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] // shorten_factor, -1)),
            supports_step=False,
        ),
        tl.Dense(d_model),
        tl.Dropout(rate=dropout, mode=mode),
    )


def LinearUpsampling(shorten_factor, d_model, *args, dropout=0.0, mode="train", **kwargs):  # noqa: N802
    """Returns Dense(shorten_factor * d_model), Dropout, then depth moved to time: `[b, L, d]` -> `[b, L * k, d_model]`."""
    del args, kwargs
    return tl.Serial(
        tl.Dense(shorten_factor * d_model),
        tl.Dropout(rate=dropout, mode=mode),
        tl.Fn(
            "ProlongBack",
            lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] * shorten_factor, -1)),
            supports_step=False,
        ),
    )


def NaiveUpsampling(shorten_factor, d_model, *args, **kwargs):  # noqa: N802
    """Returns each step repeated `shorten_factor` times: `[b, L, d]` -> `[b, L * k, d]`."""
    del d_model, args, kwargs
    return tl.Fn("Repeat", lambda x: jnp.repeat(x, shorten_factor, axis=1), supports_step=False)


def NoUpsampling(shorten_factor, d_model, *args, **kwargs):  # noqa: N802
    """Returns zeros of the upsampled shape: `[b, L, d]` -> `[b, L * k, d]`."""
    del d_model, args, kwargs
    return tl.Fn(
        "ReturnZero",
        lambda x: jnp.zeros((x.shape[0], x.shape[1] * shorten_factor, x.shape[2]), x.dtype),
        supports_step=False,
    )


def FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, activation):  # noqa: N802
    """Returns the feed-forward layers: Dense(d_ff), `activation`, Dropout, Dense(d_model)."""
    return [
        tl.Dense(d_ff),
        activation(),
        tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        tl.Dense(d_model),
    ]


def AttentionResampling(  # noqa: N802
    shorten_factor,
    d_model,
    is_upsampling,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    context_bias_layer,
    location_bias_layer,
    total_pooling,
    resampling_fn,
):
    """Returns resampling refined by relative attention to the unresampled vectors.

    Downsampling: `h` -> `y`; upsampling: `(h, x)` -> `(y, x)`, x the
    full-length residual, added to the upsampled vectors. The resampled
    `LayerNorm(resampling_fn(LayerNorm(h)))` (plus x when upsampling)
    attends (`RelativeAttentionLMLayer`, residual) to `LayerNorm(h)`; then a
    residual feed-forward block.
    """
    attention = RelativeAttentionLMLayer(
        d_model,
        context_bias_layer,
        location_bias_layer,
        total_pooling,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
    )
    feed_forward = FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation)
    resampling = resampling_fn(shorten_factor, d_model, mode=mode)

    def _Dropout():  # noqa: N802
        return tl.Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [
        tl.LayerNorm(),  # h
        tl.Branch(tl.Serial(resampling, tl.LayerNorm()), []),  # h' h
        tl.Serial(tl.Select([0, 2, 1, 2]), tl.Add()) if is_upsampling else [],  # h'+x h x
        tl.Residual(tl.Select([0, 1, 1]), attention, _Dropout()),  # queries h', keys and values h
        tl.Residual(tl.LayerNorm(), feed_forward, _Dropout()),
    ]


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
