"""Experimental position encodings (Trax's research.position_encodings), streaming.

Every layer here adds (or writes) a function of each step's position. As in
`trax_sl.layers.position`, positions are per example and count VALID steps,
so a row's valid step t has position t for the usual Sequences (padding at
the end) and streams stay exact behind layers with output latency. In
predict mode the state holds each row's count (Trax keeps one scalar for the
whole batch), advanced by the valid steps of each block; values at invalid
steps are not meaningful.

Training-only randomness (random start offsets, dropout, random phases) is
drawn from the rng in 'train' mode only; 'eval' and 'predict' are
deterministic, so that layer-wise and step-wise runs agree.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jax_random
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, position, streaming
from trax_sl.layers import initializers as init


def _width_axes(weights):
    """The learned vectors here span the model's width (the last axis) and broadcast over the others."""
    return jax.tree.map(lambda w: partitioning.Axes(*[None] * (len(w.shape) - 1), "embed"), weights)


def _check_rank3(layer_name: str, x) -> None:
    if x.ndim != 3:
        raise ValueError(f"{layer_name}: expected [batch, time, d] inputs, got {shapes.short_form(x)}")


def _counts_state(mode: str, values):
    """Predict-mode state: each row's valid steps so far, `[batch]` int32 (else `()`)."""
    return jnp.zeros((values.shape[0],), jnp.int32) if mode == "predict" else ()


def _need_rng(layer: base.Layer, rng, why: str) -> None:
    if rng is None:
        raise ValueError(
            f"{layer.name}: mode='train' with {why} needs an rng, got None; pass rng= (or use mode='eval')"
        )


def _keep_multiplier(rng, rate: float, shape, dtype):
    keep_prob = 1.0 - rate
    keep = jax.random.bernoulli(rng, keep_prob, tuple(shape))
    return keep.astype(dtype) / jnp.asarray(keep_prob, dtype)


