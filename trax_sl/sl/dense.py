"""SequenceLayers' dense layers: Dense (with `activation`), EinsumDense, DenseShaped, Embedding.

Pointwise in time: each step is transformed on its own, so they stream with
block_size 1 and keep no state. Initializers are Trax-style `(shape, rng)`
functions; the defaults are SequenceLayers' (flax's lecun_normal kernels,
zero biases, embeddings of norm about 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, core
from trax_sl.layers import initializers as init
from trax_sl.sl import common


class Dense(core.Dense):
    """SequenceLayers' Dense: `y = activation(x W + b)` on the last axis.

    n_in=1, n_out=1. `[batch, time, ..., d]` -> `[batch, time, ..., features]`.
    Trax's Dense (same weights: `(w [d, features], b [features])`, or `w`
    alone without bias) followed by `activation`.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(
        self,
        features: int,
        use_bias: bool = True,
        activation: Callable | None = None,
        kernel_init=common.LECUN_NORMAL,
        bias_init=common.zeros,
        name: str | None = None,
    ):
        super().__init__(
            features, kernel_initializer=kernel_init, bias_initializer=bias_init, use_bias=use_bias
        )
        common.named(self, name)
        self._activation = activation

    def forward(self, x, weights, state, rng):
        y, state = super().forward(x, weights, state, rng)
        return (y if self._activation is None else self._activation(y)), state


def _parse_equation(layer_name: str, equation: str) -> tuple[str, str, str]:
    """(input, kernel, output) axis letters of `'...X,K->...Z'`, each without the ellipsis."""
    if not isinstance(equation, str) or "->" not in equation or equation.count(",") != 1:
        raise ValueError(f"{layer_name}: equation must look like '...ab,bc->...ac', got {equation!r}")
    left, output_spec = equation.split("->")
    input_spec, kernel_spec = left.split(",")
    if not input_spec.startswith("...") or not output_spec.startswith("..."):
        raise ValueError(f"{layer_name}: equation must be of the form '...X,Y->...Z', got {equation!r}")
    input_spec, output_spec = input_spec[3:], output_spec[3:]
    for what, spec in (("input", input_spec), ("output", output_spec)):
        if len(set(spec)) != len(spec):
            raise ValueError(f"{layer_name}: the {what} of {equation!r} repeats an axis")
    for axis in output_spec:
        if axis not in input_spec and axis not in kernel_spec:
            raise ValueError(f"{layer_name}: output axis {axis!r} of {equation!r} is in neither operand")
    for axis in kernel_spec:
        if axis not in input_spec and axis not in output_spec:
            raise ValueError(
                f"{layer_name}: kernel axis {axis!r} of {equation!r} is in neither the input nor output"
            )
    return input_spec, kernel_spec, output_spec


