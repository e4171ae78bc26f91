"""Normalization layers: BatchNorm, LayerNorm, FilterResponseNorm (Trax); RMSNorm, GroupNorm (SequenceLayers).

Trax's layers keep Trax's names, arguments and weights trees; RMSNorm and
GroupNorm take SequenceLayers' config field names (`sl.RMSNormalization`,
`sl.GroupNormalization`). Inputs are `[batch, time, ...channels]`.

What streams: LayerNorm and RMSNorm normalize each step on its own; BatchNorm
in 'eval'/'predict' uses its running statistics, so it is pointwise too;
GroupNorm with `cumulative=True` streams with running sums of the valid steps
in its state. FilterResponseNorm and non-cumulative GroupNorm average over the
whole time axis, so they do not stream (`supports_step=False`).

Reductions run in at least float32 and results come back in the input dtype.
Where a normalized group has zero variance its gradient is zeroed, as in
SequenceLayers, so that all-zero inputs (e.g. padding) give no 1/sqrt(epsilon)
gradient blow-up.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming


def norm_axes(weights):
    """The logical axes of norm scales and biases: `Axes('norm', ...)` per array (replicated)."""
    return jax.tree.map(lambda w: partitioning.Axes(*["norm"] * len(w.shape)), weights)


def _check_epsilon(layer_name: str, epsilon: float) -> None:
    if not epsilon >= 0:
        raise ValueError(f"{layer_name}: epsilon must be >= 0, got epsilon={epsilon!r}")


def _compute_dtype(dtype):
    """At least float32, as SequenceLayers' reductions_in_at_least_fp32."""
    return jnp.promote_types(dtype, jnp.float32)


def _feature_param(param, shape: tuple[int, ...], axes: tuple[int, ...]):
    """Reshapes a parameter over `axes` to broadcast against `shape` (no rank promotion)."""
    return jnp.reshape(param, tuple(shape[a] if a in axes else 1 for a in range(len(shape))))


def _zero_gradient_where(zero, y):
    """y, with no gradient flowing through it where `zero` (SequenceLayers' guard)."""
    return jnp.where(zero, jax.lax.stop_gradient(y), y)


def _channel_axes(layer_name: str, axis, ndim: int) -> tuple[int, ...]:
    """Normalizes `axis` (int or ints) to sorted axes in [2, ndim), as SequenceLayers does."""
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    normalized = set()
    for a in axes:
        a_pos = a + ndim if a < 0 else a
        if not 0 <= a_pos < ndim:
            raise ValueError(f"{layer_name}: axis {a} is out of range for a rank-{ndim} input")
        if a_pos in (0, 1):
            raise ValueError(
                f"{layer_name}: normalizing over the batch or time axis is not allowed; axis must "
                f"name channel axes of [batch, time, ...channels] (>= 2 or negative), got axis={axis!r} "
                f"for a rank-{ndim} input"
            )
        normalized.add(a_pos)
    if not normalized:
        raise ValueError(f"{layer_name}: axis must name at least one channel axis, got axis={axis!r}")
    return tuple(sorted(normalized))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _normalize(x, axes: tuple[int, ...], epsilon: float, center: bool):
    """(x - mean) / sqrt(var + epsilon) over `axes` (no mean subtracted if not center).

    Where the variance is 0 no gradient flows (SequenceLayers' guard). The
    gradient is written out (`_normalize_bwd`, equal to autodiff's within
    float rounding) so that x gets it as one term. Autodiff added x's two
    uses (the mean and the centring) to the residual stream's gradient one
    by one, and XLA:CPU fused that running sum, duplicated, into every
    consumer: about 8% of a TransformerLM training step (benchmarks/peers).
    Being a `custom_vjp`, it has no forward-mode (`jax.jvp`) derivative.
    """
    return _normalize_fwd(x, axes, epsilon, center)[0]


def _normalize_fwd(x, axes, epsilon, center):
    v = x.astype(_compute_dtype(x.dtype))
    centered = v - jnp.mean(v, axes, keepdims=True) if center else v
    variance = jnp.mean(jnp.square(centered), axes, keepdims=True)
    inverse_std = jax.lax.rsqrt(variance + epsilon)
    normed = centered * inverse_std
    return normed.astype(x.dtype), (normed, inverse_std, variance == 0)


