"""Trax's attention layers, streaming: Attention, AttentionQKV, CausalAttention, masks, ShiftRight.

Names, arguments and stack semantics are Trax's (`trax.layers.attention`):
`Attention` maps `(x, mask)` to `(y, mask)`, `AttentionQKV` maps
`(q_in, k_in, v_in, mask)` to `(y, mask)`, masks are `[batch, 1, 1 or
query_time, key_time]` bool arrays from `PaddingMask` / `EncoderDecoderMask`.
Sequences work wherever arrays do: a Sequence's invalid steps are never
attended to, and outputs follow the query's mask.

In predict mode `CausalAttention` (and `DotProductCausalAttention`) streams
with a KV cache of `max_inference_length` valid steps per row;
`AttentionQKV` streams its queries against a whole source (cross attention);
`ShiftRight` is Trax's no-op (the caller feeds the shifted stream). `Attention` (every
step sees the whole sequence) does not stream.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, shapes
from trax_sl import sequence as seq
from trax_sl.layers import attention_core, base, combinators, convolution, core, streaming
from trax_sl.layers import rng as rng_lib
from trax_sl.layers.position import PositionalEncoding  # noqa: F401 (Trax keeps it in attention)

# --- Masks ---------------------------------------------------------------------


class PaddingMask(base.Layer):
    """Maps integer sequences `[batch, time]` to masks `[batch, 1, 1, time]`.

    n_in=1, n_out=1. The mask is True where the id is not `pad` (and, for a
    Sequence, where the step is valid); axis 1 broadcasts over heads and axis 2
    over query steps. Predict mode: stateless; a block gives its own steps' mask.
    """

    handles_sequences = True

    def __init__(self, pad: int = 0):
        super().__init__(name=f"PaddingMask({pad})")
        self._pad = pad

    def forward(self, x, weights, state, rng):
        values = seq.values_of(x)
        if values.ndim != 2:
            raise ValueError(
                f"{self.name}: input must be a [batch, time] array of ids, got {shapes.short_form(x)}"
            )
        content = values != self._pad
        if isinstance(x, seq.Sequence):
            content = content & x.mask
        return content.reshape((values.shape[0], 1, 1, values.shape[1])), state


class EncoderDecoderMask(base.Layer):
    """Maps `(decoder_input, mask)` to a cross-attention mask.

    n_in=2, n_out=1. `decoder_input [batch, decoder_time, ...]` and the
    encoder's padding mask (`[batch, 1, 1, encoder_time]` or `[batch,
    encoder_time]`) give a bool `[batch, 1, decoder_time, encoder_time]` mask
    (Trax returns it as floats). Predict mode: stateless; a decoder block gives
    the block's rows.
    """

    handles_sequences = True

    def __init__(self):
        super().__init__(n_in=2, n_out=1, name="EncoderDecoderMask")

    def forward(self, inputs, weights, state, rng):
        decoder_input, mask = inputs
        batch, decoder_time = decoder_input.shape[:2]
        mask = attention_core.trax_mask_visibility(mask, batch, seq.values_of(mask).shape[-1])
        padding = jnp.all(mask, axis=(1, 2), keepdims=True)
        return jnp.broadcast_to(padding, (batch, 1, decoder_time, mask.shape[-1])), state


# --- Shifting ----------------------------------------------------------------------


class ShiftRight(base.Layer):
    """Shifts a sequence `n_positions` steps right: `y[t] = x[t - n]`, zeros first.

    n_in=1, n_out=1. `[batch, time, ...]` -> same shape; the output keeps the
    input's mask (so an LM's shifted inputs line up with its targets), and
    invalid input steps shift in as zeros.

    Predict mode: as in Trax, returns its input unchanged. The caller feeds
    the already shifted stream (a decoder feeds the start token, then each
    previous token), so a Trax decoding loop over a predict-mode LM gives the
    eval-mode logits. `verify_contract` checks a model with it against the
    eval-mode model fed that shifted stream. Stateless, block_size 1.
    """

    handles_sequences = True
    fed_shifted_in_predict_mode = True

    def __init__(self, n_positions: int = 1, mode: str = "train"):
        checks.check_non_negative("ShiftRight", n_positions=n_positions)
        super().__init__(name=f"ShiftRight_{n_positions}")
        self._n = int(n_positions)
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        if self._mode == "predict":
            return streaming.POINTWISE
        return streaming.StreamingSpec(receptive_field=(self._n, -self._n))

    def forward(self, x, weights, state, rng):
        if self._mode == "predict" or self._n == 0:
            return x, state
        x, was_sequence = seq.as_sequence(x)
        values = x.mask_invalid().values
        past = jnp.zeros((values.shape[0], self._n) + tuple(values.shape[2:]), values.dtype)
        time = values.shape[1]
        y = seq.Sequence(jnp.concatenate([past, values], axis=1)[:, :time], x.mask)
        return seq.like_input(y, was_sequence), state


# --- Heads -----------------------------------------------------------------------


def SplitIntoHeads(n_heads: int, merged_batch_and_head: bool = True) -> base.Layer:  # noqa: N802
    """Returns a layer splitting `[batch, time, d]` into `n_heads` heads of `d / n_heads`.

    n_in=1, n_out=1. Output `[batch * n_heads, time, d / n_heads]` (row
    `b * n_heads + h` is head h of row b; a Sequence's mask is repeated per
    head), or `[batch, n_heads, time, d / n_heads]` with
    `merged_batch_and_head=False` (arrays only: time is no longer axis 1).
    Predict mode: stateless, block_size 1.
    """
    return _Heads(n_heads, merged_batch_and_head, split=True)


def MergeHeads(n_heads: int, merged_batch_and_head: bool = True) -> base.Layer:  # noqa: N802
    """Returns a layer joining heads, the inverse of SplitIntoHeads.

    n_in=1, n_out=1. `[batch * n_heads, time, d_head]` (or `[batch, n_heads,
    time, d_head]`) -> `[batch, time, n_heads * d_head]`; a Sequence's step is
    valid where it is valid in every head. Predict mode: stateless, block_size 1.
    """
    return _Heads(n_heads, merged_batch_and_head, split=False)


class _Heads(base.Layer):
    handles_sequences = True

    def __init__(self, n_heads: int, merged: bool, split: bool):
        name = "SplitIntoHeads" if split else "MergeHeads"
        checks.check_positive(name, n_heads=n_heads)
        super().__init__(name=name)
        self._n_heads = int(n_heads)
        self._merged = merged
        self._split = split

    def forward(self, x, weights, state, rng):
        n = self._n_heads
        if isinstance(x, seq.Sequence) and not self._merged:
            raise ValueError(
                f"{self.name}: merged_batch_and_head=False puts heads before time, which a "
                f"Sequence cannot hold; use merged_batch_and_head=True"
            )
        values = seq.values_of(x)
        if self._split:
            if values.ndim != 3 or values.shape[-1] % n:
                raise ValueError(
                    f"{self.name}: expected [batch, time, d] with d a multiple of n_heads={n}, "
                    f"got {shapes.short_form(x)}"
                )
            b, t, d = values.shape
            y = jnp.transpose(values.reshape((b, t, n, d // n)), (0, 2, 1, 3))
            if self._merged:
                y = y.reshape((b * n, t, d // n))
            mask = None if not isinstance(x, seq.Sequence) else jnp.repeat(x.mask, n, axis=0)
        else:
            expected = (values.ndim == 3 and values.shape[0] % n == 0) if self._merged else values.ndim == 4
            if not expected:
                raise ValueError(
                    f"{self.name}: expected [batch * n_heads, time, d_head] (n_heads={n}) or, "
                    f"unmerged, [batch, n_heads, time, d_head], got {shapes.short_form(x)}"
                )
            y = values.reshape((-1, n) + tuple(values.shape[-2:])) if self._merged else values
            b, _, t, dh = y.shape
            y = jnp.transpose(y, (0, 2, 1, 3)).reshape((b, t, n * dh))
            mask = None if not isinstance(x, seq.Sequence) else jnp.all(x.mask.reshape((b, n, t)), axis=1)
        return (y if mask is None else seq.Sequence(y, mask)), state


# --- Attention on given queries, keys and values ------------------------------------


def _dropout_rate(layer: base.Layer, dropout: float, rng) -> float:
    return rng_lib.train_rate(layer.name, layer.mode, rng, dropout=dropout)


class DotProductAttention(base.Layer):
    """Per-head scaled dot-product attention: `(Q, K, V, mask)` -> activations.

    n_in=4, n_out=1. Q `[..., query_time, d]`, K and V `[..., key_time, d]`
    (heads already split, e.g. `[batch * heads, time, d_head]`), mask
    broadcastable (same rank) to `[..., query_time, key_time]` or `[batch,
    key_time]`; True marks keys that may be attended to. Dropout on the
    attention weights in 'train' mode.

    Predict mode: stateless. Q streams; K, V and the mask are the whole source
    at every step (cross attention).
    """

    handles_sequences = True

    def __init__(self, dropout: float = 0.0, mode: str = "train"):
        checks.check_rate("DotProductAttention", dropout=dropout)
        super().__init__(n_in=4, n_out=1, name="DotProductAttention")
        self._dropout = dropout
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        q, k, v, mask = inputs
        q_values, k_values, v_values = (attention_core.masked_values(item) for item in (q, k, v))
        mask = jnp.asarray(seq.values_of(mask)).astype(jnp.bool_)
        rank = q_values.ndim
        if mask.ndim == 2 and rank != 2:
            mask = mask.reshape((mask.shape[0],) + (1,) * (rank - 2) + (mask.shape[1],))
        if isinstance(k, seq.Sequence) or isinstance(v, seq.Sequence):
            valid = attention_core.key_validity(k, v, k_values.shape[0], k_values.shape[1])
            mask = mask & valid.reshape((valid.shape[0],) + (1,) * (rank - 2) + (valid.shape[1],))
        rate = _dropout_rate(self, self._dropout, rng)
        scale = 1.0 / np.sqrt(q_values.shape[-1])
        y = attention_core.dot_product_attention(
            q_values, k_values, v_values, mask, scale=scale, dropout_rate=rate, rng=rng
        )
        return (seq.Sequence(y, q.mask) if isinstance(q, seq.Sequence) else y), state


class PureAttention(base.Layer):
    """Multi-head attention on projected inputs: `(Q, K, V, mask)` -> `(activations, mask)`.

    n_in=4, n_out=2. Q `[batch, query_time, d]`, K and V `[batch, key_time, d]`
    are split into `n_heads` heads of `d / n_heads`, attended per head and
    joined back to `[batch, query_time, d]`; the mask (`[batch, 1 or heads, 1
    or query_time, key_time]`, or `[batch, key_time]`) passes through.

    Predict mode: stateless. Q streams; K, V and the mask are the whole source
    at every step (cross attention).
    """

    handles_sequences = True

    def __init__(self, n_heads: int = 1, dropout: float = 0.0, mode: str = "train"):
        checks.check_rate("PureAttention", dropout=dropout)
        checks.check_positive("PureAttention", n_heads=n_heads)
        super().__init__(n_in=4, n_out=2, name="PureAttention")
        self._n_heads = int(n_heads)
        self._dropout = dropout
        self._mode = mode

    def forward(self, inputs, weights, state, rng):
        q, k, v, mask = inputs
        q_values, k_values, v_values = (attention_core.masked_values(item) for item in (q, k, v))
        n = self._n_heads
        batch, query_time, d = q_values.shape
        key_time = k_values.shape[1]
        if d % n or k_values.shape[-1] % n or v_values.shape[-1] % n:
            raise ValueError(
                f"{self.name}: feature sizes must be multiples of n_heads={n}, got Q "
                f"{shapes.short_form(q)}, K {shapes.short_form(k)}, V {shapes.short_form(v)}"
            )
        visible = attention_core.trax_mask_visibility(mask, batch, key_time)
        visible = visible & attention_core.key_validity(k, v, batch, key_time).reshape(
            (batch, 1, 1, key_time)
        )

        def heads(x):
            return x.reshape(tuple(x.shape[:2]) + (n, x.shape[-1] // n))

        y = attention_core.multihead_attention(
            heads(q_values),
            heads(k_values),
            heads(v_values),
            visible,
            dropout_rate=_dropout_rate(self, self._dropout, rng),
            rng=rng,
        )
        y = y.reshape((batch, query_time, -1))
        return ((seq.Sequence(y, q.mask) if isinstance(q, seq.Sequence) else y), mask), state


class _SelfPureAttention(PureAttention):
    """PureAttention whose keys are the queries' own sequence: every step sees all, so no streaming."""

    streaming_spec = streaming.NOT_STREAMING


class DotProductCausalAttention(base.Layer):
    """Per-head causal dot-product attention: `(q, k, v)` -> activations.

    n_in=3, n_out=1. `[batch, time, d]` each (heads folded into the batch, as
    SplitIntoHeads gives them); step t attends to the valid steps <= t.
    Dropout on the attention weights in 'train' mode. Streams with block_size 1
    and no latency.

    Predict mode: the state holds a KV cache of `max_inference_length` slots
    per row, filled with the row's valid steps (invalid steps take none), and
    each row's count of valid steps. A row's output is invalid (mask False,
    zero values) from its (max_inference_length + 1)-th valid step on: the
    cache never drops keys silently (Trax's clamps its index and overwrites
    the last slot).
    """

    handles_sequences = True

    def __init__(self, dropout: float = 0.0, max_inference_length: int = 2048, mode: str = "train"):
        checks.check_rate("DotProductCausalAttention", dropout=dropout)
        checks.check_positive("DotProductCausalAttention", max_inference_length=max_inference_length)
        super().__init__(n_in=3, n_out=1, name="DotProductCausalAttention")
        self._dropout = dropout
        self._max_length = int(max_inference_length)
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.StreamingSpec(
            receptive_field=(math.inf, 0),
            capacity=self._max_length,
            capacity_source=f"{self.name} max_inference_length={self._max_length}",
        )

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        q_sig, k_sig, _ = (seq.values_of(s) for s in input_signature)

        def one_head(s):
            return shapes.ShapeDtype(tuple(s.shape[:2]) + (1, s.shape[2]), s.dtype)

        return (), attention_core.init_stream_cache(one_head(q_sig), one_head(k_sig), -1, 0, self._max_length)

    def forward(self, inputs, weights, state, rng):
        items = [seq.as_sequence(item) for item in inputs]
        q, k, v = (item for item, _ in items)
        rate = _dropout_rate(self, self._dropout, rng)

        def attend_fn(q_, k_, v_, visible):
            return attention_core.multihead_attention(q_, k_, v_, visible, dropout_rate=rate, rng=rng)

        def one_head(x):
            return x.mask_invalid().apply_values(lambda a: a[:, :, None])

        if self._mode == "predict":
            y, state = attention_core.self_attention_step(
                one_head(q), one_head(k), one_head(v), state, -1, 0, attend_fn
            )
        else:
            y = attention_core.self_attention_layer(one_head(q), one_head(k), one_head(v), -1, 0, attend_fn)
        y = y.apply_values(lambda a: a[:, :, 0])
        return seq.like_input(y, items[0][1]), state


# --- Whole attention layers ---------------------------------------------------------


class _CacheInPredict(base.Layer):
    """Runs `layer` on the first predict-mode call and returns its stored output afterwards.

    Transparent otherwise: its weights are the layer's own, in every mode, so
    weights trained without the cache stream with it. Predict mode: the state
    holds whether each row's output is stored (`[batch]`, so that a row's
    stream restarts alone), the output, and the layer's state.
    """

    handles_sequences = True

    def __init__(self, layer: base.Layer, mode: str):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name=f"CacheInPredict[{layer.name}]")
        self._sublayers = (layer,)
        self._mode = mode

    def weight_axes(self, weights):
        return base.sublayer_weight_axes(self.sublayers[0], weights)

    def init_with_output_signature(self, input_signature, rng):
        weights, state, out = base.init_sublayer(0, self.sublayers[0], input_signature, rng)
        if self._mode != "predict":
            return weights, state, out
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out)
        batch = jax.tree.leaves(out)[0].shape[0]
        return weights, (jnp.zeros((batch,), jnp.bool_), zeros, state), out

    def forward(self, x, weights, state, rng):
        layer = self.sublayers[0]
        if self._mode != "predict":
            return base.call_sublayer(0, layer, x, weights, state, rng)
        stored, cached, inner = state
        y, inner, stored = compute_once_per_row(
            stored, cached, inner, lambda: base.call_sublayer(0, layer, x, weights, inner, rng)
        )
        return y, (stored, y, inner)


def compute_once_per_row(stored, cached, state, compute):
    """(outputs, state, stored) of a computation each stream row does once (a predict-mode cache).

    `stored` (`[batch]` bool) says which rows hold their outputs in `cached`
    (a tree of `[batch, ...]` arrays); `compute()` gives (outputs, state) for
    every row. Stored rows keep their outputs, the others (streams started or
    restarted, `reset_stream_rows`) take the computed ones; when every row is
    stored nothing is computed. The returned `stored` is all True.
    """

    def keep_stored(old, new):
        return jnp.where(stored.reshape(stored.shape + (1,) * (new.ndim - 1)), old, new)

    def run():
        outputs, new_state = compute()
        return jax.tree.map(keep_stored, cached, outputs), new_state

    outputs, state = jax.lax.cond(jnp.all(stored), lambda: (cached, state), run)
    return outputs, state, jnp.ones_like(stored)


def _projection(d_feature: int) -> core.Dense:
    """A Dense to queries, keys or values: `[d_model, d_feature]`, split over heads."""
    return core.Dense(d_feature, kernel_axes=("embed", "heads"))


def _output_projection(d_feature: int) -> core.Dense:
    """The Dense from the merged heads back to the model's width."""
    return core.Dense(d_feature, kernel_axes=("heads", "embed"))


def _processor(sparsity, d_feature: int, what: str, layer_name: str, dense=_projection):
    if sparsity is None:
        return dense(d_feature)
    if sparsity == "noop":
        return None
    raise ValueError(
        f"{layer_name}: {what} must be None (Dense) or 'noop'; sparse processors are not "
        f"available in trax_sl, got {what}={sparsity!r}"
    )


def _attention_qkv(d_feature, n_heads, dropout, mode, cache_kv, q_sparsity, result_sparsity, pure, name):
    checks.check_rate(name, dropout=dropout)
    if not isinstance(d_feature, (int, np.integer)) or d_feature < 1 or d_feature % n_heads:
        raise ValueError(
            f"{name}: d_feature must be a positive multiple of n_heads={n_heads}, got d_feature={d_feature!r}"
        )
    return [
        combinators.Parallel(
            _processor(q_sparsity, d_feature, "q_sparsity", name),
            _CacheInPredict(_projection(d_feature), mode) if cache_kv else _projection(d_feature),
            _CacheInPredict(_projection(d_feature), mode) if cache_kv else _projection(d_feature),
        ),
        pure(n_heads=n_heads, dropout=dropout, mode=mode),
        _processor(result_sparsity, d_feature, "result_sparsity", name, _output_projection),
    ]


def AttentionQKV(  # noqa: N802
    d_feature: int,
    n_heads: int = 1,
    dropout: float = 0.0,
    mode: str = "train",
    cache_KV_in_predict: bool = False,  # noqa: N803
    q_sparsity=None,
    result_sparsity=None,
) -> base.Layer:
    """Returns a multi-head attention layer mapping `(AQ, AK, AV, mask)` to `(new_A, mask)`.

    n_in=4, n_out=2. AQ `[batch, query_time, d]` (e.g. the decoder) attends to
    AK, AV `[batch, key_time, d]` (e.g. the encoder): Dense projections to
    `d_feature`, `n_heads` heads of `d_feature / n_heads`, PureAttention, a
    final Dense. The mask (`[batch, 1, 1 or query_time, key_time]`) passes
    through; Sequence keys and values are also masked by their own validity.
    `q_sparsity` / `result_sparsity` may be None (Dense) or 'noop' (none).

    Predict mode: AQ streams (block_size 1, no latency); AK, AV and the mask
    are the whole source at every step. With `cache_KV_in_predict=True` the
    state holds the projected keys and values, computed on the first step and
    reused after; otherwise they are recomputed every step (same results).
    """
    return combinators.Serial(
        _attention_qkv(
            d_feature,
            n_heads,
            dropout,
            mode,
            cache_KV_in_predict,
            q_sparsity,
            result_sparsity,
            PureAttention,
            "AttentionQKV",
        ),
        name="AttentionQKV",
    )


def Attention(d_feature: int, n_heads: int = 1, dropout: float = 0.0, mode: str = "train") -> base.Layer:  # noqa: N802
    """Returns a multi-head self-attention layer mapping `(x, mask)` to `(y, mask)`.

    n_in=2, n_out=2. `x [batch, time, d]`, mask `[batch, 1, 1, time]` (e.g.
    from PaddingMask): AttentionQKV with x as queries, keys and values.
    Not streamable: every step sees the whole sequence (use CausalAttention or
    DotProductSelfAttention with finite horizons to stream).
    """
    return combinators.Serial(
        combinators.Select([0, 0, 0]),
        _attention_qkv(d_feature, n_heads, dropout, mode, False, None, None, _SelfPureAttention, "Attention"),
        name="Attention",
    )


def ConfigurableAttention(  # noqa: N802
    q_layer,
    k_layer,
    v_layer,
    final_layer,
    qkv_attention_layer,
    n_heads: int = 1,
) -> base.Layer:
    """Returns a multi-head self-attention layer from its parts.

    n_in=1 (as the parts need), n_out=1. `x` -> `final_layer(MergeHeads(
    qkv_attention_layer(SplitIntoHeads(q_layer(x)), SplitIntoHeads(k_layer(x)),
    SplitIntoHeads(v_layer(x)))))`.

    Predict mode: streams when its parts do; the state holds theirs.
    """
    return _configurable_attention(
        q_layer, k_layer, v_layer, final_layer, qkv_attention_layer, n_heads, "ConfigurableAttention"
    )


def _configurable_attention(q_layer, k_layer, v_layer, final_layer, qkv_attention_layer, n_heads, name):
    return combinators.Serial(
        combinators.Branch(
            [q_layer, SplitIntoHeads(n_heads)],
            [k_layer, SplitIntoHeads(n_heads)],
            [v_layer, SplitIntoHeads(n_heads)],
        ),
        qkv_attention_layer,
        MergeHeads(n_heads),
        final_layer,
        name=name,
    )


def CausalAttention(  # noqa: N802
    d_feature: int,
    n_heads: int = 1,
    dropout: float = 0.0,
    max_inference_length: int = 2048,
    use_dconv: bool = False,
    mode: str = "train",
) -> base.Layer:
    """Returns a multi-head causal self-attention layer: `[batch, time, d]` -> same.

    n_in=1, n_out=1. Dense projections of the input to queries, keys and
    values (`n_heads` heads of `d_feature / n_heads`; with `use_dconv` each
    followed by a causal depthwise convolution), DotProductCausalAttention, a
    final Dense. Streams with block_size 1 and no latency.

    Predict mode: the state holds a KV cache of `max_inference_length` valid
    steps per row; a row's outputs past that many valid steps are invalid
    (mask False), never computed from a truncated cache.
    """
    if not isinstance(d_feature, (int, np.integer)) or d_feature < 1 or d_feature % n_heads:
        raise ValueError(
            f"CausalAttention: d_feature must be a positive multiple of n_heads={n_heads}, got "
            f"d_feature={d_feature!r}"
        )

    def projection():
        if not use_dconv:
            return _projection(d_feature)
        return combinators.Serial(_projection(d_feature), convolution.CausalDepthwiseConv(mode=mode))

    return _configurable_attention(
        projection(),
        projection(),
        projection(),
        _output_projection(d_feature),
        DotProductCausalAttention(dropout=dropout, max_inference_length=max_inference_length, mode=mode),
        n_heads,
        "CausalAttention",
    )
