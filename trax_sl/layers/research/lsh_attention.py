"""LSH (Reformer) self-attention: LSHSelfAttention, PureLSHSelfAttention and their mixes.

Queries (shared with keys) are hashed into buckets by random rotations,
sorted by bucket, cut into chunks, and each chunk attends within itself and
`n_chunks_before`/`n_chunks_after` neighbours; `n_hashes` rounds are combined
by their softmax normalizers (https://arxiv.org/abs/2001.04451). Exported from
`efficient_attention`, as in Trax.

Hashing keys: each head keeps a PRNG key in its state (`[n_heads, 2]`
uint32), split at every call (so every call hashes afresh, as in Trax) and
shared by the examples of a batch (so a row's output does not depend on its
place in the batch). Recomputing a call from the same state gives the same
buckets, which is what reversible backward passes need.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import attention, base, combinators, core, position, streaming
from trax_sl.layers.research.attention_ops import (
    DropoutRates,
    EfficientAttentionBase,
    and_masks,
    apply_broadcasted_dropout,
    attend,
    check_n_parallel_heads,
    forward_and_or_backward,
    hash_vecs,
    head_kernel_initializer,
    map_slices,
    mask_self_attention,
    masked_key_info,
    permute_via_gather,
    permute_via_sort,
    split_rng,
    values_and_mask,
)

_WHY_LSH_DOES_NOT_STREAM = (
    "an output's bucket chunk is formed by sorting the whole sequence, so it depends on later steps; "
    "Trax's fast inference, which attends to recent keys of the query's bucket, differs from the "
    "layer-wise output, and predict mode here must equal it"
)


class _LSHOptions:
    """Hashing, chunking and masking options shared by the LSH layers, and their attention."""

    streaming_spec = streaming.NOT_STREAMING.not_streaming(_WHY_LSH_DOES_NOT_STREAM)

    def _set_lsh_options(
        self,
        name,
        causal,
        masked,
        chunk_len,
        n_chunks_before,
        n_chunks_after,
        n_hashes,
        n_buckets,
        attention_dropout,
        output_dropout,
        max_length_for_buckets,
    ):
        checks.check_positive(name, chunk_len=chunk_len, n_hashes=n_hashes)
        checks.check_non_negative(name, n_chunks_before=n_chunks_before, n_chunks_after=n_chunks_after)
        checks.check_rate(name, attention_dropout=attention_dropout, output_dropout=output_dropout)
        if n_buckets is not None:
            factors = [n_buckets] if isinstance(n_buckets, int) else list(n_buckets)
            if not factors or any(not isinstance(f, int) or f < 2 or f % 2 for f in factors):
                raise ValueError(
                    f"{name}: n_buckets must be None, an even integer >= 2 or a list of them, "
                    f"got n_buckets={n_buckets!r}"
                )
        self._causal, self._masked = causal, masked
        self._chunk_len = chunk_len
        self._n_chunks_before, self._n_chunks_after = n_chunks_before, n_chunks_after
        self._n_hashes, self._n_buckets = n_hashes, n_buckets
        self._attention_dropout, self._output_dropout = attention_dropout, output_dropout
        # Trax sized its saved-buckets state with it; buckets are recomputed here, so it has no effect.
        self._max_length_for_buckets = max_length_for_buckets

    def _n_buckets_for(self, length: int):
        """The configured bucket count, or Trax's default: 2 per chunk, factorized past 128."""
        if self._n_buckets is not None:
            return self._n_buckets
        n_buckets = 2 * max(1, length // self._chunk_len)
        if n_buckets <= 128:
            return n_buckets
        n_buckets_div = 2 ** math.ceil(math.log2(math.sqrt(n_buckets)))
        return [n_buckets_div, 2 * (n_buckets // (2 * n_buckets_div))]

    def hash_vectors(self, vecs, rng, mask=None):
        """Bucket ids `[n_hashes * length]`, offset per hashing round; padding gets its own bucket."""
        buckets, n_buckets = hash_vecs(vecs, self._n_buckets_for(vecs.shape[0]), self._n_hashes, rng)
        if mask is not None:
            n_buckets += 1
            buckets = jnp.where(mask.reshape((1, -1)), buckets, n_buckets - 1)
        offsets = (jnp.arange(self._n_hashes, dtype=jnp.int32) * n_buckets).reshape((-1, 1))
        return jnp.reshape(buckets + offsets, (-1,))

    def _lsh_attend(self, q, v, buckets, mask, dropout, rng):
        """Attention of one example and head within sorted bucket chunks: `[length, d_v]`."""
        length = q.shape[0]
        if (self._n_hashes * length) % self._chunk_len:
            raise ValueError(
                f"{self.name}: n_hashes * length ({self._n_hashes} * {length}) must be a multiple "
                f"of chunk_len={self._chunk_len}"
            )
        ticker = jnp.arange(self._n_hashes * length, dtype=jnp.int32)
        buckets_and_t = jax.lax.stop_gradient(length * buckets + (ticker % length))
        sticker = jnp.argsort(buckets_and_t).astype(jnp.int32)
        undo_sort = jnp.argsort(sticker).astype(jnp.int32)
        st = sticker % length
        sq, sv = jnp.take(q, st, axis=0), jnp.take(v, st, axis=0)
        kv_info = None if mask is None else masked_key_info(st, jnp.take(mask, st, axis=0))
        mask_fn = functools.partial(
            mask_self_attention, causal=self._causal, exclude_self=True, masked=mask is not None
        )
        so, slogits = attend(
            sq,
            k=None,
            v=sv,
            q_chunk_len=self._chunk_len,
            n_chunks_before=self._n_chunks_before,
            n_chunks_after=self._n_chunks_after,
            mask_fn=mask_fn,
            q_info=st,
            kv_info=kv_info,
            dropout=dropout,
            rng=rng,
        )
        o = permute_via_gather(so, undo_sort, sticker, axis=0)
        logits = permute_via_sort(slogits, sticker, buckets_and_t, axis=-1)
        if self._n_hashes > 1:
            o = jnp.reshape(o, (self._n_hashes, length, o.shape[-1]))
            logits = jnp.reshape(logits, (self._n_hashes, length, 1))
            # Trax's exp(logits - logsumexp(logits)), computed as a softmax: at logits near -1e5 (a
            # query that sees only itself) the logsumexp rounds in float32 and the weights stop summing to 1.
            probs = jax.nn.softmax(logits, axis=0)
            o = jnp.sum(o * probs, axis=0)
        return o


class LSHSelfAttention(_LSHOptions, DropoutRates, EfficientAttentionBase):
    """LSH self-attention (Trax's second implementation), with its own projections.

    n_in=1 (2 with `masked=True`: `x`, `mask [batch, length]` bool, True =
    valid), n_out=1. `[batch, length, d_model]` -> same. Per head: shared
    query/key `q = x w_q`, `v = x w_v`, LSH attention (module docstring;
    tokens never attend to themselves unless nothing else is visible), then
    `w_o`, summed over heads. n_hashes * length must be a multiple of
    chunk_len. A Sequence input's mask acts like `masked=True` (padding gets a
    bucket of its own and is never attended to). Weights `(w_q, w_v, w_o)`
    (+ `b_q, b_v` with `bias=True`), stacked over heads. State: a hashing key
    per head (module docstring). `max_length_for_buckets` is accepted for
    Trax compatibility and has no effect (buckets are not stored).

    Predict mode: not streamable (supports_step is False; 'predict' raises
    ValueError at init, saying why).
    """

    def __init__(
        self,
        n_heads=2,
        d_qk=64,
        d_v=64,
        share_qk="unused",
        causal=False,
        masked=False,
        chunk_len=128,
        n_chunks_before=1,
        n_chunks_after=0,
        n_hashes=1,
        n_buckets=None,
        mode="train",
        predict_mem_len=2048,
        predict_drop_len=256,
        attention_dropout=0.0,
        output_dropout=0.0,
        max_length_for_buckets=None,
        bias=False,
        n_parallel_heads=1,
        use_python_loop=False,
        use_reference_code=False,
    ):
        del share_qk  # Always shared.
        checks.check_positive("LSHSelfAttention", d_qk=d_qk, d_v=d_v)
        super().__init__(
            n_heads,
            n_in=2 if masked else 1,
            n_parallel_heads=n_parallel_heads,
            predict_mem_len=predict_mem_len,
            predict_drop_len=predict_drop_len,
            use_python_loop=use_python_loop,
            use_reference_code=use_reference_code,
            name="LSHSelfAttention",
            mode=mode,
        )
        self._set_lsh_options(
            "LSHSelfAttention",
            causal,
            masked,
            chunk_len,
            n_chunks_before,
            n_chunks_after,
            n_hashes,
            n_buckets,
            attention_dropout,
            output_dropout,
            max_length_for_buckets,
        )
        self._d_qk, self._d_v, self._bias = d_qk, d_v, bias

    def create_weights_unbatched(self, input_signature, rng):
        if isinstance(input_signature, tuple):
            input_signature = input_signature[0]
        d_model = input_signature.shape[-1]
        kernel = head_kernel_initializer(self._n_heads)
        rng_q, _, rng_v, rng_o = jax.random.split(rng, 4)
        weights = (
            kernel((d_model, self._d_qk), rng_q),
            kernel((d_model, self._d_v), rng_v),
            jnp.transpose(kernel((d_model, self._d_v), rng_o)),
        )
        if self._bias:
            weights += (jnp.zeros(self._d_qk), jnp.zeros(self._d_v))
        return weights

    def create_state_unbatched(self, input_signature, rng):
        return rng

    def unbatched_inputs(self, inputs):
        x, mask = values_and_mask(inputs[0])
        explicit = values_and_mask(inputs[1])[0] if self._masked else None
        return x, and_masks(mask, explicit)

    def forward_unbatched(self, x, mask=None, *, weights, state, rng, update_state):
        del update_state
        attention_rate, output_rate = self._rates(rng)
        attend_rng, output_rng = split_rng(rng, 2)
        w_q, w_v, w_o = weights[:3]
        q, v = jnp.matmul(x, w_q), jnp.matmul(x, w_v)
        if self._bias:
            q, v = q + weights[3].reshape((1, -1)), v + weights[4].reshape((1, -1))
        next_key, hash_key = jax.random.split(state)
        buckets = self.hash_vectors(q, hash_key, mask)
        o = self._lsh_attend(q, v, buckets, mask, attention_rate, attend_rng)
        out = jnp.matmul(o, w_o)
        return apply_broadcasted_dropout(out, output_rate, output_rng), next_key


class PureLSHSelfAttention(_LSHOptions, DropoutRates, base.Layer):
    """LSH self-attention without weights, on heads already split and folded into the batch.

    n_in=2 (`qk [batch * n_heads, length, d_qk]`, `v [batch * n_heads,
    length, d_v]`) or 3 with `masked=True` (+ `mask [batch, length]` bool,
    True = valid); n_out=1, `[batch * n_heads, length, d_v]`. Row `b *
    n_heads + h` is head h of example b (as SplitIntoHeads folds them). A
    Sequence qk's mask (per row) masks like `mask`. As in Trax, no output
    dropout. Rows run `n_parallel_heads` at a time (default 1, recomputed in
    the backward pass). No weights; state: a hashing key per head.

    Predict mode: not streamable (supports_step is False; 'predict' raises
    ValueError at init, saying why).
    """

    handles_sequences = True

    def __init__(
        self,
        n_heads=2,
        d_qk=64,
        d_v=64,
        share_qk="unused",
        causal=False,
        masked=False,
        chunk_len=128,
        n_chunks_before=1,
        n_chunks_after=0,
        n_hashes=1,
        n_buckets=None,
        mode="train",
        predict_mem_len=2048,
        predict_drop_len=256,
        attention_dropout=0.0,
        output_dropout=0.0,
        max_length_for_buckets=None,
        bias=False,
        n_parallel_heads=1,
        use_python_loop=False,
        use_reference_code=False,
    ):
        del (
            share_qk,
            d_qk,
            d_v,
            bias,
            predict_mem_len,
            predict_drop_len,
        )  # Trax takes them; nothing uses them.
        checks.check_positive("PureLSHSelfAttention", n_heads=n_heads)
        check_n_parallel_heads("PureLSHSelfAttention", n_heads, n_parallel_heads)
        if mode not in base.MODES:
            raise ValueError(f"PureLSHSelfAttention: mode must be one of {base.MODES}, got mode={mode!r}")
        super().__init__(n_in=3 if masked else 2, n_out=1, name="PureLSHSelfAttention")
        self._set_lsh_options(
            "PureLSHSelfAttention",
            causal,
            masked,
            chunk_len,
            n_chunks_before,
            n_chunks_after,
            n_hashes,
            n_buckets,
            attention_dropout,
            output_dropout,
            max_length_for_buckets,
        )
        self._n_heads = int(n_heads)
        self._n_parallel_heads = n_parallel_heads or None
        self._use_python_loop = use_python_loop
        self._use_reference_code = use_reference_code
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        if self._mode == "predict":
            streaming.check_steps(self)  # Raises, saying why, before a one-step block is hashed.
        qk = input_signature[0]
        batch_x_heads = seq.values_of(qk).shape[0]
        if batch_x_heads % self._n_heads:
            raise ValueError(
                f"{self.name}: qk's first axis ({batch_x_heads}) must be batch * n_heads "
                f"(n_heads={self._n_heads})"
            )
        return (), jax.random.split(rng, self._n_heads)

    def forward_unbatched(self, qk, v, mask=None, *, state, rng, update_state):
        """One row (example and head): returns (output [length, d_v], new hashing key)."""
        del update_state
        attention_rate, _ = self._rates(rng)
        next_key, hash_key = jax.random.split(state)
        buckets = self.hash_vectors(qk, hash_key, mask)
        return self._lsh_attend(qk, v, buckets, mask, attention_rate, rng), next_key

    def forward(self, inputs, weights, state, rng):
        qk, qk_mask = values_and_mask(inputs[0])
        v, v_mask = values_and_mask(inputs[1])
        qk, v = jnp.asarray(qk), jnp.asarray(v)
        n_heads = self._n_heads
        row_mask = and_masks(qk_mask, v_mask)
        if self._masked:
            explicit = jnp.asarray(values_and_mask(inputs[2])[0]).astype(jnp.bool_)
            row_mask = and_masks(row_mask, jnp.repeat(explicit, n_heads, axis=0))
        attend_rng = split_rng(rng, 1)[0]

        def one_row(i):
            mask = None if row_mask is None else row_mask[i]
            return self.forward_unbatched(
                qk[i], v[i], mask, state=state[i % n_heads], rng=attend_rng, update_state=True
            )

        rows = qk.shape[0]
        if self._use_reference_code:
            outs = [one_row(i) for i in range(rows)]
            out, keys = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        else:
            out, keys = map_slices(
                one_row, rows, self._n_parallel_heads, self._use_python_loop, recompute=True
            )
        out = out.astype(v.dtype)
        first = inputs[0]
        return (seq.Sequence(out, first.mask) if isinstance(first, seq.Sequence) else out), keys[:n_heads]

    def forward_and_or_backward(
        self, inputs, state, rng, output_grad=None, compute_output=True, update_state=True
    ):
        """Batched forward and/or backward passes: `(output, new_state, inputs_grad)`."""
        out, new_state, inputs_grad, _ = forward_and_or_backward(
            self, inputs, (), state, rng, output_grad, compute_output, update_state
        )
        return out, new_state, inputs_grad


def _add_heads_to_mask(mask, n_heads: int):
    """`[batch, length]` -> `[batch * n_heads, 1, length]`."""
    mask = jnp.repeat(mask, n_heads, axis=0)
    return mask.reshape((mask.shape[0], 1, mask.shape[1]))


class MixedLSHSelfAttention(base.Layer):
    """PureLSHSelfAttention on inputs longer than `std_length`, plain dot-product attention otherwise.

    Inputs as PureLSHSelfAttention's: `(qk, v)` with `causal=True` (then
    DotProductCausalAttention on `(qk, qk, v)`), or `(qk, v, mask)` with
    `masked=True` and `causal=False` (then DotProductAttention); the other
    combinations raise, as in Trax. The choice is made from the static length.
    `force_no_dropout` zeroes both dropout rates. No weights; the state holds
    both sublayers' states.

    Predict mode: not streamable (supports_step is False).
    """

    handles_sequences = True

    def __init__(
        self,
        n_heads=1,
        d_qk=64,
        d_v=64,
        causal=False,
        masked=False,
        std_length=None,
        mode="train",
        output_dropout=0.0,
        attention_dropout=0.0,
        force_no_dropout=False,
        **pure_lsh_implementation_kwargs,
    ):
        if force_no_dropout:
            attention_dropout = output_dropout = 0.0
        lsh = PureLSHSelfAttention(
            n_heads=n_heads,
            d_qk=d_qk,
            d_v=d_v,
            causal=causal,
            masked=masked,
            mode=mode,
            output_dropout=output_dropout,
            attention_dropout=attention_dropout,
            **pure_lsh_implementation_kwargs,
        )
        if causal:
            preprocess = base.Fn("dup_shared_qk", lambda q, v: (q, q, v), n_out=3)
            std = combinators.Serial(
                preprocess, attention.DotProductCausalAttention(attention_dropout, mode=mode)
            )
        else:
            preprocess = base.Fn(
                "dup_shared_qk_and_make_mask",
                lambda q, v, m: (q, q, v, _add_heads_to_mask(m, n_heads)),
                n_out=4,
            )
            std = combinators.Serial(preprocess, attention.DotProductAttention(attention_dropout, mode=mode))
        if (std.n_in, std.n_out) != (lsh.n_in, lsh.n_out):
            raise ValueError(
                f"MixedLSHSelfAttention: causal={causal}, masked={masked} gives the LSH branch n_in={lsh.n_in} "
                f"but the standard branch n_in={std.n_in}; use causal=True with masked=False, or "
                f"causal=False with masked=True"
            )
        super().__init__(n_in=lsh.n_in, n_out=1, name="MixedLSHSelfAttention")
        self._sublayers = (lsh, std)
        self._std_length = std_length
        self._mode = mode

    streaming_spec = streaming.NOT_STREAMING

    def _use_lsh(self, inputs) -> bool:
        return self._std_length is None or inputs[0].shape[1] > self._std_length

    def init_weights_and_state(self, input_signature, rng):
        rng_lsh, rng_std = jax.random.split(rng)
        lsh, std = self.sublayers
        if self._use_lsh(input_signature):
            w_lsh, s_lsh, _ = base.init_sublayer(0, lsh, input_signature, rng_lsh)
        else:  # Too short for LSH chunks, maybe: only its hashing keys, without a trial run.
            w_lsh, s_lsh = lsh.init_weights_and_state(input_signature, rng_lsh)
        w_std, s_std, _ = base.init_sublayer(1, std, input_signature, rng_std)
        return (w_lsh, w_std), (s_lsh, s_std)

    def forward(self, xs, weights, state, rng):
        rng_lsh, rng_std = split_rng(rng, 2)
        if self._use_lsh(xs):
            out, s = base.call_sublayer(0, self.sublayers[0], xs, weights[0], state[0], rng_lsh)
            return out, (s, state[1])
        out, s = base.call_sublayer(1, self.sublayers[1], xs, weights[1], state[1], rng_std)
        return out, (state[0], s)

    def forward_and_or_backward(
        self, inputs, state, rng, output_grad=None, compute_output=True, update_state=True
    ):
        """Batched forward and/or backward passes: `(output, new_state, inputs_grad)`."""
        no_weights = ((), ((), ()))  # Neither branch has weights.
        out, new_state, inputs_grad, _ = forward_and_or_backward(
            self, inputs, no_weights, state, rng, output_grad, compute_output, update_state
        )
        return out, new_state, inputs_grad


def _projection(d_model: int, use_bias: bool) -> core.Dense:
    return core.Dense(d_model, use_bias=use_bias, kernel_axes=("embed", "heads"))


def _project_and_split_heads(
    d_model, n_heads, use_bias, num_weights, weights_format, rotary_position_emb, mode
):
    """The QK and V activations, heads folded into the batch (Trax's 'model' weights format)."""
    if weights_format != "model":
        raise ValueError(
            f"PureLSHSelfAttentionWrapper: weights_format={weights_format!r} is not supported ('sparse' needs "
            f"Trax's sparsity layers, 'heads' was never implemented in Trax); use weights_format='model'"
        )

    def rotate():  # Trax's Rotate: RoPE with wavelength 10000 over the whole d_model.
        return position.ApplyRotaryPositionalEncoding(mode=mode) if rotary_position_emb else []

    if num_weights == 3:
        return combinators.Serial(
            combinators.Branch(
                _projection(d_model, use_bias),
                _projection(d_model, use_bias),
                _projection(d_model, use_bias),
            ),
            combinators.Parallel(rotate(), rotate(), None) if rotary_position_emb else [],
            base.Fn("QKAvg", lambda x, y: (x + y) / 2.0),
            combinators.Parallel(attention.SplitIntoHeads(n_heads), attention.SplitIntoHeads(n_heads)),
        )
    if num_weights == 2:
        return combinators.Branch(
            [_projection(d_model, use_bias), rotate(), attention.SplitIntoHeads(n_heads)],
            [_projection(d_model, use_bias), attention.SplitIntoHeads(n_heads)],
        )
    raise ValueError(
        f"PureLSHSelfAttentionWrapper: num_weights must be 2 (qk, v) or 3 (q, k, v averaged), "
        f"got num_weights={num_weights!r}"
    )


class PureLSHSelfAttentionWrapper(combinators.Serial):
    """Projections, a pure LSH attention layer, MergeHeads and a Dense: `[batch, length, d_model]` -> same.

    n_in=1 (2 with `masked=True`: `x`, `mask [batch, length]`), n_out=1;
    d_model = d_qk * n_heads. With `num_weights=3`, q and k are projected
    separately (optionally rotated with `rotary_position_emb`) and averaged
    into qk; with 2, qk and v are projected directly. `pure_lsh_implementation`
    (default PureLSHSelfAttention) gets the remaining keyword arguments.
    Only `weights_format='model'` is supported.

    Predict mode: not streamable (the attention layer is not).
    """

    def __init__(
        self,
        n_heads=1,
        d_qk=64,
        d_v=64,
        causal=False,
        masked=False,
        output_dropout=0.0,
        attention_dropout=0.0,
        pure_lsh_implementation=None,
        bias=True,
        mode="train",
        num_weights=3,
        sparsity=16,
        weights_format="model",
        rotary_position_emb=False,
        **pure_lsh_implementation_kwargs,
    ):
        del sparsity  # Only used by the 'sparse' weights format.
        d_model = d_qk * n_heads
        implementation = pure_lsh_implementation or PureLSHSelfAttention
        qkv = _project_and_split_heads(
            d_model, n_heads, bias, num_weights, weights_format, rotary_position_emb, mode
        )
        attn = implementation(
            n_heads=n_heads,
            d_qk=d_qk,
            d_v=d_v,
            causal=causal,
            masked=masked,
            mode=mode,
            output_dropout=output_dropout,
            attention_dropout=attention_dropout,
            **pure_lsh_implementation_kwargs,
        )
        super().__init__(
            qkv,
            attn,
            attention.MergeHeads(n_heads),
            core.Dense(d_model, use_bias=bias, kernel_axes=("heads", "embed")),
            name="PureLSHSelfAttentionWrapper",
        )

    def forward_and_or_backward(
        self, inputs, weights, state, rng, output_grad=None, compute_output=True, update_state=True
    ):
        """Batched forward and/or backward passes: `(output, new_state, inputs_grad, weights_grad)`."""
        return forward_and_or_backward(
            self, inputs, weights, state, rng, output_grad, compute_output, update_state
        )
