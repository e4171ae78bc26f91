"""What the SequenceLayers-named layers share: naming, SL's default initializers, constants.

SequenceLayers' `constants` (a dict of named side inputs, e.g. the source of
a cross attention) travel as one stack item under the input: a layer that
reads constants has `n_in=2` and takes `(x, constants)` off the stack, and
says which names it reads in `constant_names`. See the package docstring.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl.layers import base
from trax_sl.layers import initializers as init

# flax's defaults, which SequenceLayers' layers use: lecun_normal kernels (truncated) and zero biases.
LECUN_NORMAL = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal")


def zeros(shape, rng):
    """Zeros of `shape`, float32 (SequenceLayers' default bias initializer)."""
    del rng
    return jnp.zeros(tuple(shape), jnp.float32)


def named(layer: base.Layer, name: str | None) -> base.Layer:
    """Returns `layer` under SequenceLayers' `name=` when one is given.

    For layers built by Trax-style functions that take no name: the layer is
    fresh, so naming it is still part of building it.
    """
    if name is not None:
        if not isinstance(name, str):
            raise TypeError(f"{layer.name}: name must be a string or None, got name={name!r}")
        layer._name = name
    return layer


def constant_names(layer: base.Layer) -> tuple[str, ...]:
    """The names of the constants `layer` reads (empty: none)."""
    return tuple(getattr(layer, "constant_names", None) or ())


def takes_constants(layer: base.Layer) -> bool:
    """Whether `layer` takes `x constants` from the stack rather than `x` alone.

    A layer that takes the constants item says so with a `constant_names`
    attribute (the names it reads; `()` for a wrapper that drops them).
    """
    return getattr(layer, "constant_names", None) is not None


def union_of_constant_names(layers) -> tuple[str, ...]:
    """The constant names any of `layers` reads, in order of first use."""
    names: dict[str, None] = {}
    for layer in layers:
        names.update(dict.fromkeys(constant_names(layer)))
    return tuple(names)


def takes_constants_of(layer: base.Layer, sublayers) -> base.Layer:
    """Marks `layer` (a combinator just built) as taking the constants item when a sublayer does."""
    sublayers = [sub for sub in sublayers if sub is not None]
    if any(takes_constants(sub) for sub in sublayers):
        layer.constant_names = union_of_constant_names(sublayers)
    return layer


def get_constant(layer_name: str, constants, name: str, required_rank: int | None = None) -> seq.Sequence:
    """`constants[name]` as a Sequence (an array is all valid), with SequenceLayers' checks."""
    if not isinstance(constants, dict):
        raise TypeError(
            f"{layer_name} reads {name!r} from the constants, the dict under its input on the stack "
            f"(call it as layer((x, {{{name!r}: source}}))), got {type(constants).__name__}"
        )
    if name not in constants:
        raise ValueError(f"{layer_name} expected {name!r} in the constants, got names {sorted(constants)}")
    item, _ = seq.as_sequence(constants[name])
    if required_rank is not None and item.ndim != required_rank:
        raise ValueError(
            f"{layer_name} requires a rank-{required_rank} {name!r} in the constants "
            f"([batch, time, depth]), got shape {tuple(item.shape)}"
        )
    return item


def channel_broadcast(parameter, ndim: int):
    """A channel parameter reshaped to broadcast against `[batch, time, ...channels]` of rank ndim."""
    parameter = np.asarray(parameter)
    if parameter.ndim > ndim - 2:
        raise ValueError(
            f"the parameter {parameter.shape} has more axes than the input's channels (rank {ndim})"
        )
    return parameter.reshape((1,) * (ndim - parameter.ndim) + parameter.shape)
