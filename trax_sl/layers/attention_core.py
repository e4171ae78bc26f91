"""The math of dot-product attention and its streaming KV caches.

Shared by the attention layers (`attention.py`, `self_attention.py`); not a
layer module. One function computes attention for both layer-wise and
step-wise runs: predict mode only changes what the keys and values are (the
cache joined with the block) and where the queries sit among them.

Self-attention horizons follow SequenceLayers: `max_past_horizon` (P) and
`max_future_horizon` (F) count time steps, -1 meaning unlimited. Query step t
sees the valid key steps s with `t - P <= s <= t + F`. Invalid steps count in
the distance but are never attended.

Two streaming caches:

* window (P >= 0): the keys and values of the last P + F steps, a sliding
  window over time, so its size never grows with the stream;
* global (P == -1): `cache_size` slots filled with each row's valid steps in
  order (invalid steps take no slot, so rows advance at their own pace). A
  row's output at step t is valid only if the row has at most `cache_size`
  valid steps up to step t + F; past that its outputs are marked invalid
  (mask False), never computed from a silently truncated cache.

With F > 0 the queries wait in a delay buffer until their F future steps
have arrived (input_latency = output_latency = F).
"""

from __future__ import annotations

import contextlib
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import rng as rng_lib

# SequenceLayers' and Trax's logit for invisible keys; finite, so a query that
# sees nothing gets a uniform average instead of NaN.
INVALID_LOGIT = -1e9


def horizon_field(horizon: int) -> float:
    """A horizon as a receptive-field extent: -1 (unlimited) is math.inf."""
    return math.inf if horizon == -1 else horizon


def visibility(query_positions, key_positions, max_past_horizon: int, max_future_horizon: int) -> jax.Array:
    """`[query, key]` bool matrix: key within the horizons of the query.

    jnp, so that a time length only known when the function runs (a symbolic
    shape, as `trax_sl.export` uses) works; XLA folds it to a constant otherwise.
    """
    offset = jnp.asarray(query_positions).reshape((-1, 1)) - jnp.asarray(key_positions).reshape((1, -1))
    visible = jnp.ones(offset.shape, bool)
    if max_past_horizon != -1:
        visible &= offset <= max_past_horizon
    if max_future_horizon != -1:
        visible &= -offset <= max_future_horizon
    return visible


def dot_product_attention(
    queries,
    keys,
    values,
    visible,
    *,
    scale: float,
    soft_cap: float | None = None,
    dropout_rate: float = 0.0,
    broadcast_dropout_across_queries: bool = False,
    rng=None,
    zero_fully_masked: bool = False,
):
    """Scaled dot-product attention on `[..., time, depth]` arrays.

    Args:
      queries: `[..., query_time, depth]`.
      keys: `[..., key_time, depth]`; leading axes broadcast against the queries'.
      values: `[..., key_time, value_depth]`.
      visible: bool, broadcastable (same rank) to `[..., query_time, key_time]`.
      scale: multiplies the queries (e.g. `1 / sqrt(depth)`).
      soft_cap: if set, logits become `soft_cap * tanh(logits / soft_cap)`.
      dropout_rate: dropout on the attention probabilities (needs `rng`).
      broadcast_dropout_across_queries: one dropout mask for all queries (T5).
      rng: key for dropout; None means no dropout.
      zero_fully_masked: queries that see no key get zeros, not a uniform average.

    Returns:
      `[..., query_time, value_depth]`.
    """
    # einsum contracts the keys' last axis in place; matmul with swapaxes made XLA:CPU copy
    # the transposed keys (a whole KV cache per layer per decoding step).
    logits = jnp.einsum("...qd,...kd->...qk", queries * jnp.asarray(scale, queries.dtype), keys)
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    if soft_cap:
        logits = soft_cap * jnp.tanh(logits / soft_cap)
    logits = jnp.where(visible, logits, jnp.asarray(INVALID_LOGIT, logits.dtype))
    probabilities = jax.nn.softmax(logits, axis=-1)
    if dropout_rate > 0.0 and rng is not None:
        shape = list(probabilities.shape)
        if broadcast_dropout_across_queries:
            shape[-2] = 1
        keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, tuple(shape))
        probabilities = jnp.where(keep, probabilities / (1.0 - dropout_rate), 0.0)
    if zero_fully_masked:
        seen = jnp.any(jnp.broadcast_to(visible, probabilities.shape), axis=-1, keepdims=True)
        probabilities = jnp.where(seen, probabilities, 0.0)
    return jnp.einsum("...qk,...kd->...qd", probabilities.astype(values.dtype), values)


