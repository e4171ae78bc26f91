"""Core layers: Dense, Embedding, Dropout, Weights, summaries, and small elementwise layers.

Names, arguments, defaults and results are Trax's (`trax.layers.core`). Most
of these layers are pointwise in time and leave Sequences to the base class;
LocallyConnected1d and the pass-through layers (summaries, PrintShape) handle
Sequences themselves.

Trax's `core` also holds the layers that reduce or normalize along an axis
(`reductions`) and the distribution functions (`distributions`); they are
re-exported here, so `trax_sl.layers.core.<name>` keeps every Trax name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, streaming
from trax_sl.layers import initializers as init
from trax_sl.layers.base import Fn, Layer
from trax_sl.layers.distributions import (
    log_gaussian_diag_pdf,
    log_gaussian_pdf,
    log_softmax,
    logsoftmax_sample,
    multigaussian_loss,
    one_hot,
)
from trax_sl.layers.reductions import ArgMax, LogSoftmax, LogSumExp, Max, Mean, Min, Softmax, Sum

__all__ = [
    "ArgMax",
    "Dense",
    "Dropout",
    "Embedding",
    "Flatten",
    "LocallyConnected1d",
    "LogSoftmax",
    "LogSumExp",
    "Max",
    "Mean",
    "Min",
    "Negate",
    "PrintShape",
    "RandomUniform",
    "Softmax",
    "StopGradient",
    "Sum",
    "SummaryImage",
    "SummaryScalar",
    "ThresholdToBinary",
    "ToFloat",
    "Weights",
    "log_gaussian_diag_pdf",
    "log_gaussian_pdf",
    "log_softmax",
    "logsoftmax_sample",
    "multigaussian_loss",
    "one_hot",
]

# --- Trainable layers ----------------------------------------------------------


def _bias_like(b, ndim: int):
    """Reshapes a bias to the rank of the output it is added to (no rank promotion)."""
    return jnp.reshape(b, (1,) * (ndim - b.ndim) + tuple(b.shape))


class Dense(Layer):
    """A dense (fully-connected, affine) layer on the last axis: y = x W + b.

    n_in=1, n_out=1. `[batch, time, d_in]` -> `[batch, time, n_units]`; any
    number of leading axes. Weights are `(w, b)` with `w [d_in, n_units]` and
    `b [n_units]`, or `w` alone when `use_bias=False`.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(
        self,
        n_units: int,
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
        use_bfloat16: bool = False,
        *,
        kernel_axes: tuple = ("embed", "mlp"),
    ):
        """Returns a dense layer of width `n_units`.

        Args:
            n_units: Number of output units (width of the layer).
            kernel_initializer: `(shape, rng) -> array` for the matrix W.
            bias_initializer: `(shape, rng) -> array` for the bias b.
            use_bias: If True, y = x W + b; else y = x W.
            use_bfloat16: If True, weights are bfloat16 instead of float32.
            kernel_axes: The logical axes of W (input, output) that say how it
                is split over a device mesh (see `trax_sl.partitioning`); b
                takes the output's.
        """
        if isinstance(n_units, (int, np.integer)) and n_units < 1:
            # Dense's message predates the shared check, and tests match it word for word.
            raise ValueError(f"Dense: n_units must be >= 1, got n_units={n_units!r}")
        checks.check_positive("Dense", n_units=n_units)
        super().__init__(name=f"Dense_{n_units}")
        self._n_units = n_units
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer
        self._use_bias = use_bias
        self._use_bfloat16 = use_bfloat16
        self._kernel_axes = partitioning.Axes(*kernel_axes)
        if len(self._kernel_axes) != 2:
            raise ValueError(f"Dense: kernel_axes must name 2 axes (input, output), got {kernel_axes!r}")

    def weight_axes(self, weights):
        kernel = self._kernel_axes
        return (kernel, partitioning.Axes(kernel[1])) if self._use_bias else kernel

    def init_weights_and_state(self, input_signature, rng):
        if len(input_signature.shape) < 1:
            raise ValueError(
                f"{self.name}: expected input with at least one axis (the last is the input "
                f"size), got {shapes.short_form(input_signature)}"
            )
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer((input_signature.shape[-1], self._n_units), rng_w)
        if self._use_bfloat16:
            w = w.astype(jnp.bfloat16)
        if not self._use_bias:
            return w, base.EMPTY_STATE
        b = self._bias_initializer((self._n_units,), rng_b)
        if self._use_bfloat16:
            b = b.astype(jnp.bfloat16)
        return (w, b), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        if self._use_bias:
            if not isinstance(weights, (tuple, list)) or len(weights) != 2:
                raise ValueError(
                    f"{self.name}: use_bias=True expects weights (w, b), got {shapes.short_form(weights)}"
                )
            w, b = weights
        else:
            w, b = weights, None
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise ValueError(
                f"{self.name}: expected input with last axis {w.shape[0]} (the weights' input "
                f"size), got {shapes.short_form(x)}"
            )
        y = jnp.dot(x, w)
        if b is not None:
            y = y + _bias_like(b, y.ndim)
        return y, state