def _normalize_bwd(axes, epsilon, center, residuals, g):
    del epsilon
    normed, inverse_std, zero = residuals
    dtype = g.dtype  # x's: the output's cotangent.
    g = jnp.where(zero, 0.0, g.astype(normed.dtype))
    d_centered = inverse_std * (g - normed * jnp.mean(normed * g, axes, keepdims=True))
    d_x = d_centered - jnp.mean(d_centered, axes, keepdims=True) if center else d_centered
    return (d_x.astype(dtype),)


_normalize.defvjp(_normalize_fwd, _normalize_bwd)


def _masked_moments(values, mask, axes: tuple[int, ...]):
    """Mean and variance over `axes` of the valid entries; `mask` broadcasts to values."""
    mask = jnp.broadcast_to(mask, values.shape)
    count = jnp.maximum(jnp.sum(mask, axes, keepdims=True).astype(values.dtype), 1.0)
    mean = jnp.sum(jnp.where(mask, values, 0.0), axes, keepdims=True) / count
    variance = jnp.sum(jnp.where(mask, jnp.square(values - mean), 0.0), axes, keepdims=True) / count
    return mean, variance


class LayerNorm(base.Layer):
    """Layer normalization over the last axis, with a learned scale and bias.

    n_in=1, n_out=1. `[batch, time, ..., d]` -> same shape:
    `y = (x - mean) / sqrt(var + epsilon) * scale + bias`, mean and variance
    over the last axis. With `center=False` no mean is subtracted and no bias
    added (the variance is then the mean square). Weights: `(scale [d], bias [d])`
    in the input dtype, as in Trax. Equals SequenceLayers' LayerNormalization
    with its defaults (`axis=-1`).

    Predict mode: stateless; each step is normalized on its own (block_size 1).
    """

    def __init__(self, center: bool = True, epsilon: float = 1e-6):
        _check_epsilon("LayerNorm", epsilon)
        super().__init__(name="LayerNorm")
        self._center = center
        self._epsilon = epsilon

    def weight_axes(self, weights):
        return norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        features = values.shape[-1]
        scale = jnp.ones((features,), dtype=values.dtype)
        bias = jnp.zeros((features,), dtype=values.dtype)
        return (scale, bias), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        scale, bias = weights
        axes = (x.ndim - 1,)
        y = _normalize(x, axes, self._epsilon, self._center) * _feature_param(scale, x.shape, axes)
        if self._center:
            y = y + _feature_param(bias, x.shape, axes)
        return y.astype(x.dtype), state


class RMSNorm(base.Layer):
    """Root-mean-square normalization (SequenceLayers' RMSNormalization, as in T5).

    n_in=1, n_out=1. `[batch, time, ...channels]` -> same shape:
    `y = x / sqrt(mean(x**2) + epsilon) * scale`, the mean over `axis` (channel
    axes only). Weights: `scale` shaped like the normalized axes
    (`param_dtype`), or `()` when `use_scale=False`.

    Predict mode: stateless; each step is normalized on its own (block_size 1).
    """

    def __init__(
        self,
        axis: int | tuple[int, ...] = -1,
        epsilon: float = 1e-6,
        use_scale: bool = True,
        scale_init=None,
        param_dtype=jnp.float32,
        reductions_in_at_least_fp32: bool = True,
        name: str | None = None,
    ):
        """Returns an RMSNorm layer.

        Args:
            axis: Channel axis or axes to normalize over (>= 2 or negative).
            epsilon: Added to the mean square before the square root.
            use_scale: Whether to learn a scale.
            scale_init: `(shape, rng) -> array` for the scale; default ones.
            param_dtype: dtype of the scale.
            reductions_in_at_least_fp32: Reduce in at least float32 (else in
                the input dtype).
            name: The layer's name.
        """
        _check_epsilon("RMSNorm", epsilon)
        super().__init__(name=name or "RMSNorm")
        self._axis = axis
        self._epsilon = epsilon
        self._use_scale = use_scale
        self._scale_init = scale_init
        self._param_dtype = param_dtype
        self._reductions_in_at_least_fp32 = reductions_in_at_least_fp32

    def weight_axes(self, weights):
        return norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        axes = _channel_axes(self.name, self._axis, len(values.shape))
        if not self._use_scale:
            return (), base.EMPTY_STATE
        shape = tuple(values.shape[a] for a in axes)
        if self._scale_init is None:
            return jnp.ones(shape, self._param_dtype), base.EMPTY_STATE
        return jnp.asarray(self._scale_init(shape, rng), self._param_dtype), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        axes = _channel_axes(self.name, self._axis, x.ndim)
        if self._reductions_in_at_least_fp32:
            y = _normalize(x, axes, self._epsilon, center=False)
        else:
            mean_square = jnp.mean(jnp.square(x), axes, keepdims=True)
            y = _zero_gradient_where(mean_square == 0, x * jax.lax.rsqrt(mean_square + self._epsilon))
        if self._use_scale:
            y = y * _feature_param(weights.astype(y.dtype), x.shape, axes)
        return y, state