def attend_options(
    layer_name: str,
    mode: str,
    rng,
    *,
    dropout_rate: float,
    soft_cap: float | None,
    broadcast_dropout_across_queries: bool,
    zero_fully_masked: bool,
    query_scale: float | None,
) -> dict:
    """`dot_product_attention`'s keywords for a layer in `mode` (dropout only in 'train', where it needs `rng`)."""
    dropout = rng_lib.train_rate(layer_name, mode, rng, attention_probabilities_dropout_rate=dropout_rate)
    options = {
        "soft_cap": soft_cap,
        "dropout_rate": dropout,
        "broadcast_dropout_across_queries": broadcast_dropout_across_queries,
        "rng": rng,
        "zero_fully_masked": zero_fully_masked,
    }
    if query_scale is not None:
        options["scale"] = query_scale
    return options


def multihead_attention(queries, keys, values, visible, **attend_kwargs):
    """Attention on SequenceLayers' head layout, with grouped key/value heads.

    Args:
      queries: `[batch, query_time, num_heads, units_per_head]`.
      keys: `[batch, key_time, num_kv_heads, units_per_head]`; query head i
        uses key/value head `i // (num_heads // num_kv_heads)`.
      values: `[batch, key_time, num_kv_heads, units_per_head]`, as keys.
      visible: bool `[batch, 1 or num_heads, 1 or query_time, key_time]`.
      **attend_kwargs: passed to `dot_product_attention` (scale defaults to 1/sqrt(units)).

    Returns:
      `[batch, query_time, num_heads, units_per_head]`.

    Without dropout, soft cap or zeroed fully-masked queries, and with one
    dtype and head size throughout, it runs `fused_attention`; else the
    einsum path (`dot_product_attention`), which computes the same.
    """
    batch, query_time, num_heads, units = queries.shape
    num_kv_heads = keys.shape[2]
    group = num_heads // num_kv_heads
    attend_kwargs.setdefault("scale", 1.0 / np.sqrt(units))
    if _fusable(queries, keys, values, **attend_kwargs):
        return fused_attention(queries, keys, values, visible, attend_kwargs["scale"])
    # [batch, kv_heads, group, time, units]: a group's queries share one key head.
    q = jnp.transpose(queries.reshape((batch, query_time, num_kv_heads, group, units)), (0, 2, 3, 1, 4))
    k = jnp.transpose(keys, (0, 2, 1, 3))[:, :, None]
    v = jnp.transpose(values, (0, 2, 1, 3))[:, :, None]
    if visible.shape[1] == 1:
        visible = visible[:, :, None]
    else:
        visible = visible.reshape((batch, num_kv_heads, group) + tuple(visible.shape[2:]))
    context = dot_product_attention(q, k, v, visible, **attend_kwargs)
    return jnp.transpose(context, (0, 3, 1, 2, 4)).reshape((batch, query_time, num_heads, units))


# How `multihead_attention` attends (`use_implementation`): 'fused' through jax.nn.dot_product_attention
# where it can, 'einsum' never, 'auto' fused except on a CPU. On XLA:CPU, jax.nn's (XLA) attention copies
# a predict-mode KV cache every step (greedy decoding 1.7x slower in benchmarks/decode.py), and it is
# the same einsum math there, so the CPU keeps the einsum path.
_IMPLEMENTATIONS = ("auto", "fused", "einsum")
_implementation = ["auto"]


@contextlib.contextmanager
def use_implementation(name: str):
    """Inside, attention traced anew uses `name`: 'auto', 'fused' or 'einsum' (see `_IMPLEMENTATIONS`).

    For comparing the paths and for debugging; a layer already traced (e.g.
    its jitted `layer(x)`) keeps the path it was traced with.
    """
    if name not in _IMPLEMENTATIONS:
        raise ValueError(f"attention implementation must be one of {_IMPLEMENTATIONS}, got {name!r}")
    outer, _implementation[0] = _implementation[0], name
    try:
        yield
    finally:
        _implementation[0] = outer


def _fusing() -> bool:
    choice = _implementation[0]
    return choice == "fused" or (choice == "auto" and jax.default_backend() != "cpu")


def _fusable(
    queries, keys, values, *, scale, soft_cap=None, dropout_rate=0.0, rng=None, zero_fully_masked=False, **_
):
    del scale
    return (
        _fusing()
        and not soft_cap
        and not (dropout_rate > 0.0 and rng is not None)
        and not zero_fully_masked
        and queries.dtype == keys.dtype == values.dtype
        and queries.shape[-1] == keys.shape[-1] == values.shape[-1]
    )


