"""Convolutions that stream along time: Trax's Conv, Conv1d, CausalConv, CausalDepthwiseConv
and SequenceLayers' DepthwiseConv1D and Conv2D.

Time is axis 1 of `[batch, time, ..., channels]` inputs. Along time a
convolution pads its input by a padding mode and streams through the shared
time window (`streaming/window.py`: the table of paddings, output masks,
latencies and the predict-mode buffer). In the Trax layers (Conv, Conv1d,
CausalConv) 'SAME' and 'same' mean lax's SAME, as in Trax; it equals
SequenceLayers' 'same' for stride 1. The SequenceLayers layers
(DepthwiseConv1D, Conv2D) use SequenceLayers' 'same'. Every padding whose
layer-wise output has `time / stride` steps streams: all but 'VALID' with a
time kernel longer than its stride (SequenceLayers steps neither 'valid' nor
'same'; here 'same'/'SAME' stream with a latency). The first output_latency
step-wise outputs are invalid (SequenceLayers marks them valid for
'reverse_causal_valid').
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init

PADDINGS = ("valid", "same", "causal_valid", "reverse_causal_valid", "causal", "reverse_causal", "semicausal")
LAX_SAME = "lax_same"  # Trax's 'SAME': lax's rule, which depends on the axis length.
_AND_MASK = ("valid", "causal_valid", "reverse_causal_valid")
_REVERSE = ("reverse_causal", "reverse_causal_valid")

# SequenceLayers' defaults: flax's lecun_normal kernels and zero biases.
_LECUN_NORMAL = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal")


def _zeros(shape, rng):
    del rng
    return jnp.zeros(tuple(shape), jnp.float32)


_NWC = ("NWC", "WIO", "NWC")
_KERNEL_AXES = {"I": "conv_in", "O": "conv_out"}


class Convolution(base.Layer):
    """The convolution every layer of this module (and `sl.Conv1D`) is; see the module docstring."""

    handles_sequences = True

    def __init__(
        self,
        layer_name: str,
        kernel_size,
        *,
        padding,
        trax_same: bool,
        filters=None,
        strides=None,
        dilation_rate=None,
        dimension_numbers=_NWC,
        kernel_initializer=None,
        bias_initializer=None,
        use_bias: bool = False,
        groups: int = 1,
        activation: Callable | None = None,
        mode: str = "train",
        name: str | None = None,
    ):
        n = len(kernel_size)
        self._kernel_size = checks.positive_ints(layer_name, "kernel_size", kernel_size, n)
        self._strides = checks.positive_ints(layer_name, "strides", 1 if strides is None else strides, n)
        self._dilation = checks.positive_ints(
            layer_name, "dilation_rate", 1 if dilation_rate is None else dilation_rate, n
        )
        self._paddings = streaming.window.normalize_padding(layer_name, padding, n, trax_same)
        if filters is not None:
            checks.check_positive(layer_name, filters=filters)
        checks.check_positive(layer_name, groups=groups)
        lhs, rhs, out = (tuple(dimension_numbers) + ("", "", ""))[:3]
        spatial = [c for c in rhs if c not in "IO"]
        if not (
            len(dimension_numbers) == 3
            and len(spatial) == n
            and sorted(rhs) == sorted(spatial + ["I", "O"])
            and sorted(lhs) == sorted(out) == sorted(spatial + ["N", "C"])
        ):
            raise ValueError(
                f"{layer_name}: dimension_numbers {dimension_numbers!r} do not fit a kernel with {n} "
                f"spatial axes (kernel_size={kernel_size!r}); expected e.g. ('NHWC', 'HWIO', 'NHWC')"
            )
        super().__init__(name=name or layer_name)
        self._filters, self._groups, self._activation = filters, groups, activation
        self._dimension_numbers = tuple(dimension_numbers)
        self._kernel_initializer, self._bias_initializer = kernel_initializer, bias_initializer
        self._use_bias = use_bias
        self._mode = mode
        # Time is lhs axis 1 when that is a spatial axis which stays axis 1 of the output.
        self._time = (
            spatial.index(lhs[1]) if lhs[0] == "N" and lhs[1] in spatial and out[1] == lhs[1] else None
        )

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.window_spec(self.window)

    @property
    def window(self) -> streaming.TimeWindow | None:
        """The window along time (None: time is not a spatial axis of this layout)."""
        t = self._time
        if t is None:
            return None
        return streaming.TimeWindow(
            self._kernel_size[t], self._strides[t], self._dilation[t], self._paddings[t]
        )

    # --- Weights; DepthwiseConv1D and CausalDepthwiseConv override the layout. ---------------

    def _in_features(self, shape) -> int:
        lhs = self._dimension_numbers[0]
        if len(shape) < len(lhs):
            raise ValueError(
                f"{self.name}: expected inputs of rank {len(lhs)} ({lhs}), got shape {tuple(shape)}"
            )
        return int(shape[lhs.index("C") - len(lhs)])

    def _kernel_shape(self, in_features: int) -> tuple[int, ...]:
        if in_features % self._groups:
            raise ValueError(
                f"{self.name}: input channels ({in_features}) must be divisible by groups ({self._groups})"
            )
        sizes = iter(self._kernel_size)
        return tuple(
            self._filters if c == "O" else in_features // self._groups if c == "I" else next(sizes)
            for c in self._dimension_numbers[1]
        )

    def _bias_shape(self, in_features: int) -> tuple[int, ...]:
        # Trax: filters on the output's channel axis, leading ones dropped.
        shape = [self._filters if c == "C" else 1 for c in self._dimension_numbers[2]]
        return tuple(shape[shape.index(self._filters) :])

    def _feature_groups(self, in_features: int) -> int:
        return self._groups

    def _conv_kernel(self, w):
        return w

    def weight_axes(self, weights):
        """Kernel axes as its layout says ('conv_window' per spatial axis, 'conv_in', 'conv_out'); bias 'conv_out'."""
        kernel = partitioning.Axes(*(_KERNEL_AXES.get(c, "conv_window") for c in self._dimension_numbers[1]))
        if not self._use_bias:
            return kernel
        out = ["conv_out" if c == "C" else None for c in self._dimension_numbers[2]]
        return kernel, partitioning.Axes(*out[len(out) - len(weights[1].shape) :])

    def init_weights_and_state(self, input_signature, rng):
        values = input_signature.values if isinstance(input_signature, seq.Sequence) else input_signature
        in_features = self._in_features(values.shape)
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer(self._kernel_shape(in_features), rng_w)
        weights = (w, self._bias_initializer(self._bias_shape(in_features), rng_b)) if self._use_bias else w
        if self._mode != "predict" or not self.supports_step:
            return weights, ()
        checks.check_rank(self.name, values, len(self._dimension_numbers[0]))
        return weights, self.window.initial_state(values, 0)

    # --- The computation. ----------------------------------------------------------------

    def forward(self, x, weights, state, rng):
        if self._mode == "predict":
            streaming.check_steps(self)
        rank = len(self._dimension_numbers[0])
        if (
            self._mode != "predict"
            and not isinstance(x, seq.Sequence)
            and (self._time is None or x.ndim != rank)
        ):
            return self._frames(x, weights), state
        if self._time is None:
            raise ValueError(
                f"{self.name}: with dimension_numbers {self._dimension_numbers} axis 1 is not a "
                f"spatial axis, so the layer cannot run along time; pass plain arrays"
            )
        if self._mode != "predict" and x.ndim > rank:
            # Trax folds the leading axes into the batch: per time step, so the mask stays.
            return seq.Sequence(self._frames(x.values, weights), x.mask), state
        x, was_sequence = seq.as_sequence(x)
        checks.check_rank(self.name, x, rank)
        stream, front, state = self.window.stream(x.mask_invalid(), state, self._mode, 0)
        y = self._lax_conv(stream.values, weights, time_padded=True)
        mask = self.window.output_mask(stream.mask, y.shape[1], front)
        return seq.like_input(seq.Sequence(y, mask), was_sequence), state

    def _frames(self, x, weights):
        """Trax's convolution of a plain array; axes before the last rank fold into the batch."""
        rank = len(self._dimension_numbers[0])
        if x.ndim <= rank:
            return self._lax_conv(x, weights)
        if self._dimension_numbers[0] != "NHWC" or self._dimension_numbers[2] != "NHWC":
            raise ValueError(
                f"{self.name}: inputs of rank > {rank} need dimension_numbers NHWC, got "
                f"{self._dimension_numbers} and input {shapes.short_form(x)}"
            )
        y = self._lax_conv(jnp.reshape(x, (-1,) + tuple(x.shape[-3:])), weights)
        return jnp.reshape(y, tuple(x.shape[:-3]) + tuple(y.shape[-3:]))

    def _lax_conv(self, x, weights, time_padded: bool = False):
        """lax's convolution, each axis padded as its padding says (time not, when `time_padded`)."""
        w, b = weights if self._use_bias else (weights, None)
        lhs = self._dimension_numbers[0]
        in_features = self._in_features(x.shape)
        if tuple(w.shape) != self._kernel_shape(in_features):
            raise ValueError(
                f"{self.name}: inputs with {in_features} channels need a kernel of shape "
                f"{self._kernel_shape(in_features)}, the weights have {tuple(w.shape)}; input "
                f"{shapes.short_form(x)}"
            )
        spatial = [c for c in self._dimension_numbers[1] if c not in "IO"]
        pads = [
            (0, 0)
            if time_padded and i == self._time
            else streaming.window.explicit_padding(
                self._paddings[i],
                self._kernel_size[i],
                self._strides[i],
                self._dilation[i],
                x.shape[lhs.index(c) - len(lhs)],
            )
            for i, c in enumerate(spatial)
        ]
        kernel = self._conv_kernel(w)
        dtype = jnp.result_type(x.dtype, kernel.dtype)
        y = jax.lax.conv_general_dilated(
            x.astype(dtype),
            kernel.astype(dtype),
            window_strides=self._strides,
            padding=pads,
            rhs_dilation=self._dilation,
            dimension_numbers=self._dimension_numbers,
            feature_group_count=self._feature_groups(in_features),
        )
        if b is not None:
            y = y + jnp.reshape(b.astype(dtype), (1,) * (y.ndim - b.ndim) + tuple(b.shape))
        return self._activation(y) if self._activation is not None else y


