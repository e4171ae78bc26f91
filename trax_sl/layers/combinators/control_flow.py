"""Control-flow combinators: Scan (TimeScan), Cond, Chunk, Cache, BatchLeadingAxes, Bidirectional.

Each runs a sublayer in another way than once on the stack: scanned along an
axis, chosen by a condition, over batch chunks, memoised, on folded axes, or
on time reversed. A scan over time with carries (`TimeScan`) streams; the
others stream only through their sublayer's rules.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from trax_sl import checks, shapes
from trax_sl import sequence as seq
from trax_sl.layers import base, errors, streaming
from trax_sl.layers.base import Layer
from trax_sl.layers.combinators.stack import (
    Branch,
    Concatenate,
    Select,
    Serial,
    StackOp,
    inputs_from_stack,
    outputs_onto_stack,
)


def _move_axis_to_front(x, axis):
    return jnp.moveaxis(x, axis, 0)


class Scan(Layer):
    """Applies a layer cumulatively along an axis, carrying n_carry items.

    The layer maps `(x1..xN, carry1..carryM) -> (y1..yK, new_carry1..M)`; Scan
    maps stacked xs (along `axis`) and the initial carries to stacked ys and
    the final carries. `remat=True` recomputes the body in the backward pass.

    Over time (`axis=1`) with carries it is a `TimeScan`, which streams as
    Trax's predict-mode Scan does; over other axes it does not stream.
    """

    handles_sequences = True

    def __new__(cls, layer=None, axis: int = 0, n_carry: int = 1, *args, **kwargs):
        over_time = cls is Scan and axis == 1 and isinstance(layer, Layer) and 1 <= n_carry < layer.n_in
        return super().__new__(TimeScan if over_time else cls)

    def __init__(
        self, layer: Layer, axis: int = 0, n_carry: int = 1, remat: bool = False, mode: str = "train"
    ):
        if n_carry > min(layer.n_in, layer.n_out):
            raise ValueError(
                f"Scan: n_carry={n_carry} exceeds the layer's n_in={layer.n_in} or n_out={layer.n_out}"
            )
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name="Scan")
        self._sublayers = (layer,)
        self._axis = axis
        self._n_carry = n_carry
        self._remat = remat
        self._mode = mode

    @property
    def sublayer(self) -> Layer:
        return self._sublayers[0]

    streaming_spec = streaming.NOT_STREAMING

    def forward(self, inputs, weights, state, rng):
        layer = self.sublayer
        items = base.as_items(inputs, self.n_in)
        n_xs = self.n_in - self._n_carry
        xs = tuple(jax.tree.map(lambda x: _move_axis_to_front(x, self._axis), x) for x in items[:n_xs])
        carries = items[n_xs:]
        length = jax.tree.leaves(xs)[0].shape[0] if xs else None
        if length is None:
            raise ValueError("Scan needs at least one scanned (non-carry) input")
        rngs = None if rng is None else jax.random.split(rng, length)

        def body(carry_and_state, x_and_rng):
            carry, layer_state = carry_and_state
            x, step_rng = x_and_rng
            outputs, new_state = base.call_sublayer(
                0,
                layer,
                base.from_items(tuple(x) + tuple(carry), layer.n_in),
                weights[0],
                layer_state,
                step_rng,
            )
            outputs = base.as_items(outputs, layer.n_out)
            n_ys = layer.n_out - self._n_carry
            return (outputs[n_ys:], new_state), outputs[:n_ys]

        if self._remat:
            body = jax.checkpoint(body)
        (carries, new_state), ys = jax.lax.scan(body, (carries, state[0]), (xs, rngs))
        ys = tuple(jax.tree.map(lambda y: jnp.moveaxis(y, 0, self._axis), y) for y in ys)
        return base.from_items(ys + tuple(carries), self.n_out), (new_state,)

    def init_with_output_signature(self, input_signature, rng):
        items = base.as_items(input_signature, self.n_in)
        n_xs = self.n_in - self._n_carry
        if n_xs < 1:
            raise ValueError("Scan needs at least one scanned (non-carry) input")
        axis_len = items[0].shape[self._axis]

        def drop_axis(s):
            shape = list(s.shape)
            del shape[self._axis]
            return shapes.ShapeDtype(shape, s.dtype)

        def add_axis(s):
            shape = list(s.shape)
            shape.insert(self._axis % (len(shape) + 1), axis_len)
            return shapes.ShapeDtype(shape, s.dtype)

        step_sig = tuple(jax.tree.map(drop_axis, x) for x in items[:n_xs]) + tuple(items[n_xs:])
        w, s, out = base.init_sublayer(0, self.sublayer, base.from_items(step_sig, self.sublayer.n_in), rng)
        out_items = base.as_items(out, self.n_out)
        n_ys = self.n_out - self._n_carry
        out_items = tuple(jax.tree.map(add_axis, y) for y in out_items[:n_ys]) + out_items[n_ys:]
        return (w,), (s,), base.from_items(out_items, self.n_out)


def _drop_time(signature):
    """The signature of one time step of a `[batch, time, ...]` item."""
    values = seq.values_of(signature)
    if len(values.shape) < 2:
        raise ValueError(f"expected scanned inputs [batch, time, ...], got {shapes.short_form(values)}")
    return shapes.ShapeDtype((values.shape[0],) + tuple(values.shape[2:]), values.dtype)


def _frozen_where(valid, new, old):
    """new where the step is valid, else old (the carry does not advance)."""
    valid = jnp.reshape(valid, (valid.shape[0],) + (1,) * (old.ndim - 1))
    return jnp.where(valid, new.astype(old.dtype), old)


class TimeScan(Scan):
    """`Scan(cell, axis=1, n_carry >= 1, ...)`: a cell run over time that streams, as Trax's Scan does.

    `Scan` builds this for `axis=1` with carries, so Trax's code gets it as
    written. The cell maps `(x1..xN, carry1..carryM) -> (y1..yK, new_carry1..M)` for
    one step; this layer maps `xs [batch, time, ...]` (Sequences or arrays)
    and initial carries `[batch, ...]` to `ys [batch, time, ...]` and the
    final carries. A row's carry does not advance at its invalid steps, and
    invalid steps are zeroed before the cell sees them, so padding never
    reaches valid outputs. The ys are Sequences with the (and-ed) input mask
    when any x is a Sequence. The weights are `(cell_weights,)`, as Trax's.

    Predict mode: the state holds (cell state, carries, started): the carries
    of the stream so far, used instead of the stack's carries from the
    second block on (the first block starts from the stack's, as in Trax);
    `started` is per row (`[batch]`), so that a row's stream restarts alone.
    """

    handles_sequences = True

    def __init__(
        self, layer: Layer, axis: int = 1, n_carry: int = 1, remat: bool = False, mode: str = "train"
    ):
        if axis != 1 or not 1 <= n_carry < layer.n_in:
            raise ValueError(
                f"Scan over time: axis must be 1 and n_carry >= 1 must leave at least one scanned input; "
                f"got axis={axis}, n_carry={n_carry} for {layer.name} with n_in={layer.n_in}"
            )
        checks.check_mode("Scan", mode)
        super().__init__(layer, axis=1, n_carry=n_carry, remat=remat, mode=mode)

    # The carry sees every earlier step; the cell has no time axis of its own.
    streaming_spec = streaming.StreamingSpec(receptive_field=(math.inf, 0))

    def _split(self, items: tuple):
        n_xs = self.n_in - self._n_carry
        return items[:n_xs], items[n_xs:]

    init_with_output_signature = Layer.init_with_output_signature  # Scan's is for other axes.

    def init_weights_and_state(self, input_signature, rng):
        xs, carries = self._split(base.as_items(input_signature, self.n_in))
        for c in carries:
            if isinstance(c, seq.Sequence):
                raise TypeError(f"{self.name}: carries must be arrays [batch, ...], got a Sequence")
        step_signature = tuple(_drop_time(x) for x in xs) + tuple(carries)
        w, s, _ = base.init_sublayer(
            0, self.sublayer, base.from_items(step_signature, self.sublayer.n_in), rng
        )
        if self._mode != "predict":
            return (w,), (s,)
        zeros = tuple(jnp.zeros(c.shape, jax.dtypes.canonicalize_dtype(c.dtype)) for c in carries)
        return (w,), (s, zeros, jnp.zeros(carries[0].shape[:1], jnp.bool_))

    def forward(self, inputs, weights, state, rng):
        xs, carries = self._split(base.as_items(inputs, self.n_in))
        if any(isinstance(c, seq.Sequence) for c in carries):
            raise TypeError(f"{self.name}: carries must be arrays [batch, ...], got a Sequence")
        masks = [x.mask for x in xs if isinstance(x, seq.Sequence)]
        values = [x.mask_invalid().values if isinstance(x, seq.Sequence) else x for x in xs]
        batch_time = tuple(values[0].shape[:2])
        for v in values[1:]:
            if tuple(v.shape[:2]) != batch_time:
                raise ValueError(
                    f"{self.name}: scanned inputs differ in [batch, time]: {shapes.short_form(tuple(values))}"
                )
        mask = jnp.ones(batch_time, jnp.bool_)
        for m in masks:
            mask = mask & m
        if self._mode == "predict":
            cell_state, stored, started = state
            carries = tuple(
                jnp.where(started.reshape(started.shape + (1,) * (s.ndim - 1)), s, c.astype(s.dtype))
                for s, c in zip(stored, carries)
            )
        else:
            (cell_state,) = state
        rngs = None if rng is None else jax.random.split(rng, batch_time[1])
        n_ys = self.sublayer.n_out - self._n_carry

        def body(carry_and_state, step):
            carry, cell_state = carry_and_state
            x_t, valid, step_rng = step
            outputs, new_cell_state = base.call_sublayer(
                0,
                self.sublayer,
                base.from_items(tuple(x_t) + tuple(carry), self.sublayer.n_in),
                weights[0],
                cell_state,
                step_rng,
            )
            outputs = base.as_items(outputs, self.sublayer.n_out)
            new_carry = tuple(_frozen_where(valid, n, o) for n, o in zip(outputs[n_ys:], carry))
            return (new_carry, new_cell_state), outputs[:n_ys]

        if self._remat:
            body = jax.checkpoint(body)
        if batch_time[1] == 1:
            # One step (streaming with blocks of 1): no loop to compile.
            step = (tuple(v[:, 0] for v in values), mask[:, 0], None if rngs is None else rngs[0])
            (carries, cell_state), ys = body((tuple(carries), cell_state), step)
            ys = tuple(jnp.expand_dims(y, 1) for y in ys)
        else:
            time_major = tuple(jnp.swapaxes(v, 0, 1) for v in values)
            (carries, cell_state), ys = jax.lax.scan(
                body, (tuple(carries), cell_state), (time_major, jnp.swapaxes(mask, 0, 1), rngs)
            )
            ys = tuple(jnp.swapaxes(y, 0, 1) for y in ys)
        if masks:
            ys = tuple(seq.Sequence(y, mask) for y in ys)
        if self._mode == "predict":
            new_state = (cell_state, carries, jnp.ones_like(state[2]))
        else:
            new_state = (cell_state,)
        return base.from_items(ys + carries, self.n_out), new_state


class Cond(Layer):
    """Runs `true` or `false` on the stack depending on `cond`.

    Stack: `c1..ck y...` (k = cond.n_in) -> `true(y...)` if cond(c) else
    `false(y...)`. Only the chosen branch runs; the other's state is kept.
    `false` defaults to the identity (then true must have n_in == n_out).
    As in Trax, it takes exactly n_in items (a tuple or list is several, so
    a one-item list is the item), and a branch output that is a list is
    that many stack items (`[2]` is the item 2).
    """

    handles_sequences = True

    def __init__(self, cond: Layer, true: Layer, false: Layer | None = None, name: str | None = None):
        if cond.n_out != 1:
            raise ValueError(f"Cond: cond must have n_out=1, got {cond.n_out}")
        if false is None:
            if true.n_in != true.n_out:
                raise ValueError(
                    f"Cond: with false=None (identity), true needs n_in == n_out, "
                    f"got n_in={true.n_in}, n_out={true.n_out}"
                )
            false = Select(list(range(true.n_in)), name="Identity")
        if (true.n_in, true.n_out) != (false.n_in, false.n_out):
            raise ValueError(
                f"Cond: true and false must agree on n_in and n_out, got "
                f"({true.n_in}, {true.n_out}) and ({false.n_in}, {false.n_out})"
            )
        super().__init__(n_in=cond.n_in + true.n_in, n_out=true.n_out, name=name or "Cond")
        self._sublayers = (cond, true, false)

    streaming_spec = streaming.NOT_STREAMING

    def _items(self, xs) -> tuple:
        return tuple(xs) if isinstance(xs, (tuple, list)) else (xs,)

    def _check_arity(self, x) -> None:
        if len(self._items(x)) != self.n_in:
            raise ValueError(
                f"{self.name} takes exactly {self.n_in} inputs (cond's {self.sublayers[0].n_in}, then the "
                f"branches' {self.sublayers[1].n_in}), got {len(self._items(x))} ({errors.safe_short_form(x)})"
            )

    def forward(self, xs, weights, state, rng):
        cond, true, false = self.sublayers
        stack = self._items(xs)
        rng_c, rng_t, rng_f = base.split_rng(rng, 3)
        c, cond_state = base.call_sublayer(0, cond, _inputs(stack, cond.n_in), weights[0], state[0], rng_c)
        stack = stack[cond.n_in :]

        def run_true(operand):
            y, s = base.call_sublayer(1, true, operand, weights[1], state[1], rng_t)
            return y, (s, state[2])

        def run_false(operand):
            y, s = base.call_sublayer(2, false, operand, weights[2], state[2], rng_f)
            return y, (state[1], s)

        y, (true_state, false_state) = jax.lax.cond(
            jnp.asarray(c).astype(bool).reshape(()), run_true, run_false, _inputs(stack, true.n_in)
        )
        return outputs_onto_stack(y, stack, true.n_in), (cond_state, true_state, false_state)

    def init_with_output_signature(self, input_signature, rng):
        cond, true, false = self.sublayers
        stack = self._items(input_signature)
        rngs = base.split_rng(rng, 3)
        wc, sc, _ = base.init_sublayer(0, cond, _inputs(stack, cond.n_in), rngs[0])
        stack = stack[cond.n_in :]
        wt, st, out = base.init_sublayer(1, true, _inputs(stack, true.n_in), rngs[1])
        wf, sf, _ = base.init_sublayer(2, false, _inputs(stack, true.n_in), rngs[2])
        return (wc, wt, wf), (sc, st, sf), outputs_onto_stack(out, stack, true.n_in)


def _inputs(stack: tuple, n: int):
    """n items off the top of the stack, packaged as a layer takes them (none is `()`)."""
    return inputs_from_stack(stack, n) if n else ()


def Chunk(layer: Layer, chunk_size: int, pass_unchunkable: bool = True) -> Layer:  # noqa: N802
    """Runs `layer` on batch chunks of chunk_size, one after another, to save memory.

    With pass_unchunkable, a batch that chunk_size does not divide runs whole.
    """
    if chunk_size == 0:
        return layer

    def to_chunks(x):
        batch = x.shape[0]
        size = chunk_size
        if batch % size:
            if not pass_unchunkable:
                raise ValueError(f"Chunk: batch {batch} is not a multiple of chunk_size {size}")
            size = batch
        return jnp.reshape(x, (batch // size, size) + tuple(x.shape[1:]))

    def from_chunks(x):
        return jnp.reshape(x, (x.shape[0] * x.shape[1],) + tuple(x.shape[2:]))

    reshape_in = StackOp(
        lambda xs: jax.tree.map(to_chunks, xs), n_in=layer.n_in, n_out=layer.n_in, name="ReshapeToChunks"
    )
    reshape_out = StackOp(
        lambda xs: jax.tree.map(from_chunks, xs),
        n_in=layer.n_out,
        n_out=layer.n_out,
        name="ReshapeFromChunks",
    )
    return Serial(reshape_in, Scan(layer, axis=0, n_carry=0), reshape_out, name="Chunk")


class Cache(Layer):
    """Runs `layer` on the first call and returns its stored outputs afterwards.

    The state holds (whether outputs are cached, the outputs, layer state).
    Predict mode: not streamable.
    """

    handles_sequences = True

    def __init__(self, layer: Layer):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name="Cache")
        self._sublayers = (layer,)

    @property
    def sublayer(self) -> Layer:
        return self._sublayers[0]

    streaming_spec = streaming.NOT_STREAMING

    def forward(self, inputs, weights, state, rng):
        is_cached, cached, layer_state = state

        def run(_):
            y, s = base.call_sublayer(0, self.sublayer, inputs, weights[0], layer_state, rng)
            return y, s

        def reuse(_):
            return cached, layer_state

        y, new_layer_state = jax.lax.cond(is_cached, reuse, run, None)
        return y, (jnp.ones((), jnp.bool_), y, new_layer_state)

    def init_with_output_signature(self, input_signature, rng):
        w, s, out = base.init_sublayer(0, self.sublayer, input_signature, rng)
        zeros = jax.tree.map(lambda sig: jnp.zeros(sig.shape, sig.dtype), out)
        return (w,), (jnp.zeros((), jnp.bool_), zeros, s), out


class BatchLeadingAxes(Layer):
    """Applies `layer` after folding all but the last n_last_axes_to_keep axes into one.

    Stack: `x [..., d1..dk]` -> `layer(x)` with the leading axes restored.
    """

    handles_sequences = True

    def __init__(self, layer: Layer, n_last_axes_to_keep: int = 1):
        if layer.n_in != 1 or layer.n_out != 1:
            raise ValueError("BatchLeadingAxes: the layer must have n_in = n_out = 1")
        super().__init__(n_in=1, n_out=1, name="BatchLeadingAxes")
        self._sublayers = (layer,)
        self._n_keep = n_last_axes_to_keep

    @property
    def sublayer(self) -> Layer:
        return self._sublayers[0]

    streaming_spec = streaming.NOT_STREAMING

    def _batched_shape(self, shape):
        return (-1,) + tuple(shape[len(shape) - self._n_keep :])

    def forward(self, x, weights, state, rng):
        mask = None
        if isinstance(x, seq.Sequence):
            x, mask = x.mask_invalid().values, x.mask
        leading = tuple(x.shape[: x.ndim - self._n_keep])
        y, new_state = base.call_sublayer(
            0, self.sublayer, jnp.reshape(x, self._batched_shape(x.shape)), weights[0], state[0], rng
        )
        y = jnp.reshape(y, leading + tuple(y.shape[1:]))
        if mask is not None and len(leading) >= 2:  # Batch and time were folded and come back.
            y = seq.Sequence(y, mask)
        return y, (new_state,)

    def init_with_output_signature(self, input_signature, rng):
        is_sequence = isinstance(input_signature, seq.Sequence)
        x = input_signature.values if is_sequence else input_signature
        shape = x.shape
        leading = shape[: len(shape) - self._n_keep]
        inner = shapes.ShapeDtype((math.prod(leading),) + tuple(shape[len(leading) :]), x.dtype)
        w, s, out = base.init_sublayer(0, self.sublayer, inner, rng)
        out = shapes.ShapeDtype(tuple(leading) + out.shape[1:], out.dtype)
        if is_sequence and len(leading) >= 2:
            out = seq.Sequence(out, input_signature.mask)
        return (w,), (s,), out


def reverse_time(x, axis: int):
    """Reverses time; a Sequence reverses each row's valid prefix in place."""
    if not isinstance(x, seq.Sequence):
        return jnp.flip(x, axis=axis)
    if axis % x.ndim != 1:
        return x.apply_values(jnp.flip, axis=axis)
    lengths = x.lengths()
    steps = jnp.arange(x.shape[1]).reshape((1, -1))
    source = jnp.where(steps < lengths.reshape((-1, 1)), lengths.reshape((-1, 1)) - 1 - steps, steps)
    index = source.reshape(source.shape + (1,) * (x.ndim - 2))
    values = jnp.take_along_axis(x.values, index, axis=1)
    return seq.Sequence(values, x.mask)


def Bidirectional(forward_layer: Layer, axis: int = 1, merge_layer: Layer | None = None) -> Layer:  # noqa: N802
    """Runs forward_layer on the input and a copy of it on the time-reversed input.

    Stack: `x` -> `merge(forward(x), reverse(backward(reverse(x))))`; merge
    defaults to Concatenate. Sequences reverse within each row's valid length.
    The backward copy has weights of its own.
    """
    backward_layer = forward_layer.with_mode(forward_layer.mode)
    # Reversing time needs the whole sequence: Bidirectional does not stream.
    flip = StackOp(lambda x: reverse_time(x, axis), name="ReverseTime", supports_step=False)
    merge = Concatenate() if merge_layer is None else merge_layer
    return Serial(Branch(forward_layer, Serial(flip, backward_layer, flip)), merge, name="Bidirectional")
