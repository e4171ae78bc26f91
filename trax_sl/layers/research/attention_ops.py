"""Array functions of efficient attention, and the per-(example, head) batching base class.

The functions keep Trax's names and semantics (`attend`, `hash_vecs`,
`look_adjacent`, ...) and work on one example and one head: `q [length,
d_qk]`, `v [length, d_v]`. `EfficientAttentionBase` maps a subclass's
`forward_unbatched` over examples and heads, all at once or in sequential
groups of `n_parallel_heads` slices whose activations are recomputed in the
backward pass (Trax's memory-saving regimes; here built on `jax.vmap`,
`jax.lax.map` and `jax.checkpoint`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming


def length_normalized(x, epsilon: float = 1e-6):
    """x divided by the root mean square of its last axis."""
    variance = jnp.mean(x**2, axis=-1, keepdims=True)
    return x / jnp.sqrt(variance + epsilon)


def _bucket_factors(n_buckets_in) -> list[int]:
    factors = [n_buckets_in] if isinstance(n_buckets_in, (int, np.integer)) else list(n_buckets_in)
    if any(f % 2 for f in factors):
        raise ValueError(f"hash_vecs: bucket counts must be even, got n_buckets_in={n_buckets_in!r}")
    return factors


def random_rotations(depth: int, n_buckets_in, n_hashes: int, rng):
    """The `[depth, n_hashes, sum(factors) / 2]` random rotations hash_vecs draws from rng."""
    rot_size = sum(_bucket_factors(n_buckets_in))
    return jax.random.normal(rng, (depth, n_hashes, rot_size // 2)).astype(jnp.float32)


def hash_with_rotations(vecs, n_buckets_in, rotations):
    """hash_vecs with given rotations: `(buckets [n_hashes, batch_size], n_buckets)`."""
    factors = _bucket_factors(n_buckets_in)
    rotated = jnp.einsum("tf,fhb->htb", vecs, rotations)
    buckets, start, product = None, 0, 1
    for factor in factors:
        part = rotated[..., start : start + factor // 2]
        start += factor // 2
        factor_buckets = jnp.argmax(jnp.concatenate([part, -part], axis=-1), axis=-1).astype(jnp.int32)
        buckets = factor_buckets if buckets is None else buckets + product * factor_buckets
        product *= factor
    return buckets, int(np.prod(factors))


def hash_vecs(vecs, n_buckets_in, n_hashes: int, rng):
    """Hash vectors into buckets (random rotations, https://arxiv.org/abs/1509.02897).

    Args:
      vecs: vectors to hash, `[batch_size, depth]`.
      n_buckets_in: an even int, or a list of even ints for hierarchical
        (factorized) hashing.
      n_hashes: number of hashes, each with its own random rotation.
      rng: the key the rotations are drawn from.

    Returns:
      `(buckets, n_buckets)`: `buckets [n_hashes, batch_size]` int32 bucket
      ids, and n_buckets the total number of buckets (the product of the list).
    """
    rotations = random_rotations(vecs.shape[-1], n_buckets_in, n_hashes, rng)
    return hash_with_rotations(vecs, n_buckets_in, rotations)


def look_adjacent(x, n_chunks_before: int, n_chunks_after: int):
    """Lets each chunk see its neighbours: `[n_chunks, chunk_len, ...]` -> `[n_chunks, N * chunk_len, ...]`.

    N = 1 + n_chunks_before + n_chunks_after. Neighbours wrap around (the
    first chunk's previous chunk is the last one), as in Trax.
    """
    if n_chunks_before == 0 and n_chunks_after == 0:
        return x
    slices = [
        x if i == 0 else jnp.concatenate([x[i:], x[:i]], axis=0)
        for i in range(-n_chunks_before, n_chunks_after + 1)
    ]
    return jnp.concatenate(slices, axis=1)


def mask_self_attention(
    dots, q_info, kv_info, causal: bool = True, exclude_self: bool = True, masked: bool = False
):
    """Performs masking for self-attention, from position-like `q_info` and `kv_info`.

    causal: keys with info greater than the query's get -1e9; exclude_self:
    equal info gets -1e5 (attended only when nothing else is); masked: keys
    with negative info get -1e9.
    """
    q_info = q_info.astype(jnp.float32)
    kv_info = kv_info.astype(jnp.float32)
    if causal:
        dots = dots - 1e9 * (q_info < kv_info)
    if exclude_self:
        dots = dots - 1e5 * (q_info == kv_info)
    if masked:
        dots = dots - 1e9 * (kv_info < 0)
    return dots


def attend(
    q,
    k=None,
    v=None,
    q_chunk_len=None,
    kv_chunk_len=None,
    n_chunks_before: int = 0,
    n_chunks_after: int = 0,
    mask_fn=None,
    q_info=None,
    kv_info=None,
    dropout: float = 0.0,
    rng=None,
):
    """Dot-product attention, with optional chunking and/or masking.

    Args:
      q: query vectors, `[q_len, d_qk]`.
      k: key vectors, `[kv_len, d_qk]`; None shares them with the queries
        (length-normalized keys, as in LSH attention).
      v: value vectors, `[kv_len, d_v]`.
      q_chunk_len: the queries' chunk length, to attend within chunks.
      kv_chunk_len: the keys' and values' chunk length.
      n_chunks_before: chunks before its own that each chunk also sees.
      n_chunks_after: chunks after its own that each chunk also sees.
      mask_fn: `mask_fn(dots, q_info, kv_info) -> dots`.
      q_info: the queries' per-position metadata for masking (0-indexed;
        shifted to 1-indexed here, as in Trax, so negative values stay negative).
      kv_info: the keys' per-position metadata, as q_info.
      dropout: dropout rate on the attention weights (broadcast over chunks).
      rng: key for dropout.

    Returns:
      `(output [q_len, d_v], dots_logsumexp [q_len])`; the logsumexp combines
      several rounds of attention (LSH attention with n_hashes > 1).
    """
    if v is None:
        raise ValueError("attend: v (value vectors) is required")
    share_qk = k is None
    q_info = jnp.arange(1, q.shape[-2] + 1, dtype=jnp.int32) if q_info is None else q_info + 1
    if kv_info is None and not share_qk:
        kv_info = jnp.arange(1, v.shape[-2] + 1, dtype=jnp.int32)
    elif kv_info is not None:
        kv_info = kv_info + 1

    if q_chunk_len is not None:
        q = jnp.reshape(q, (-1, q_chunk_len, q.shape[-1]))
        q_info = jnp.reshape(q_info, (-1, q_chunk_len))
    if share_qk:
        if kv_chunk_len is not None and kv_chunk_len != q_chunk_len:
            raise ValueError(
                f"attend: shared keys need kv_chunk_len == q_chunk_len, got {kv_chunk_len} and {q_chunk_len}"
            )
        k, kv_chunk_len = q, q_chunk_len
        if kv_info is None:
            kv_info = q_info
        elif kv_chunk_len is not None:
            kv_info = jnp.reshape(kv_info, (-1, kv_chunk_len))
    elif kv_chunk_len is not None:
        k = jnp.reshape(k, (-1, kv_chunk_len, k.shape[-1]))
        kv_info = jnp.reshape(kv_info, (-1, kv_chunk_len))
    if kv_chunk_len is not None:
        v = jnp.reshape(v, (-1, kv_chunk_len, v.shape[-1]))

    if share_qk:
        k = length_normalized(k)
    k = k / np.sqrt(k.shape[-1])

    if (q_chunk_len is None) != (kv_chunk_len is None):
        raise ValueError("attend: chunk both queries and keys, or neither")
    if q_chunk_len is None and (n_chunks_before or n_chunks_after):
        raise ValueError("attend: n_chunks_before/n_chunks_after need chunking (q_chunk_len)")
    k = look_adjacent(k, n_chunks_before, n_chunks_after)
    v = look_adjacent(v, n_chunks_before, n_chunks_after)
    kv_info = look_adjacent(kv_info, n_chunks_before, n_chunks_after)

    dots = jnp.matmul(q, jnp.swapaxes(k, -1, -2))
    if mask_fn is not None:
        dots = mask_fn(dots, q_info[..., :, None], kv_info[..., None, :])
    dots_logsumexp = jax.nn.logsumexp(dots, axis=-1, keepdims=True)
    dots = jnp.exp(dots - dots_logsumexp)
    if dropout > 0.0:
        if rng is None:
            raise ValueError(f"attend: dropout={dropout} needs an rng, got None")
        keep_prob = 1.0 - dropout
        # One mask for every chunk, as Trax's (its shape made explicit: no rank promotion).
        keep = jax.random.bernoulli(rng, keep_prob, (1,) * (dots.ndim - 2) + tuple(dots.shape[-2:]))
        dots = dots * (keep.astype(dots.dtype) / keep_prob)
    out = jnp.matmul(dots, v)
    return jnp.reshape(out, (-1, out.shape[-1])), jnp.reshape(dots_logsumexp, (-1,))


def apply_broadcasted_dropout(vecs, dropout_rate: float, rng):
    """Apply dropout, broadcasted across all but the last dimension of `vecs`."""
    if dropout_rate <= 0.0:
        return vecs
    if rng is None:
        raise ValueError(f"apply_broadcasted_dropout: dropout_rate={dropout_rate} needs an rng, got None")
    keep_prob = 1.0 - dropout_rate
    keep = jax.random.bernoulli(rng, keep_prob, (1,) * (vecs.ndim - 1) + (vecs.shape[-1],))
    return vecs * (keep.astype(vecs.dtype) / keep_prob)


def _gather(permutation, val, axis):
    return jnp.take(val, permutation, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _permute_via_gather(permutation, inverse_permutation, val, axis):
    return _gather(permutation, val, axis)


def _permute_via_gather_fwd(permutation, inverse_permutation, val, axis):
    return _gather(permutation, val, axis), inverse_permutation


def _permute_via_gather_bwd(axis, inverse_permutation, permuted_grad):
    # Autodiff would scatter; gathering with the inverse permutation is the same and faster on TPU.
    return None, None, _gather(inverse_permutation, permuted_grad, axis)


_permute_via_gather.defvjp(_permute_via_gather_fwd, _permute_via_gather_bwd)


def permute_via_gather(val, permutation, inverse_permutation, axis: int = 0):
    """Permutes `val` along `axis`; the gradient gathers with the inverse (no scatter)."""
    return _permute_via_gather(permutation, inverse_permutation, val, axis)


def _sort_by(keys, val, axis):
    return jax.lax.sort_key_val(keys, val, dimension=axis)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _permute_via_sort(keys, inverse_keys, val, axis):
    return _sort_by(keys, val, axis)


def _permute_via_sort_fwd(keys, inverse_keys, val, axis):
    return _sort_by(keys, val, axis), inverse_keys


def _permute_via_sort_bwd(axis, inverse_keys, permuted_grad):
    return None, None, _sort_by(inverse_keys, permuted_grad, axis)


_permute_via_sort.defvjp(_permute_via_sort_fwd, _permute_via_sort_bwd)


def permute_via_sort(val, keys, inverse_keys, axis: int = 0):
    """Permutes `val` along `axis` by sorting it by `keys`; the gradient sorts by `inverse_keys`."""
    return _permute_via_sort(keys, inverse_keys, val, axis)


def check_n_parallel_heads(layer_name: str, n_heads: int, n_parallel_heads) -> None:
    """Raises unless n_parallel_heads (None or 0: all) divides n_heads or is a multiple of it."""
    if not n_parallel_heads:
        return
    if (n_parallel_heads > n_heads and n_parallel_heads % n_heads) or (
        n_parallel_heads < n_heads and n_heads % n_parallel_heads
    ):
        raise ValueError(
            f"{layer_name}: n_parallel_heads must be a multiple or a divisor of n_heads={n_heads}, "
            f"got n_parallel_heads={n_parallel_heads}"
        )


split_rng = base.split_rng


def head_kernel_initializer(n_heads: int):
    """Glorot uniform with respect to the total size of all heads (Trax's per-head init)."""

    def init_fn(shape, rng):
        lim = np.sqrt(6.0 / (shape[0] + shape[1] * n_heads))
        return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)

    return init_fn


def masked_key_info(positions, mask):
    """kv_info for `mask_self_attention(masked=True)`: invalid keys negative, also at position 0.

    `attend` adds 1 to the info; Trax's `position * (+1 or -1)` left an
    invalid position 0 at +1, unmasked. `-position - 2` stays negative.
    """
    if mask is None:
        return positions
    return jnp.where(mask, positions, -positions - 2)


class DropoutRates:
    """Attention and output dropout, active in 'train' mode only (Trax zeroes them otherwise)."""

    def _rates(self, rng):
        if self._mode != "train":
            return 0.0, 0.0
        rates = (self._attention_dropout, self._output_dropout)
        if any(rates) and rng is None:
            raise ValueError(
                f"{self.name}: mode='train' with attention_dropout={rates[0]}, "
                f"output_dropout={rates[1]} needs an rng, got None"
            )
        return rates


def map_slices(slice_fn, n_slices: int, n_parallel, use_python_loop: bool, recompute: bool):
    """Stacks `slice_fn(i)` for i in range(n_slices), computing n_parallel slices at a time.

    With n_parallel None (or >= n_slices) all slices are vmapped at once.
    Otherwise groups run one after another (lax.map, or a Python loop), and
    with `recompute` each group's activations are recomputed in the backward
    pass instead of stored, as Trax's efficient attention does.
    """
    indices = jnp.arange(n_slices, dtype=jnp.int32)
    if not n_parallel or n_parallel >= n_slices:
        return jax.vmap(slice_fn)(indices)
    if n_slices % n_parallel:
        raise ValueError(f"n_parallel_heads={n_parallel} must divide batch * n_heads = {n_slices}")
    group_fn = jax.vmap(slice_fn)
    if recompute:
        group_fn = jax.checkpoint(group_fn)
    groups = indices.reshape((n_slices // n_parallel, n_parallel))
    if use_python_loop:
        outs = [group_fn(groups[g]) for g in range(groups.shape[0])]
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
    else:
        stacked = jax.lax.map(group_fn, groups)
    return jax.tree.map(lambda a: a.reshape((n_slices,) + a.shape[2:]), stacked)


def values_and_mask(item):
    """(values with invalid steps zeroed, mask or None) of an array or Sequence."""
    if isinstance(item, seq.Sequence):
        return item.mask_invalid().values, item.mask
    return item, None


def and_masks(*masks):
    """The elementwise AND of the masks given (None entries skipped; None if all are)."""
    masks = [m for m in masks if m is not None]
    if not masks:
        return None
    out = masks[0].astype(jnp.bool_)
    for m in masks[1:]:
        out = out & m.astype(jnp.bool_)
    return out


def unbatched_signature(signature):
    """The ShapeDtype of one example of a batched signature (its values' leading axis dropped)."""
    values = seq.values_of(signature)
    return shapes.ShapeDtype(tuple(values.shape[1:]), values.dtype)


def forward_and_or_backward(
    layer: base.Layer,
    inputs,
    weights,
    state,
    rng,
    output_grad=None,
    compute_output: bool = True,
    update_state: bool = True,
):
    """Trax's batched forward and/or backward entry point, on JAX autodiff.

    Returns `(output, new_state, inputs_grad, weights_grad)`: output is None
    unless compute_output, new_state None unless update_state, and the grads
    None unless output_grad is given.
    """
    output, vjp_fn, new_state = jax.vjp(
        lambda x, w: layer.pure_fn(x, w, state, rng), inputs, weights, has_aux=True
    )
    inputs_grad = weights_grad = None
    if output_grad is not None:
        inputs_grad, weights_grad = vjp_fn(output_grad)
    return (
        output if compute_output else None,
        new_state if update_state else None,
        inputs_grad,
        weights_grad,
    )


class EfficientAttentionBase(base.Layer):
    """Base class for efficient attention: runs `forward_unbatched` per example and head.

    Subclasses override `create_weights_unbatched` (one head's weights;
    stacked over heads on axis 0), optionally `create_state_unbatched` (one
    head's state, stacked likewise and shared by the examples of a batch), and
    `forward_unbatched(*inputs, weights, state, rng, update_state) -> (output
    [length, d_model], new_state)` for one example and one head. The layer's
    output is the sum over heads. Inputs are `[batch, length, ...]`; Sequence
    inputs are masked first, their masks reach `forward_unbatched` through
    `unbatched_inputs`, and the output follows the first input's kind.

    Predict mode: not streamable (Trax's fast-inference memory is not kept;
    'predict' raises ValueError at init, saying why), unless a subclass's
    `streaming_spec` says it streams.
    """

    handles_sequences = True

    def __init__(
        self,
        n_heads: int,
        n_in: int = 1,
        n_parallel_heads=None,
        incremental: bool = False,
        predict_mem_len=None,
        predict_drop_len=None,
        use_python_loop: bool = False,
        use_reference_code: bool = False,
        *,
        name: str | None = None,
        mode: str = "train",
    ):
        name = name or type(self).__name__
        checks.check_positive(name, n_heads=n_heads)
        check_n_parallel_heads(name, n_heads, n_parallel_heads)
        if incremental:
            if predict_mem_len is None or predict_drop_len is None:
                raise ValueError(
                    f"{name}: incremental=True needs predict_mem_len and predict_drop_len, got "
                    f"{predict_mem_len!r} and {predict_drop_len!r}"
                )
            if not 0 < predict_drop_len <= predict_mem_len:
                raise ValueError(
                    f"{name}: expected 0 < predict_drop_len <= predict_mem_len, got "
                    f"predict_drop_len={predict_drop_len}, predict_mem_len={predict_mem_len}"
                )
        if mode not in base.MODES:
            raise ValueError(f"{name}: mode must be one of {base.MODES}, got mode={mode!r}")
        super().__init__(n_in=n_in, n_out=1, name=name)
        self._n_heads = int(n_heads)
        self._n_parallel_heads = n_parallel_heads or None
        self._incremental = incremental
        self._predict_mem_len = predict_mem_len
        self._predict_drop_len = predict_drop_len
        self._use_python_loop = use_python_loop
        self._use_reference_code = use_reference_code
        self._mode = mode

    streaming_spec = streaming.NOT_STREAMING

    def weight_axes(self, weights):
        """Stacked over heads: input projections `[n_heads, d_in, d_head]`, the output's
        `[n_heads, d_head, d_model]` (the last matrix), biases `[n_heads, d_head]`."""
        output = max(i for i, w in enumerate(weights) if len(w.shape) == 3)

        def axes(i, w):
            if len(w.shape) == 2:
                return partitioning.Axes("heads", "head_dim")
            inner = ("head_dim", "embed") if i == output else ("embed", "head_dim")
            return partitioning.Axes("heads", *inner)

        return tuple(axes(i, w) for i, w in enumerate(weights))

    def create_weights_unbatched(self, input_signature, rng):
        raise NotImplementedError(f"{self.name}: subclasses define create_weights_unbatched")

    def create_state_unbatched(self, input_signature, rng):
        return ()

    def forward_unbatched(self, *inputs, weights, state, rng, update_state):
        """Attention for one example and one head: returns (output, new_state)."""
        raise NotImplementedError(f"{self.name}: subclasses define forward_unbatched")

    def unbatched_inputs(self, inputs: tuple) -> tuple:
        """The `[batch, ...]` arrays given to forward_unbatched (per example); masks Sequences first."""
        return tuple(values_and_mask(x)[0] for x in inputs)

    def init_weights_and_state(self, input_signature, rng):
        if self._mode == "predict":
            streaming.check_steps(self)  # A layer that does not stream raises here, saying why.
        signature = (input_signature,) if self.n_in == 1 else tuple(input_signature)
        unbatched = tuple(unbatched_signature(s) for s in signature)
        unbatched = unbatched[0] if self.n_in == 1 else unbatched
        weight_rng, state_rng = jax.random.split(rng)
        heads = [
            self.create_weights_unbatched(unbatched, r) for r in jax.random.split(weight_rng, self._n_heads)
        ]
        states = [
            self.create_state_unbatched(unbatched, r) for r in jax.random.split(state_rng, self._n_heads)
        ]
        weights = jax.tree.map(lambda *xs: jnp.stack(xs), *heads)
        state = jax.tree.map(lambda *xs: jnp.stack(xs), *states) if jax.tree.leaves(states[0]) else ()
        return weights, state

    def forward(self, inputs, weights, state, rng):
        items = (inputs,) if self.n_in == 1 else tuple(inputs)
        arrays = tuple(None if a is None else jnp.asarray(a) for a in self.unbatched_inputs(items))
        batch, n_heads = arrays[0].shape[0], self._n_heads
        fn = functools.partial(self.forward_unbatched, rng=rng, update_state=True)

        def one_slice(i):
            example, head = i // n_heads, i % n_heads
            xs = tuple(None if a is None else a[example] for a in arrays)
            w = jax.tree.map(lambda a: a[head], weights)
            s = jax.tree.map(lambda a: a[head], state)
            return fn(*xs, weights=w, state=s)

        if self._use_reference_code:
            outs = [one_slice(i) for i in range(batch * n_heads)]
            out, new_state = jax.tree.map(lambda *xs: jnp.stack(xs), *outs)
        elif self._n_parallel_heads is None:

            def one_example(xs):
                def one_head(w, s):
                    return fn(*xs, weights=w, state=s)

                return jax.vmap(one_head)(weights, state)

            out, new_state = jax.vmap(one_example)(tuple(arrays))
            out = out.reshape((batch * n_heads,) + out.shape[2:])
            new_state = jax.tree.map(lambda a: a.reshape((batch * n_heads,) + a.shape[2:]), new_state)
        else:
            out, new_state = map_slices(
                one_slice, batch * n_heads, self._n_parallel_heads, self._use_python_loop, recompute=True
            )
        out = jnp.sum(out.reshape((batch, n_heads) + out.shape[1:]), axis=1).astype(arrays[0].dtype)
        # The state is per head; every example advances it the same way, so the first example's is kept.
        new_state = jax.tree.map(lambda a: a[:n_heads], new_state)
        first = items[0]
        return (seq.Sequence(out, first.mask) if isinstance(first, seq.Sequence) else out), new_state

    def forward_and_or_backward(
        self, inputs, weights, state, rng, output_grad=None, compute_output=True, update_state=True
    ):
        """Batched forward and/or backward passes: `(output, new_state, inputs_grad, weights_grad)`."""
        return forward_and_or_backward(
            self, inputs, weights, state, rng, output_grad, compute_output, update_state
        )