class Conv(Convolution):
    """Trax's general convolution, streaming along time (axis 1).

    n_in=1, n_out=1. With the default NHWC layout, `[batch, time, width,
    channels]` -> `[batch, time / s, width', filters]`: the first spatial
    axis (H) is time. Weights `(w, b)` with `w` laid out per the kernel spec
    (HWIO: `[k_time, k_width, channels, filters]`) and `b [filters]` (Trax's
    bias shape), or `w` alone with `use_bias=False`.

    `padding`: 'VALID' or 'SAME' (lax's rules, as Trax) or a streaming mode
    ('causal', 'reverse_causal', 'semicausal', 'causal_valid',
    'reverse_causal_valid') for every spatial axis, or one mode or explicit
    (front, back) pair per spatial axis; see the module docstring for masks
    and latencies. Inputs of rank > 4 (NHWC) fold their leading axes into
    the batch as in Trax (per time step; layer-wise only).

    Predict mode: the state holds the last `buffer_width` input steps and
    their mask; streams when time's padding keeps the length (all but
    'VALID' with a time kernel longer than its stride).
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=None,
        padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        kernel_initializer=None,
        bias_initializer=init.RandomNormalInitializer(1e-6),
        use_bias=True,
        *,
        dilation_rate=None,
        mode: str = "train",
        name: str = "Conv",
    ):
        rhs = dimension_numbers[1]
        if isinstance(kernel_size, (int, np.integer)):
            kernel_size = (kernel_size,) * len([c for c in rhs if c not in "IO"])
        if kernel_initializer is None:
            kernel_initializer = init.GlorotNormalInitializer(rhs.index("O"), rhs.index("I"))
        super().__init__(
            name,
            tuple(kernel_size),
            padding=padding,
            trax_same=True,
            filters=filters,
            strides=strides,
            dilation_rate=dilation_rate,
            dimension_numbers=dimension_numbers,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            use_bias=use_bias,
            mode=mode,
        )


def Conv1d(  # noqa: N802
    filters,
    kernel_size,
    stride=1,
    padding="VALID",
    kernel_initializer=None,
    bias_initializer=init.RandomNormalInitializer(1e-6),
    use_bias=True,
    dilation_rate=1,
    mode: str = "train",
) -> Conv:
    """A 1-D convolution over time: `[batch, time, channels]` -> `[batch, time / stride, filters]`.

    Trax's Conv1d, with SequenceLayers' streaming paddings besides 'VALID'
    and 'SAME' (see the module docstring). n_in=1, n_out=1. Weights
    `(w [kernel_size, channels, filters], b [filters])`.

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """
    checks.check_positive("Conv1d", kernel_size=kernel_size, stride=stride, dilation_rate=dilation_rate)
    return Conv(
        filters,
        (kernel_size,),
        strides=(stride,),
        padding=padding,
        dimension_numbers=_NWC,
        kernel_initializer=kernel_initializer,
        bias_initializer=bias_initializer,
        use_bias=use_bias,
        dilation_rate=(dilation_rate,),
        mode=mode,
        name="Conv1d",
    )


class CausalConv(Conv):
    """Trax's causal convolution: output t sees inputs t - kernel_width + 1 .. t.

    n_in=1, n_out=1; `[batch, time, channels]` -> `[batch, time, filters]`:
    Conv1d with padding 'causal' (input and output latency 0).

    Predict mode: the state holds the last `kernel_width - 1` input steps and their mask.
    """

    def __init__(
        self,
        filters,
        kernel_width=3,
        kernel_initializer=None,
        bias_initializer=init.RandomNormalInitializer(1e-6),
        use_bias=True,
        *,
        mode: str = "train",
    ):
        checks.check_positive("CausalConv", kernel_width=kernel_width)
        super().__init__(
            filters,
            (kernel_width,),
            padding="causal",
            dimension_numbers=_NWC,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            use_bias=use_bias,
            mode=mode,
            name="CausalConv",
        )


class CausalDepthwiseConv(Convolution):
    """Trax's causal depthwise convolution: `y[t, d] = sum_i w[k-1-i, d] * x[t-i, d]`.

    n_in=1, n_out=1; `[batch, time, depth]` -> `[batch, time, depth]`.
    Weights `w [kernel_size, depth]`, no bias.

    Predict mode: the state holds the last `kernel_size - 1` input steps and their mask.
    """

    def __init__(
        self,
        kernel_size=3,
        kernel_initializer=init.GlorotUniformInitializer(),
        use_bfloat16=False,
        *,
        mode: str = "train",
    ):
        checks.check_positive("CausalDepthwiseConv", kernel_size=kernel_size)
        super().__init__(
            "CausalDepthwiseConv",
            (kernel_size,),
            padding="causal",
            trax_same=True,
            kernel_initializer=kernel_initializer,
            mode=mode,
        )
        self._use_bfloat16 = use_bfloat16

    def init_weights_and_state(self, input_signature, rng):
        w, state = super().init_weights_and_state(input_signature, rng)
        return (w.astype(jnp.bfloat16) if self._use_bfloat16 else w), state

    def weight_axes(self, weights):
        return partitioning.Axes("conv_window", "conv_out")  # One filter per channel.

    def _kernel_shape(self, in_features):
        return (self._kernel_size[0], in_features)

    def _feature_groups(self, in_features):
        return in_features

    def _conv_kernel(self, w):
        return jnp.reshape(w, (w.shape[0], 1, w.shape[1]))


class DepthwiseConv1D(Convolution):
    """SequenceLayers' depthwise 1-D convolution: each channel convolved on its own.

    n_in=1, n_out=1; `[batch, time, channels]` -> `[batch, time / strides,
    channels * depth_multiplier]` (output channel o comes from input channel
    o // depth_multiplier). Weights `(kernel [kernel_size, 1, channels *
    depth_multiplier], bias [channels * depth_multiplier])`, or the kernel
    alone with `use_bias=False`. Paddings as SequenceLayers (module docstring).

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    def __init__(
        self,
        kernel_size: int,
        strides: int = 1,
        depth_multiplier: int = 1,
        dilation_rate: int = 1,
        padding: str = "valid",
        use_bias: bool = True,
        activation: Callable | None = None,
        kernel_init=_LECUN_NORMAL,
        bias_init=_zeros,
        *,
        mode: str = "train",
        name: str | None = None,
    ):
        checks.check_positive(
            "DepthwiseConv1D",
            kernel_size=kernel_size,
            strides=strides,
            dilation_rate=dilation_rate,
            depth_multiplier=depth_multiplier,
        )
        checks.check_mode_name("DepthwiseConv1D", padding=padding)
        super().__init__(
            "DepthwiseConv1D",
            (kernel_size,),
            padding=padding,
            trax_same=False,
            strides=(strides,),
            dilation_rate=(dilation_rate,),
            kernel_initializer=kernel_init,
            bias_initializer=bias_init,
            use_bias=use_bias,
            activation=activation,
            mode=mode,
            name=name,
        )
        self._depth_multiplier = depth_multiplier

    def _kernel_shape(self, in_features):
        return (self._kernel_size[0], 1, in_features * self._depth_multiplier)

    def _bias_shape(self, in_features):
        return (in_features * self._depth_multiplier,)

    def _feature_groups(self, in_features):
        return in_features


class Conv2D(Convolution):
    """SequenceLayers' 2-D convolution over time and one spatial axis.

    n_in=1, n_out=1; `[batch, time, space, channels]` -> `[batch, time /
    strides[0], space', filters]`. `kernel_size`, `strides`, `dilation_rate`:
    an int or a (time, space) pair. `time_padding`: a mode name (module
    docstring); `spatial_padding`: a mode name or a (front, back) pair, with
    SequenceLayers' rules. Weights `(kernel [k_time, k_space, channels /
    groups, filters], bias [filters])`, or the kernel alone with
    `use_bias=False`.

    Predict mode: the state holds the last `buffer_width` input steps and their mask.
    """

    def __init__(
        self,
        filters: int,
        kernel_size,
        strides=1,
        dilation_rate=1,
        time_padding: str = "valid",
        spatial_padding="same",
        groups: int = 1,
        use_bias: bool = True,
        activation: Callable | None = None,
        kernel_init=_LECUN_NORMAL,
        bias_init=_zeros,
        *,
        mode: str = "train",
        name: str | None = None,
    ):
        checks.check_mode_name("Conv2D", time_padding=time_padding)
        super().__init__(
            "Conv2D",
            checks.positive_ints("Conv2D", "kernel_size", kernel_size, 2),
            padding=(time_padding, spatial_padding),
            trax_same=False,
            filters=filters,
            strides=strides,
            dilation_rate=dilation_rate,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            kernel_initializer=kernel_init,
            bias_initializer=bias_init,
            use_bias=use_bias,
            groups=groups,
            activation=activation,
            mode=mode,
            name=name,
        )