class BatchNorm(base.Layer):
    """Batch normalization (https://arxiv.org/abs/1502.03167) over `axis`.

    n_in=1, n_out=1. `[batch, time, ...]` -> same shape. In 'train' mode the
    input is normalized with its own mean and variance over `axis`, computed
    from the VALID steps of a Sequence only, and the running statistics in the
    state move towards them: `running = momentum * running + (1 - momentum) *
    batch_stat`. In 'eval' and 'predict' mode the running statistics normalize
    instead. Then `y = z * gamma + beta` (each if `scale`/`center`).

    Trax's default `axis=(0, 1, 2)` suits images `[batch, h, w, c]`; for
    `[batch, time, d]` inputs use `axis=(0, 1)` for per-feature statistics.
    Weights: `(beta,)` if center then `(gamma,)` if scale, shaped like the
    axes not in `axis`, in the input dtype. State (every mode):
    `(running_mean, running_var, n_batches)`, float32 and int32.

    Predict mode: the state holds the running statistics, unchanged; each step
    is normalized on its own (block_size 1); `axis` must include the time
    axis. `streaming.start_stream(model, block_sig, weights, trained_state)`
    starts a stream with the trained statistics.
    """

    handles_sequences = True

    def __init__(
        self,
        axis=(0, 1, 2),
        epsilon: float = 1e-5,
        center: bool = True,
        scale: bool = True,
        momentum: float = 0.999,
        mode: str = "train",
    ):
        axis = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
        _check_epsilon("BatchNorm", epsilon)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm: momentum must be in [0, 1], got momentum={momentum!r}")
        checks.check_mode("BatchNorm", mode)
        super().__init__(name="BatchNorm")
        self._axis = axis
        self._epsilon = epsilon
        self._center = center
        self._scale = scale
        self._momentum = momentum
        self._mode = mode

    def _axes(self, ndim: int) -> tuple[int, ...]:
        axes = set()
        for a in self._axis:
            if not -ndim <= a < ndim:
                raise ValueError(
                    f"{self.name}: axis={self._axis} has axis {a}, out of range for a rank-{ndim} "
                    f"input (e.g. use axis=(0, 1) for [batch, time, d])"
                )
            axes.add(a % ndim)
        if self._mode == "predict" and 1 not in axes:
            # Statistics per time position cannot be applied one block at a time.
            raise ValueError(
                f"{self.name}: predict mode needs the time axis 1 in axis (statistics shared by all "
                f"steps), got axis={self._axis}"
            )
        return tuple(sorted(axes))

    def weight_axes(self, weights):
        return norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        axes = self._axes(len(values.shape))
        stats_shape = tuple(d for i, d in enumerate(values.shape) if i not in axes)
        weights = ()
        if self._center:
            weights += (jnp.zeros(stats_shape, values.dtype),)
        if self._scale:
            weights += (jnp.ones(stats_shape, values.dtype),)
        state = (
            jnp.zeros(stats_shape, jnp.float32),
            jnp.ones(stats_shape, jnp.float32),
            jnp.zeros((), jnp.int32),
        )
        return weights, state

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x) if getattr(x, "ndim", 0) >= 2 else (x, None)
        values = x.values if was_sequence is not None else x
        axes = self._axes(values.ndim)
        kept = tuple(i for i in range(values.ndim) if i not in axes)
        running_mean, running_var, n_batches = state
        if self._mode == "train":
            v = values.astype(_compute_dtype(values.dtype))
            mask = True if was_sequence is None else seq.expand_mask(x.mask, v.ndim)
            mean, var = _masked_moments(v, mask, axes)
            keep = self._momentum
            running_mean = keep * running_mean + (1 - keep) * jnp.reshape(mean, running_mean.shape)
            running_var = keep * running_var + (1 - keep) * jnp.reshape(var, running_var.shape)
            state = (running_mean.astype(jnp.float32), running_var.astype(jnp.float32), n_batches + 1)
        else:
            mean = _feature_param(running_mean, values.shape, kept)
            var = _feature_param(running_var, values.shape, kept)
        z = (values - mean) * jax.lax.rsqrt(var + self._epsilon)
        if self._scale:
            z = z * _feature_param(weights[-1], values.shape, kept)
        if self._center:
            z = z + _feature_param(weights[0], values.shape, kept)
        y = z.astype(values.dtype)
        if was_sequence is None:
            return y, state
        return seq.like_input(seq.Sequence(y, x.mask), was_sequence), state