class AxialPositionalEncoding(base.Layer):
    """Adds learned axial position embeddings: positions index a grid of `shape`, one embedding per axis.

    n_in=1, n_out=1. `[batch, time, d]` -> same, with d = sum(d_embs) and
    time <= prod(shape). Position p (counted over valid steps) is the
    row-major index of a cell of the `shape` grid; its embedding concatenates
    axis i's learned vector for the cell's coordinate i (d_embs[i] features).
    Weights: per axis `[1, 1, .., shape[i], .., 1, d_embs[i]]`. In 'train'
    mode with `dropout`, the grid embedding `[batch, *shape, d]` is dropped
    (shared along `dropout_broadcast_dims`). Trax needs time == prod(shape)
    layer-wise; shorter inputs take the first positions here.

    Predict mode: the state holds each row's count of valid steps (`[batch]`
    int32). Steps whose position is past the grid come out invalid (masked,
    zero values; `stream_capacity` is prod(shape)), never a wrapped embedding.
    """

    handles_sequences = True

    def __init__(
        self,
        shape=(64, 64, 3),
        d_embs=(384, 384, 256),
        kernel_initializer=init.RandomNormalInitializer(1.0),
        dropout=0.0,
        dropout_broadcast_dims=(),
        mode="train",
    ):
        if len(shape) != len(d_embs) or not shape:
            raise ValueError(
                f"AxialPositionalEncoding: shape and d_embs must be non-empty and of the same length, "
                f"got shape={shape!r}, d_embs={d_embs!r}"
            )
        checks.check_rate("AxialPositionalEncoding", dropout=dropout)
        checks.check_mode("AxialPositionalEncoding", mode)
        super().__init__(name="AxialPositionalEncoding")
        self._shape = tuple(int(s) for s in shape)
        self._d_embs = tuple(int(d) for d in d_embs)
        self._kernel_initializer = kernel_initializer
        self._dropout = dropout
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        cells = math.prod(self._shape)
        return streaming.StreamingSpec(capacity=cells, capacity_source=f"{self.name} shape={self._shape}")

    def weight_axes(self, weights):
        return _width_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        _check_rank3(self.name, values)
        if sum(self._d_embs) != values.shape[-1]:
            raise ValueError(
                f"{self.name}: sum(d_embs) must equal the input depth, got sum({self._d_embs}) = "
                f"{sum(self._d_embs)} for {shapes.short_form(values)}"
            )
        weights = []
        for axis, (axis_rng, d_emb) in enumerate(zip(jax.random.split(rng, len(self._d_embs)), self._d_embs)):
            axis_shape = [1] * len(self._shape)
            axis_shape[axis] = self._shape[axis]
            weights.append(self._kernel_initializer((1, *axis_shape, d_emb), axis_rng))
        return tuple(weights), _counts_state(self._mode, values)

    def _grid(self, weights, batch: int):
        """`[batch, *shape, d]`: every cell's embedding."""
        return jnp.concatenate(
            [jnp.broadcast_to(w, (batch, *self._shape, w.shape[-1])) for w in weights], axis=-1
        )

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        _check_rank3(self.name, x)
        predict = self._mode == "predict"
        n_cells = math.prod(self._shape)
        if not predict and x.shape[1] > n_cells:
            raise ValueError(
                f"{self.name}: the input has {x.shape[1]} steps, more than prod(shape) = {n_cells} "
                f"for shape={self._shape}"
            )
        positions, next_count = position._positions(x.mask, state if predict else 0)
        if self._mode == "train" and self._dropout > 0.0:
            _need_rng(self, rng, f"dropout={self._dropout}")
            grid = self._grid(weights, x.shape[0])
            noise_shape = list(grid.shape)
            for dim in self._dropout_broadcast_dims:
                noise_shape[dim] = 1
            grid = grid * _keep_multiplier(rng, self._dropout, noise_shape, grid.dtype)
            flat = grid.reshape((x.shape[0], n_cells, grid.shape[-1]))
            emb = jnp.take_along_axis(flat, positions[:, :, None], axis=1, mode="fill", fill_value=jnp.nan)
        else:
            table = self._grid(weights, 1).reshape((n_cells, -1))
            # mode="fill": positions past the grid become NaN (made invalid in predict mode), never clamped.
            emb = jnp.take(table, positions, axis=0, mode="fill", fill_value=jnp.nan)
        y = x.apply_values(lambda v: v + emb.astype(v.dtype))
        if predict:
            y = position.invalid_past_table(y, positions, n_cells)
        return seq.like_input(y, was_sequence), (next_count if predict else state)


