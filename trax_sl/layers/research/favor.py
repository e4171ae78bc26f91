"""FAVOR+ (Performer) attention, Trax's `research.sparsity` layers: FavorAttention, Favor, CausalFavor.

FAVOR+ (https://arxiv.org/abs/2006.03555) replaces softmax(q k^T) with
phi(q) phi(k)^T for a non-negative feature map phi, so attention is a sum of
key/value products that a query reads in time linear in the sequence length:

    y_t = phi(q_t) S / (phi(q_t) z),   S = sum_s phi(k_s) v_s^T,   z = sum_s phi(k_s)

over all valid keys (`FavorAttention`) or over the valid keys s <= t
(`CausalFavorAttention`, running sums). phi is `relu(x) + numerical_stabilizer`
or, with `use_approximate_softmax`, positive orthogonal random features of the
softmax kernel (FavorAttention only, as in Trax).

Sequences and masks: invalid key steps add nothing to S and z, and the
softmax features' stabilizing maximum is taken over valid keys only (Trax
takes it over every step, so its padding nudges valid outputs through
`epsilon`); a row without a valid key gives zeros, not NaN. Outputs follow the
queries' kind and mask.

Streaming: `CausalFavorAttention` (so `CausalFavor`) streams, its state the
running sums S and z; Trax does not stream it. `FavorAttention` (so `Favor`)
does not: every query reads the sums of the whole sequence.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, shapes
from trax_sl import sequence as seq
from trax_sl.layers import attention, attention_core, base, core, streaming

__all__ = ["CausalFavor", "CausalFavorAttention", "Favor", "FavorAttention"]


def _relu_features(x, numerical_stabilizer: float):
    """Trax's default FAVOR feature map: relu(x) + numerical_stabilizer."""
    return jax.nn.relu(x) + numerical_stabilizer


def _safe_ratio(numerator, denominator):
    """`numerator / denominator[..., None]`, zero where no key was visible (denominator 0)."""
    seen = denominator > 0
    ratio = numerator / jnp.where(seen, denominator, 1)[..., None]
    return jnp.where(seen[..., None], ratio, 0)


def _check_heads(where: str, d_feature, n_heads) -> None:
    checks.check_positive(where, d_feature=d_feature, n_heads=n_heads)
    if d_feature % n_heads:
        raise ValueError(
            f"{where}: d_feature must be a multiple of n_heads, got d_feature={d_feature}, n_heads={n_heads}"
        )


# --- Non-causal FAVOR ----------------------------------------------------------------


