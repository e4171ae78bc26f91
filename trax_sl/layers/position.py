"""Positional information: PositionalEncoding (Trax); AddTimingSignal, ApplyRotaryPositionalEncoding (SequenceLayers).

Positions are per example and count VALID steps: the valid step t of a row
has position "number of valid steps of that row before t". For the usual
Sequences (valid steps first, padding at the end) that is the index t, as in
Trax; counting valid steps is what keeps a composition streamable, because
a layer upstream with output latency (e.g. Lookahead) makes the first steps
of a stream invalid. In predict mode each row's count is the state, advanced
by the valid steps of each block, so rows at different lengths keep their
own positions. Values at invalid steps are not meaningful.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init

_FLOATS = (jnp.float16, jnp.bfloat16, jnp.float32, jnp.float64)


def _check_float(layer_name: str, values) -> None:
    if values.dtype not in _FLOATS:
        raise ValueError(f"{layer_name}: expected floating-point inputs, got {shapes.short_form(values)}")


def _start_state(mode: str, values):
    """The predict-mode state: steps counted so far per row, `[batch]` int32 (else `()`)."""
    if mode != "predict":
        return base.EMPTY_STATE
    return jnp.zeros((values.shape[0],), jnp.int32)


def _positions(mask, start, only_valid: bool = True):
    """(positions `[batch, time]` int32, start of the next block `[batch]`).

    `start` is the count before this block (`[batch]`, or 0 layer-wise). With
    `only_valid`, a valid step's position is the number of valid steps before
    it (invalid steps repeat a neighbour's); otherwise the physical index.
    """
    batch, time = mask.shape
    start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (batch,)).reshape((batch, 1))
    if only_valid:
        counts = jnp.cumsum(mask.astype(jnp.int32), axis=1)
        return start + jnp.maximum(counts - 1, 0), (start + counts[:, -1:]).reshape((batch,))
    steps = jnp.broadcast_to(jnp.arange(time, dtype=jnp.int32).reshape((1, time)), (batch, time))
    return start + steps, (start + time).reshape((batch,))


def _sinusoid_table(max_len: int, d_feature: int) -> np.ndarray:
    """Trax's table: sin on even features, cos on odd ones, `[max_len, d_feature]`."""
    pe = np.zeros((max_len, d_feature), dtype=np.float32)
    position = np.arange(0, max_len)[:, np.newaxis]
    div_term = np.exp(np.arange(0, d_feature, 2) * -(np.log(10000.0) / d_feature))
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term[: d_feature // 2])
    return pe


def invalid_past_table(y: seq.Sequence, positions, table_size: int) -> seq.Sequence:
    """`y` with the steps whose position is past a table of `table_size` rows invalid (zero values)."""
    return seq.Sequence(y.values, y.mask & (positions < table_size)).mask_invalid()


class PositionalEncoding(base.Layer):
    """Adds a (trainable) positional embedding, initialized to Trax's sinusoids.

    n_in=1, n_out=1. `[batch, time, d]` -> `[batch, time, d]`:
    `y[b, t] = x[b, t] + table[position(b, t)]`, positions counting valid
    steps (module docstring), cast to the input dtype. Weights: `table
    [max_len, d]`, or `(table [max_len, d_feature], ff [d_feature, d])` with
    `d_feature` (the table is projected by `ff`). In 'train' mode, with
    `dropout > 0` a random subset of the embedding entries (shared along
    `dropout_broadcast_dims`, of `[1, time, d]`) is dropped and the rest scaled
    by `1 / (1 - dropout)`; with `start_from_zero_prob < 1` all positions are
    shifted by a random offset in `[0, max_offset_to_add)` with probability
    `1 - start_from_zero_prob`. Both need an rng; 'eval' and 'predict' use neither.

    Past max_len: layer-wise, an input of more than `max_len` steps raises a
    ValueError. In predict mode positions are only known at run time: a step
    whose position is `>= max_len` (a stream longer than `max_len` valid
    steps) comes out invalid (masked, zero values; `stream_capacity` is
    max_len); a train-mode offset too large gives NaN. Never a clamped or
    wrapped embedding.

    Predict mode: the state holds each row's count of valid steps so far
    (`[batch]` int32); the block's positions continue from it.
    """

    handles_sequences = True

    def __init__(
        self,
        max_len: int = 2048,
        dropout: float = 0.0,
        dropout_broadcast_dims=(-2,),
        use_bfloat16: bool = False,
        start_from_zero_prob: float = 1.0,
        max_offset_to_add: int = 0,
        d_feature: int | None = None,
        mode: str = "train",
    ):
        checks.check_positive("PositionalEncoding", max_len=max_len)
        checks.check_rate("PositionalEncoding", dropout=dropout)
        if not 0.0 <= start_from_zero_prob <= 1.0:
            raise ValueError(
                f"PositionalEncoding: start_from_zero_prob must be in [0, 1], got "
                f"start_from_zero_prob={start_from_zero_prob!r}"
            )
        if max_offset_to_add < 0:
            raise ValueError(
                f"PositionalEncoding: max_offset_to_add must be >= 0, got max_offset_to_add={max_offset_to_add!r}"
            )
        if d_feature is not None and d_feature < 1:
            raise ValueError(
                f"PositionalEncoding: d_feature must be None or >= 1, got d_feature={d_feature!r}"
            )
        checks.check_mode("PositionalEncoding", mode)
        super().__init__(name="PositionalEncoding")
        self._max_len = max_len
        self._dropout = dropout
        self._dropout_broadcast_dims = tuple(dropout_broadcast_dims)
        self._use_bfloat16 = use_bfloat16
        self._start_from_zero_prob = start_from_zero_prob
        self._max_offset_to_add = max_offset_to_add
        self._d_feature = d_feature
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.StreamingSpec(
            capacity=self._max_len, capacity_source=f"{self.name} max_len={self._max_len}"
        )

    def weight_axes(self, weights):
        if self._d_feature is None:
            return partitioning.Axes("length", "embed")
        return partitioning.Axes("length", None), partitioning.Axes(None, "embed")

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        if len(values.shape) != 3:
            raise ValueError(
                f"{self.name}: expected [batch, time, d] inputs, got {shapes.short_form(values)}"
            )
        d_input = values.shape[-1]
        d_feature = d_input if self._d_feature is None else self._d_feature
        table = jnp.asarray(_sinusoid_table(self._max_len, d_feature))
        if self._use_bfloat16:
            table = table.astype(jnp.bfloat16)
        weights = table
        if self._d_feature is not None:
            weights = (table, init.GlorotUniformInitializer()((d_feature, d_input), rng))
        return weights, _start_state(self._mode, values)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        if x.ndim != 3:
            raise ValueError(f"{self.name}: expected [batch, time, d] inputs, got {shapes.short_form(x)}")
        time = x.shape[1]
        predict = self._mode == "predict"
        if not predict and time > self._max_len:
            raise ValueError(
                f"{self.name}: the input has {time} steps, more than max_len={self._max_len}; "
                f"build the layer with a larger max_len"
            )
        table, ff = weights if self._d_feature is not None else (weights, None)
        rng_offset, rng_dropout = base.split_rng(rng, 2)
        positions, next_start = _positions(x.mask, state if predict else 0)
        if self._mode == "train" and self._start_from_zero_prob < 1.0:
            positions = positions + self._random_offset(rng_offset)
        # mode="fill" turns positions past the table into NaN (made invalid in predict mode): never a clamp.
        embedding = partitioning.lookup_rows(table, positions, mode="fill", fill_value=jnp.nan)
        if ff is not None:
            embedding = jnp.dot(embedding, ff)
        if self._mode == "train" and self._dropout > 0.0:
            embedding = embedding * self._dropout_multiplier(rng_dropout, x.shape, embedding.dtype)
        y = x.apply_values(lambda v: v + embedding.astype(v.dtype))
        if predict:
            y = invalid_past_table(y, positions, self._max_len)
        return seq.like_input(y, was_sequence), (next_start if predict else state)

    def _need_rng(self, rng, why: str) -> None:
        if rng is None:
            raise ValueError(f"{self.name}: mode='train' with {why} needs an rng, got None; pass rng=")

    def _random_offset(self, rng):
        self._need_rng(rng, f"start_from_zero_prob={self._start_from_zero_prob}")
        rng_start, rng_zero = jax.random.split(rng)
        start = jax.random.randint(rng_start, (), 0, max(self._max_offset_to_add, 1), dtype=jnp.int32)
        from_zero = jax.random.uniform(rng_zero, ()) < self._start_from_zero_prob
        return jnp.where(from_zero, jnp.zeros((), jnp.int32), start)

    def _dropout_multiplier(self, rng, shape, dtype):
        self._need_rng(rng, f"dropout={self._dropout}")
        noise_shape = [1] + list(shape[1:])
        for dim in self._dropout_broadcast_dims:
            noise_shape[dim] = 1
        keep_prob = 1.0 - self._dropout
        keep = jax.random.bernoulli(rng, keep_prob, tuple(noise_shape))
        return keep.astype(dtype) / jnp.asarray(keep_prob, dtype)


def timing_signal(positions, channels: int, min_timescale: float = 1.0, max_timescale: float = 1.0e4):
    """Sinusoids of `positions` ([batch, time] ints): `[batch, time, channels]` float32.

    tensor2tensor's (and SequenceLayers') signal: `channels // 2` geometric
    timescales from min_timescale to max_timescale, sines then cosines, zero
    padded to an odd `channels`.
    """
    num_timescales = channels // 2
    increment = math.log(float(max_timescale) / float(min_timescale)) / max(num_timescales - 1, 1)
    inv_timescales = min_timescale * np.exp(np.arange(num_timescales, dtype=np.float32) * -increment)
    scaled_time = positions.astype(jnp.float32)[:, :, None] * jnp.asarray(inv_timescales)[None, None, :]
    signal = jnp.concatenate([jnp.sin(scaled_time), jnp.cos(scaled_time)], axis=2)
    return jnp.pad(signal, [(0, 0), (0, 0), (0, channels % 2)])


class AddTimingSignal(base.Layer):
    """Adds sinusoids of each step's position to the channels (SequenceLayers' AddTimingSignal).

    n_in=1, n_out=1. `[batch, time, ...channels]` float -> same shape:
    `y = x + scale * timing_signal(position)`, the signal varying over the
    channel `axes` (all by default) and broadcast over the others. Positions
    count valid steps (`only_advance_position_for_valid_timesteps=True`) or
    all steps. Weights: the scalar `scale` when `trainable_scale`, else `()`.

    Predict mode: the state holds each row's step count so far (`[batch]`
    int32; valid steps only by default).
    """

    handles_sequences = True

    def __init__(
        self,
        min_timescale: float = 1.0,
        max_timescale: float = 1.0e4,
        trainable_scale: bool = False,
        axes: int | tuple[int, ...] | None = None,
        param_dtype=jnp.float32,
        only_advance_position_for_valid_timesteps: bool = True,
        mode: str = "train",
        name: str | None = None,
    ):
        if not 0 < min_timescale <= max_timescale:
            raise ValueError(
                f"AddTimingSignal: expected 0 < min_timescale <= max_timescale, got "
                f"min_timescale={min_timescale!r}, max_timescale={max_timescale!r}"
            )
        checks.check_mode("AddTimingSignal", mode)
        super().__init__(name=name or "AddTimingSignal")
        self._min_timescale = min_timescale
        self._max_timescale = max_timescale
        self._trainable_scale = trainable_scale
        self._axes = axes
        self._param_dtype = param_dtype
        self._only_valid = only_advance_position_for_valid_timesteps
        self._mode = mode

    def _target_shape(self, channel_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self._axes is None:
            return tuple(channel_shape)
        target = [1] * len(channel_shape)
        for axis in (self._axes,) if isinstance(self._axes, int) else self._axes:
            if not -len(channel_shape) <= axis < len(channel_shape):
                raise ValueError(
                    f"{self.name}: axes={self._axes} names channel axis {axis}, out of range for "
                    f"channel shape {tuple(channel_shape)}"
                )
            target[axis] = channel_shape[axis]
        return tuple(target)

    def weight_axes(self, weights):
        return partitioning.Axes() if self._trainable_scale else ()

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        _check_float(self.name, values)
        self._target_shape(tuple(values.shape[2:]))
        weights = jnp.ones((), self._param_dtype) if self._trainable_scale else ()
        return weights, _start_state(self._mode, values)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        _check_float(self.name, x)
        predict = self._mode == "predict"
        positions, next_start = _positions(x.mask, state if predict else 0, self._only_valid)
        target = self._target_shape(x.channel_shape)
        signal = timing_signal(positions, int(np.prod(target)), self._min_timescale, self._max_timescale)
        signal = jnp.reshape(signal.astype(self._param_dtype), x.shape[:2] + target)
        if self._trainable_scale:
            signal = signal * weights
        y = x.apply_values(lambda v: v + signal.astype(v.dtype))
        return seq.like_input(y, was_sequence), (next_start if predict else state)


class ApplyRotaryPositionalEncoding(base.Layer):
    """Rotary positional encoding (RoPE, https://arxiv.org/abs/2104.09864); SequenceLayers' layer.

    n_in=1, n_out=1. `[batch, time, heads, dim]` or `[batch, time, dim]` float
    -> same shape. The `axis` channels (even size `d`) split into halves
    `x1, x2`, rotated by `position / max_wavelength ** (2i / d)` radians:
    `[x1 cos - x2 sin, x2 cos + x1 sin]`. Positions count valid steps
    (`only_advance_position_for_valid_timesteps=True`) or all steps; angles
    are computed in float32. No weights.

    Predict mode: the state holds each row's step count so far (`[batch]`
    int32; valid steps only by default).
    """

    handles_sequences = True

    def __init__(
        self,
        max_wavelength: float = 10000.0,
        axis: int = -1,
        only_advance_position_for_valid_timesteps: bool = True,
        mode: str = "train",
        name: str | None = None,
    ):
        if not max_wavelength > 0:
            raise ValueError(
                f"ApplyRotaryPositionalEncoding: max_wavelength must be > 0, got max_wavelength={max_wavelength!r}"
            )
        checks.check_mode("ApplyRotaryPositionalEncoding", mode)
        super().__init__(name=name or "ApplyRotaryPositionalEncoding")
        self._max_wavelength = max_wavelength
        self._axis = axis
        self._only_valid = only_advance_position_for_valid_timesteps
        self._mode = mode

    def _rope_axis(self, values) -> int:
        _check_float(self.name, values)
        ndim = len(values.shape)
        axis = self._axis + ndim if self._axis < 0 else self._axis
        if not 2 <= axis < ndim:
            raise ValueError(
                f"{self.name}: axis={self._axis} must name a channel axis of [batch, time, ...channels], "
                f"got input {shapes.short_form(values)}"
            )
        if values.shape[axis] % 2:
            raise ValueError(
                f"{self.name}: axis {axis} must have an even size, got {values.shape[axis]} "
                f"(input {shapes.short_form(values)})"
            )
        return axis

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        self._rope_axis(values)
        return base.EMPTY_WEIGHTS, _start_state(self._mode, values)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        axis = self._rope_axis(x.values)
        predict = self._mode == "predict"
        positions, next_start = _positions(x.mask, state if predict else 0, self._only_valid)
        y = x.apply_values(self._rotate, positions, axis)
        return seq.like_input(y, was_sequence), (next_start if predict else state)

    def _rotate(self, values, positions, axis: int):
        size = values.shape[axis]
        freq_exponents = 2.0 * jnp.arange(size // 2) / size
        timescale = self._max_wavelength**freq_exponents
        broadcast_shape = [1] * values.ndim
        broadcast_shape[axis] = size // 2
        radians = positions.astype(jnp.float32).reshape(
            positions.shape + (1,) * (values.ndim - 2)
        ) / timescale.reshape(broadcast_shape)
        sin, cos = jnp.sin(radians), jnp.cos(radians)
        x1, x2 = jnp.split(values, 2, axis=axis)
        return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=axis, dtype=values.dtype)