class FilterResponseNorm(base.Layer):
    """Filter Response Normalization (https://arxiv.org/abs/1911.09737), without the TLU.

    n_in=1, n_out=1. `[batch, time, ..., c]` -> same shape:
    `y = gamma * x / sqrt(nu2 + epsilon) + beta`, `nu2` the mean of `x**2`
    over all axes but batch and channels (Trax's semantics), i.e. over the
    valid steps of a Sequence and the spatial axes. `epsilon = init_epsilon`,
    plus `|learnt|` when `learn_epsilon`. Weights: `(gamma [c], beta [c],
    epsilon_l)`, `epsilon_l` being `(learnt,)` or `()`, as in Trax.

    Predict mode: not streamable (`supports_step=False`): `nu2` averages over
    the whole time axis, future steps included. Run it layer-wise.
    """

    handles_sequences = True

    def __init__(
        self,
        mode: str = "train",
        learn_epsilon: bool = False,
        init_epsilon: float = 1e-6,
        init_learnt_epsilon: float = 1e-4,
    ):
        checks.check_mode("FilterResponseNorm", mode)
        if not init_epsilon > 0:
            raise ValueError(
                f"FilterResponseNorm: init_epsilon must be > 0, got init_epsilon={init_epsilon!r}"
            )
        if not init_learnt_epsilon > 0:
            raise ValueError(
                f"FilterResponseNorm: init_learnt_epsilon must be > 0, got "
                f"init_learnt_epsilon={init_learnt_epsilon!r}"
            )
        super().__init__(name="FilterResponseNorm")
        self._mode = mode
        self._learn_epsilon = learn_epsilon
        self._init_epsilon = init_epsilon
        self._init_learnt_epsilon = init_learnt_epsilon

    streaming_spec = streaming.StreamingSpec(receptive_field=(math.inf, math.inf)).not_streaming(
        "it normalises over the whole sequence"
    )

    def weight_axes(self, weights):
        return norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        channels = seq.values_of(input_signature).shape[-1]
        gamma = jnp.ones((channels,), jnp.float32)
        beta = jnp.zeros((channels,), jnp.float32)
        epsilon_l = (jnp.asarray(self._init_learnt_epsilon, jnp.float32),) if self._learn_epsilon else ()
        return (gamma, beta, epsilon_l), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        gamma, beta, epsilon_l = weights
        epsilon = jnp.asarray(self._init_epsilon, jnp.float32)
        if epsilon_l:
            epsilon = epsilon + jnp.abs(epsilon_l[0])
        x, was_sequence = seq.as_sequence(x) if getattr(x, "ndim", 0) >= 2 else (x, None)
        values = x.values if was_sequence is not None else x
        v = values.astype(_compute_dtype(values.dtype))
        axes = tuple(range(1, v.ndim - 1))
        if was_sequence is None or not axes:
            nu2 = jnp.mean(jnp.square(v), axes, keepdims=True)
        else:
            mask = jnp.broadcast_to(seq.expand_mask(x.mask, v.ndim), v.shape)
            count = jnp.maximum(jnp.sum(mask, axes, keepdims=True), 1).astype(v.dtype)
            nu2 = jnp.sum(jnp.where(mask, jnp.square(v), 0.0), axes, keepdims=True) / count
        channel = (v.ndim - 1,)
        y = v * jax.lax.rsqrt(nu2 + epsilon)
        y = _feature_param(gamma, v.shape, channel) * y + _feature_param(beta, v.shape, channel)
        y = y.astype(values.dtype)
        if was_sequence is None:
            return y, state
        return seq.like_input(seq.Sequence(y, x.mask), was_sequence), state