class FavorAttention(base.Layer):
    """FAVOR+ attention on split heads: `(Q, K, V, mask)` -> `(activations, mask)`.

    n_in=4, n_out=2. Q, K, V `[batch * n_heads, time, d_feature / n_heads]`
    (as SplitIntoHeads gives them; Sequences allowed), mask `[batch, 1, 1,
    time]` or `[batch, time]` (True: a key that may be attended to; Trax's
    PaddingMask), passed through. Each query reads all valid keys, as in the
    module docstring; with `use_approximate_softmax` phi is the softmax
    kernel's positive random features on a fixed orthogonal projection
    (`get_2d_array` of key 0, drawn when the layer is built, as in Trax), else
    `relu(x) + numerical_stabilizer`.

    Not streamable: every query reads the whole sequence's key sums, so
    predict mode raises (use CausalFavorAttention to stream).

    Args:
      d_feature: the model's attention width (heads together); with
        `use_approximate_softmax`, `d_feature / n_heads` is the projection's width.
      n_heads: number of heads folded into the batch axis.
      n_random_features: rows of the random projection (features per head).
      numerical_stabilizer: added to the relu features.
      use_approximate_softmax: random softmax-kernel features instead of relu.
      scale_by_norm: rows of the projection scaled by the norms of Gaussian
        vectors (True) or by sqrt(d_feature / n_heads) (False).
      normalize_data: scale inputs by d_head^(-1/4) first, so that phi(q)
        phi(k)^T approximates exp(q k^T / sqrt(d_head)).
      epsilon: added to the softmax-kernel features.
      mode: 'train', 'eval' or 'predict' (which raises).
    """

    handles_sequences = True

    def __init__(
        self,
        d_feature: int = 4,
        n_heads: int = 1,
        n_random_features: int = 256,
        numerical_stabilizer: float = 0.001,
        use_approximate_softmax: bool = False,
        scale_by_norm: bool = True,
        normalize_data: bool = False,
        epsilon: float = 0.0001,
        mode: str = "train",
    ):
        checks.check_mode("FavorAttention", mode)
        checks.check_positive("FavorAttention", n_heads=n_heads)
        super().__init__(n_in=4, n_out=2, name="FavorAttention")
        self._d_feature = d_feature
        self._n_heads = int(n_heads)
        self._n_random_features = n_random_features
        self._numerical_stabilizer = numerical_stabilizer
        self._use_approximate_softmax = use_approximate_softmax
        self._normalize_data = normalize_data
        self._epsilon = epsilon
        self._mode = mode
        self._projection_matrix = None
        if use_approximate_softmax:
            _check_heads("FavorAttention", d_feature, n_heads)
            checks.check_positive("FavorAttention", n_random_features=n_random_features)
            # A constant of the hyperparameters (Trax draws it from key 0 in its constructor too).
            self._projection_matrix = self.get_2d_array(
                np.zeros((2,), np.uint32),  # jax.random.PRNGKey(0)'s bits.
                n_rows=n_random_features,
                n_columns=d_feature // n_heads,
                scale_by_norm=scale_by_norm,
                normalize_data=normalize_data,
                epsilon=epsilon,
            )

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.NOT_STREAMING.not_streaming(
            "non-causal FAVOR attention: every query reads the key sums of the whole sequence; "
            "CausalFavor streams"
        )

    @staticmethod
    def get_2d_array(rng, n_rows=256, n_columns=0, scale_by_norm=True, normalize_data=False, epsilon=0.0001):
        """The `[n_rows, n_columns]` random projection of the softmax-kernel features (a numpy array).

        Rows come in blocks of `n_columns` orthonormal rows (QR of Gaussian
        matrices; the last block cut to fit), each row then scaled by the
        norm of a Gaussian vector (`scale_by_norm`) or by sqrt(n_columns).
        The Gaussians come from numpy's generator seeded with the bits of
        `rng` (a JAX key), so the same key gives the same matrix; they are not
        Trax's draws. `normalize_data` and `epsilon` are Trax's arguments;
        they do not enter the matrix.
        """
        del normalize_data, epsilon
        checks.check_positive("FavorAttention.get_2d_array", n_rows=n_rows, n_columns=n_columns)
        n_blocks = -(-n_rows // n_columns)
        # A constant: numpy draws it from the key's bits, no compiled kernel (XLA's random and QR
        # take seconds to build on CPU), and no tracer when built inside a trace.
        if jax.dtypes.issubdtype(getattr(rng, "dtype", None), jax.dtypes.prng_key):
            rng = jax.random.key_data(rng)
        draw = np.random.default_rng(np.asarray(rng, np.uint32).ravel())
        gaussians = draw.standard_normal((n_blocks, n_columns, n_columns))
        norm_gaussians = draw.standard_normal((n_rows, n_columns))
        orthonormal, _ = np.linalg.qr(gaussians)
        rows = np.swapaxes(orthonormal, 1, 2).reshape((n_blocks * n_columns, n_columns))[:n_rows]
        if scale_by_norm:
            scales = np.linalg.norm(norm_gaussians, axis=1)
        else:
            scales = np.full((n_rows,), math.sqrt(n_columns), np.float32)
        return (scales[:, None] * rows).astype(np.float32)

    def nonnegative_softmax_kernel_feature_creator(self, x, is_query, valid=None):
        """Positive random features of the softmax kernel: `[rows, time, d_head]` -> `[rows, time, M]`.

        phi(x) = (exp(x W^T - |x|^2 / 2 - m) + epsilon) / sqrt(M), W the
        projection (M rows). The stabilizer m is each query's own maximum, or
        for keys the row's maximum over its valid steps (`valid [rows, time]`,
        all when None); invalid keys' features are zero.
        """
        projection = self._projection_matrix
        if projection is None:
            raise ValueError(f"{self.name}: softmax-kernel features need use_approximate_softmax=True")
        if x.shape[-1] != projection.shape[1]:
            raise ValueError(
                f"{self.name}: heads of d_feature / n_heads = {projection.shape[1]} expected, got "
                f"{shapes.short_form(x)}"
            )
        normalizer = x.shape[-1] ** -0.25 if self._normalize_data else 1.0
        dash = jnp.einsum("btd,md->btm", normalizer * x, jnp.asarray(projection, x.dtype))
        half_norm = 0.5 * normalizer**2 * jnp.sum(jnp.square(x), axis=-1, keepdims=True)
        if is_query:
            peak = jnp.max(dash, axis=-1, keepdims=True)
            exponent = dash - half_norm - peak
        else:
            valid = jnp.ones(x.shape[:2], jnp.bool_) if valid is None else valid
            valid = valid[..., None]
            peak = jnp.max(jnp.where(valid, dash, -jnp.inf), axis=(1, 2), keepdims=True)
            peak = jnp.where(jnp.isfinite(peak), peak, 0)
            # Invalid keys' exponents are zeroed before exp, so no inf (nor its gradient) arises.
            exponent = jnp.where(valid, dash - half_norm - peak, 0)
        features = (jnp.exp(exponent) + self._epsilon) / math.sqrt(projection.shape[0])
        return features if is_query else jnp.where(valid, features, 0)

    def _key_validity(self, mask, keys, values, rows: int, time: int):
        """`[rows, time]` bool: the Trax mask, repeated per head, and-ed with the Sequences' masks."""
        n = self._n_heads
        if rows % n:
            raise ValueError(
                f"{self.name}: expected [batch * n_heads, time, d_head] with n_heads={n}, got "
                f"{shapes.short_form(keys)}"
            )
        visible = attention_core.trax_mask_visibility(mask, rows // n, time)
        if visible.shape[2] != 1 or visible.shape[1] not in (1, n):
            raise ValueError(
                f"{self.name}: FAVOR masks keys, the same for every query: expected a mask [batch, 1 or "
                f"n_heads, 1, time] or [batch, time], got {shapes.short_form(mask)}"
            )
        per_row = jnp.broadcast_to(visible[:, :, 0, :], (rows // n, n, time)).reshape((rows, time))
        return per_row & attention_core.key_validity(keys, values, rows, time)

    def forward(self, inputs, weights, state, rng):
        q, k, v, mask = inputs
        q_values, k_values, v_values = (attention_core.masked_values(item) for item in (q, k, v))
        rows, time = k_values.shape[:2]
        valid = self._key_validity(mask, k, v, rows, time)
        if self._use_approximate_softmax:
            q_prime = self.nonnegative_softmax_kernel_feature_creator(q_values, True)
            k_prime = self.nonnegative_softmax_kernel_feature_creator(k_values, False, valid)
        else:
            q_prime = _relu_features(q_values, self._numerical_stabilizer)
            k_prime = jnp.where(valid[..., None], _relu_features(k_values, self._numerical_stabilizer), 0)
        key_value_sums = jnp.einsum("btm,btd->bmd", k_prime, v_values)
        numerator = jnp.einsum("btm,bmd->btd", q_prime, key_value_sums)
        denominator = jnp.einsum("btm,bm->bt", q_prime, jnp.sum(k_prime, axis=1))
        y = _safe_ratio(numerator, denominator)
        return ((seq.Sequence(y, q.mask) if isinstance(q, seq.Sequence) else y), mask), state


def Favor(  # noqa: N802
    d_feature: int,
    n_heads: int = 1,
    n_random_features: int = 256,
    dropout: float = 0.0,
    numerical_stabilizer: float = 0.001,
    use_approximate_softmax: bool = False,
    scale_by_norm=0,
    normalize_data: bool = False,
    epsilon: float = 0.0001,
    mode: str = "train",
) -> base.Layer:
    """Returns a FAVOR+ self-attention layer mapping `(x, mask)` to `(y, mask)`.

    n_in=2, n_out=2. `x [batch, time, d]`, mask `[batch, 1, 1, time]` (e.g.
    PaddingMask): Dense projections to queries, keys and values of
    `d_feature` (`n_heads` heads), FavorAttention (arguments as there; note
    Trax's default `scale_by_norm=0` here), heads merged, a final Dense.
    `dropout` is accepted and unused, as in Trax: FAVOR forms no attention
    weights to drop.

    Not streamable (see FavorAttention): predict mode raises.
    """
    _check_heads("Favor", d_feature, n_heads)
    checks.check_rate("Favor", dropout=dropout)
    return attention.ConfigurableAttention(
        core.Dense(d_feature),
        core.Dense(d_feature),
        core.Dense(d_feature),
        core.Dense(d_feature),
        FavorAttention(
            d_feature,
            n_heads,
            n_random_features,
            numerical_stabilizer,
            use_approximate_softmax,
            scale_by_norm,
            normalize_data,
            epsilon,
            mode,
        ),
        n_heads=n_heads,
    )


# --- Causal FAVOR: running sums ----------------------------------------------------------


def _running_sums_steps(sums, q, k, v):
    """Time-major `q, k [time, rows, m]`, `v [time, rows, d]` -> (`[time, rows, d]`, last sums)."""

    def step(s, qkv):
        q_t, k_t, v_t = qkv
        s = s + k_t[:, :, None] * v_t[:, None, :]
        return s, jnp.einsum("bm,bmd->bd", q_t, s)

    last, out = jax.lax.scan(step, sums, (q, k, v))
    return out, last


def _running_sums_attention(sums, q, k, v):
    """`out_t = q_t (sums + sum_{s <= t} k_s v_s^T)` (time-major) and the sums after the last step.

    The steps run in about sqrt(time) chunks, each rematerialized in the
    backward pass, so the gradient keeps the sums at chunk starts only, not
    one `[rows, m, d]` per step. (Trax's gradient instead takes each step
    off the last sums; that loses the small early sums to rounding, which
    the relu features' tiny denominators amplify.) The forward additions are
    the same whatever the chunking, and zero padding adds exact zeros.
    """
    time = q.shape[0]
    chunk = max(1, math.isqrt(max(time - 1, 0)) + 1)
    n_chunks = -(-time // chunk)
    pad = n_chunks * chunk - time

    def chunked(a):
        a = jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape((n_chunks, chunk) + a.shape[1:])

    steps = jax.checkpoint(_running_sums_steps)

    def body(s, qkv):
        out, s = steps(s, *qkv)
        return s, out

    last, out = jax.lax.scan(body, sums, tuple(chunked(a) for a in (q, k, v)))
    return out.reshape((n_chunks * chunk,) + out.shape[2:])[:time], last


class CausalFavorAttention(base.Layer):
    """Causal FAVOR attention on split heads: `(Q, K, V)` -> activations.

    n_in=3, n_out=1. `[batch * heads, time, d_head]` each (as SplitIntoHeads
    gives them; Sequences allowed): step t reads the valid keys s <= t through
    running sums of `phi(k_s) v_s^T` and `phi(k_s)`, phi(x) = relu(x) +
    numerical_stabilizer. Streams with block_size 1 and no latency. The
    gradient keeps the sums at about sqrt(time) chunk starts, not per step.

    Predict mode: the state holds each row's running sums `[batch * heads,
    d_head, d_head + 1]` (the last column sums phi(k)); invalid steps add
    nothing. Unbounded: no cache to fill. Step-wise outputs equal layer-wise
    ones up to float rounding (the same additions in the same order, compiled
    for blocks instead of the whole sequence).
    """

    handles_sequences = True

    def __init__(self, numerical_stabilizer: float = 0.001, mode: str = "train"):
        checks.check_mode("CausalFavorAttention", mode)
        super().__init__(n_in=3, n_out=1, name="CausalFavorAttention")
        self._numerical_stabilizer = numerical_stabilizer
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.StreamingSpec(receptive_field=(math.inf, 0))

    @staticmethod
    def _sums_dtype(dtype):
        return jnp.promote_types(dtype, jnp.float32)

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        _, k_sig, v_sig = (seq.values_of(s) for s in input_signature)
        shape = (k_sig.shape[0], k_sig.shape[-1], v_sig.shape[-1] + 1)
        return (), jnp.zeros(shape, self._sums_dtype(v_sig.dtype))

    def forward(self, inputs, weights, state, rng):
        items = [seq.as_sequence(item) for item in inputs]
        q, k, v = (item for item, _ in items)
        valid = (k.mask & v.mask)[..., None]
        dtype = self._sums_dtype(v.dtype)
        q_prime = _relu_features(q.mask_invalid().values.astype(dtype), self._numerical_stabilizer)
        k_prime = jnp.where(
            valid, _relu_features(k.mask_invalid().values.astype(dtype), self._numerical_stabilizer), 0
        )
        values = v.mask_invalid().values.astype(dtype)
        # A column of ones makes the last column of the sums phi(k)'s sum: one scan gives both.
        values = jnp.concatenate([values, jnp.ones(values.shape[:2] + (1,), dtype)], axis=-1)
        if self._mode == "predict":
            sums = state
        else:
            sums = jnp.zeros((k_prime.shape[0], k_prime.shape[-1], values.shape[-1]), dtype)
        time_major = (jnp.swapaxes(a, 0, 1) for a in (q_prime, k_prime, values))
        out, sums = _running_sums_attention(sums, *time_major)
        out = jnp.swapaxes(out, 0, 1)
        y = _safe_ratio(out[..., :-1], out[..., -1]).astype(v.dtype)
        new_state = sums if self._mode == "predict" else state
        return seq.like_input(seq.Sequence(y, q.mask), items[0][1]), new_state


def CausalFavor(  # noqa: N802
    d_feature: int,
    n_heads: int = 1,
    dropout: float = 0.0,
    numerical_stabilizer: float = 0.001,
    mode: str = "train",
) -> base.Layer:
    """Returns a causal FAVOR self-attention layer: `[batch, time, d]` -> same.

    n_in=1, n_out=1. Dense projections to queries, keys and values of
    `d_feature` (`n_heads` heads), CausalFavorAttention, heads merged, a
    final Dense. `dropout` is accepted and unused, as in Trax: FAVOR forms no
    attention weights to drop. Streams with block_size 1 and no latency (Trax
    does not stream it).

    Predict mode: the state holds CausalFavorAttention's running sums per
    row and head; unbounded.
    """
    _check_heads("CausalFavor", d_feature, n_heads)
    checks.check_rate("CausalFavor", dropout=dropout)
    return attention.ConfigurableAttention(
        core.Dense(d_feature),
        core.Dense(d_feature),
        core.Dense(d_feature),
        core.Dense(d_feature),
        n_heads=n_heads,
        qkv_attention_layer=CausalFavorAttention(numerical_stabilizer, mode),
    )
