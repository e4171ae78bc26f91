"""Transposed convolution (Trax's deconvolution): ConvTranspose.

Layer-wise only: a stride-s transposed convolution writes each input step
into a kernel-wide stretch of output steps (`lax.conv_transpose`), so its
output is not a fixed number of steps per input block; it does not stream
and predict mode raises.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init

__all__ = ["ConvTranspose"]

_KERNEL_AXES = {"I": "conv_in", "O": "conv_out"}


class ConvTranspose(base.Layer):
    """Trax's general transposed convolution (`lax.conv_transpose`).

    n_in=1, n_out=1. With the default layout NHWC, `[batch, h, w, channels]`
    -> `[batch, h', w', filters]`; 'VALID' gives `h' = (h - 1) * s + k`,
    'SAME' `h' = h * s` (per spatial axis: stride s, kernel size k).
    Weights `(w, b)`: `w` laid out per the kernel spec (HWIO:
    `[k_h, k_w, channels, filters]`), `b [filters]`. Inputs of rank > 4
    (NHWC only) fold their leading axes into the batch, as in Trax.
    `kernel_initialzer` is Trax's spelling (default: Glorot normal over the
    kernel's O and I axes); `kernel_initializer` is accepted as well.
    Plain arrays only: a Sequence raises TypeError (the output steps have no one mask).

    Not streamable (predict mode raises).
    """

    handles_sequences = True

    def __init__(
        self,
        filters,
        kernel_size,
        strides=None,
        padding="VALID",
        rhs_dilation=None,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        kernel_initialzer=None,
        bias_initializer=init.RandomNormalInitializer(1e-6),
        *,
        kernel_initializer=None,
    ):
        super().__init__(name="ConvTranspose")
        rhs = dimension_numbers[1]
        n_spatial = len(rhs) - 2
        if isinstance(kernel_size, (int, np.integer)):
            kernel_size = (int(kernel_size),) * n_spatial
        if len(kernel_size) != n_spatial:
            raise ValueError(
                f"ConvTranspose: kernel_size {tuple(kernel_size)} must have one size per spatial axis of "
                f"dimension_numbers {dimension_numbers} ({n_spatial})"
            )
        if kernel_initialzer is not None and kernel_initializer is not None:
            raise ValueError(
                "ConvTranspose: pass kernel_initialzer (Trax's spelling) or kernel_initializer, not both"
            )
        self._filters = filters
        self._kernel_size = tuple(kernel_size)
        self._strides = tuple(strides) if strides is not None else (1,) * n_spatial
        self._padding = padding
        self._rhs_dilation = tuple(rhs_dilation) if rhs_dilation is not None else None
        self._dimension_numbers = tuple(dimension_numbers)
        self._kernel_initializer = kernel_initialzer or kernel_initializer
        if self._kernel_initializer is None:
            self._kernel_initializer = init.GlorotNormalInitializer(rhs.index("O"), rhs.index("I"))
        self._bias_initializer = bias_initializer

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.NOT_STREAMING.not_streaming(
            "a transposed convolution spreads each input step over a kernel of output steps"
        )

    def _lhs_shape(self, x) -> tuple[int, ...]:
        """The input's shape with axes beyond the layout's rank folded into the batch (NHWC only)."""
        if isinstance(x, seq.Sequence):
            raise TypeError(
                f"{self.name}: takes plain arrays, got a Sequence {shapes.short_form(x)}; pass its values "
                f"(transposed convolution output steps have no one mask)"
            )
        lhs, _, out = self._dimension_numbers
        rank = len(lhs)
        if len(x.shape) < rank:
            raise ValueError(
                f"{self.name}: expected inputs of rank {rank} ({lhs}), got {shapes.short_form(x)}"
            )
        if len(x.shape) > rank:
            if lhs != "NHWC" or out != "NHWC":
                raise ValueError(
                    f"{self.name}: inputs of rank > {rank} need dimension_numbers NHWC, got "
                    f"{self._dimension_numbers} and input {shapes.short_form(x)}"
                )
            return (int(np.prod(x.shape[: -rank + 1])),) + tuple(x.shape[-rank + 1 :])
        return tuple(x.shape)

    def _kernel_shape(self, lhs_shape) -> tuple[int, ...]:
        lhs, rhs, _ = self._dimension_numbers
        sizes = iter(self._kernel_size)
        in_features = lhs_shape[lhs.index("C")]
        return tuple(self._filters if c == "O" else in_features if c == "I" else next(sizes) for c in rhs)

    def _bias_shape(self) -> tuple[int, ...]:
        # Trax: filters on the output's channel axis, leading ones dropped.
        shape = [self._filters if c == "C" else 1 for c in self._dimension_numbers[2]]
        return tuple(shape[shape.index(self._filters) :])

    def weight_axes(self, weights):
        out = ["conv_out" if c == "C" else None for c in self._dimension_numbers[2]]
        kernel = partitioning.Axes(*(_KERNEL_AXES.get(c, "conv_window") for c in self._dimension_numbers[1]))
        return kernel, partitioning.Axes(*out[len(out) - len(weights[1].shape) :])

    def init_weights_and_state(self, input_signature, rng):
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer(self._kernel_shape(self._lhs_shape(input_signature)), rng_w)
        return (w, self._bias_initializer(self._bias_shape(), rng_b)), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        w, b = weights
        lhs_shape = self._lhs_shape(x)
        if tuple(w.shape) != self._kernel_shape(lhs_shape):
            raise ValueError(
                f"{self.name}: inputs {shapes.short_form(x)} need a kernel of shape "
                f"{self._kernel_shape(lhs_shape)}, the weights have {tuple(w.shape)}"
            )
        dtype = jnp.result_type(x.dtype, w.dtype)
        y = jax.lax.conv_transpose(
            jnp.reshape(x, lhs_shape).astype(dtype),
            w.astype(dtype),
            self._strides,
            self._padding,
            self._rhs_dilation,
            self._dimension_numbers,
        )
        y = y + jnp.reshape(b.astype(dtype), (1,) * (y.ndim - b.ndim) + tuple(b.shape))
        if len(x.shape) > len(lhs_shape):
            y = jnp.reshape(y, tuple(x.shape[: len(x.shape) - len(lhs_shape) + 1]) + tuple(y.shape[1:]))
        return y, state