class SinCosPositionalEncoding(base.Layer):
    """Adds sin-cos position features: `[sin(p w), cos(p w)]`, w = 10000^(-2i/d).

    n_in=1, n_out=1. `[batch, time, d]` (d even) -> same. The first d/2
    features are sines, the last d/2 cosines (Trax's layout here, unlike
    PositionalEncoding's interleaving). In 'train' mode all positions are
    shifted by a random offset in [0, add_offset), except one time in
    `start_from_zero_one_in`, and with `dropout` the encoding of a position is
    dropped (shared along `dropout_broadcast_dims` of `[1, time, d]`). No
    weights.

    Predict mode: the state holds each row's count of valid steps (`[batch]` int32).
    """

    handles_sequences = True

    def __init__(
        self,
        add_offset=2048,
        dropout=0.0,
        dropout_broadcast_dims=(-2,),
        start_from_zero_one_in=2,
        mode="train",
    ):
        checks.check_rate("SinCosPositionalEncoding", dropout=dropout)
        checks.check_mode("SinCosPositionalEncoding", mode)
        if add_offset < 0 or start_from_zero_one_in < 1:
            raise ValueError(
                f"SinCosPositionalEncoding: expected add_offset >= 0 and start_from_zero_one_in >= 1, "
                f"got add_offset={add_offset!r}, start_from_zero_one_in={start_from_zero_one_in!r}"
            )
        super().__init__(name="SinCosPositionalEncoding")
        self._add_offset = add_offset
        self._dropout = dropout
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)
        self._start_from_zero_one_in = start_from_zero_one_in
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        self._check_depth(values)
        return (), _counts_state(self._mode, values)

    def _check_depth(self, x) -> None:
        _check_rank3(self.name, x)
        if x.shape[-1] % 2:
            raise ValueError(
                f"{self.name}: the depth must be even (half sines, half cosines), got {shapes.short_form(x)}"
            )

    @staticmethod
    def sincos(positions, d_feature: int):
        """`[batch, time, d_feature]` features of `[batch, time]` positions."""
        div_term = jnp.exp(jnp.arange(0, d_feature, 2) * -(jnp.log(10000.0) / d_feature))
        angles = positions.astype(jnp.float32)[:, :, None] * div_term.reshape((1, 1, -1))
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        self._check_depth(x)
        predict = self._mode == "predict"
        positions, next_count = position._positions(x.mask, state if predict else 0)
        train = self._mode == "train"
        if train:
            _need_rng(self, rng, "random start offsets")
            rng_start, rng_nonzero, rng_dropout = jax.random.split(rng, 3)
            start = jax.random.randint(rng_start, (), 0, self._add_offset)
            nonzero = jnp.minimum(1, jax.random.randint(rng_nonzero, (), 0, self._start_from_zero_one_in))
            positions = positions + start * nonzero
        pe = self.sincos(positions, x.shape[-1])
        if train and self._dropout > 0.0:
            noise_shape = [1, x.shape[1], x.shape[2]]
            for dim in self._dropout_broadcast_dims:
                noise_shape[dim] = 1
            pe = pe * _keep_multiplier(rng_dropout, self._dropout, noise_shape, pe.dtype)
        y = x.apply_values(lambda v: v + pe.astype(v.dtype))
        return seq.like_input(y, was_sequence), (next_count if predict else state)


