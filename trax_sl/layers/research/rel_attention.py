"""Relative attention (Trax's research.rel_attention): Transformer-XL scores, Funnel-style lengths.

Transformer-XL (https://arxiv.org/abs/1901.02860) attention as Trax writes it
for the Funnel Transformer (https://arxiv.org/abs/2006.03236) and Hourglass:
queries and keys may differ in length by an integer factor (the funnel
ratio), and the positional term scores each query against sinusoidal
embeddings of relative distances, lined up by `_fast_matrix_shift`. Names,
arguments, stack semantics and layer trees are Trax's.

None of these layers stream. The positional embeddings and the masks are
functions of whole-sequence lengths, and Trax's shift gives a query the
positional scores of the next query row for keys after it, so a layer that
is not masked causally sees the future (Trax has no predict mode for them
either; its Hourglass asserts mode != 'predict'). Predict mode raises.

Sequences: queries, keys and values may be Sequences; invalid keys are never
attended to and the activations follow the queries' mask.

`DotProductAttention` here is Trax's array function of this module, not
`tl.DotProductAttention` (the layer of `trax_sl.layers.attention`); it is
left out of `__all__` so that a wildcard import does not replace that layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, core, streaming
from trax_sl.layers import initializers as init
from trax_sl.layers import rng as rng_lib
from trax_sl.layers.assert_shape import assert_shape
from trax_sl.layers.attention import MergeHeads, SplitIntoHeads
from trax_sl.layers.attention_core import key_validity, masked_values

__all__ = [
    "CreateAttentionMaskLayer",
    "PositionalEmbeddings",
    "RelativeAttention",
    "RelativeAttentionLMLayer",
    "RelativeAttentionLayer",
    "RelativeAttentionWrapper",
    "ShiftRightCls",
    "calc_funnel_ratio",
    "get_rel_att_inputs",
]

_WHOLE_SEQUENCE = (
    "relative attention needs the whole sequence: positions and masks come from the lengths of "
    "queries and keys, and Trax's shift lets unmasked queries see later steps"
)


class _WholeSequenceFn(base.Layer):
    """A weightless function of whole sequences (plain arrays; Sequences give their values). Not streamable."""

    handles_sequences = True

    def __init__(self, name: str, f, n_in: int, why: str = _WHOLE_SEQUENCE):
        super().__init__(n_in=n_in, n_out=1, name=name)
        self._f = f
        self._why = why

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.NOT_STREAMING.not_streaming(self._why)

    def forward(self, inputs, weights, state, rng):
        items = (inputs,) if self.n_in == 1 else tuple(inputs)
        return self._f(*(seq.values_of(item) for item in items)), state


# --- Global biases and the wrappers ------------------------------------------------------


def get_rel_att_inputs(d_model, n_heads):
    """Returns `(context_bias_layer, location_bias_layer)`: Transformer-XL's global biases.

    Two `Weights` layers of shape `[1, n_heads, 1, d_model / n_heads]`
    (normal, stddev 1e-6). One pair is shared by every relative attention
    layer of a model: pass the same layer objects to each.
    """
    if d_model % n_heads or d_model % 2:
        raise ValueError(
            f"get_rel_att_inputs: d_model must be even and a multiple of n_heads, got d_model={d_model}, "
            f"n_heads={n_heads}"
        )
    shape = (1, n_heads, 1, d_model // n_heads)
    bias_initializer = init.RandomNormalInitializer(1e-6)
    return core.Weights(bias_initializer, shape=shape), core.Weights(bias_initializer, shape=shape)


def RelativeAttentionWrapper(  # noqa: N802 (Trax's name)
    d_feature,
    n_heads=1,
    dropout=0.0,
    max_inference_length=2048,
    mode="train",
    context_bias_layer=None,
    location_bias_layer=None,
    total_pooling=None,
):
    """Returns causal relative self-attention `[batch, time, d_feature]` -> same (Trax's ConfigurableAttention form).

    `Serial(Select([0, 0, 0]), RelativeAttentionLMLayer(...))`: queries,
    keys and values are all the input. `max_inference_length` is unused, as
    in Trax. The bias layers (`get_rel_att_inputs`) and `total_pooling` (1
    without funnel pooling) must be given: Trax's defaults (None) cannot run.

    Not streamable (predict mode raises).
    """
    del max_inference_length
    missing = [
        name
        for name, value in (
            ("context_bias_layer", context_bias_layer),
            ("location_bias_layer", location_bias_layer),
            ("total_pooling", total_pooling),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"RelativeAttentionWrapper: {', '.join(missing)} must be given (Trax's default None cannot run); "
            f"pass the layers of get_rel_att_inputs(d_feature, n_heads) and total_pooling=1 without pooling"
        )
    attention = RelativeAttentionLMLayer(
        d_feature,
        context_bias_layer,
        location_bias_layer,
        total_pooling,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
    )
    return combinators.Serial(combinators.Select([0, 0, 0]), attention)


@assert_shape("bSq,blk,blv,b1xl->bSd,b1xl")
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

    n_in=4, n_out=2. q `[batch, Q, d_q]`, k and v `[batch, K, d]` with Q and
    K multiples of each other, mask `[batch, 1, Q or 1, K]` (True: may
    attend) -> activations `[batch, Q, d_feature]` and the mask. The layer:
    `PositionalEmbeddings` of the relative distances (keys `total_kv_pooling`
    tokens apart), `Dense(d_feature)` on each of them, the queries, keys and
    values, the shared `context_bias_layer` and `location_bias_layer`,
    `RelativeAttention`, and a final `Dense(d_feature)`.

    Not streamable (predict mode raises).
    """
    return combinators.Serial(
        combinators.Branch(
            PositionalEmbeddings(d_feature, separate_cls, total_kv_pooling),
            combinators.Select([0]),
            combinators.Select([1]),
        ),
        combinators.Parallel(
            core.Dense(d_feature),
            core.Dense(d_feature),
            core.Dense(d_feature),
            core.Dense(d_feature),
        ),
        context_bias_layer,
        location_bias_layer,
        RelativeAttention(separate_cls=separate_cls, n_heads=n_heads, dropout=dropout, mode=mode),
        core.Dense(d_feature),
    )


@assert_shape("bSq,blk,blv->bSd")
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
    """Returns a layer `(q, k, v)` -> activations: relative attention masked causally.

    n_in=3, n_out=1. `CreateAttentionMaskLayer` (the causal funnel mask of
    the queries' and keys' lengths), `RelativeAttentionLayer`, and the mask
    dropped: `[batch, Q, d_q], [batch, K, d], [batch, K, d]` ->
    `[batch, Q, d_feature]`.

    Not streamable (predict mode raises).
    """
    attention = RelativeAttentionLayer(
        d_feature,
        context_bias_layer,
        location_bias_layer,
        total_kv_pooling,
        separate_cls,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
    )
    return combinators.Serial(
        CreateAttentionMaskLayer(),  # q, k, v, mask
        attention,  # activations, mask
        combinators.Select([0], n_in=2),  # activations
    )


# --- The attention ------------------------------------------------------------------------


class RelativeAttention(base.Layer):
    """Multi-head relative attention on projected inputs.

    n_in=7, n_out=2. `(location_bias, context_bias, pos_emb, q, k, v, mask)`
    -> `(activations, mask)`: biases `[1, n_heads, 1, d_head]`, pos_emb
    `[P, d]` (from `PositionalEmbeddings`, projected), q `[batch, Q, d]`, k
    and v `[batch, K, d]`, mask broadcastable to `[batch, n_heads, Q, K]`;
    activations `[batch, Q, d]` float32, the mask passed through. Splits q,
    k, v and pos_emb into `n_heads` heads of `d / n_heads` and applies
    `DotProductAttention` per head (dropout on the weights in 'train' mode).

    Not streamable (predict mode raises).
    """

    handles_sequences = True

    def __init__(self, separate_cls, n_heads=1, dropout=0.0, mode="train"):
        checks.check_positive("RelativeAttention", n_heads=n_heads)
        checks.check_rate("RelativeAttention", dropout=dropout)
        checks.check_mode("RelativeAttention", mode)
        super().__init__(n_in=7, n_out=2, name="RelativeAttention")
        self._separate_cls = separate_cls
        self._n_heads = int(n_heads)
        self._dropout = dropout
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.NOT_STREAMING.not_streaming(_WHOLE_SEQUENCE)

    def forward(self, inputs, weights, state, rng):
        location_bias, context_bias, pos_emb, q, k, v, mask = inputs
        q_values, k_values, v_values = (masked_values(item) for item in (q, k, v))
        d_feature, n_heads = q_values.shape[-1], self._n_heads
        if d_feature % n_heads:
            raise ValueError(
                f"RelativeAttention: dimensionality of feature embedding ({d_feature}) is not a multiple "
                f"of the requested number of attention heads ({n_heads})"
            )
        visible = jnp.asarray(seq.values_of(mask)).astype(jnp.bool_)
        if isinstance(k, seq.Sequence) or isinstance(v, seq.Sequence):
            valid = key_validity(k, v, k_values.shape[0], k_values.shape[1])
            visible = visible & valid.reshape((valid.shape[0], 1, 1, valid.shape[1]))
        split = SplitIntoHeads(n_heads, merged_batch_and_head=False)
        queries, keys, values = (split.forward(x, (), (), None)[0] for x in (q_values, k_values, v_values))
        per_head, _ = DotProductAttention(
            queries,
            keys,
            values,
            jnp.reshape(seq.values_of(pos_emb), (-1, n_heads, d_feature // n_heads)),
            context_bias,
            location_bias,
            visible,
            separate_cls=self._separate_cls,
            dropout=self._dropout,
            mode=self._mode,
            rng=rng,
        )
        merged, _ = MergeHeads(n_heads, merged_batch_and_head=False).forward(per_head, (), (), None)
        out = seq.Sequence(merged, q.mask) if isinstance(q, seq.Sequence) else merged
        return (out, mask), state


def DotProductAttention(  # noqa: N802 (Trax's name; an array function of this module)
    queries, keys, values, pos_emb, context_bias, location_bias, mask, separate_cls, dropout, mode, rng
):
    """Returns `(activations, weights)`: per-head relative attention (Trax's function, not `tl.DotProductAttention`).

    queries `[batch, heads, Q, d]`, keys and values `[batch, heads, K, d]`,
    pos_emb `[P, heads, d]`, the biases broadcastable to the queries, mask
    broadcastable to `[batch, heads, Q, K]` (None: none). Scores
    `((q + context_bias) k^T + shift((q + location_bias) pos_emb^T)) / sqrt(d)`
    with `_fast_matrix_shift` lining the positional scores up by distance;
    with `separate_cls` the positional scores of the first query and the
    first key are zeroed. Masked scores become -1e9; softmax; in 'train'
    mode dropout of rate `dropout` on the weights (needs `rng`). Both
    results are float32: activations `[batch, heads, Q, d]`, weights
    `[batch, heads, Q, K]`.
    """
    if dropout is not None and dropout >= 1.0:
        raise ValueError(f"DotProductAttention: dropout rates must be lower than 1, got dropout={dropout}")
    d_feature = queries.shape[-1]
    funnel_factor, is_upsampling = calc_funnel_ratio(keys.shape[-2], queries.shape[-2])
    content = jnp.einsum("bnid,bnjd->bnij", queries + context_bias, keys)
    location = jnp.einsum("bnid,jnd->bnij", queries + location_bias, pos_emb)
    location = _fast_matrix_shift(location, funnel_factor, is_upsampling)
    if separate_cls:  # The CLS token has no position: no positional score to or from it.
        location = location.at[:, :, :, 0].set(0)
        location = location.at[:, :, 0, :].set(0)
    dots = (content + location) / np.sqrt(d_feature)
    if mask is not None:
        dots = jnp.where(mask, dots, jnp.full_like(dots, -1e9))
    dots = jax.nn.softmax(dots, axis=-1)
    rate = rng_lib.train_rate("DotProductAttention", mode, rng, dropout=dropout or 0.0)
    if rate > 0.0:
        keep = jax.random.bernoulli(rng, 1.0 - rate, dots.shape)
        dots = jnp.where(keep, dots / (1.0 - rate), jnp.zeros_like(dots))
    out = jnp.matmul(dots, values)
    return out.astype(jnp.float32), dots.astype(jnp.float32)


# --- Positions and masks ------------------------------------------------------------------


def PositionalEmbeddings(d_feature, separate_cls, total_kv_pooling):  # noqa: N802
    """Returns a layer `(queries, keys)` -> sinusoidal embeddings of relative distances `[P, d_feature]`.

    n_in=2, n_out=1; only the lengths Q (queries) and K (keys) matter. The
    distances: equal lengths, `(-(K-1) .. 0) * total_kv_pooling` (P = K);
    more keys (downsampling), `(-(K-1) .. K-1) * total_kv_pooling`; more
    queries (upsampling), `-(Q-1) .. Q-1` (P = 2K - 1 or 2Q - 1). Each
    distance p becomes `[sin(p w), cos(p w)]`, `w = 10000 ** -(arange(0, d, 2) / d)`.
    `separate_cls=True` is refused, as Trax does (at run time there).

    Not streamable (predict mode raises).
    """
    if separate_cls:
        raise ValueError(
            "PositionalEmbeddings: separate_cls=True is not supported (Trax asserts it away too); "
            "use separate_cls=False"
        )

    def positions_vectors(queries, keys):
        keys_len, queries_len = keys.shape[-2], queries.shape[-2]
        funnel_factor, is_upsampling = calc_funnel_ratio(keys_len, queries_len)
        if funnel_factor == 1:
            return (jnp.arange(keys_len) - (keys_len - 1)) * total_kv_pooling
        if is_upsampling:
            return jnp.arange(-queries_len + 1, queries_len, 1.0)
        return jnp.arange(-keys_len + 1, keys_len, 1.0) * total_kv_pooling

    def sinusoidal_embeddings(positions):
        inv_freq = 1 / (10000 ** (jnp.arange(0.0, d_feature, 2.0) / d_feature))
        angles = jnp.einsum("i,j->ij", positions, inv_freq)
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)

    return combinators.Serial(
        _WholeSequenceFn("Generate positions vectors", positions_vectors, n_in=2),
        _WholeSequenceFn("Transform to sinusoidal encodings", sinusoidal_embeddings, n_in=1),
    )


def calc_funnel_ratio(keys_len, queries_len):
    """Returns `(funnel_factor, is_upsampling)`: queries per key when there are more queries, else keys per query."""
    if queries_len > keys_len:
        if queries_len % keys_len:
            raise ValueError(
                f"calc_funnel_ratio: queries_len={queries_len} must be a multiple of keys_len={keys_len}"
            )
        return queries_len // keys_len, True
    if keys_len % queries_len:
        raise ValueError(
            f"calc_funnel_ratio: keys_len={keys_len} must be a multiple of queries_len={queries_len}"
        )
    return keys_len // queries_len, False


def _fast_matrix_shift(x, funnel_factor=1, is_upsampling=False):
    """Lines up positional scores `[batch, heads, Q, P]` by distance: Transformer-XL's shift, Trax's.

    Equal lengths (P = K = Q): prepending a zero column and reading the
    flattened rows one column later moves row i left by `Q - 1 - i`, so
    entry (i, j <= i) is the score of distance `j - i` (P-index `Q-1+j-i`);
    entries j > i hold the next row's scores (a causal mask hides them).
    Funnel lengths (P = 2K - 1 or 2Q - 1): the same on the doubled range,
    then every `funnel_factor`-th column (upsampling) or a shift of
    `funnel_factor` (downsampling). Returns `[batch, heads, Q, K]`.
    """
    batch, heads, queries_len = x.shape[0], x.shape[1], x.shape[2]
    if funnel_factor == 1 and not is_upsampling:
        keys_len = x.shape[3]
        padded = jnp.concatenate([jnp.zeros((batch, heads, queries_len, 1), x.dtype), x], axis=3)
        return padded.reshape((batch, heads, keys_len + 1, queries_len))[:, :, 1:, :]
    step, shift = (funnel_factor, 1) if is_upsampling else (1, funnel_factor)
    keys_len = (x.shape[3] + 1) // 2
    padded = jnp.concatenate([jnp.zeros((batch, heads, queries_len, shift), x.dtype), x], axis=3)
    rows = padded.reshape((batch, heads, 2 * keys_len - 1 + shift, queries_len))[:, :, shift:, :]
    rows = rows.reshape((batch, heads, queries_len, 2 * keys_len - 1))
    return rows[:, :, :, shift - 1 : shift - 1 + keys_len : step]


@assert_shape("bqd,bkd,bvd->bqd,bkd,bvd,b1qk")
def CreateAttentionMaskLayer():  # noqa: N802
    """Returns a layer `(q, k, v)` -> `(q, k, v, mask)`: the causal mask of funnel attention.

    n_in=3, n_out=4. mask `[batch, 1, Q, K]` bool. Equal lengths:
    lower-triangular. More keys (K = f Q): query i sees keys `< (i + 1) f`
    (each query row of the Q x Q triangle repeated along keys f times). More
    queries (Q = f K): query i sees keys `<= i // f`.

    Not streamable (predict mode raises).
    """

    def calculate_mask(queries, keys):
        batch, keys_len, queries_len = queries.shape[0], keys.shape[-2], queries.shape[-2]
        funnel_factor, is_upsampling = calc_funnel_ratio(keys_len, queries_len)
        if funnel_factor == 1:
            mask = jnp.tril(jnp.ones((queries_len, queries_len), jnp.bool_))
        elif is_upsampling:
            mask = jnp.repeat(jnp.tril(jnp.ones((keys_len, keys_len), jnp.bool_)), funnel_factor, axis=-2)
        else:
            mask = jnp.repeat(
                jnp.tril(jnp.ones((queries_len, queries_len), jnp.bool_)), funnel_factor, axis=-1
            )
        return jnp.broadcast_to(mask[None, None], (batch, 1) + mask.shape)

    return combinators.Branch(
        combinators.Select([0]),
        combinators.Select([1]),
        combinators.Select([2]),
        _WholeSequenceFn("create attention mask layer", calculate_mask, n_in=2),
    )


# --- Funnel's CLS token --------------------------------------------------------------------


@assert_shape("...d->...d")
def ShiftRightCls(cls_id):  # noqa: N802
    """Returns a layer shifting its input one step right along axis 1, `cls_id` in front (BERT's CLS).

    n_in=1, n_out=1. `[batch, time, ...]` -> same: `y[:, 0] = cls_id`,
    `y[:, t] = x[:, t - 1]`. A Sequence keeps its mask (invalid steps are
    zeroed first).

    Not streamable (predict mode raises): Trax's shift is by physical step.
    """

    def shift_right(x):
        pad_widths = [(0, 0)] * x.ndim
        pad_widths[1] = (1, 0)
        padded = jnp.pad(x, pad_widths, mode="constant", constant_values=jnp.asarray(cls_id, x.dtype))
        return padded[:, :-1]

    return core.Fn("ShiftRightCls()", shift_right, supports_step=False)