def fused_attention(queries, keys, values, visible, scale: float):
    """`jax.nn.dot_product_attention` on `[batch, time, heads, units]` (grouped key/value heads allowed).

    On a GPU, bfloat16 and float16 go to cuDNN's fused kernel where it takes
    the shapes (else, and on other backends, XLA's implementation). Logits
    and softmax in float32, invisible keys masked; a query that sees no key
    gets the uniform average, as `dot_product_attention` gives.
    """
    mask = jnp.asarray(visible, bool)
    if jax.default_backend() == "gpu" and queries.dtype in (jnp.bfloat16, jnp.float16):
        try:
            return jax.nn.dot_product_attention(
                queries, keys, values, mask=mask, scale=scale, implementation="cudnn"
            )
        except (ValueError, NotImplementedError, RuntimeError, TypeError):
            pass  # Shapes or a GPU cuDNN's kernel does not take: XLA's computes the same.
    return jax.nn.dot_product_attention(queries, keys, values, mask=mask, scale=scale, implementation="xla")


# --- Masks --------------------------------------------------------------------------


def masked_values(x):
    """Values with a Sequence's invalid steps zeroed (garbage and NaN never reach a product)."""
    return x.mask_invalid().values if isinstance(x, seq.Sequence) else x


def key_validity(keys, values, batch: int, key_time: int):
    """`[batch, key_time]` bool: the key steps valid in both Sequences (all, for arrays)."""
    valid = jnp.ones((batch, key_time), jnp.bool_)
    for item in (keys, values):
        if isinstance(item, seq.Sequence):
            valid = valid & item.mask
    return valid


def trax_mask_visibility(mask, batch: int, key_time: int):
    """A Trax mask (`[batch, key_time]` or rank 4) as bool `[batch, 1|heads, 1|query_time, key_time]`."""
    mask = jnp.asarray(seq.values_of(mask)).astype(jnp.bool_)
    if mask.ndim == 2:
        mask = mask.reshape((mask.shape[0], 1, 1, mask.shape[1]))
    if mask.ndim != 4 or mask.shape[0] != batch or mask.shape[-1] != key_time:
        raise ValueError(
            f"expected an attention mask [batch={batch}, 1 or heads, 1 or query_time, "
            f"key_time={key_time}] (or [batch, key_time]), got {shapes.short_form(mask)}"
        )
    return mask


# --- Self-attention with horizons, layer-wise and step-wise --------------------


class StreamCache(NamedTuple):
    """Predict-mode state of a self-attention: its KV cache and query delay buffer.

    `slots` is the window cache's per-slot validity `[batch, P + F]` (bool) or
    the global cache's per-row count of valid steps seen `[batch]` (int32,
    held at cache_size + 1 once exceeded, so it never overflows).
    """

    keys: jax.Array  # [batch, cache_length, num_kv_heads, units_per_head]
    values: jax.Array  # [batch, cache_length, num_kv_heads, units_per_head]
    slots: jax.Array
    queries: jax.Array  # [batch, F, num_heads, units_per_head]
    queries_mask: jax.Array  # [batch, F]


def cache_length(max_past_horizon: int, max_future_horizon: int, cache_size: int | None) -> int:
    """A self-attention KV cache's steps: past + future horizon, or `cache_size` for global attention."""
    return cache_size if max_past_horizon == -1 else max_past_horizon + max_future_horizon


def init_stream_cache(
    query_signature, key_signature, max_past_horizon: int, max_future_horizon: int, cache_size: int | None
) -> StreamCache:
    """The empty cache for `[batch, time, heads, units]` query and key signatures."""
    batch = query_signature.shape[0]
    length = cache_length(max_past_horizon, max_future_horizon, cache_size)
    kv_shape = (batch, length) + tuple(key_signature.shape[2:])
    if max_past_horizon == -1:
        slots = jnp.zeros((batch,), jnp.int32)
    else:
        slots = jnp.zeros((batch, length), jnp.bool_)
    future = max_future_horizon
    return StreamCache(
        jnp.zeros(kv_shape, key_signature.dtype),
        jnp.zeros(kv_shape, key_signature.dtype),
        slots,
        jnp.zeros((batch, future) + tuple(query_signature.shape[2:]), query_signature.dtype),
        jnp.zeros((batch, future), jnp.bool_),
    )


def _valid_keys_and_values(keys: seq.Sequence, values: seq.Sequence):
    """(keys, values, validity): invalid steps zeroed, so NaN cannot reach a gradient."""
    valid = keys.mask & values.mask
    where = seq.expand_mask(valid, keys.ndim)
    return jnp.where(where, keys.values, 0), jnp.where(where, values.values, 0), valid


