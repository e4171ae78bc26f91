"""SequenceLayers' simple layers: pointwise arithmetic, reshapes, gates, dropout, activations, shifts.

Where a name means something else in Trax, this is SequenceLayers' meaning
(`Add(shift)` adds a constant, `Flatten()` keeps batch and time); Trax's
meaning stays in `trax_sl.layers`. Where Trax's layer computes the same thing,
it is used under SequenceLayers' field names (`Dropout(rate,
broadcast_dims)` is Trax's Dropout with `shared_axes`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl import shapes
from trax_sl.layers import base
from trax_sl.sl import common


def _pointwise(name: str, fn: Callable) -> base.Layer:
    """A weightless layer applying `fn` to the values of each step (masks pass through)."""
    return base.PureLayer(fn, name=name)


def Add(shift, name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Adds a constant (a number or an array broadcast against the channels): `y = x + shift`.

    n_in=1, n_out=1; `[batch, time, ...channels]` -> same, in the input's
    dtype. (Trax's `Add`, which adds two stack items, is `tl.Add`.)
    Predict mode: stateless; streams with block_size 1.
    """
    shift = np.asarray(shift)

    def add(x):
        return x + common.channel_broadcast(shift, x.ndim).astype(x.dtype)

    return _pointwise(name or "Add", add)


