"""Attention layers optimized for memory (Trax's research.efficient_attention).

Queries, keys and values are computed one (example, head) slice at a time,
or in groups of `n_parallel_heads` slices recomputed in the backward pass, so
that `n_heads * 3` activations of the input's size are never all alive at
once. Masking uses per-position integers (`q_info`, `kv_info`) instead of
`[length, length]` masks. The array functions are in `attention_ops`; the LSH
layers in `lsh_attention`; all are exported from here under Trax's names.

These are layer-wise research layers, except causal chunked `SelfAttention`
(a window of past chunks), which streams; the others do not (supports_step
is False; predict mode raises). Sequence inputs are masked first, their
masks mask the keys, and the output follows the first input's kind.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init
from trax_sl.layers.research.attention_ops import (  # noqa: F401  (Trax's module API)
    DropoutRates,
    EfficientAttentionBase,
    and_masks,
    apply_broadcasted_dropout,
    attend,
    hash_vecs,
    hash_with_rotations,
    head_kernel_initializer,
    length_normalized,
    look_adjacent,
    mask_self_attention,
    masked_key_info,
    permute_via_gather,
    permute_via_sort,
    random_rotations,
    split_rng,
    values_and_mask,
)
from trax_sl.layers.research.lsh_attention import (  # noqa: F401  (exported here, as in Trax)
    LSHSelfAttention,
    MixedLSHSelfAttention,
    PureLSHSelfAttention,
    PureLSHSelfAttentionWrapper,
)


class SelfAttention(DropoutRates, EfficientAttentionBase):
    """Memory-efficient self-attention (Trax's second implementation).

    n_in=1 (2 with `masked=True`: `x`, `mask [batch, length]` bool, True =
    valid), n_out=1. `[batch, length, d_model]` -> `[batch, length, d_model]`:
    per head, `q = x w_q`, `k = x w_k` (or the length-normalized queries with
    `share_qk`, which then never attend to themselves unless nothing else is
    visible), `v = x w_v`; softmax(q k^T / sqrt(d_qk)) v w_o, summed over heads.
    `causal` masks future keys; `chunk_len` splits the length into chunks that
    attend within themselves and `n_chunks_before`/`n_chunks_after` neighbours
    (wrapping around at the ends, as in Trax). The length must be a multiple
    of chunk_len, as in Trax, except for causal attention, which pads its last
    chunk with masked steps. A Sequence input's mask masks the keys like
    `masked=True`. Weights: `(w_q, w_k, w_v, w_o)` (no w_k with share_qk;
    biases `b_q, b_k, b_v` appended with `bias=True`), stacked over heads:
    `w_q [n_heads, d_model, d_qk]`, `w_o [n_heads, d_v, d_model]`.

    Predict mode: causal chunked attention without look-ahead
    (`n_chunks_after=0`, `masked=False`) streams with block_size 1: the state
    holds the last `(n_chunks_before + 1) * chunk_len` steps of input (their
    keys and values are recomputed) and each row's position, so a decoder
    fed one token at a time gets the whole sequence's outputs (Trax's
    predict memory instead attends to all of `predict_mem_len`, which differs
    from eval). Other configurations do not stream (supports_step is False;
    'predict' raises ValueError at init, saying why).
    """

    def __init__(
        self,
        n_heads=2,
        d_qk=64,
        d_v=64,
        share_qk=False,
        causal=False,
        masked=False,
        chunk_len=None,
        n_chunks_before=0,
        n_chunks_after=0,
        bias=False,
        mode="train",
        predict_mem_len=None,
        predict_drop_len=None,
        attention_dropout=0.0,
        output_dropout=0.0,
        n_parallel_heads=None,
        use_python_loop=False,
        use_reference_code=False,
    ):
        checks.check_positive("SelfAttention", d_qk=d_qk, d_v=d_v)
        checks.check_non_negative(
            "SelfAttention", n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after
        )
        if chunk_len is not None:
            checks.check_positive("SelfAttention", chunk_len=chunk_len)
        elif n_chunks_before or n_chunks_after:
            raise ValueError(
                f"SelfAttention: n_chunks_before/n_chunks_after need chunk_len, got chunk_len=None "
                f"with n_chunks_before={n_chunks_before}, n_chunks_after={n_chunks_after}"
            )
        checks.check_rate("SelfAttention", attention_dropout=attention_dropout, output_dropout=output_dropout)
        super().__init__(
            n_heads,
            n_in=2 if masked else 1,
            n_parallel_heads=n_parallel_heads,
            predict_mem_len=predict_mem_len,
            predict_drop_len=predict_drop_len,
            use_python_loop=use_python_loop,
            use_reference_code=use_reference_code,
            name="SelfAttention",
            mode=mode,
        )
        self._d_qk, self._d_v = d_qk, d_v
        self._share_qk = share_qk
        self._causal = causal
        self._masked = masked
        self._chunk_len = chunk_len
        self._n_chunks_before, self._n_chunks_after = n_chunks_before, n_chunks_after
        self._bias = bias
        self._attention_dropout, self._output_dropout = attention_dropout, output_dropout

    def _streams(self) -> bool:
        """Whether each output sees a bounded window of past steps only: causal, chunked, no look-ahead."""
        return self._causal and self._chunk_len is not None and not self._n_chunks_after and not self._masked

    @property
    def _window(self) -> int:
        """The past steps a streaming query can see: its chunk and `n_chunks_before` chunks before it."""
        return (self._n_chunks_before + 1) * self._chunk_len

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        if not self._streams():
            return streaming.NOT_STREAMING.not_streaming(
                "only causal attention with a chunk_len, n_chunks_after=0 and masked=False streams (each "
                "output sees a window of past chunks); this one sees the whole sequence or later steps"
            )
        return streaming.StreamingSpec(receptive_field=(self._window - 1, 0))

    def init_weights_and_state(self, input_signature, rng):
        weights, state = super().init_weights_and_state(input_signature, rng)
        if self._mode != "predict" or not self._streams():
            return weights, state
        values = seq.values_of(input_signature)
        batch, d_model = values.shape[0], values.shape[-1]
        memory = (
            jnp.zeros((batch, self._window, d_model), values.dtype),  # The last steps of input.
            jnp.full((batch, self._window), -2, jnp.int32),  # Their key info (< -1: empty; attend adds 1).
            jnp.zeros((batch,), jnp.int32),  # Each row's next position.
        )
        return weights, memory

    def forward(self, inputs, weights, state, rng):
        if self._mode == "predict" and self._streams():
            return self._stream_forward(inputs, weights, state)
        return super().forward(inputs, weights, state, rng)

    def _window_mask(self, dots, q_info, kv_info):
        """Layer-wise chunked attention's mask, on keys from memory: causal, and no further back than the window."""
        dots = mask_self_attention(
            dots, q_info, kv_info, causal=True, exclude_self=self._share_qk, masked=True
        )
        # attend shifts the infos by 1; chunk c sees chunks c - n_chunks_before .. c.
        q_chunk, kv_chunk = (q_info - 1) // self._chunk_len, (kv_info - 1) // self._chunk_len
        return dots - 1e9 * (kv_chunk < q_chunk - self._n_chunks_before)

    def _stream_forward(self, x, weights, memory):
        """One predict-mode block: its queries attend to the memory and the block; the memory keeps the last steps."""
        values, mask = values_and_mask(x)
        batch, time = values.shape[:2]
        memory_x, memory_info, next_position = memory
        valid = jnp.ones((batch, time), jnp.bool_) if mask is None else mask
        positions = next_position.reshape((batch, 1)) + jnp.arange(time, dtype=jnp.int32).reshape((1, time))
        keys_x = jnp.concatenate([memory_x, values.astype(memory_x.dtype)], axis=1)
        keys_info = jnp.concatenate([memory_info, masked_key_info(positions, valid)], axis=1)

        def one_head(x_q, x_kv, q_info, kv_info, w):
            q, _, _, w_o = self._projections(x_q, w)
            q_of_keys, k, v, _ = self._projections(x_kv, w)
            if self._share_qk:
                k = length_normalized(q_of_keys)
            o, _ = attend(q, k, v, mask_fn=self._window_mask, q_info=q_info, kv_info=kv_info)
            return jnp.matmul(o, w_o)

        per_head = jax.vmap(one_head, in_axes=(None, None, None, None, 0))
        out = jax.vmap(per_head, in_axes=(0, 0, 0, 0, None))(values, keys_x, positions, keys_info, weights)
        out = jnp.sum(out, axis=1).astype(values.dtype)
        new_memory = (
            keys_x[:, -self._window :],
            keys_info[:, -self._window :],
            next_position + jnp.sum(valid, axis=1).astype(jnp.int32),
        )
        return (seq.Sequence(out, mask) if isinstance(x, seq.Sequence) else out), new_memory

    def create_weights_unbatched(self, input_signature, rng):
        if isinstance(input_signature, tuple):
            input_signature = input_signature[0]
        d_model = input_signature.shape[-1]
        kernel = head_kernel_initializer(self._n_heads)
        rng_q, rng_k, rng_v, rng_o = jax.random.split(rng, 4)
        w_q = kernel((d_model, self._d_qk), rng_q)
        w_k = kernel((d_model, self._d_qk), rng_k)
        w_v = kernel((d_model, self._d_v), rng_v)
        w_o = jnp.transpose(kernel((d_model, self._d_v), rng_o))
        weights = (w_q, w_v, w_o) if self._share_qk else (w_q, w_k, w_v, w_o)
        if self._bias:
            b_q, b_k, b_v = jnp.zeros(self._d_qk), jnp.zeros(self._d_qk), jnp.zeros(self._d_v)
            weights += (b_q, b_v) if self._share_qk else (b_q, b_k, b_v)
        return weights

    def _projections(self, x, weights):
        """(q, k or None, v, w_o) of one head."""
        n = 3 if self._share_qk else 4
        matrices, biases = weights[:n], weights[n:]
        if self._share_qk:
            (w_q, w_v, w_o), w_k = matrices, None
        else:
            w_q, w_k, w_v, w_o = matrices
        q, v = jnp.matmul(x, w_q), jnp.matmul(x, w_v)
        k = None if w_k is None else jnp.matmul(x, w_k)
        if self._bias:
            b_q, b_v = biases[0].reshape((1, -1)), biases[-1].reshape((1, -1))
            if not self._share_qk:
                k = k + biases[1].reshape((1, -1))
            q, v = q + b_q, v + b_v
        return q, k, v, w_o

    def unbatched_inputs(self, inputs):
        x, mask = values_and_mask(inputs[0])
        explicit = values_and_mask(inputs[1])[0] if self._masked else None
        return x, and_masks(mask, explicit)

    def forward_unbatched(self, x, mask=None, *, weights, state, rng, update_state):
        del update_state
        length = x.shape[0]
        pad = 0 if self._chunk_len is None else -length % self._chunk_len
        if pad and not self._causal:
            raise ValueError(
                f"{self.name}: the length ({length}) must be a multiple of chunk_len={self._chunk_len}"
            )
        if pad:  # Causal: masked steps at the end change no earlier output.
            mask = jnp.arange(length + pad) < length if mask is None else jnp.pad(mask, (0, pad))
            x = jnp.pad(x, ((0, pad), (0, 0)))
        attention_rate, output_rate = self._rates(rng)
        attend_rng, output_rng = split_rng(rng, 2)
        q, k, v, w_o = self._projections(x, weights)
        positions = jnp.arange(length + pad, dtype=jnp.int32)
        mask_fn = functools.partial(
            mask_self_attention, causal=self._causal, exclude_self=self._share_qk, masked=mask is not None
        )
        o, _ = attend(
            q,
            k,
            v,
            q_chunk_len=self._chunk_len,
            kv_chunk_len=self._chunk_len,
            n_chunks_before=self._n_chunks_before,
            n_chunks_after=self._n_chunks_after,
            mask_fn=mask_fn,
            q_info=positions,
            kv_info=masked_key_info(positions, mask),
            dropout=attention_rate,
            rng=attend_rng,
        )
        out = jnp.matmul(o[:length], w_o)
        return apply_broadcasted_dropout(out, output_rate, output_rng), state


