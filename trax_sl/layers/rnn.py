"""Recurrent layers: LSTM, GRU and SRU cells, and the layers that run them over time.

Names, arguments, weight layouts and stack semantics are Trax's
(`trax.layers.rnn`). A cell maps `(x, state) -> (y, new_state)` for one time
step; `LSTM`, `GRU` and `SRU` are Trax's compositions around Trax's
`Scan(cell, axis=1, mode=mode)`, which streams (`control_flow.TimeScan`):
masked (invalid) steps leave a row's carry as it was, and in predict mode the
carry lives in the state, so a sequence fed block by block gives the outputs
of the whole sequence at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import checks, partitioning, shapes
from trax_sl import sequence as seq
from trax_sl.layers import activation_fns, base, convolution, core
from trax_sl.layers import initializers as init
from trax_sl.layers.base import Fn, Layer
from trax_sl.layers.combinators import Branch, Dup, Gate, Multiply, Parallel, Scan, Select, Serial, Split

# --- Helpers -------------------------------------------------------------------


def _add_bias(y, b):
    """y + b on the last axis, with the rank made explicit (no rank promotion)."""
    return y + jnp.reshape(b, (1,) * (y.ndim - b.ndim) + tuple(b.shape))


# --- Cells ---------------------------------------------------------------------

# A cell's kernel acts on `[x, h]` (input and hidden units concatenated: no one name) and gives hidden units.
_CELL_KERNEL, _CELL_BIAS = partitioning.Axes(None, "hidden"), partitioning.Axes("hidden")


class LSTMCell(Layer):
    """One step of an LSTM: `(x, state) -> (h, new_state)`, with Trax's gates.

    n_in=2, n_out=2. `x [batch, d_in]` and `state [batch, 2 * n_units]` (c
    then h, concatenated) -> `h [batch, n_units]` and the new state; any
    number of leading axes. Weights `(w [d_in + n_units, 4 * n_units],
    b [4 * n_units])` act on `[x, h]`; the gate blocks of `w` and `b` are in
    Trax's order i (input), j (candidate), f (forget), o (output):

        c' = c * sigmoid(f) + sigmoid(i) * tanh(j),  h' = tanh(c') * sigmoid(o).

    As in Trax, `forget_bias` is added at initialization to the whole bias
    vector (every gate, not only f).

    Predict mode: stateless (the recurrent state is an input); run it over
    time with `LSTM`.
    """

    def __init__(
        self,
        n_units: int,
        forget_bias: float = 1.0,
        kernel_initializer=init.GlorotUniformInitializer(),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    ):
        checks.check_positive("LSTMCell", n_units=n_units)
        super().__init__(n_in=2, n_out=2, name="LSTMCell")
        self._n_units = n_units
        self._forget_bias = forget_bias
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer

    def weight_axes(self, weights):
        return _CELL_KERNEL, _CELL_BIAS

    def init_weights_and_state(self, input_signature, rng):
        x, state = (seq.values_of(s) for s in input_signature)
        if state.shape[-1] != 2 * self._n_units:
            raise ValueError(
                f"{self.name}: the state's last axis must be 2 * n_units = {2 * self._n_units} "
                f"(c and h), got state {shapes.short_form(state)}"
            )
        rng_w, rng_b = jax.random.split(rng)
        w = self._kernel_initializer((x.shape[-1] + self._n_units, 4 * self._n_units), rng_w)
        b = self._bias_initializer((4 * self._n_units,), rng_b) + self._forget_bias
        return (w, b), base.EMPTY_STATE

    def forward(self, inputs, weights, state, rng):
        x, lstm_state = inputs
        c, h = jnp.split(lstm_state, 2, axis=-1)
        w, b = weights
        y = _add_bias(jnp.dot(jnp.concatenate([x, h], axis=-1), w), b)
        i, j, f, o = jnp.split(y, 4, axis=-1)
        new_c = c * jax.nn.sigmoid(f) + jax.nn.sigmoid(i) * jnp.tanh(j)
        new_h = jnp.tanh(new_c) * jax.nn.sigmoid(o)
        return (new_h, jnp.concatenate([new_c, new_h], axis=-1)), state


class GRUCell(Layer):
    """One step of a GRU: `(x, state) -> (new_state, new_state)`, as in Trax.

    n_in=2, n_out=2. `x [batch, d_in]` and `state [batch, n_units]` -> the new
    state twice (output and carry); any number of leading axes. Weights
    `(w1 [d_in + n_units, 2 * n_units], b1 [2 * n_units], w2 [d_in + n_units,
    n_units], b2 [n_units])`:

        u, r = split(sigmoid([x, s] w1 + b1)),  c = [x, r * s] w2 + b2,
        s' = u * s + (1 - u) * tanh(c).

    `forget_bias` is added to b1 (both gates) at initialization, as in Trax.

    Predict mode: stateless (the recurrent state is an input); run it over
    time with `GRU`.
    """

    def __init__(
        self,
        n_units: int,
        forget_bias: float = 0.0,
        kernel_initializer=init.RandomUniformInitializer(0.01),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    ):
        checks.check_positive("GRUCell", n_units=n_units)
        super().__init__(n_in=2, n_out=2, name="GRUCell")
        self._n_units = n_units
        self._forget_bias = forget_bias
        self._kernel_initializer = kernel_initializer
        self._bias_initializer = bias_initializer

    def weight_axes(self, weights):
        return _CELL_KERNEL, _CELL_BIAS, _CELL_KERNEL, _CELL_BIAS

    def init_weights_and_state(self, input_signature, rng):
        x, state = (seq.values_of(s) for s in input_signature)
        if state.shape[-1] != self._n_units:
            raise ValueError(
                f"{self.name}: the state's last axis must be n_units = {self._n_units}, got state "
                f"{shapes.short_form(state)}"
            )
        d = x.shape[-1] + self._n_units
        rng1, rng2, rng3, rng4 = jax.random.split(rng, 4)
        w1 = self._kernel_initializer((d, 2 * self._n_units), rng1)
        b1 = self._bias_initializer((2 * self._n_units,), rng2) + self._forget_bias
        w2 = self._kernel_initializer((d, self._n_units), rng3)
        b2 = self._bias_initializer((self._n_units,), rng4)
        return (w1, b1, w2, b2), base.EMPTY_STATE

    def forward(self, inputs, weights, state, rng):
        x, gru_state = inputs
        w1, b1, w2, b2 = weights
        y = _add_bias(jnp.dot(jnp.concatenate([x, gru_state], axis=-1), w1), b1)
        u, r = jnp.split(jax.nn.sigmoid(y), 2, axis=-1)
        c = _add_bias(jnp.dot(jnp.concatenate([x, r * gru_state], axis=-1), w2), b2)
        new_state = u * gru_state + (1 - u) * jnp.tanh(c)
        return (new_state, new_state), state


def _AddSigmoidBias(sigmoid_bias: float) -> Layer:  # noqa: N802
    return Fn(f"AddSigmoidBias({sigmoid_bias})", lambda x: x + sigmoid_bias)


def GeneralGRUCell(  # noqa: N802
    candidate_transform,
    memory_transform_fn=None,
    gate_nonlinearity=activation_fns.Sigmoid,
    candidate_nonlinearity=activation_fns.Tanh,
    dropout_rate_c: float = 0.1,
    sigmoid_bias: float = 0.5,
) -> Layer:
    """Returns a GRU cell on the memory alone, with transforms of your choice (Trax's).

    n_in=1, n_out=1: `s [batch, ...]` -> `s'`, where

        u = gate(T'(s) + sigmoid_bias),  r = gate(T''(s) + sigmoid_bias),
        c = dropout(candidate(T(r * s))),  s' = m(s) * u + (1 - u) * c,

    with T, T', T'' three layers made by `candidate_transform()`, m made by
    `memory_transform_fn()` (identity if None), gate = `gate_nonlinearity()`
    and candidate = `candidate_nonlinearity()` (layer factories), and dropout
    at `dropout_rate_c` on the candidate only (in mode 'train').

    Predict mode: pointwise in time where its transforms are.
    """
    gate_block = [candidate_transform(), _AddSigmoidBias(sigmoid_bias), gate_nonlinearity()]
    reset_block = [candidate_transform(), _AddSigmoidBias(sigmoid_bias), gate_nonlinearity()]
    candidate_block = [
        Dup(),
        reset_block,
        Multiply(),
        candidate_transform(),
        candidate_nonlinearity(),
        core.Dropout(rate=dropout_rate_c),
    ]
    memory_transform = memory_transform_fn() if memory_transform_fn else []
    return Serial(Branch(memory_transform, gate_block, candidate_block), Gate())


def ConvGRUCell(n_units: int, kernel_size=(3, 3)) -> Layer:  # noqa: N802
    """Returns a convolutional GRU cell (https://arxiv.org/abs/1511.06432), as in Trax.

    n_in=1, n_out=1: `s [batch, height, width, n_units]` -> `s'`, a
    `GeneralGRUCell` whose transforms are `Conv(n_units, kernel_size,
    padding='SAME')`.

    Predict mode: stateless; not a layer over time (the state is its input).
    """
    checks.check_positive("ConvGRUCell", n_units=n_units)

    def BuildConv():  # noqa: N802
        return convolution.Conv(filters=n_units, kernel_size=kernel_size, padding="SAME")

    return GeneralGRUCell(
        candidate_transform=BuildConv,
        memory_transform_fn=None,
        gate_nonlinearity=activation_fns.Sigmoid,
        candidate_nonlinearity=activation_fns.Tanh,
    )


def InnerSRUCell() -> Layer:  # noqa: N802
    """Returns one step of an SRU's recurrence: `(x * (1 - f), f, c) -> (c', c')`.

    n_in=3, n_out=2, with `c' = f * c + x * (1 - f)`, all `[batch, n_units]`.
    Predict mode: stateless; run it over time with `ScanSRUCell`.
    """

    def f(cur_x_times_one_minus_f, cur_f, cur_state):
        res = cur_f * cur_state + cur_x_times_one_minus_f
        return res, res

    return Fn("InnerSRUCell", f, n_out=2)


# --- Zero states and the scan over time ---------------------------------------------


class _ZeroState(Layer):
    """Zeros `[batch, depth]` (float32) for an input `[batch, time, d]`.

    depth is `depth_multiplier * d`, or `depth` when given. Sees Sequences, so
    that its output (which has no time axis) stays a plain array.
    """

    handles_sequences = True

    def __init__(self, depth_multiplier: int = 1, depth: int | None = None):
        super().__init__(name="MakeZeroState")
        self._depth_multiplier = depth_multiplier
        self._depth = depth

    def forward(self, x, weights, state, rng):
        values = seq.values_of(x)
        if values.ndim != 3:
            raise ValueError(
                f"{self.name}: expected input [batch, time, depth] (rank 3), got {shapes.short_form(values)}"
            )
        depth = self._depth if self._depth is not None else self._depth_multiplier * values.shape[-1]
        return jnp.zeros((values.shape[0], depth), dtype=jnp.float32), state


def MakeZeroState(depth_multiplier: int = 1) -> Layer:  # noqa: N802
    """Returns a layer making zeros shaped like x without its time axis (axis 1).

    n_in=1, n_out=1: `x [batch, time, d]` -> zeros `[batch, depth_multiplier
    * d]`, float32, a plain array even for a Sequence input.
    Predict mode: stateless; zeros for each block.
    """
    checks.check_positive("MakeZeroState", depth_multiplier=depth_multiplier)
    return _ZeroState(depth_multiplier=depth_multiplier)


# --- Recurrent layers ---------------------------------------------------------------


class _MaskInvalid(Layer):
    """Zeroes a Sequence's invalid steps (arrays pass as they are); weightless like a no-op."""

    handles_sequences = True

    def __init__(self):
        super().__init__(name="MaskInvalid")

    def forward(self, x, weights, state, rng):
        return (x.mask_invalid() if isinstance(x, seq.Sequence) else x), state


class _MaskedDense(core.Dense):
    """Dense on a Sequence's masked values, so NaN padding cannot reach its weight gradients."""

    handles_sequences = True

    def forward(self, x, weights, state, rng):
        if not isinstance(x, seq.Sequence):
            return super().forward(x, weights, state, rng)
        x = x.mask_invalid()
        y, state = super().forward(x.values, weights, state, rng)
        return seq.Sequence(y, x.mask), state


def _recurrent_stack(layers, name: str, mode: str) -> Layer:
    """Trax's Serial for an RNN: named after it and printed without sublayers."""
    stack = Serial(layers, name=name, sublayers_to_print=[])
    stack._mode = mode  # So that `.mode` says what was asked for, as after with_mode.
    return stack


def LSTM(  # noqa: N802
    n_units: int, mode: str = "train", return_state: bool = False, initial_state: bool = False
) -> Layer:
    """Returns an LSTM running on axis 1 (time): Trax's `LSTMCell` under a streaming scan.

    n_in=1 (2 with `initial_state`), n_out=1 (2 with `return_state`).
    `x [batch, time, d_in]` -> `y [batch, time, n_units]` (the h of each
    step). With `initial_state=True` the stack holds `x, state` with `state
    [batch, 2 * n_units]` (c then h); otherwise the scan starts from zeros.
    With `return_state=True` the final state `[batch, 2 * n_units]` (each
    row's state after its last valid step) is pushed after y. Weights are
    Trax's: `(((), ((), ())), ((w, b),), ())` without initial_state (the
    `Branch`, `Scan` and `Select` of Trax's composition), see `LSTMCell`.

    Trax's zero state is `2 * d_in` wide, so Trax's LSTM needs d_in ==
    n_units; here it is `2 * n_units` wide, so any d_in works.

    Predict mode: the state holds the (c, h) carry `[batch, 2 * n_units]`
    of each row (frozen at invalid steps); with `initial_state` the stack's
    state is used for the first block only. block_size 1, no latency.
    """
    checks.check_positive("LSTM", n_units=n_units)
    checks.check_mode("LSTM", mode)
    layers = [] if initial_state else [Branch(None, _ZeroState(depth=2 * n_units))]
    layers.append(Scan(LSTMCell(n_units=n_units), axis=1, mode=mode))
    if not return_state:
        layers.append(Select([0], n_in=2))
    return _recurrent_stack(layers, f"LSTM_{n_units}", mode)


def GRU(n_units: int, mode: str = "train") -> Layer:  # noqa: N802
    """Returns a GRU running on axis 1 (time): Trax's `GRUCell` under a streaming scan.

    n_in=1, n_out=1: `x [batch, time, d_in]` -> `y [batch, time, n_units]`,
    starting from a zero state. Weights are Trax's:
    `(((), ((), ())), ((w1, b1, w2, b2),), ())`, see `GRUCell`. Trax's zero
    state is `d_in` wide (so it needs d_in == n_units); here it is `n_units`.

    Predict mode: the state holds the carry `[batch, n_units]` of each row
    (frozen at invalid steps). block_size 1, no latency.
    """
    checks.check_positive("GRU", n_units=n_units)
    checks.check_mode("GRU", mode)
    layers = [
        Branch(None, _ZeroState(depth=n_units)),
        Scan(GRUCell(n_units=n_units), axis=1, mode=mode),
        Select([0], n_in=2),
    ]
    return _recurrent_stack(layers, f"GRU_{n_units}", mode)


def ScanSRUCell(mode: str = "train", monkey_patched_mask=None) -> Layer:  # noqa: N802
    """Returns `InnerSRUCell` run over time (axis 1), streaming.

    n_in=3, n_out=2: `x * (1 - f) [batch, time, n]`, `f [batch, time, n]`,
    `c0 [batch, n]` -> `c [batch, time, n]` and the final carry `[batch, n]`.
    Trax's `monkey_patched_mask` (a Terraformer workaround that feeds a mask
    from the side) is not needed: Sequence inputs carry their masks, and
    masked steps keep the carry.

    Predict mode: the state holds the carry `c [batch, n]` of each row.
    """
    if monkey_patched_mask is not None:
        raise ValueError(
            "ScanSRUCell: monkey_patched_mask is not supported; pass Sequences (values and mask) "
            "instead: invalid steps keep the carry"
        )
    return Scan(InnerSRUCell(), axis=1, mode=mode)


def SRU(n_units: int, activation: Layer | None = None, mode: str = "train") -> Layer:  # noqa: N802
    """Returns an SRU (Simple Recurrent Unit, https://arxiv.org/abs/1709.02755), as in Trax.

    n_in=1, n_out=1: `x [batch, time, n_units]` -> `[batch, time, n_units]`
    (the highway term needs d_in == n_units). With `r, f, y` from one
    `Dense(3 * n_units)` and sigmoid gates r and f:

        c_t = f_t * c_{t-1} + (1 - f_t) * y_t,
        h_t = r_t * activation(c_t) + (1 - r_t) * x_t * sqrt(3).

    The sqrt(3) is Trax's. `activation` is a layer (e.g. `tl.Tanh()`) or
    None for the identity. Only the recurrence of c is sequential; the
    gates are computed for all steps at once. The weights are those of
    Trax's composition, the Dense's `(w [n, 3n], b [3n])` in the first
    Branch.

    Predict mode: the state holds the carry `c [batch, n_units]` of each row
    (frozen at invalid steps). block_size 1, no latency.
    """
    checks.check_positive("SRU", n_units=n_units)
    checks.check_mode("SRU", mode)
    if activation is not None and not isinstance(activation, Layer):
        raise TypeError(
            f"SRU: activation must be a Layer (e.g. tl.Tanh()) or None, got {type(activation).__name__}"
        )
    name = f"SRU_{n_units}"

    def final_gate(c, r, x):
        if x.shape[-1] != c.shape[-1]:
            raise ValueError(
                f"{name}: the input depth must equal n_units={n_units} (the highway adds "
                f"x to the output), got input {shapes.short_form(x)}"
            )
        return c * r + x * (1 - r) * (3**0.5)

    layers = [
        # Trax's Branch(Dense, []), with padding zeroed on both branches (same weights tree).
        Branch(_MaskedDense(3 * n_units, kernel_axes=("embed", "hidden")), _MaskInvalid()),  # r_f_y, x
        Split(n_items=3),  # r, f, y, x
        Parallel(activation_fns.Sigmoid(), activation_fns.Sigmoid()),  # r, f, y, x
        Fn("SRUGates", lambda r, f, y: (y * (1.0 - f), f, r), n_out=3),  # y * (1 - f), f, r, x
        Parallel(None, None, Branch(MakeZeroState(), None)),  # y * (1 - f), f, c0, r, x
        ScanSRUCell(mode=mode),  # c, c_final, r, x
        Select([0], n_in=2),  # c, r, x
        activation if activation is not None else [],
        Fn("FinalSRUGate", final_gate),
    ]
    return _recurrent_stack(layers, name, mode)