class GroupNorm(base.Layer):
    """Group normalization (https://arxiv.org/abs/1803.08494); SequenceLayers' GroupNormalization.

    n_in=1, n_out=1. `[batch, time, ...channels]` -> same shape. The channels
    of `axis` are split into `num_groups` groups; each group is normalized by
    the mean and variance of its entries over all channel axes and over time:
    the whole sequence (`cumulative=False`), or the valid steps up to and
    including the current one (`cumulative=True`, causal). Only valid steps
    count. As in SequenceLayers, the cumulative variance sums each step's
    squared deviations from the running mean at that step. Then
    `y = z * scale + bias`, scale and bias `[channels of axis]`
    (`param_dtype`). Weights: `(scale, bias)`, each `()` when disabled.
    Computed in at least float32.

    Predict mode: `cumulative=True` streams; the state holds the running
    `(sum, count, sum of squared deviations)` per row and group, each
    `[batch, 1, num_groups, 1, ...]`. `cumulative=False` is not streamable
    (`supports_step=False`).
    """

    handles_sequences = True

    def __init__(
        self,
        num_groups: int,
        axis: int = -1,
        epsilon: float = 1e-6,
        cumulative: bool = False,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init=None,
        scale_init=None,
        param_dtype=jnp.float32,
        mode: str = "train",
        name: str | None = None,
    ):
        """Returns a GroupNorm layer.

        Args:
            num_groups: Number of groups the channels of `axis` split into.
            axis: The channel axis holding the groups (>= 2 or negative).
            epsilon: Added to the variance before the square root.
            cumulative: Causal statistics (streamable) instead of whole-sequence ones.
            use_bias: Whether to learn a bias.
            use_scale: Whether to learn a scale.
            bias_init: `(shape, rng) -> array`; default zeros.
            scale_init: `(shape, rng) -> array`; default ones.
            param_dtype: dtype of scale and bias.
            mode: 'train', 'eval' or 'predict'.
            name: The layer's name.
        """
        if not isinstance(num_groups, (int, np.integer)) or num_groups <= 0:
            raise ValueError(
                f"GroupNorm: num_groups must be a positive integer, got num_groups={num_groups!r}"
            )
        if not isinstance(axis, (int, np.integer)):
            raise TypeError(f"GroupNorm: axis must be one integer, got axis={axis!r}")
        _check_epsilon("GroupNorm", epsilon)
        checks.check_mode("GroupNorm", mode)
        super().__init__(name=name or f"GroupNorm_{num_groups}")
        self._num_groups = num_groups
        self._axis = axis
        self._epsilon = epsilon
        self._cumulative = cumulative
        self._use_bias = use_bias
        self._use_scale = use_scale
        self._bias_init = bias_init
        self._scale_init = scale_init
        self._param_dtype = param_dtype
        self._mode = mode

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        if self._cumulative:
            return streaming.StreamingSpec(receptive_field=(math.inf, 0))
        return streaming.StreamingSpec(receptive_field=(math.inf, math.inf)).not_streaming(
            "cumulative=False normalises over the whole sequence"
        )

    def _grouping(self, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
        """(the axis, the shape with that axis split into [num_groups, group_size])."""
        (axis,) = _channel_axes(self.name, self._axis, len(shape))
        if shape[axis] % self._num_groups:
            raise ValueError(
                f"{self.name}: axis {axis} of the input has {shape[axis]} channels, not divisible "
                f"by num_groups={self._num_groups} (input shape {shape})"
            )
        grouped = shape[:axis] + (self._num_groups, shape[axis] // self._num_groups) + shape[axis + 1 :]
        return axis, grouped

    def _moments_shape(self, batch: int, grouped_shape, axis: int) -> tuple[int, ...]:
        return tuple(batch if a == 0 else d if a == axis else 1 for a, d in enumerate(grouped_shape))

    def weight_axes(self, weights):
        return norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        axis, grouped_shape = self._grouping(tuple(values.shape))
        channels = (values.shape[axis],)
        rng_scale, rng_bias = jax.random.split(rng)
        scale = bias = ()
        if self._use_scale:
            scale = jnp.ones(channels) if self._scale_init is None else self._scale_init(channels, rng_scale)
            scale = jnp.asarray(scale, self._param_dtype)
        if self._use_bias:
            bias = jnp.zeros(channels) if self._bias_init is None else self._bias_init(channels, rng_bias)
            bias = jnp.asarray(bias, self._param_dtype)
        if self._mode != "predict" or not self._cumulative:
            return (scale, bias), base.EMPTY_STATE
        zeros = jnp.zeros(
            self._moments_shape(values.shape[0], grouped_shape, axis), _compute_dtype(values.dtype)
        )
        return (scale, bias), (zeros, zeros, zeros)

    def forward(self, x, weights, state, rng):
        x, was_sequence = seq.as_sequence(x)
        axis, grouped_shape = self._grouping(x.shape)
        dtype = _compute_dtype(x.dtype)
        grouped = jnp.reshape(x.values.astype(dtype), grouped_shape)
        mask = seq.expand_mask(x.mask, grouped.ndim)
        grouped = jnp.where(mask, grouped, jnp.zeros((), dtype))
        if self._cumulative:
            reduction = tuple(a for a in range(grouped.ndim) if a not in (0, 1, axis))
            if self._mode == "predict":
                accumulators = state
            else:
                zeros = jnp.zeros(self._moments_shape(x.shape[0], grouped_shape, axis), dtype)
                accumulators = (zeros, zeros, zeros)
            mean, variance, accumulators = _cumulative_moments(grouped, mask, reduction, accumulators)
            if self._mode == "predict":
                state = accumulators
        else:
            reduction = tuple(a for a in range(grouped.ndim) if a not in (0, axis))
            mean, variance = _masked_moments(grouped, mask, reduction)
        normed = (grouped - mean) * jax.lax.rsqrt(variance + self._epsilon)
        normed = _zero_gradient_where(variance == 0, normed)
        y = jnp.reshape(normed, x.shape)
        scale, bias = weights
        if self._use_scale:
            y = y * _feature_param(scale.astype(dtype), x.shape, (axis,))
        if self._use_bias:
            y = y + _feature_param(bias.astype(dtype), x.shape, (axis,))
        return seq.like_input(seq.Sequence(y.astype(x.dtype), x.mask), was_sequence), state


def _cumulative_moments(grouped, mask, reduction: tuple[int, ...], accumulators):
    """Causal mean and variance over `reduction` and the valid steps so far.

    `grouped` is zero at invalid steps. `accumulators` hold the sums before
    this block, `[batch, 1, ...]` (zeros for a whole sequence); returns (mean,
    variance, accumulators after this block). Each step adds its squared
    deviations from the running mean at that step, as SequenceLayers does.
    """
    accum_sum, accum_count, accum_sum_sq = accumulators
    per_step_count = jnp.sum(mask.astype(grouped.dtype), reduction, keepdims=True)
    per_step_count = per_step_count * int(np.prod([grouped.shape[a] for a in reduction]))
    total = accum_sum + jnp.cumsum(jnp.sum(grouped, reduction, keepdims=True), axis=1)
    count = accum_count + jnp.cumsum(per_step_count, axis=1)
    mean = total / jnp.maximum(count, 1.0)
    squared = jnp.where(mask, jnp.square(grouped - mean), 0.0)
    sum_sq = accum_sum_sq + jnp.cumsum(jnp.sum(squared, reduction, keepdims=True), axis=1)
    variance = sum_sq / jnp.maximum(count, 1.0)
    return mean, variance, (total[:, -1:], count[:, -1:], sum_sq[:, -1:])