class EncDecAttention(DropoutRates, EfficientAttentionBase):
    """Memory-efficient encoder-decoder attention.

    n_in=3 (`q_antecedent [batch, q_len, d_model]`, `kv_antecedent [batch,
    kv_len, d_kv]`, `mask [batch, kv_len]` bool, True = valid) or 2 with
    `masked=False`; n_out=1, `[batch, q_len, d_model]`. Per head softmax(q
    k^T / sqrt(d_qk)) v w_o, summed over heads; a Sequence kv_antecedent's
    mask masks keys too. Weights: `(w_q [n_heads, d_model, d_qk], w_k
    [n_heads, d_kv, d_qk], w_v [n_heads, d_kv, d_v], w_o [n_heads, d_v,
    d_model])`.

    Predict mode: not streamable (supports_step is False).
    """

    def __init__(
        self,
        n_heads=2,
        d_qk=64,
        d_v=64,
        masked=True,
        mode="train",
        attention_dropout=0.0,
        output_dropout=0.0,
        n_parallel_heads=None,
        use_python_loop=False,
        use_reference_code=False,
    ):
        checks.check_positive("EncDecAttention", d_qk=d_qk, d_v=d_v)
        checks.check_rate(
            "EncDecAttention", attention_dropout=attention_dropout, output_dropout=output_dropout
        )
        super().__init__(
            n_heads,
            n_in=3 if masked else 2,
            n_parallel_heads=n_parallel_heads,
            use_python_loop=use_python_loop,
            use_reference_code=use_reference_code,
            name="EncDecAttention",
            mode=mode,
        )
        self._d_qk, self._d_v = d_qk, d_v
        self._masked = masked
        self._attention_dropout, self._output_dropout = attention_dropout, output_dropout

    def create_weights_unbatched(self, input_signature, rng):
        d_model, d_kv = input_signature[0].shape[-1], input_signature[1].shape[-1]
        kernel = head_kernel_initializer(self._n_heads)
        rng_q, rng_k, rng_v, rng_o = jax.random.split(rng, 4)
        return (
            kernel((d_model, self._d_qk), rng_q),
            kernel((d_kv, self._d_qk), rng_k),
            kernel((d_kv, self._d_v), rng_v),
            jnp.transpose(kernel((d_model, self._d_v), rng_o)),
        )

    def unbatched_inputs(self, inputs):
        q, _ = values_and_mask(inputs[0])
        kv, kv_mask = values_and_mask(inputs[1])
        explicit = values_and_mask(inputs[2])[0] if self._masked else None
        return q, kv, and_masks(kv_mask, explicit)

    def forward_unbatched(self, q_antecedent, kv_antecedent, mask=None, *, weights, state, rng, update_state):
        del update_state
        attention_rate, output_rate = self._rates(rng)
        attend_rng, output_rng = split_rng(rng, 2)
        w_q, w_k, w_v, w_o = weights
        q, k, v = (
            jnp.matmul(q_antecedent, w_q),
            jnp.matmul(kv_antecedent, w_k),
            jnp.matmul(kv_antecedent, w_v),
        )
        if mask is None:
            kv_info = mask_fn = None
        else:
            # Only invalid keys are pushed down. (Trax's shifted info also pushed valid keys by 1e9,
            # which in float32 rounds every score to the same value.)
            kv_info = jnp.where(mask, 0, -2).astype(jnp.int32)
            mask_fn = functools.partial(mask_self_attention, causal=False, exclude_self=False, masked=True)
        o, _ = attend(
            q, k, v, mask_fn=mask_fn, q_info=None, kv_info=kv_info, dropout=attention_rate, rng=attend_rng
        )
        out = jnp.matmul(o, w_o)
        return apply_broadcasted_dropout(out, output_rate, output_rng), state