class EinsumDense(base.Layer):
    """SequenceLayers' EinsumDense: each step's channels transformed by an einsum with a kernel.

    n_in=1, n_out=1. `equation` is `'...X,K->...Z'`: X names the input's
    channel axes (after batch and time), K the kernel's, Z the output's.
    `output_shape` gives Z's sizes (None: the input's size of that axis).
    `bias_axes` names the output axes that get a bias (Keras' rule: a bias
    shaped like Z from the first bias axis on, 1 on the axes not named).
    E.g. `'...nh,nhd->...d'` with `output_shape=[16]` maps `[b, t, n, h]`
    to `[b, t, 16]`. Weights: `kernel` (sized as K), or `(kernel, bias)`.
    `kernel_axes` names the logical axes of K (see `trax_sl.partitioning`;
    a bias axis takes its letter's name); by default the axes summed over
    are 'embed', those new in the output 'mlp', the others None.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(
        self,
        equation: str,
        output_shape,
        bias_axes: str = "",
        activation: Callable | None = None,
        kernel_init=common.LECUN_NORMAL,
        bias_init=common.zeros,
        name: str | None = None,
        *,
        kernel_axes: tuple | None = None,
    ):
        layer_name = name or type(self).__name__
        self._specs = _parse_equation(layer_name, equation)
        if kernel_axes is not None and len(kernel_axes) != len(self._specs[1]):
            raise ValueError(
                f"{layer_name}: kernel_axes must name the {len(self._specs[1])} kernel axes of "
                f"{equation!r}, got {kernel_axes!r}"
            )
        self._kernel_axes = kernel_axes
        output_shape = tuple(output_shape)
        if len(output_shape) != len(self._specs[2]):
            raise ValueError(
                f"{layer_name}: output_shape {output_shape} must give one size per output axis of "
                f"{equation!r}"
            )
        for axis in bias_axes or "":
            if axis not in self._specs[2]:
                raise ValueError(f"{layer_name}: bias axis {axis!r} is not an output axis of {equation!r}")
        super().__init__(name=layer_name)
        self._equation = equation
        self._output_shape = output_shape
        self._bias_axes = bias_axes or ""
        self._activation = activation
        self._kernel_init = kernel_init
        self._bias_init = bias_init

    def _einsum(self, n_channel_axes: int) -> tuple[str, tuple[str, str, str]]:
        """(equation, (input, kernel, output) axis letters) for inputs with that many channel axes."""
        del n_channel_axes
        return self._equation, self._specs

    def _shapes(self, channel_shape) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
        """(kernel shape, bias shape or None) for inputs whose channel axes are `channel_shape`."""
        equation, (input_spec, kernel_spec, output_spec) = self._einsum(len(channel_shape))
        if len(channel_shape) < len(input_spec):
            raise ValueError(
                f"{self.name}: {equation!r} needs {len(input_spec)} channel axes, got channel "
                f"shape {tuple(channel_shape)}"
            )
        sizes = dict(zip(input_spec, channel_shape[len(channel_shape) - len(input_spec) :]))
        for axis, size in zip(output_spec, self._output_shape):
            if size is None:
                if axis not in sizes:
                    raise ValueError(
                        f"{self.name}: output axis {axis!r} has size None but is not an input axis"
                    )
            elif axis in sizes and sizes[axis] != size:
                raise ValueError(
                    f"{self.name}: output axis {axis!r} has size {size}, the input's is {sizes[axis]}"
                )
            else:
                sizes[axis] = size
        kernel_shape = tuple(sizes[axis] for axis in kernel_spec)
        if not self._bias_axes:
            return kernel_shape, None
        first = min(output_spec.index(axis) for axis in self._bias_axes)
        bias_shape = tuple(sizes[a] if a in self._bias_axes else 1 for a in output_spec[first:])
        return kernel_shape, bias_shape

    def weight_axes(self, weights):
        kernel = weights[0] if self._bias_axes else weights
        _, (inputs, letters, outputs) = self._einsum(len(kernel.shape) - len(self._output_shape))
        names = self._kernel_axes or [
            "embed" if a not in outputs else "mlp" if a not in inputs else None for a in letters
        ]
        kernel_axes = partitioning.Axes(*names)
        if not self._bias_axes:
            return kernel_axes
        named = {a: name for a, name in zip(letters, names) if a in self._bias_axes}
        bias = outputs[len(outputs) - len(weights[1].shape) :]
        return kernel_axes, partitioning.Axes(*(named.get(a) for a in bias))

    def init_weights_and_state(self, input_signature, rng):
        values = seq.values_of(input_signature)
        kernel_shape, bias_shape = self._shapes(tuple(values.shape[2:]))
        rng_w, rng_b = jax.random.split(rng)
        kernel = self._kernel_init(kernel_shape, rng_w)
        if bias_shape is None:
            return kernel, base.EMPTY_STATE
        return (kernel, self._bias_init(bias_shape, rng_b)), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        kernel, bias = weights if self._bias_axes else (weights, None)
        expected, _ = self._shapes(tuple(x.shape[2:]))
        if tuple(kernel.shape) != expected:
            raise ValueError(
                f"{self.name}: input {shapes.short_form(x)} needs a kernel {expected}, the weights "
                f"have {tuple(kernel.shape)}"
            )
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        equation, _ = self._einsum(x.ndim - 2)
        y = jnp.einsum(equation, x.astype(dtype), kernel.astype(dtype))
        if bias is not None:
            y = y + jnp.reshape(bias.astype(dtype), (1,) * (y.ndim - bias.ndim) + tuple(bias.shape))
        return (y if self._activation is None else self._activation(y)), state


def _letters(start: int, n: int) -> str:
    return "".join(chr(ord("a") + start + i) for i in range(n))


class DenseShaped(EinsumDense):
    """SequenceLayers' DenseShaped: maps each step's channels `[...]` to `output_shape`.

    n_in=1, n_out=1. `[batch, time, *channels]` -> `[batch, time,
    *output_shape]`, every input channel connected to every output one (an
    EinsumDense whose kernel is `[*channels, *output_shape]` and whose bias is
    `[*output_shape]`). E.g. `DenseShaped([512])` after a self-attention
    merges its heads: `[b, t, heads, units]` -> `[b, t, 512]`.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(
        self,
        output_shape,
        use_bias: bool = True,
        activation: Callable | None = None,
        kernel_init=common.LECUN_NORMAL,
        bias_init=common.zeros,
        name: str | None = None,
    ):
        output_shape = tuple(output_shape)
        checks.check_positive("DenseShaped", **{f"output_shape[{i}]": d for i, d in enumerate(output_shape)})
        out = _letters(13, len(output_shape))
        # The equation depends on the input's rank: `_einsum` writes it for each input.
        super().__init__(
            f"...,{out}->...{out}",
            output_shape,
            bias_axes=out if use_bias else "",
            activation=activation,
            kernel_init=kernel_init,
            bias_init=bias_init,
            name=name or "DenseShaped",
        )

    def _einsum(self, n_channel_axes: int):
        inputs, out = _letters(0, n_channel_axes), _letters(13, len(self._output_shape))
        return f"...{inputs},{inputs}{out}->...{out}", (inputs, inputs + out, out)


class Embedding(core.Embedding):
    """SequenceLayers' Embedding: integer ids `[batch, time, ...]` -> vectors `[..., dimension]`.

    n_in=1, n_out=1. Trax's Embedding with SequenceLayers' field names and
    initializer (normal, stddev `1 / sqrt(dimension)`). Weights: `[num_embeddings,
    dimension]`. Ids outside `[0, num_embeddings)` are clipped (Trax's rule).

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(self, dimension: int, num_embeddings: int, embedding_init=None, name: str | None = None):
        checks.check_positive("Embedding", dimension=dimension, num_embeddings=num_embeddings)
        if embedding_init is None:
            embedding_init = init.RandomNormalInitializer(1.0 / math.sqrt(dimension))
        super().__init__(num_embeddings, dimension, kernel_initializer=embedding_init)
        common.named(self, name)


__all__ = ["Dense", "DenseShaped", "EinsumDense", "Embedding"]
