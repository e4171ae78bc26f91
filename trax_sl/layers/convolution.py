"""Convolutions that stream along time: Trax's Conv, Conv1d, CausalConv, CausalDepthwiseConv
and SequenceLayers' DepthwiseConv1D and Conv2D.

Time is axis 1 of `[batch, time, ..., channels]` inputs. Along time a
convolution pads its input by a padding mode (SequenceLayers' names and
rules; `eff = (kernel_size - 1) * dilation_rate + 1`, `s` the stride):

| padding                  | front, back padding        | output step valid when      |
| ------------------------ | -------------------------- | --------------------------- |
| 'causal'                 | eff - 1, 0                 | its input step is           |
| 'reverse_causal'         | 0, eff - 1                 | its input step is           |
| 'semicausal'             | max(eff - s, 0), the rest  | its input step is           |
| 'same' (SequenceLayers)  | (eff - 1) // 2, the rest   | its input step is           |
| 'SAME' (Trax, lax)       | lax's SAME rule            | its input step is           |
| 'causal_valid'           | eff - 1 (valid), 0         | its whole window is valid   |
| 'reverse_causal_valid'   | 0, eff - 1                 | its whole window is valid   |
| 'VALID'                  | 0, 0                       | its whole window is valid   |

Output step j's input step is j * s. In the Trax layers (Conv, Conv1d,
CausalConv) 'SAME' and 'same' mean lax's SAME, as in Trax; it equals
SequenceLayers' 'same' for stride 1. The SequenceLayers layers
(DepthwiseConv1D, Conv2D) use SequenceLayers' 'same'.

Streaming: one code path. Layer-wise the padded input is convolved without
further padding; step-wise the state holds the last `buffer_width` steps
(at the start: the front padding, then `delay` invalid steps) and each block
is convolved with the buffer in front. Every padding whose layer-wise output
has `time / s` steps streams: all but 'VALID' with `eff > s`. (SequenceLayers
steps neither 'valid' nor 'same'; here 'same'/'SAME' stream with a latency
and 'VALID' streams where it keeps the length.) block_size = s,
output_ratio = 1/s, output_latency = delay / s, input_latency = eff - 1 for
the reverse-causal paddings (as SequenceLayers), else `delay`; the first
output_latency step-wise outputs are invalid (SequenceLayers marks them
valid for 'reverse_causal_valid').
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import base
from trax_sl.layers import initializers as init
from trax_sl.layers.delay import as_sequence, like_input

PADDINGS = ("valid", "same", "causal_valid", "reverse_causal_valid", "causal", "reverse_causal", "semicausal")
LAX_SAME = "lax_same"  # Trax's 'SAME': lax's rule, which depends on the axis length.
_AND_MASK = ("valid", "causal_valid", "reverse_causal_valid")
_REVERSE = ("reverse_causal", "reverse_causal_valid")

# SequenceLayers' defaults: flax's lecun_normal kernels and zero biases.
_LECUN_NORMAL = init.ScaledInitializer(-1, -2, 1.0, "fan_in", "truncated_normal")


def _zeros(shape, rng):
    del rng
    return jnp.zeros(tuple(shape), jnp.float32)


def check_positive(layer_name: str, **values) -> None:
    """Raises ValueError unless every value is an int >= 1."""
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{layer_name}: {key} must be an integer >= 1, got {key}={value!r}")


def as_tuple(layer_name: str, key: str, value, n: int) -> tuple[int, ...]:
    """An int (for every axis) or a sequence of n ints -> a tuple of n ints >= 1."""
    values = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != n:
        raise ValueError(
            f"{layer_name}: {key} must have {n} entries (one per windowed axis), got {key}={value!r}"
        )
    for v in values:
        check_positive(layer_name, **{key: v})
    return tuple(int(v) for v in values)


def normalize_padding(layer_name: str, padding, n: int, trax_same: bool) -> tuple:
    """One padding per windowed axis: a mode name or an explicit (front, back) pair.

    `padding` is a mode (for every axis) or a sequence of n modes or pairs.
    With `trax_same`, 'SAME'/'same' is lax's SAME (Trax); else SequenceLayers'.
    """
    if isinstance(padding, str):
        entries = (padding,) * n
    else:
        entries = tuple(padding)
        if len(entries) != n:
            raise ValueError(
                f"{layer_name}: padding must be a mode name or have {n} entries (one per windowed axis), "
                f"got padding={padding!r}"
            )
    result = []
    for entry in entries:
        if isinstance(entry, str):
            mode = entry.lower()
            if mode not in PADDINGS:
                raise ValueError(
                    f"{layer_name}: padding must be one of {', '.join(repr(p) for p in PADDINGS)} "
                    f"(or 'VALID'/'SAME'), or (front, back) pairs, got padding={entry!r}"
                )
            result.append(LAX_SAME if (mode == "same" and trax_same) else mode)
            continue
        pair = tuple(entry)
        if len(pair) != 2 or any(not isinstance(p, (int, np.integer)) or p < 0 for p in pair):
            raise ValueError(
                f"{layer_name}: an explicit padding must be a (front, back) pair of ints >= 0, got {entry!r}"
            )
        result.append((int(pair[0]), int(pair[1])))
    return tuple(result)


def explicit_padding(padding, kernel_size: int, stride: int, dilation_rate: int, length=None):
    """(front, back) padding of one axis; `length=None`: a length that is a multiple of stride."""
    eff = (kernel_size - 1) * dilation_rate + 1
    if not isinstance(padding, str):
        return padding
    if padding == LAX_SAME:
        n = stride if length is None else length
        total = max((-(-n // stride) - 1) * stride + eff - n, 0)
        return total // 2, total - total // 2
    if padding in ("causal", "causal_valid"):
        return eff - 1, 0
    if padding in _REVERSE:
        return 0, eff - 1
    if padding == "semicausal":
        front = max(eff - stride, 0)
        return front, eff - 1 - front
    if padding == "same":
        return (eff - 1) // 2, eff - 1 - (eff - 1) // 2
    return 0, 0


def _pad_time(x: seq.Sequence, front: int, back: int, front_valid: bool, pad_value) -> seq.Sequence:
    """Pads time with `pad_value`: the front steps valid when `front_valid`, the back ones invalid."""
    pads = [(0, 0), (front, back)] + [(0, 0)] * (x.ndim - 2)
    values = jnp.pad(x.values, pads, constant_values=np.asarray(pad_value, x.dtype))
    mask = jnp.pad(jnp.pad(x.mask, [(0, 0), (front, 0)], constant_values=front_valid), [(0, 0), (0, back)])
    return seq.Sequence(values, mask)


@dataclasses.dataclass(frozen=True)
class TimeWindow:
    """A window sliding along time (of a convolution or pooling) and how it streams.

    Shared by convolution.py and pooling.py: the padding, the output mask and
    the predict-mode buffer.
    """

    size: int
    stride: int = 1
    dilation: int = 1
    padding: str | tuple[int, int] = "valid"

    @property
    def effective_size(self) -> int:
        return (self.size - 1) * self.dilation + 1

    def pads(self, length=None) -> tuple[int, int]:
        """Layer-wise (front, back) padding for `length` steps (None: the streaming one)."""
        return explicit_padding(self.padding, self.size, self.stride, self.dilation, length)

    @property
    def front_valid(self) -> bool:
        """'causal_valid' counts its front padding as valid steps."""
        return self.padding == "causal_valid"

    @property
    def streams(self) -> bool:
        """Whether the layer-wise output has time / stride steps (time a multiple of stride)."""
        front, back = self.pads()
        return self.effective_size - self.stride <= front + back <= self.effective_size - 1

    @property
    def delay(self) -> int:
        """Invalid steps the stream starts with, so that each block of s steps gives one output."""
        return self.stride * ((self.effective_size - 1 - self.pads()[0]) // self.stride)

    @property
    def buffer_width(self) -> int:
        return self.pads()[0] + self.delay

    @property
    def input_latency(self) -> int:
        if not self.streams:
            return 0
        return self.effective_size - 1 if self.padding in _REVERSE else self.delay

    @property
    def output_latency(self) -> int:
        return self.delay // self.stride if self.streams else 0

    @property
    def receptive_field(self) -> tuple[int, int]:
        front = self.pads()[0]
        return front, self.effective_size - 1 - front

    def initial_state(self, values_signature, pad_value):
        """The predict-mode buffer: the front padding, then `delay` invalid steps."""
        if not self.buffer_width:
            return ()
        batch, rest = values_signature.shape[0], tuple(values_signature.shape[2:])
        empty = seq.Sequence(
            jnp.zeros((batch, 0) + rest, values_signature.dtype), jnp.zeros((batch, 0), bool)
        )
        delayed = _pad_time(empty, self.delay, 0, False, pad_value)
        return _pad_time(delayed, self.pads()[0], 0, self.front_valid, pad_value)

    def stream(self, x: seq.Sequence, state, mode: str, pad_value):
        """(the padded input, its front padding, new state): buffer + block in predict mode."""
        if mode != "predict":
            front, back = self.pads(x.shape[1])
            return _pad_time(x, front, back, self.front_valid, pad_value), front, state
        width = self.buffer_width
        if not width:
            return x, self.pads()[0], state
        joined = seq.Sequence.concatenate_sequences([state, x])
        return joined, self.pads()[0], joined[:, joined.shape[1] - width :]

    def output_mask(self, mask, n_out: int, front: int):
        """The output mask of a window run over a padded mask (SequenceLayers' compute_conv_mask)."""
        if n_out <= 0:
            return mask[:, :0]

        def taps(start):
            return mask[:, start : start + (n_out - 1) * self.stride + 1 : self.stride]

        if self.padding not in _AND_MASK:
            picked = taps(front)
            return jnp.pad(picked, [(0, 0), (0, n_out - picked.shape[1])])
        return functools.reduce(jnp.logical_and, [taps(i * self.dilation) for i in range(self.size)])


def check_rank(layer_name: str, x, rank: int) -> None:
    """Raises ValueError unless `x` (an array, Sequence or signature) has rank `rank`."""
    if len(x.shape) != rank:
        raise ValueError(
            f"{layer_name}: expected inputs of rank {rank} ([batch, time, ..., channels]), "
            f"got {shapes.short_form(x)}"
        )


class Windowed(base.Layer):
    """Base of the layers whose streaming properties are those of a `window` along time."""

    handles_sequences = True

    @property
    def window(self) -> TimeWindow | None:
        """The window along time (None: the layer does not run along time)."""
        raise NotImplementedError

    @property
    def block_size(self) -> int:
        return self.window.stride if self.window else 1

    @property
    def output_ratio(self) -> fractions.Fraction:
        return fractions.Fraction(1, self.block_size)

    @property
    def input_latency(self) -> int:
        return self.window.input_latency if self.window else 0

    @property
    def output_latency(self) -> int:
        return self.window.output_latency if self.window else 0

    @property
    def receptive_field(self) -> tuple[int, int]:
        return self.window.receptive_field if self.window else (0, 0)

    @property
    def supports_step(self) -> bool:
        return self.window is not None and self.window.streams

    def _why_not_streaming(self) -> str:
        if self.window is None:
            return "it does not run along time"
        return (
            f"padding {self.window.padding!r} with a time window of {self.window.effective_size} > stride "
            f"{self.window.stride} shortens the sequence"
        )

    def check_streams(self) -> None:
        """In predict mode, raises ValueError unless the layer streams."""
        if self._mode == "predict" and not self.supports_step:
            raise ValueError(
                f"{self.name} does not stream ({self._why_not_streaming()}), so it cannot run in "
                f"predict mode; run it layer-wise in 'eval' mode"
            )


_NWC = ("NWC", "WIO", "NWC")


class _Convolution(Windowed):
    """The convolution every layer of this module is; see the module docstring."""

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
    ):
        n = len(kernel_size)
        self._kernel_size = as_tuple(layer_name, "kernel_size", kernel_size, n)
        self._strides = as_tuple(layer_name, "strides", 1 if strides is None else strides, n)
        self._dilation = as_tuple(
            layer_name, "dilation_rate", 1 if dilation_rate is None else dilation_rate, n
        )
        self._paddings = normalize_padding(layer_name, padding, n, trax_same)
        if filters is not None:
            check_positive(layer_name, filters=filters)
        check_positive(layer_name, groups=groups)
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
        super().__init__(name=layer_name)
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
    def window(self) -> TimeWindow | None:
        t = self._time
        if t is None:
            return None
        return TimeWindow(self._kernel_size[t], self._strides[t], self._dilation[t], self._paddings[t])

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

    def init_weights_and_state(self, input_signature, rng):
        values = input_signature.values if isinstance(input_signature, seq.Sequence) else input_signature
        in_features = self._in_features(values.shape)
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer(self._kernel_shape(in_features), rng_w)
        weights = (w, self._bias_initializer(self._bias_shape(in_features), rng_b)) if self._use_bias else w
        if self._mode != "predict" or not self.supports_step:
            return weights, ()
        check_rank(self.name, values, len(self._dimension_numbers[0]))
        return weights, self.window.initial_state(values, 0)

    # --- The computation. ----------------------------------------------------------------

    def forward(self, x, weights, state, rng):
        self.check_streams()
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
        x, was_sequence = as_sequence(x)
        check_rank(self.name, x, rank)
        stream, front, state = self.window.stream(x.mask_invalid(), state, self._mode, 0)
        y = self._lax_conv(stream.values, weights, time_padded=True)
        mask = self.window.output_mask(stream.mask, y.shape[1], front)
        return like_input(seq.Sequence(y, mask), was_sequence), state

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
            else explicit_padding(
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


class Conv(_Convolution):
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
    for key, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation_rate", dilation_rate)):
        check_positive("Conv1d", **{key: value})
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
        check_positive("CausalConv", kernel_width=kernel_width)
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


class CausalDepthwiseConv(_Convolution):
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
        check_positive("CausalDepthwiseConv", kernel_size=kernel_size)
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

    def _kernel_shape(self, in_features):
        return (self._kernel_size[0], in_features)

    def _feature_groups(self, in_features):
        return in_features

    def _conv_kernel(self, w):
        return jnp.reshape(w, (w.shape[0], 1, w.shape[1]))


class DepthwiseConv1D(_Convolution):
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
    ):
        for key, value in (
            ("kernel_size", kernel_size),
            ("strides", strides),
            ("dilation_rate", dilation_rate),
            ("depth_multiplier", depth_multiplier),
        ):
            check_positive("DepthwiseConv1D", **{key: value})
        if not isinstance(padding, str):
            raise TypeError(f"DepthwiseConv1D: padding must be a mode name, got padding={padding!r}")
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
        )
        self._depth_multiplier = depth_multiplier

    def _kernel_shape(self, in_features):
        return (self._kernel_size[0], 1, in_features * self._depth_multiplier)

    def _bias_shape(self, in_features):
        return (in_features * self._depth_multiplier,)

    def _feature_groups(self, in_features):
        return in_features


class Conv2D(_Convolution):
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
    ):
        if not isinstance(time_padding, str):
            raise TypeError(f"Conv2D: time_padding must be a mode name, got time_padding={time_padding!r}")
        super().__init__(
            "Conv2D",
            as_tuple("Conv2D", "kernel_size", kernel_size, 2),
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
        )
