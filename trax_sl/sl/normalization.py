"""SequenceLayers' normalization layers under their own names.

`RMSNormalization` and `GroupNormalization` are `tl.RMSNorm` and
`tl.GroupNorm`, which take SequenceLayers' fields. `LayerNormalization` is
`tl.LayerNorm` for SequenceLayers' defaults, and otherwise the same math
composed from `tl.RMSNorm` (layer normalization is the RMS normalization of
the centred input). `BatchNormalization` is `tl.BatchNorm` with
SequenceLayers' `axis` (the feature axis kept; statistics over all others,
valid steps only) and defaults.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.layers import base, normalization
from trax_sl.sl import common

RMSNormalization = tl.RMSNorm
GroupNormalization = tl.GroupNorm


def _axes(layer_name: str, axis, ndim: int) -> tuple[int, ...]:
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    normalized = tuple(sorted({a % ndim for a in axes}))
    if not axes or any(not -ndim <= a < ndim for a in axes) or min(normalized) < 2:
        raise ValueError(
            f"{layer_name}: axis must name channel axes (not batch or time) of the rank-{ndim} "
            f"input, got axis={axis!r}"
        )
    return normalized


class _Bias(base.Layer):
    """Adds a learned bias shaped like the channel `axis` (zeros at first). n_in=1, n_out=1."""

    def __init__(self, axis, bias_init=None, param_dtype=jnp.float32):
        super().__init__(name="Bias")
        self._axis = axis
        self._bias_init = bias_init
        self._param_dtype = param_dtype

    def weight_axes(self, weights):
        return normalization.norm_axes(weights)

    def init_weights_and_state(self, input_signature, rng):
        values = input_signature.values if hasattr(input_signature, "mask") else input_signature
        axes = _axes("LayerNormalization", self._axis, len(values.shape))
        shape = tuple(values.shape[a] for a in axes)
        bias = jnp.zeros(shape, self._param_dtype) if self._bias_init is None else self._bias_init(shape, rng)
        return jnp.asarray(bias, self._param_dtype), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        axes = _axes(self.name, self._axis, x.ndim)
        shape = [x.shape[a] if a in axes else 1 for a in range(x.ndim)]
        return x + jnp.reshape(weights, shape).astype(x.dtype), state


def LayerNormalization(  # noqa: N802 (SequenceLayers' name)
    axis=-1,
    epsilon: float = 1e-6,
    use_bias: bool = True,
    use_scale: bool = True,
    bias_init=None,
    scale_init=None,
    reductions_in_at_least_fp32: bool = True,
    param_dtype=jnp.float32,
    name: str | None = None,
) -> base.Layer:
    """SequenceLayers' LayerNormalization: `(x - mean) / sqrt(var + epsilon) * scale + bias` per step.

    n_in=1, n_out=1. `[batch, time, ...channels]` -> same shape; mean and
    variance over the channel `axis` (or axes) of each step. With the
    defaults this is `tl.LayerNorm` (weights `(scale, bias)`); otherwise
    `tl.RMSNorm` of the centred input, then a bias (weights `((), scale, bias)`,
    each `()` when disabled).

    Predict mode: stateless; each step is normalized on its own (block_size 1).
    """
    defaults = axis in (-1, (-1,)) and use_bias and use_scale and bias_init is None and scale_init is None
    if defaults and reductions_in_at_least_fp32 and param_dtype == jnp.float32:
        return common.named(tl.LayerNorm(epsilon=epsilon), name or "LayerNormalization")

    def centre(x):
        reduced = _axes("LayerNormalization", axis, x.ndim)
        return x - jnp.mean(x, axis=reduced, keepdims=True)

    layers = [
        base.Fn("Centre", centre),
        tl.RMSNorm(
            axis=axis,
            epsilon=epsilon,
            use_scale=use_scale,
            scale_init=scale_init,
            param_dtype=param_dtype,
            reductions_in_at_least_fp32=reductions_in_at_least_fp32,
        ),
    ]
    if use_bias:
        layers.append(_Bias(axis, bias_init, param_dtype))
    return tl.Serial(layers, name=name or "LayerNormalization")


class BatchNormalization(tl.BatchNorm):
    """SequenceLayers' BatchNormalization: `tl.BatchNorm` keeping the feature `axis`.

    n_in=1, n_out=1. `[batch, time, ...]` -> same shape. `axis` is the
    feature axis (SequenceLayers' and flax's meaning); the statistics are
    taken over every other axis, from the valid steps only. 'train' mode
    normalizes with the batch's statistics and moves the running ones
    (`running = momentum * running + (1 - momentum) * batch`); 'eval' and
    'predict' normalize with the running statistics. Weights `(bias, scale)`
    (each if enabled); state `(running_mean, running_var, n_batches)`.

    Predict mode: the state holds the running statistics, unchanged; each
    step is normalized on its own (block_size 1).
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        use_bias: bool = True,
        use_scale: bool = True,
        name: str | None = None,
        mode: str = "train",
    ):
        if not isinstance(axis, (int, np.integer)):
            raise TypeError(f"BatchNormalization: axis must be one integer, got axis={axis!r}")
        super().__init__(
            axis=(axis,), epsilon=epsilon, center=use_bias, scale=use_scale, momentum=momentum, mode=mode
        )
        common.named(self, name or "BatchNormalization")

    def _axes(self, ndim: int) -> tuple[int, ...]:
        # tl.BatchNorm's `axis` lists the axes it reduces; SequenceLayers' names the one it keeps.
        (feature,) = _axes(self.name, self._axis, ndim)
        return tuple(a for a in range(ndim) if a != feature)