class FixedBasePositionalEncoding(base.Layer):
    """Adds learned embeddings of a position's digits in several fixed bases.

    n_in=1, n_out=1. `[batch, time, d]` -> same, d a multiple of n_digits. For
    each base, digit i of the position (least significant first) scales a
    learned `[d / n_digits]` vector; digits are concatenated and the bases
    summed. A learned start vector is added at position 0. In 'train' mode
    each row's positions start at a random offset (except one row in
    `start_from_zero_one_in`), and one row in `base_dropout_one_in` drops the
    digit embeddings (as in Trax, one draw per row is shared by all bases).
    Weights: `(base_weights [len(bases)][n_digits] of [1, d / n_digits],
    start_vec [1, 1, d])`; as in Trax, every base starts from the same digit
    vectors.

    Predict mode: the state holds each row's count of valid steps (`[batch]` int32).
    """

    handles_sequences = True

    def __init__(
        self,
        bases=(11, 13, 14, 15),
        n_digits=8,
        start_from_zero_one_in=2,
        base_dropout_one_in=100,
        mode="train",
        initializer=init.RandomUniformInitializer(1e-4),
    ):
        bases = tuple(int(b) for b in bases)
        if not bases or min(bases) < 2 or n_digits < 1:
            raise ValueError(
                f"FixedBasePositionalEncoding: expected bases >= 2 and n_digits >= 1, got "
                f"bases={bases!r}, n_digits={n_digits!r}"
            )
        if start_from_zero_one_in < 1 or base_dropout_one_in < 1:
            raise ValueError(
                f"FixedBasePositionalEncoding: start_from_zero_one_in and base_dropout_one_in must be "
                f">= 1, got {start_from_zero_one_in!r} and {base_dropout_one_in!r}"
            )
        checks.check_mode("FixedBasePositionalEncoding", mode)
        super().__init__(name="FixedBasePositionalEncoding")
        self._bases, self._n_digits = bases, int(n_digits)
        self._start_from_zero_one_in, self._base_dropout_one_in = start_from_zero_one_in, base_dropout_one_in
        self._initializer = initializer
        self._mode = mode
        # Positions must fit in int32 (Trax's limit min(bases) ** n_digits can exceed it).
        self._max_pos = min(min(bases) ** self._n_digits, 2**31 - 1)

    def weight_axes(self, weights):
        return _width_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        _check_rank3(self.name, values)
        d_feature = values.shape[-1]
        if d_feature % self._n_digits:
            raise ValueError(
                f"{self.name}: the depth ({d_feature}) must be a multiple of n_digits={self._n_digits}"
            )
        d_weight = d_feature // self._n_digits
        rng_digits, rng_start = jax.random.split(rng)
        digit_rngs = jax.random.split(rng_digits, self._n_digits)
        base_weights = tuple(
            tuple(self._initializer((1, d_weight), r) for r in digit_rngs) for _ in self._bases
        )
        start_vec = self._initializer((1, 1, d_feature), rng_start)
        return (base_weights, start_vec), _counts_state(self._mode, values)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        _check_rank3(self.name, x)
        base_weights, start_vec = weights
        batch, length = x.shape[:2]
        predict, train = self._mode == "predict", self._mode == "train"
        if not predict and length >= self._max_pos:
            raise ValueError(
                f"{self.name}: the input has {length} steps; positions must stay below "
                f"{self._max_pos} (min(bases) ** n_digits)"
            )
        positions, next_count = position._positions(x.mask, state if predict else 0)
        is_start = positions == 0
        if train:
            _need_rng(self, rng, "random start offsets and base dropout")
            rng_nonzero, rng_start, rng_dropout = jax.random.split(rng, 3)
            nonzero = jnp.minimum(
                1, jax.random.randint(rng_nonzero, (batch,), 0, self._start_from_zero_one_in)
            )
            random_start = jax.random.randint(rng_start, (batch,), 0, self._max_pos - length) * nonzero
            positions = positions + random_start.reshape((batch, 1))
            keep = jnp.minimum(1, jax.random.randint(rng_dropout, (batch,), 0, self._base_dropout_one_in))
            keep = keep.astype(jnp.float32).reshape((batch, 1, 1))
        total = 0.0
        for number_base, digit_weights in zip(self._bases, base_weights):
            # Digit i (least significant first) scales digit_weights[i]; the digits fill consecutive slots.
            powers = jnp.asarray([number_base**i for i in range(self._n_digits)], jnp.int32).reshape(
                (1, 1, -1)
            )
            digits = jnp.mod(positions[:, :, None] // powers, number_base).astype(jnp.float32)
            vectors = jnp.concatenate(digit_weights, axis=0)  # [n_digits, d / n_digits]
            embeddings = (digits[..., None] * vectors[None, None]).reshape((batch, length, -1))
            total = total + (embeddings * keep if train else embeddings)
        total = total + jnp.where(is_start[:, :, None], start_vec, jnp.zeros((), start_vec.dtype))
        y = x.apply_values(lambda v: v + total.astype(v.dtype))
        return seq.like_input(y, was_sequence), (next_count if predict else state)


def threefry_2x32_prf(key, x):
    """Apply the threefry PRF to an array of inputs (vectorized over x).

    Args:
      key: uint32[2], the key of the PRF.
      x: uint32[..., 2], the inputs.

    Returns:
      uint32[..., 2], the outputs.
    """
    if not (key.shape == (2,) and key.dtype == jnp.uint32):
        raise TypeError(f"threefry_2x32_prf: key must be uint32[2], got {shapes.short_form(key)}")
    if not (x.shape[-1:] == (2,) and x.dtype == jnp.uint32):
        raise TypeError(f"threefry_2x32_prf: x must be uint32[..., 2], got {shapes.short_form(x)}")
    # threefry_2x32 takes the first words of all pairs, then all second words.
    x_3f = jnp.moveaxis(x, source=-1, destination=0).flatten()
    y_3f = jax_random.threefry_2x32(key, x_3f)
    return jnp.moveaxis(jnp.reshape(y_3f, (2,) + x.shape[:-1]), source=0, destination=-1)


def threefry_2x32_prange(key, lo: int = 0, hi: int = 2):
    """Splits a key into the stream of keys for counters lo..hi-1 (little-endian counter mode).

    Returns uint32[hi - lo, 2].
    """
    if not (key.shape == (2,) and key.dtype == jnp.uint32):
        raise ValueError(f"threefry_2x32_prange: key must be uint32[2], got {shapes.short_form(key)}")
    if not hi < 2**32:
        raise NotImplementedError("threefry_2x32_prange: only 32-bit ranges are supported")
    i_lo = jnp.arange(lo, hi, dtype=jnp.uint32)
    return threefry_2x32_prf(key, jnp.stack([i_lo, jnp.zeros_like(i_lo)], axis=-1))


def _time_bin_features(positions, time_bin_length: int):
    """`[..., 3]`: 1 / (1 + bin index), fraction through the bin, bin parity."""
    inter_bin, intra_bin = jnp.divmod(positions, time_bin_length)
    return jnp.stack(
        [
            1.0 / (1.0 + inter_bin.astype(jnp.float32)),
            intra_bin.astype(jnp.float32) / time_bin_length,
            (inter_bin % 2).astype(jnp.float32),
        ],
        axis=-1,
    )


class InfinitePositionalEncoding(base.Layer):
    """Adds cosines of positions with drifting, pseudorandom phases: an encoding for unbounded lengths.

    n_in=1, n_out=1. `[batch, time, d]` -> same. Feature pair j (cos and sin,
    d/2 pairs rounded up) turns at a frequency from 0.5 down geometrically,
    plus a random walk (fixed-key threefry noise; variance `drift` per step)
    so that far positions stay distinguishable. With `time_bin_length`, the
    last 3 features are TimeBinPositionalEncoding's. `transform`: 'any'
    multiplies by a learned `[d, d]` matrix (orthogonal init), 'diag' by
    softplus of a learned `[d]` vector, 'none' adds the raw encoding.
    `affine`: in 'train' mode a random phase per feature (from the rng) is
    added at each call; 'eval' and 'predict' use phase 0 (Trax draws one in
    every mode).

    Predict mode: the state holds each row's count of valid steps (`[batch]`
    int32) and its random walk so far (`[batch, (d + 1) // 2]` float32).
    """

    handles_sequences = True

    def __init__(self, drift=0.03, affine=True, transform="any", time_bin_length=None, mode="train"):
        if transform not in ("any", "diag", "none"):
            raise ValueError(
                f"InfinitePositionalEncoding: transform must be 'any', 'diag' or 'none', got "
                f"transform={transform!r}"
            )
        if not drift > 0:
            raise ValueError(f"InfinitePositionalEncoding: drift must be > 0, got drift={drift!r}")
        if time_bin_length is not None and time_bin_length < 1:
            raise ValueError(
                f"InfinitePositionalEncoding: time_bin_length must be None or >= 1, got "
                f"time_bin_length={time_bin_length!r}"
            )
        checks.check_mode("InfinitePositionalEncoding", mode)
        super().__init__(name="InfinitePositionalEncoding")
        self._drift, self._affine, self._transform = drift, affine, transform
        self._time_bin_length = time_bin_length
        self._mode = mode

    @staticmethod
    def _noise_key():
        return jax.random.split(jax.random.PRNGKey(234234535))[0]

    def _check_input(self, x) -> None:
        _check_rank3(self.name, x)
        if self._time_bin_length is not None and x.shape[-1] < 3:
            raise ValueError(f"{self.name}: time_bin_length needs a depth >= 3, got {shapes.short_form(x)}")

    def weight_axes(self, weights):
        return _width_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        self._check_input(values)
        d_feature = values.shape[-1]
        if self._transform == "diag":
            weights = jnp.full((d_feature,), 1e-4, jnp.float32)
        elif self._transform == "any":
            weights = init.OrthogonalInitializer()((d_feature, d_feature), rng)
        else:
            weights = ()
        state = ()
        if self._mode == "predict":
            state = (
                jnp.zeros((values.shape[0],), jnp.int32),
                jnp.zeros((values.shape[0], (d_feature + 1) // 2), jnp.float32),
            )
        return weights, state

    def _noise_steps(self, positions, n_pairs: int):
        """Each position's random-walk increments, `[batch, time, n_pairs]`, in [0, 2 sqrt(3))."""
        counters = positions.astype(jnp.uint32)[:, :, None] * jnp.uint32(n_pairs) + jnp.arange(
            n_pairs, dtype=jnp.uint32
        ).reshape((1, 1, -1))
        words = threefry_2x32_prf(self._noise_key(), jnp.stack([counters, jnp.zeros_like(counters)], axis=-1))
        # As in Trax: uint32 / (2**31 - 1), so increments are non-negative.
        return words[..., 0].astype(jnp.float32) / np.float32(2**31 - 1) * np.float32(3**0.5)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        self._check_input(x)
        random_phase = self._affine and self._mode == "train"
        if random_phase:
            _need_rng(self, rng, "affine=True (a random phase per call)")
        predict = self._mode == "predict"
        depth = x.shape[-1]
        n_pairs = (depth + 1) // 2
        counts, walk = state if predict else (0, jnp.zeros((x.shape[0], n_pairs), jnp.float32))
        positions, next_counts = position._positions(x.mask, counts)
        steps = jnp.where(x.mask[:, :, None], self._noise_steps(positions, n_pairs), 0.0)
        cumulative = jnp.cumsum(steps, axis=1) + walk[:, None, :]
        noise = cumulative * np.float32(self._drift**0.5)

        drift = self._drift ** (n_pairs / (depth // 2)) if depth > 2 else self._drift
        channel = np.arange(depth)
        freq = jnp.geomspace(0.5, 0.5 * drift**2, num=n_pairs)[channel // 2]
        t = positions.astype(jnp.float32)[:, :, None]
        cycles = (
            ((channel % 2) / 4).astype(np.float32).reshape((1, 1, -1))
            + freq.reshape((1, 1, -1)) * t
            + jnp.take(noise, channel // 2, axis=-1) / 4
        )
        if random_phase:
            cycles = cycles + jax.random.uniform(rng, (1, 1, depth), minval=0.0, maxval=1.0)
        emb = jnp.cos(2 * jnp.pi * cycles)
        if self._time_bin_length is not None:
            emb = jnp.concatenate(
                [emb[..., :-3], _time_bin_features(positions, self._time_bin_length)], axis=-1
            )
        if self._transform == "diag":
            emb = emb * jax.nn.softplus(weights).reshape((1, 1, -1))
        elif self._transform == "any":
            emb = emb @ weights
        y = x.apply_values(lambda v: v + emb.astype(v.dtype))
        new_state = (next_counts, cumulative[:, -1, :]) if predict else state
        return seq.like_input(y, was_sequence), new_state


class TimeBinPositionalEncoding(base.Layer):
    """Writes time-bin features into the last 3 channels: `[1 / (1 + bin), fraction, parity]`.

    n_in=1, n_out=1. `[batch, time, d]` -> same: with bin = position //
    time_bin_length, the last `num_features = 3` channels are replaced by
    1 / (1 + bin), (position mod time_bin_length) / time_bin_length and bin
    mod 2 (for d < 3, the last d of those). No weights.

    Predict mode: the state holds each row's count of valid steps (`[batch]` int32).
    """

    handles_sequences = True
    num_features = 3

    def __init__(self, time_bin_length, mode="train"):
        checks.check_positive("TimeBinPositionalEncoding", time_bin_length=time_bin_length)
        checks.check_mode("TimeBinPositionalEncoding", mode)
        super().__init__(name="TimeBinPositionalEncoding")
        self._time_bin_length = int(time_bin_length)
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        _check_rank3(self.name, values)
        return (), _counts_state(self._mode, values)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        _check_rank3(self.name, x)
        predict = self._mode == "predict"
        positions, next_count = position._positions(x.mask, state if predict else 0)
        depth = x.shape[-1]
        features = _time_bin_features(positions, self._time_bin_length)

        def write(v):
            kept = v[..., : max(depth - self.num_features, 0)]
            return jnp.concatenate([kept, features.astype(v.dtype)], axis=-1)[..., -depth:]

        y = x.apply_values(write)
        return seq.like_input(y, was_sequence), (next_count if predict else state)