def _as_key(n_buckets):
    return n_buckets if isinstance(n_buckets, (int, np.integer)) else tuple(n_buckets)


@functools.lru_cache(maxsize=64)
def _fixed_rotations(depth: int, n_buckets, n_hashes: int) -> np.ndarray:
    """LSHFF's eval-mode rotations (key 0), computed once: a constant instead of a random graph per trace."""
    with jax.ensure_compile_time_eval():
        return np.asarray(random_rotations(depth, n_buckets, n_hashes, jax.random.PRNGKey(0)))


class LSHFF(base.Layer):
    """Feed-forward block with LSH: Dense(d_ff) restricted by hashing, Relu, Dense back.

    n_in=1, n_out=1; `[..., d_model]` -> `[..., d_model]`. The inputs and the
    rows of `w1` are hashed with the same random rotations; a hidden unit is
    computed for an input only if one of their `n_hashes` bucket ids agree:
    `relu((x w1^T) * hash_mask) w2 + b2`. Weights: `(w1 [d_ff, d_model], w2
    [d_ff, d_model], b2 [d_model])`. In 'train' mode the rotations come from
    the rng (required); in 'eval' and 'predict' from a fixed key, so that
    evaluation is deterministic.

    Predict mode: stateless and pointwise in time; streams with block_size 1.
    """

    def __init__(
        self,
        d_ff,
        n_buckets,
        n_hashes=4,
        mode="train",
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    ):
        checks.check_positive("LSHFF", d_ff=d_ff, n_hashes=n_hashes)
        for factor in [n_buckets] if isinstance(n_buckets, (int, np.integer)) else list(n_buckets):
            if not isinstance(factor, (int, np.integer)) or factor < 2 or factor % 2:
                raise ValueError(
                    f"LSHFF: n_buckets must be an even integer >= 2 (or a list of them), "
                    f"got n_buckets={n_buckets!r}"
                )
        if mode not in base.MODES:
            raise ValueError(f"LSHFF: mode must be one of {base.MODES}, got mode={mode!r}")
        super().__init__(name=f"LSHFF_{d_ff}")
        self._d_ff, self._n_buckets, self._n_hashes = d_ff, n_buckets, n_hashes
        self._mode = mode
        self._kernel_initializer, self._bias_initializer = kernel_initializer, bias_initializer

    def weight_axes(self, weights):
        w = partitioning.Axes("mlp", "embed")  # w1 and w2 are both [d_ff, d_model].
        return w, w, partitioning.Axes("embed")

    def init_weights_and_state(self, input_signature, rng):
        d_model = input_signature.shape[-1]
        rng_w1, rng_w2, rng_b2 = jax.random.split(rng, 3)
        return (
            self._kernel_initializer((self._d_ff, d_model), rng_w1),
            self._kernel_initializer((self._d_ff, d_model), rng_w2),
            self._bias_initializer((d_model,), rng_b2),
        ), ()

    def forward(self, x, weights, state, rng):
        w1, w2, b2 = weights
        flat = jnp.reshape(x, (-1, x.shape[-1]))
        if self._mode == "train":
            if rng is None:
                raise ValueError(
                    f"{self.name}: mode='train' hashes with the rng, got None; pass rng= "
                    f"(or use mode='eval', which hashes with a fixed key)"
                )
            rotations = random_rotations(flat.shape[-1], self._n_buckets, self._n_hashes, rng)
        else:
            rotations = _fixed_rotations(flat.shape[-1], _as_key(self._n_buckets), self._n_hashes)
        # Inputs and weight rows are hashed with the same random rotations (Trax: the same key).
        x_buckets, _ = hash_with_rotations(flat, self._n_buckets, rotations)
        w1_buckets, _ = hash_with_rotations(w1, self._n_buckets, rotations)
        same = x_buckets[:, :, None] == w1_buckets[:, None, :]  # [n_hashes, n_inputs, d_ff]
        hash_mask = jax.lax.stop_gradient(jnp.any(same, axis=0)).astype(flat.dtype)
        mid = jnp.dot(flat, w1.T) * hash_mask
        out = jnp.dot(jnp.maximum(mid, 0), w2) + b2.reshape((1, -1))
        return jnp.reshape(out, x.shape), state