def Scale(scale, name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Multiplies by a constant (a number or an array broadcast against the channels): `y = x * scale`.

    n_in=1, n_out=1; `[batch, time, ...channels]` -> same, in the input's dtype.
    Predict mode: stateless; streams with block_size 1.
    """
    scale = np.asarray(scale)

    def multiply(x):
        return x * common.channel_broadcast(scale, x.ndim).astype(x.dtype)

    return _pointwise(name or "Scale", multiply)


def _channel_axes_to_expand(axis, n_channels: int) -> list[int]:
    axes = [axis] if isinstance(axis, (int, np.integer)) else list(axis)
    # SequenceLayers: a negative axis counts from one past the end, as in jnp.expand_dims.
    dims = sorted({a + n_channels + 1 if a < 0 else a for a in axes})
    if any(d < 0 or d > n_channels for d in dims):
        raise ValueError(
            f"ExpandDims: axis must name channel axes, got axis={axis!r} for {n_channels} channels"
        )
    return dims


def ExpandDims(axis, name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Inserts size-1 axes into the channel shape: `axis` counts channel axes (not batch and time).

    n_in=1, n_out=1. `ExpandDims(-1)`: `[batch, time, d]` -> `[batch, time, d, 1]`.
    A negative axis counts from one past the end, and the axes are inserted
    in increasing order, as SequenceLayers 0.2's code does: `ExpandDims((0,
    -2))` maps `[b, t, c, d]` to `[b, t, 1, 1, c, d]` (its docstring says
    `[b, t, 1, c, 1, d]`).
    Predict mode: stateless; streams with block_size 1.
    """
    _channel_axes_to_expand(axis, 8)  # Checks the type now; ranges are checked against the input.

    def expand(x):
        shape = list(x.shape)
        for dim in _channel_axes_to_expand(axis, x.ndim - 2):
            shape.insert(2 + dim, 1)
        return jnp.reshape(x, shape)

    return _pointwise(name or "ExpandDims", expand)


def Flatten(name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Flattens the channel axes: `[batch, time, ...]` -> `[batch, time, prod(...)]`.

    n_in=1, n_out=1; the mask is unchanged. Trax's `Flatten(n_axes_to_keep=2)`.
    Predict mode: stateless; streams with block_size 1.
    """
    return common.named(tl.Flatten(n_axes_to_keep=2), name or "Flatten")


def GatedUnit(  # noqa: N802 (SequenceLayers' name)
    feature_activation: Callable | None, gate_activation: Callable | None, name: str | None = None
) -> base.Layer:
    """Splits the last axis in halves and returns `feature_activation(a) * gate_activation(b)`.

    n_in=1, n_out=1; `[batch, time, ..., 2d]` -> `[batch, time, ..., d]`. A
    None activation is the identity: `GatedUnit(None, jax.nn.sigmoid)` is the
    GLU, `GatedUnit(jax.nn.gelu, None)` the GeGLU.
    Predict mode: stateless; streams with block_size 1.
    """
    layer_name = name or "GatedUnit"

    def gate(x):
        if x.shape[-1] % 2:
            raise ValueError(f"{layer_name}: the last axis must be even, got {shapes.short_form(x)}")
        feature, gate = jnp.split(x, 2, axis=-1)
        if feature_activation is not None:
            feature = feature_activation(feature)
        if gate_activation is not None:
            gate = gate_activation(gate)
        return feature * gate

    return _pointwise(layer_name, gate)


def GatedLinearUnit(name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """`a * sigmoid(b)` of the halves of the last axis: `tl.GatedLinearUnit`, named.

    n_in=1, n_out=1; `[batch, time, 2d]` -> `[batch, time, d]`.
    Predict mode: stateless; streams with block_size 1.
    """
    return common.named(tl.GatedLinearUnit(), name)


def Dropout(  # noqa: N802 (SequenceLayers' name)
    rate: float = 0.0, broadcast_dims=(), name: str | None = None, mode: str = "train"
) -> base.Layer:
    """Zeroes each value with probability `rate` in 'train' mode: Trax's Dropout.

    n_in=1, n_out=1. `broadcast_dims` (axes of `[batch, time, ...]` sharing
    one draw) is Trax's `shared_axes`. 'eval' and 'predict' pass inputs through.
    Predict mode: stateless no-op.
    """
    return common.named(tl.Dropout(rate, shared_axes=broadcast_dims, mode=mode), name)


def _activation(tl_layer: Callable[[], base.Layer], sl_name: str) -> Callable[..., base.Layer]:
    def make(name: str | None = None) -> base.Layer:
        return common.named(tl_layer(), name or sl_name)

    make.__name__ = make.__qualname__ = sl_name
    make.__doc__ = (
        f"SequenceLayers' {sl_name}: `tl.{tl_layer.__name__}()`, pointwise. n_in=1, n_out=1.\n\n"
        "Predict mode: stateless; streams with block_size 1.\n"
    )
    return make


# SequenceLayers' activation layers that compute what Trax's of the same name do.
Relu = _activation(tl.Relu, "Relu")
"""SequenceLayers' Relu(name=None): `tl.Relu()`, pointwise; streams with block_size 1."""
Swish = _activation(tl.Swish, "Swish")
"""SequenceLayers' Swish(name=None): `tl.Swish()`, pointwise; streams with block_size 1."""
Sigmoid = _activation(tl.Sigmoid, "Sigmoid")
"""SequenceLayers' Sigmoid(name=None): `tl.Sigmoid()`, pointwise; streams with block_size 1."""
Tanh = _activation(tl.Tanh, "Tanh")
"""SequenceLayers' Tanh(name=None): `tl.Tanh()`, pointwise; streams with block_size 1."""
Exp = _activation(tl.Exp, "Exp")
"""SequenceLayers' Exp(name=None): `tl.Exp()`, pointwise; streams with block_size 1."""
Log = _activation(tl.Log, "Log")
"""SequenceLayers' Log(name=None): `tl.Log()`, pointwise; streams with block_size 1."""
Softplus = _activation(tl.Softplus, "Softplus")
"""SequenceLayers' Softplus(name=None): `tl.Softplus()`, pointwise; streams with block_size 1."""


def Identity(name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Passes its input through. n_in=1, n_out=1. Predict mode: stateless."""
    return common.named(tl.Serial(), name or "Identity")


def _with_name(tl_layer: type) -> Callable[..., base.Layer]:
    """`tl_layer` with SequenceLayers' `name=` added to whatever arguments it takes."""

    @functools.wraps(tl_layer, assigned=("__module__", "__name__", "__qualname__", "__doc__"))
    def make(*args, name: str | None = None, **kwargs) -> base.Layer:
        return common.named(tl_layer(*args, **kwargs), name)

    return make


# SequenceLayers' semantics live in tl.Delay and tl.Lookahead themselves (same arguments).
Delay = _with_name(tl.Delay)
Lookahead = _with_name(tl.Lookahead)