class Embedding(Layer):
    """Maps integer ids to trainable vectors; ids are clipped to [0, vocab_size).

    n_in=1, n_out=1. `[batch, time]` int -> `[batch, time, d_feature]`; any
    shape of ids. Weights: `w [vocab_size, d_feature]`.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(
        self,
        vocab_size: int,
        d_feature: int,
        use_bfloat16: bool = False,
        kernel_initializer=init.ScaledInitializer(
            out_dim=-1, in_dim=-2, scale=1.0, mode="fan_out", distribution="uniform"
        ),
    ):
        """Returns an embedding layer of `vocab_size` vectors of size `d_feature`.

        Negative ids clip to 0 and ids >= vocab_size to vocab_size - 1, as in Trax.
        """
        checks.check_positive("Embedding", vocab_size=vocab_size, d_feature=d_feature)
        super().__init__(name=f"Embedding_{vocab_size}_{d_feature}")
        self._vocab_size = vocab_size
        self._d_feature = d_feature
        self._use_bfloat16 = use_bfloat16
        self._kernel_initializer = kernel_initializer

    def weight_axes(self, weights):
        return partitioning.Axes("vocab", "embed")

    def init_weights_and_state(self, input_signature, rng):
        del input_signature
        w = self._kernel_initializer((self._vocab_size, self._d_feature), rng)
        if self._use_bfloat16:
            w = w.astype(jnp.bfloat16)
        return w, base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        if not jnp.issubdtype(x.dtype, jnp.integer):
            raise TypeError(f"{self.name}: expected integer token ids, got {shapes.short_form(x)}")
        return partitioning.lookup_rows(weights, x, mode="clip"), state


class Dropout(Layer):
    """Zeroes each input value with probability `rate` in training; a no-op otherwise.

    n_in=1, n_out=1. `[batch, time, depth]` -> same. In `mode='train'`
    surviving values are scaled by `1 / (1 - rate)`; the mask is shared
    (has size 1) along `shared_axes`. Needs an rng in train mode when rate > 0.

    Predict mode: stateless no-op; streams with block_size 1.
    """

    def __init__(self, rate: float = 0.0, shared_axes=None, mode: str = "train"):
        """Returns a dropout layer.

        Args:
            rate: Probability of dropping (zeroing) each value, in [0, 1).
            shared_axes: Axes (of the values) along which the mask is shared.
            mode: 'train' drops; 'eval' and 'predict' pass inputs through.
        """
        checks.check_rate("Dropout", rate=rate)
        checks.check_mode("Dropout", mode)
        shared_axes = () if shared_axes is None else tuple(shared_axes)
        if not all(isinstance(a, (int, np.integer)) for a in shared_axes):
            raise TypeError(f"Dropout: shared_axes must be integers, got shared_axes={shared_axes!r}")
        super().__init__(name="Dropout")
        self._initial_rate = rate
        self._shared_axes = shared_axes
        self._mode = mode

    def forward(self, x, weights, state, rng):
        rate = self._initial_rate
        if self._mode != "train" or rate == 0.0:
            return x, state
        if rng is None:
            raise ValueError(
                f"{self.name}: mode='train' with rate={rate} needs an rng, got None; pass rng= "
                f"(or use mode='eval' for no dropout)"
            )
        mask_shape = list(x.shape)
        for axis in self._shared_axes:
            if not -x.ndim <= axis < x.ndim:
                raise ValueError(
                    f"{self.name}: shared axis {axis} is out of range for input {shapes.short_form(x)}"
                )
            mask_shape[axis] = 1
        keep_prob = 1.0 - rate
        keep = jax.random.bernoulli(rng, keep_prob, tuple(mask_shape))
        return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros((), x.dtype)), state


class Weights(Layer):
    """Learnable weights as a layer: takes no input and returns its weights.

    n_in=0, n_out=1. `()` -> `w` of the given shape.

    Predict mode: stateless; has no time axis.
    """

    def __init__(self, initializer, shape=(), use_bfloat16: bool = False):
        """Returns a layer of learnable weights of `shape`, made by `initializer(shape, rng)`."""
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        super().__init__(n_in=0, n_out=1, name="Weights")
        self._initializer = initializer
        self._shape = shape
        self._use_bfloat16 = use_bfloat16

    def weight_axes(self, weights):
        return partitioning.Axes(*[None] * len(self._shape))  # No names: split only if large (FSDP).

    def init_weights_and_state(self, input_signature, rng):
        del input_signature
        w = self._initializer(self._shape, rng)
        if self._use_bfloat16:
            w = w.astype(jnp.bfloat16)
        return w, base.EMPTY_STATE

    def forward(self, inputs, weights, state, rng):
        del inputs
        return weights, state


class RandomUniform(Layer):
    """Returns a fresh tensor of values drawn uniformly from [min_val, max_val).

    n_in=0, n_out=1. `()` -> `[*shape]` of `dtype`. Needs an rng.
    `sync=True` makes devices draw the same values: under `shard_map`/`pmap`
    over an axis named 'batch' every device uses device 0's rng; elsewhere
    (plain jit, one program for all devices) the rng is already shared.

    Predict mode: not streamable (a new draw per call, not a function of a sequence).
    """

    def __init__(
        self, min_val: float = 0.0, max_val: float = 1.0, shape=(), dtype=jnp.float32, sync: bool = False
    ):
        if not min_val <= max_val:
            raise ValueError(f"RandomUniform: expected min_val <= max_val, got {min_val} > {max_val}")
        super().__init__(n_in=0, n_out=1, name="RandomUniform")
        self._min_val = min_val
        self._max_val = max_val
        self._shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        self._dtype = dtype
        self._sync = sync

    streaming_spec = streaming.NOT_STREAMING

    def forward(self, inputs, weights, state, rng):
        del inputs
        if rng is None:
            raise ValueError(f"{self.name}: needs an rng to draw random values, got None; pass rng=")
        if self._sync:
            try:
                rng = jax.lax.all_gather(rng, "batch")[0]
            except NameError:  # No 'batch' axis bound: one program, so one rng already.
                pass
        values = jax.random.uniform(rng, self._shape, self._dtype, self._min_val, self._max_val)
        return values, state


class LocallyConnected1d(Layer):
    """Like a 1-D convolution with stride 1, but with its own weights at each position.

    n_in=1, n_out=1. `[..., length, depth]` -> `[..., length_out, filters]`
    where length_out = length for 'SAME' (zero padding) and 'WRAP' (circular
    padding), and length - kernel_size + 1 for 'VALID'. Weights are
    `w [length_out, kernel_size, depth, filters]` and `b [length_out, filters]`
    (or `w` alone when use_bias=False), so the length is fixed by `init`. On a
    `[batch, time, depth]` Sequence the length axis is time: invalid steps
    are zeroed first, output step t is valid where input step t is ('SAME',
    'WRAP', which wraps around the whole padded time axis) or where its whole
    window is ('VALID'). With more axes (`[batch, time, length, depth]`) it is
    pointwise in time.

    Predict mode: not streamable (position-dependent weights).
    """

    handles_sequences = True

    def __init__(
        self,
        filters: int,
        kernel_size: int,
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
        use_bias: bool = True,
        padding: str = "VALID",
    ):
        checks.check_positive("LocallyConnected1d", filters=filters, kernel_size=kernel_size)
        if kernel_size % 2 != 1:
            raise ValueError(f"LocallyConnected1d: kernel_size must be odd, got kernel_size={kernel_size}")
        padding = padding.upper() if isinstance(padding, str) else padding
        if padding not in ("VALID", "SAME", "WRAP"):
            raise ValueError(
                f"LocallyConnected1d: padding must be 'VALID', 'SAME' or 'WRAP', got padding={padding!r}"
            )
        super().__init__(name=f"LocallyConnected1d_{filters}_{kernel_size}")
        self._filters = filters
        self._kernel_size = kernel_size
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer
        self._use_bias = use_bias
        self._padding = padding

    streaming_spec = streaming.NOT_STREAMING

    def _length_out(self, length: int) -> int:
        return length - self._kernel_size + 1 if self._padding == "VALID" else length

    def weight_axes(self, weights):
        w = partitioning.Axes("length", "conv_window", "conv_in", "conv_out")
        return (w, partitioning.Axes("length", "conv_out")) if self._use_bias else w

    def init_weights_and_state(self, input_signature, rng):
        shape = tuple(input_signature.shape)
        if len(shape) < 2 or self._length_out(shape[-2]) < 1:
            raise ValueError(
                f"{self.name}: expected input [..., length, depth] with length >= kernel_size "
                f"{self._kernel_size} for padding 'VALID', got {shapes.short_form(input_signature)}"
            )
        length_out = self._length_out(shape[-2])
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer((length_out, self._kernel_size, shape[-1], self._filters), rng_w)
        if not self._use_bias:
            return w, base.EMPTY_STATE
        return (w, self._bias_initializer((length_out, self._filters), rng_b)), base.EMPTY_STATE

    def _apply_array(self, x, weights):
        w, b = weights if self._use_bias else (weights, None)
        if x.ndim < 2 or (self._length_out(x.shape[-2]), x.shape[-1]) != (w.shape[0], w.shape[2]):
            raise ValueError(
                f"{self.name}: expected input [..., length, depth] giving "
                f"{w.shape[0]} outputs with depth {w.shape[2]} (the weights' sizes), "
                f"got {shapes.short_form(x)}"
            )
        half = (self._kernel_size - 1) // 2
        if half and self._padding == "SAME":
            x = jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(half, half), (0, 0)])
        elif half and self._padding == "WRAP":
            x = jnp.concatenate([x[..., -half:, :], x, x[..., :half, :]], axis=-2)
        length_out = w.shape[0]
        patches = jnp.stack([x[..., i : i + length_out, :] for i in range(self._kernel_size)], axis=-2)
        y = jnp.einsum("...lkd,lkdf->...lf", patches, w)
        return y if b is None else y + _bias_like(b, y.ndim)

    def forward(self, x, weights, state, rng):
        if not isinstance(x, seq.Sequence):
            return self._apply_array(x, weights), state
        if x.ndim > 3:  # The length axis is not time: pointwise in time.
            return seq.Sequence(self._apply_array(x.values, weights), x.mask), state
        y = self._apply_array(x.mask_invalid().values, weights)
        if x.ndim < 3:  # Time is the depth axis and is contracted away.
            return y, state
        mask = x.mask
        if self._padding == "VALID":
            length_out = y.shape[1]
            windows = jnp.stack([mask[:, i : i + length_out] for i in range(self._kernel_size)])
            mask = jnp.all(windows, axis=0)
        return seq.Sequence(y, mask), state


# --- Pass-through layers with side effects ----------------------------------------


class _PassThrough(Layer):
    """Base of layers that return their n_in inputs unchanged (Sequences included)."""

    handles_sequences = True

    def __init__(self, n_in: int, name: str):
        checks.check_positive(name, n_in=n_in)
        super().__init__(n_in=n_in, n_out=n_in, name=name)


class _PrintShape(_PassThrough):
    def __init__(self, n_in: int, msg: str):
        super().__init__(n_in, name=f"PrintShape_{n_in}")
        self._msg = msg

    def forward(self, inputs, weights, state, rng):
        items = (inputs,) if self.n_in == 1 else tuple(inputs)
        info = f"PrintShape: {self._msg}\n    " + "\n    ".join(shapes.short_form(x) for x in items)
        jax.debug.callback(functools.partial(print, info))
        return inputs, state


def PrintShape(n_in: int = 1, msg: str = "") -> Layer:  # noqa: N802
    """Returns a layer that prints the shapes of its n_in inputs and returns them unchanged.

    n_in=n_in, n_out=n_in. Prints at run time through `jax.debug.callback`,
    once per execution (also under jit), as `PrintShape: msg` and one line
    per input in short form (`f32[8,16,32]`, `Sequence(f32[8,16,32])`);
    abstract evaluation (`init`, `output_signature`) prints nothing.

    Predict mode: stateless; streams with block_size 1.
    """
    return _PrintShape(n_in, msg)


class SummaryScalar(_PassThrough):
    """Passes its input through and keeps an aggregate of it, for TensorBoard.

    n_in=1, n_out=1. `[batch, time, depth]` -> same. The state is Trax's
    dict `{'summary_' + name: aggregation_fun(x)}` (a float32 scalar), kept
    by the layer named `Summary_{name}`. For a Sequence the default
    `jnp.mean` is the mean over valid steps; another `aggregation_fun` gets
    the values with invalid steps zeroed.

    Predict mode: the state holds the aggregate of the last block.
    """

    def __init__(self, name: str, aggregation_fun: Callable = jnp.mean):
        super().__init__(1, name=f"Summary_{name}")
        self._key = f"summary_{name}"
        self._aggregation_fun = aggregation_fun

    def init_weights_and_state(self, input_signature, rng):
        return base.EMPTY_WEIGHTS, {self._key: jnp.zeros((), jnp.float32)}

    def forward(self, x, weights, state, rng):
        if isinstance(x, seq.Sequence):
            values = x.mask_invalid().values
            if self._aggregation_fun is jnp.mean:
                count = jnp.sum(x.mask) * np.prod(x.channel_shape, dtype=np.int64)
                summary = jnp.sum(values) / jnp.maximum(count, 1)
            else:
                summary = self._aggregation_fun(values)
        else:
            summary = self._aggregation_fun(x)
        return x, {self._key: jnp.asarray(summary, jnp.float32).reshape(())}


class SummaryImage(_PassThrough):
    """Passes its inputs through and keeps up to num_summaries images, for TensorBoard.

    n_in=n_in, n_out=n_in. The state holds `recover_fn(inputs)[:num_summaries]`
    (the first examples of the batch), read by a training loop from the layer
    named `Summary_{name}`. Without recover_fn the single input is the image
    batch (e.g. `[batch, height, width, channels]`); with n_in > 1 a
    recover_fn is required. Sequence inputs reach recover_fn as values with
    invalid steps zeroed.

    Predict mode: not streamable (its state holds whole inputs, whose length varies).
    """

    def __init__(self, name: str, n_in: int, num_summaries: int = 5, recover_fn: Callable | None = None):
        checks.check_positive("SummaryImage", num_summaries=num_summaries)
        if n_in > 1 and recover_fn is None:
            raise ValueError(
                f"SummaryImage: n_in={n_in} needs a recover_fn that makes one image batch of the "
                f"{n_in} inputs"
            )
        super().__init__(n_in, name=f"Summary_{name}")
        self._num_summaries = num_summaries
        self._recover_fn = recover_fn

    streaming_spec = streaming.NOT_STREAMING

    def _images(self, inputs):
        def values(x):
            return x.mask_invalid().values if isinstance(x, seq.Sequence) else x

        if self.n_in == 1:
            inputs = values(inputs)
        else:
            inputs = tuple(values(x) for x in inputs)
        images = inputs if self._recover_fn is None else self._recover_fn(inputs)
        return images[: self._num_summaries]

    def init_weights_and_state(self, input_signature, rng):
        images = jax.eval_shape(self._images, input_signature)
        return base.EMPTY_WEIGHTS, jnp.zeros(images.shape, images.dtype)

    def forward(self, inputs, weights, state, rng):
        return inputs, self._images(inputs)


# --- Elementwise and reshaping layers ---------------------------------------------


def Flatten(n_axes_to_keep: int = 1) -> Layer:  # noqa: N802
    """Returns a layer that merges all axes after the first n_axes_to_keep into one.

    n_in=1, n_out=1. With n_axes_to_keep=2: `[batch, time, d1, d2]` ->
    `[batch, time, d1 * d2]`. With n_axes_to_keep=1 a Sequence's time axis is
    merged too: the result is a plain `[batch, time * depth]` array with
    invalid steps zeroed.

    Predict mode: stateless; streams with block_size 1 when n_axes_to_keep >= 2.
    """
    if n_axes_to_keep < 0:
        raise ValueError(f"Flatten: n_axes_to_keep must be >= 0, got n_axes_to_keep={n_axes_to_keep}")

    def f(x):
        if x.ndim <= n_axes_to_keep:
            raise ValueError(
                f"Flatten: input rank ({x.ndim}) must exceed the number of axes to keep "
                f"({n_axes_to_keep}), got {shapes.short_form(x)}"
            )
        return jnp.reshape(x, tuple(x.shape[:n_axes_to_keep]) + (-1,))

    return Fn("Flatten", f, supports_step=n_axes_to_keep >= 2)


def ToFloat() -> Layer:  # noqa: N802
    """Returns a layer that casts its input to float32.

    n_in=1, n_out=1. `[batch, time, depth]` -> same, float32.

    Predict mode: stateless; streams with block_size 1.
    """
    return Fn("ToFloat", lambda x: x.astype(jnp.float32))


def ThresholdToBinary(threshold: float = 0.5) -> Layer:  # noqa: N802
    """Returns a layer that maps values above `threshold` to 1, others to 0 (int32).

    n_in=1, n_out=1. `[batch, time, depth]` -> same, int32.

    Predict mode: stateless; streams with block_size 1.
    """
    return Fn("ThresholdToBinary", lambda x: (x > threshold).astype(jnp.int32))


def Negate() -> Layer:  # noqa: N802
    """Returns a layer that negates its input elementwise.

    n_in=1, n_out=1. `[batch, time, depth]` -> same.

    Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Negate", lambda x: -x)


def StopGradient() -> Layer:  # noqa: N802
    """Returns an identity layer that stops gradients.

    n_in=1, n_out=1. `[batch, time, depth]` -> same.

    Predict mode: stateless; streams with block_size 1.
    """
    return Fn("StopGradient", jax.lax.stop_gradient)