def self_attention_layer(
    queries: seq.Sequence,
    keys: seq.Sequence,
    values: seq.Sequence,
    max_past_horizon: int,
    max_future_horizon: int,
    attend_fn,
    local_block_size: int | None = None,
) -> seq.Sequence:
    """Layer-wise self-attention over whole `[batch, time, heads, units]` Sequences.

    `attend_fn(queries, keys, values, visible)` is `multihead_attention` with
    the layer's options bound. With `local_block_size` B, queries are taken B
    at a time against the P + B + F keys around them (memory linear in time);
    the result is the same.
    """
    k, v, valid = _valid_keys_and_values(keys, values)
    past, future = max_past_horizon, max_future_horizon
    batch, time = queries.shape[:2]
    if local_block_size is None:
        steps = jnp.arange(time)
        visible = valid[:, None, None, :] & visibility(steps, steps, past, future)[None, None]
        return seq.Sequence(attend_fn(queries.values, k, v, visible), queries.mask)
    block = local_block_size
    n_blocks = -(-time // block)
    padded = n_blocks * block
    context = past + block + future
    q = jnp.pad(queries.values, [(0, 0), (0, padded - time), (0, 0), (0, 0)])
    q = q.reshape((batch * n_blocks, block) + tuple(q.shape[2:]))
    # Each block's context: its own steps, P before and F after (invalid outside).
    window = (np.arange(n_blocks).reshape((-1, 1)) * block + np.arange(context).reshape((1, -1))).reshape(-1)
    pad = [(0, 0), (past, padded - time + future)]

    def contexts(x):
        x = jnp.take(jnp.pad(x, pad + [(0, 0)] * (x.ndim - 2)), window, axis=1)
        return x.reshape((batch * n_blocks, context) + tuple(x.shape[2:]))

    vis = visibility(past + np.arange(block), np.arange(context), past, future)
    visible = contexts(valid)[:, None, None, :] & vis[None, None]
    out = attend_fn(q, contexts(k), contexts(v), visible)
    out = out.reshape((batch, padded) + tuple(out.shape[2:]))[:, :time]
    return seq.Sequence(out, queries.mask)


def self_attention_step(
    queries: seq.Sequence,
    keys: seq.Sequence,
    values: seq.Sequence,
    cache: StreamCache,
    max_past_horizon: int,
    max_future_horizon: int,
    attend_fn,
) -> tuple[seq.Sequence, StreamCache]:
    """One predict-mode block: attends the (delayed) queries to cache + block.

    Returns the outputs for the queries F steps back and the next cache.
    """
    past, future = max_past_horizon, max_future_horizon
    k, v, valid = _valid_keys_and_values(keys, values)
    time = queries.shape[1]
    length = cache.keys.shape[1]

    q_all = jnp.concatenate([cache.queries, queries.values], axis=1)
    q_mask_all = jnp.concatenate([cache.queries_mask, queries.mask], axis=1)
    q, q_mask = q_all[:, :time], q_mask_all[:, :time]

    if past == -1:
        # Write the block first, then attend over the cache alone: no concatenated copy of
        # the whole cache per step, and the scatter updates the cache in place.
        new_keys, new_values, slots = _write_global(cache, k, v, valid)
        # Query j (F steps back) sees the row's valid steps up to block step j.
        seen = cache.slots.reshape((-1, 1)) + jnp.cumsum(valid.astype(jnp.int32), axis=1)
        visible = (np.arange(length).reshape((1, 1, -1)) < seen[:, :, None])[:, None]
        out = attend_fn(q, new_keys, new_values, visible)
        q_mask = q_mask & (seen <= length)  # Past the cache: invalid, with zero values (below).
        out = jnp.where(seq.expand_mask(q_mask, out.ndim), out, 0)
        new_cache = StreamCache(new_keys, new_values, slots, q_all[:, time:], q_mask_all[:, time:])
        return seq.Sequence(out, q_mask), new_cache

    memory_k = jnp.concatenate([cache.keys, k], axis=1)
    memory_v = jnp.concatenate([cache.values, v], axis=1)
    memory_valid = jnp.concatenate([cache.slots, valid], axis=1)

    # The cache holds the `length` steps before the block, the queries are F steps back.
    vis = visibility(length - future + np.arange(time), np.arange(length + time), past, future)
    visible = memory_valid[:, None, None, :] & vis[None, None]
    out = attend_fn(q, memory_k, memory_v, visible)

    new_keys, new_values, slots = memory_k[:, time:], memory_v[:, time:], memory_valid[:, time:]
    new_cache = StreamCache(new_keys, new_values, slots, q_all[:, time:], q_mask_all[:, time:])
    return seq.Sequence(out, q_mask), new_cache


def _write_global(cache: StreamCache, k, v, valid):
    """Appends each row's valid steps after its filled slots; those past the end are dropped."""
    length = cache.keys.shape[1]
    batch = k.shape[0]
    rank = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    index = jnp.where(valid, cache.slots.reshape((-1, 1)) + rank, length)
    rows = jnp.arange(batch).reshape((-1, 1))
    new_keys = cache.keys.at[rows, index].set(k, mode="drop")
    new_values = cache.values.at[rows, index].set(v, mode="drop")
    count = jnp.minimum(cache.slots + jnp.sum(valid.astype(jnp.int32), axis=1), length + 1)
    return new_keys, new_values, count
