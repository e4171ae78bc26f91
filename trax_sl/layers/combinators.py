"""Combinators: layers that arrange other layers on the data stack.

Stack semantics are Trax's: a layer takes its `n_in` items from the top of
the stack and pushes its `n_out` outputs back. Combinators pass Sequences
through untouched and derive the streaming properties (block size, output
ratio, latencies, receptive field) from their sublayers.
"""

from __future__ import annotations

import fractions
import math

import jax
import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import base, streaming
from trax_sl.layers.base import Fn, Layer

# --- Stack helpers -----------------------------------------------------------


def inputs_from_stack(stack, n: int):
    """Returns n inputs from the stack, packaged as a layer takes them."""
    stack = stack if isinstance(stack, (tuple, list)) else (stack,)
    if n > len(stack):
        raise ValueError(f"needs {n} items from the stack but only {len(stack)} are there")
    return stack[0] if n == 1 else tuple(stack[:n])


def outputs_onto_stack(outputs, stack, n: int):
    """Returns the new stack after removing n items and pushing outputs there."""
    stack = stack if isinstance(stack, (tuple, list)) else (stack,)
    outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
    new_stack = outputs + tuple(stack[n:])
    return new_stack[0] if len(new_stack) == 1 else new_stack


def _as_items(x, n: int) -> tuple:
    """Layer-packaged inputs/outputs (one bare item, several a tuple) to a tuple."""
    return (x,) if n == 1 else tuple(x)


def _from_items(items: tuple, n: int):
    return items[0] if n == 1 else tuple(items)


def _deep_flatten(items):
    for item in items:
        if isinstance(item, (list, tuple)):
            yield from _deep_flatten(item)
        else:
            yield item


def _ensure_flat(layers) -> tuple[Layer, ...]:
    """Flattens nested lists of layers; None entries are no-ops and dropped."""
    flat = tuple(layer for layer in _deep_flatten(layers) if layer is not None)
    for obj in flat:
        if not isinstance(obj, Layer):
            raise TypeError(f"expected Layer instances, got {type(obj).__name__}: {obj!r:.80}")
    return flat


class _StackLayer(Layer):
    """Base of combinators: sees Sequences as they are, weights one per sublayer."""

    handles_sequences = True

    def _init_sublayers_in_series(self, layers, input_signature, rng):
        """Threads signatures through `layers` applied in series (stack semantics)."""
        stack = _as_items(input_signature, self.n_in)
        weights, states = [], []
        for i, (layer, layer_rng) in enumerate(zip(layers, base.split_rng(rng, len(layers)))):
            inputs = inputs_from_stack(stack, layer.n_in) if layer.n_in else ()
            w, s, out = base.init_sublayer(i, layer, inputs, layer_rng)
            stack = _as_items(out, layer.n_out) + tuple(stack[layer.n_in :])
            weights.append(w)
            states.append(s)
        return tuple(weights), tuple(states), _from_items(stack, self.n_out)


# --- Serial and Parallel -------------------------------------------------------


def _serial_arity(layers) -> tuple[int, int]:
    """(n_in, n_out) of layers in series: n_in is the running maximum of needs."""
    running_max, running_total = 0, 0
    for layer in layers:
        running_total += layer.n_in
        running_max = max(running_max, running_total)
        running_total -= layer.n_out
    return running_max, running_max - running_total


class Serial(_StackLayer):
    """Applies sublayers one after another (function composition) on the stack.

    Each sublayer takes its n_in items off the top of the stack and pushes
    its n_out outputs. `Serial()` (no sublayers) is a one-input no-op; None
    entries are no-ops; nested lists are flattened.

    Stack: `x1 ... xn` (n = n_in) -> the stack the last sublayer leaves.
    Predict mode: the state holds each sublayer's state.
    """

    def __init__(self, *sublayers, name: str | None = None, sublayers_to_print=None):
        layers = _ensure_flat(sublayers)
        n_in, n_out = _serial_arity(layers) if layers else (1, 1)
        super().__init__(n_in=n_in, n_out=n_out, name=name, sublayers_to_print=sublayers_to_print)
        self._sublayers = layers

    def forward(self, xs, weights, state, rng):
        stack = _as_items(xs, self.n_in)
        new_states = []
        for i, (layer, layer_rng) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = inputs_from_stack(stack, layer.n_in) if layer.n_in else ()
            outputs, s = base.call_sublayer(i, layer, inputs, weights[i], state[i], layer_rng)
            stack = _as_items(outputs, layer.n_out) + tuple(stack[layer.n_in :])
            new_states.append(s)
        return _from_items(stack, self.n_out), tuple(new_states)

    def init_with_output_signature(self, input_signature, rng):
        return self._init_sublayers_in_series(self.sublayers, input_signature, rng)

    def _arity_reason(self, n_given: int) -> str:
        depth = n_given
        for i, sub in enumerate(self.sublayers):
            if sub.n_in > depth:
                after = f" after {self.sublayers[i - 1].name}[{i - 1}]" if i else ""
                return f": {sub.name}[{i}] needs {sub.n_in} items but {depth} would be on the stack{after}"
            depth += sub.n_out - sub.n_in
        return ""

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        spec = streaming.serial(streaming.spec.of(layer) for layer in self.sublayers)
        return spec if self._stack_latencies_agree() else spec.not_streaming()

    def _stack_latencies_agree(self) -> bool:
        """Whether every sublayer gets its inputs at one latency in predict mode.

        A stack item that went through a layer with latency (e.g. a copy made by
        Dup, then convolved) lags the items beside it; a layer combining them
        would pair different times. Branch and Parallel align their branches;
        a hand-built stack flow like that does not stream.
        """
        latencies = [fractions.Fraction(0)] * self.n_in
        for layer in self.sublayers:
            inputs = latencies[: layer.n_in]
            if len(set(inputs)) > 1:
                return False
            start = inputs[0] if inputs else fractions.Fraction(0)
            out = start * layer.output_ratio + layer.output_latency
            latencies = [out] * layer.n_out + latencies[layer.n_in :]
        return True


def _no_op_for_none(layer):
    if layer is None or layer == []:
        return Serial()
    if isinstance(layer, (list, tuple)):
        return Serial(layer)
    if not isinstance(layer, Layer):
        raise TypeError(f"expected a Layer, None or a list of layers, got {type(layer).__name__}")
    return layer


def _built_mode(layers) -> str:
    """The mode the given layer trees were built in ('train' when none says)."""
    modes = set()

    def walk(node):
        modes.add(node.mode)
        for sub in node.sublayers:
            walk(sub)

    for layer in layers:
        walk(layer)
    return next((m for m in ("predict", "eval") if m in modes), "train")


def _align_output_latencies(layers: tuple[Layer, ...]) -> tuple[Layer, ...]:
    """Delays the step-wise outputs of branches that are ahead of the others.

    Branches with different output latencies would pair outputs of different
    times in predict mode; a step-only Delay (identity layer-wise) on the
    early branches lines them up. SequenceLayers makes users do this by hand.
    """
    from trax_sl.layers import delay  # delay builds on base only; imported late to keep layers light.

    try:
        if not all(layer.supports_step for layer in layers):
            return layers
        latencies = [layer.output_latency for layer in layers]
    except ValueError:  # Branches that cannot stream together (e.g. output ratios differ).
        return layers
    top = max(latencies, default=0)
    mode = _built_mode(layers) if top else "train"
    aligned = []
    for layer, latency in zip(layers, latencies):
        if latency == top or layer.n_out == 0:
            aligned.append(layer)
            continue
        delays = [delay.Delay(top - latency, delay_layer_output=False, mode=mode) for _ in range(layer.n_out)]
        aligned.append(
            Serial(
                layer,
                delays[0] if len(delays) == 1 else Parallel(*delays),
                name=layer.name,
                sublayers_to_print=[layer],
            )
        )
    return tuple(aligned)


class Parallel(_StackLayer):
    """Applies sublayers to successive spans of the stack, side by side.

    With F (1 in, 1 out), G (3 in, 1 out), H (2 in, 2 out):
    Stack: `a b c d e f` -> `F(a) G(b,c,d) h1 h2`. None is a one-input no-op.
    Predict mode: the state holds each sublayer's state.
    """

    def __init__(self, *sublayers, name: str | None = None):
        layers = _align_output_latencies(tuple(_no_op_for_none(layer) for layer in sublayers))
        super().__init__(
            n_in=sum(layer.n_in for layer in layers), n_out=sum(layer.n_out for layer in layers), name=name
        )
        self._sublayers = layers

    def _spans(self, items: tuple):
        start = 0
        for layer in self.sublayers:
            yield items[start : start + layer.n_in]
            start += layer.n_in

    def forward(self, xs, weights, state, rng):
        outputs, new_states = [], []
        rngs = base.split_rng(rng, len(self.sublayers))
        for i, (layer, span) in enumerate(zip(self.sublayers, self._spans(_as_items(xs, self.n_in)))):
            y, s = base.call_sublayer(i, layer, _from_items(span, layer.n_in), weights[i], state[i], rngs[i])
            outputs.extend(_as_items(y, layer.n_out))
            new_states.append(s)
        return _from_items(tuple(outputs), self.n_out), tuple(new_states)

    def init_with_output_signature(self, input_signature, rng):
        weights, states, outputs = [], [], []
        rngs = base.split_rng(rng, len(self.sublayers))
        spans = self._spans(_as_items(input_signature, self.n_in))
        for i, (layer, span) in enumerate(zip(self.sublayers, spans)):
            w, s, out = base.init_sublayer(i, layer, _from_items(span, layer.n_in), rngs[i])
            weights.append(w)
            states.append(s)
            outputs.extend(_as_items(out, layer.n_out))
        return tuple(weights), tuple(states), _from_items(tuple(outputs), self.n_out)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.parallel(
            ((layer.name, streaming.spec.of(layer)) for layer in self.sublayers), where=self.name
        )


# --- Stack manipulation ----------------------------------------------------------


class _StackOp(base.PureLayer):
    """A weightless rearrangement of stack items; Sequences pass as they are."""

    handles_sequences = True


def Select(indices, n_in: int | None = None, name: str | None = None) -> Layer:  # noqa: N802
    """Copies, reorders or deletes stack items: pops n_in, pushes `indices` of them.

    Stack: `x0 x1 ... x(n_in-1)` -> `x[indices[0]] x[indices[1]] ...`.
    `n_in` defaults to max(indices) + 1.
    """
    indices = tuple(int(i) for i in indices)
    if any(i < 0 for i in indices):
        raise ValueError(f"Select: indices must be >= 0, got {indices}")
    if n_in is None:
        n_in = max(indices) + 1 if indices else 0
    elif indices and max(indices) >= n_in:
        raise ValueError(f"Select: index {max(indices)} is out of range for n_in={n_in}")
    n_out = len(indices)
    name = name or f"Select{list(indices)}"

    def select(xs):
        items = _as_items(xs, n_in)
        return _from_items(tuple(items[i] for i in indices), n_out)

    return _StackOp(select, n_in=n_in, n_out=n_out, name=name)


def Drop() -> Layer:  # noqa: N802
    """Drops the top stack item. Stack: `x` -> (nothing)."""
    return _StackOp(lambda x: (), n_in=1, n_out=0, name="Drop")


def Dup() -> Layer:  # noqa: N802
    """Duplicates the top stack item. Stack: `x` -> `x x`."""
    return _StackOp(lambda x: (x, x), n_in=1, n_out=2, name="Dup")


def Swap() -> Layer:  # noqa: N802
    """Swaps the top two stack items. Stack: `a b` -> `b a`."""
    return _StackOp(lambda xs: (xs[1], xs[0]), n_in=2, n_out=2, name="Swap")


def Branch(*layers, name: str = "Branch") -> Layer:  # noqa: N802
    """Applies layers in parallel to copies of the top of the stack.

    With F (1 in), G (3 in), H (2 in, 2 out): Stack `a b c` ->
    `F(a) G(a,b,c) h1 h2`. None is a one-input no-op.
    """
    if len(layers) == 1:
        return _no_op_for_none(layers[0])
    parallel = Parallel(*layers)
    parallel.hidden_in_paths = True
    indices = [list(range(layer.n_in)) for layer in parallel.sublayers]
    return Serial(
        Select(list(_deep_flatten(indices))), parallel, name=name, sublayers_to_print=list(parallel.sublayers)
    )


def Residual(*layers, shortcut=None) -> Layer:  # noqa: N802
    """Adds the output of `layers` (in series) to a shortcut of the input.

    Stack: `x ...` -> `layers(x ...) + shortcut(x ...)`; the shortcut is the
    identity when None.
    """
    layers = _ensure_flat(layers)
    layer = layers[0] if len(layers) == 1 else Serial(layers)
    branch = Branch(shortcut, layer)
    branch.hidden_in_paths = True
    return Serial(
        branch, Add(), name="Residual", sublayers_to_print=[layer] if shortcut is None else [layer, shortcut]
    )


def SerialWithSideOutputs(layers, n_side_outputs=1) -> Layer:  # noqa: N802
    """Serial that sets aside the last n_side_outputs outputs of each layer.

    For layers with n_in=1, n_out=2: `x` -> `x_final side_1 ... side_N`.
    """
    layers = list(layers)
    if isinstance(n_side_outputs, int):
        n_side_outputs = [n_side_outputs] * len(layers)
    if len(n_side_outputs) != len(layers):
        raise ValueError(
            f"SerialWithSideOutputs: got {len(layers)} layers but {len(n_side_outputs)} n_side_outputs"
        )
    running_max = running_total = 0
    for layer, n_side in zip(layers, n_side_outputs):
        running_total += layer.n_in
        running_max = max(running_max, running_total)
        running_total -= layer.n_out - n_side
    stack_size = running_max
    serial_layers = []
    for layer, n_side in zip(layers, n_side_outputs):
        serial_layers.append(layer)
        stack_size += layer.n_out - layer.n_in
        # Keep the first n_out - n_side outputs on top, move the side outputs
        # under the rest of the stack.
        keep = list(range(layer.n_out - n_side))
        rest = [i + layer.n_out for i in range(stack_size - layer.n_out)]
        side = [i + layer.n_out - n_side for i in range(n_side)]
        serial_layers.append(Select(keep + rest + side))
    return Serial(serial_layers, name="SerialWithSideOutputs")


def FlattenList() -> Layer:  # noqa: N802
    """Flattens nested tuples/lists of arrays in the top item into one tuple."""
    return _StackOp(lambda x: tuple(_deep_flatten(x)), n_in=1, n_out=1, name="FlattenList")


# --- Arithmetic on stack items ------------------------------------------------


def Add() -> Layer:  # noqa: N802
    """Adds the top two items. Stack: `a b` -> `a + b`."""
    return Fn("Add", lambda a, b: a + b)


def SubtractTop() -> Layer:  # noqa: N802
    """Subtracts the top item from the second. Stack: `a b` -> `b - a`."""
    return Fn("SubtractTop", lambda a, b: b - a)


def Multiply() -> Layer:  # noqa: N802
    """Multiplies the top two items. Stack: `a b` -> `a * b`."""
    return Fn("Multiply", lambda a, b: a * b)


def Gate() -> Layer:  # noqa: N802
    """Highway gate. Stack: `memory gate candidate` -> `memory*gate + (1-gate)*candidate`."""
    return Fn("Gate", lambda m, g, c: m * g + (1.0 - g) * c)


def _time_axis(axis: int, ndim: int) -> bool:
    return axis % ndim == 1


class Concatenate(Layer):
    """Concatenates n_items stack items along `axis` (default the last).

    Stack: `x1 ... xn` -> `concat(x1, ..., xn)`. Sequences concatenated along
    time join their masks; along other axes their masks are and-ed.
    """

    handles_sequences = True

    def __init__(self, n_items: int = 2, axis: int = -1):
        if n_items < 1:
            raise ValueError(f"Concatenate: n_items must be >= 1, got {n_items}")
        super().__init__(n_in=n_items, n_out=1, name="Concatenate")
        self._axis = axis

    def forward(self, xs, weights, state, rng):
        items = _as_items(xs, self.n_in)
        if any(isinstance(x, seq.Sequence) for x in items):
            ndim = items[0].ndim
            if _time_axis(self._axis, ndim):
                return seq.Sequence.concatenate_sequences(
                    [x if isinstance(x, seq.Sequence) else seq.Sequence.from_values(x) for x in items]
                ), state
            return base._lift_sequences(
                lambda v: (jnp.concatenate(_as_items(v, self.n_in), axis=self._axis), ()), xs, self.n_in
            )[0], state
        return jnp.concatenate(items, axis=self._axis), state


class Split(Layer):
    """Splits the top item into n_items equal parts along `axis`.

    Stack: `x` -> `x1 ... xn`. A Sequence split along time splits its mask.
    """

    handles_sequences = True

    def __init__(self, n_items: int = 2, axis: int = -1):
        if n_items < 1:
            raise ValueError(f"Split: n_items must be >= 1, got {n_items}")
        super().__init__(n_in=1, n_out=n_items, name="Split")
        self._axis = axis

    def forward(self, x, weights, state, rng):
        n = self.n_out
        if isinstance(x, seq.Sequence):
            if _time_axis(self._axis, x.ndim):
                parts = zip(jnp.split(x.values, n, axis=1), jnp.split(x.mask, n, axis=1))
                out = tuple(seq.Sequence(v, m) for v, m in parts)
            else:
                out = tuple(seq.Sequence(v, x.mask) for v in jnp.split(x.values, n, axis=self._axis))
        else:
            out = tuple(jnp.split(x, n, axis=self._axis))
        return _from_items(out, n), state


# --- Control flow ---------------------------------------------------------------


def _move_axis_to_front(x, axis):
    return jnp.moveaxis(x, axis, 0)


class Scan(_StackLayer):
    """Applies a layer cumulatively along an axis, carrying n_carry items.

    The layer maps `(x1..xN, carry1..carryM) -> (y1..yK, new_carry1..M)`; Scan
    maps stacked xs (along `axis`) and the initial carries to stacked ys and
    the final carries. `remat=True` recomputes the body in the backward pass.
    Predict mode: not streamable (the carry is an explicit input and output).
    """

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
        items = _as_items(inputs, self.n_in)
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
                0, layer, _from_items(tuple(x) + tuple(carry), layer.n_in), weights[0], layer_state, step_rng
            )
            outputs = _as_items(outputs, layer.n_out)
            n_ys = layer.n_out - self._n_carry
            return (outputs[n_ys:], new_state), outputs[:n_ys]

        if self._remat:
            body = jax.checkpoint(body)
        (carries, new_state), ys = jax.lax.scan(body, (carries, state[0]), (xs, rngs))
        ys = tuple(jax.tree.map(lambda y: jnp.moveaxis(y, 0, self._axis), y) for y in ys)
        return _from_items(ys + tuple(carries), self.n_out), (new_state,)

    def init_with_output_signature(self, input_signature, rng):
        items = _as_items(input_signature, self.n_in)
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
        w, s, out = base.init_sublayer(0, self.sublayer, _from_items(step_sig, self.sublayer.n_in), rng)
        out_items = _as_items(out, self.n_out)
        n_ys = self.n_out - self._n_carry
        out_items = tuple(jax.tree.map(add_axis, y) for y in out_items[:n_ys]) + out_items[n_ys:]
        return (w,), (s,), _from_items(out_items, self.n_out)


class Cond(_StackLayer):
    """Runs `true` or `false` on the stack depending on `cond`.

    Stack: `c1..ck y...` (k = cond.n_in) -> `true(y...)` if cond(c) else
    `false(y...)`. Only the chosen branch runs; the other's state is kept.
    `false` defaults to the identity (then true must have n_in == n_out).
    """

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

    def forward(self, xs, weights, state, rng):
        cond, true, false = self.sublayers
        items = _as_items(xs, self.n_in)
        rng_c, rng_t, rng_f = base.split_rng(rng, 3)
        c, cond_state = base.call_sublayer(
            0, cond, _from_items(items[: cond.n_in], cond.n_in), weights[0], state[0], rng_c
        )
        rest = _from_items(items[cond.n_in :], true.n_in)

        def run_true(operand):
            y, s = base.call_sublayer(1, true, operand, weights[1], state[1], rng_t)
            return y, (s, state[2])

        def run_false(operand):
            y, s = base.call_sublayer(2, false, operand, weights[2], state[2], rng_f)
            return y, (state[1], s)

        y, (true_state, false_state) = jax.lax.cond(
            jnp.asarray(c).astype(bool).reshape(()), run_true, run_false, rest
        )
        return y, (cond_state, true_state, false_state)

    def init_with_output_signature(self, input_signature, rng):
        cond, true, false = self.sublayers
        items = _as_items(input_signature, self.n_in)
        rngs = base.split_rng(rng, 3)
        wc, sc, _ = base.init_sublayer(0, cond, _from_items(items[: cond.n_in], cond.n_in), rngs[0])
        rest = _from_items(items[cond.n_in :], true.n_in)
        wt, st, out = base.init_sublayer(1, true, rest, rngs[1])
        wf, sf, _ = base.init_sublayer(2, false, rest, rngs[2])
        return (wc, wt, wf), (sc, st, sf), out


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

    reshape_in = _StackOp(
        lambda xs: jax.tree.map(to_chunks, xs), n_in=layer.n_in, n_out=layer.n_in, name="ReshapeToChunks"
    )
    reshape_out = _StackOp(
        lambda xs: jax.tree.map(from_chunks, xs),
        n_in=layer.n_out,
        n_out=layer.n_out,
        name="ReshapeFromChunks",
    )
    return Serial(reshape_in, Scan(layer, axis=0, n_carry=0), reshape_out, name="Chunk")


class Cache(_StackLayer):
    """Runs `layer` on the first call and returns its stored outputs afterwards.

    The state holds (whether outputs are cached, the outputs, layer state).
    Predict mode: not streamable.
    """

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


class BatchLeadingAxes(_StackLayer):
    """Applies `layer` after folding all but the last n_last_axes_to_keep axes into one.

    Stack: `x [..., d1..dk]` -> `layer(x)` with the leading axes restored.
    """

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


def _reverse_time(x, axis: int):
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
    flip = _StackOp(lambda x: _reverse_time(x, axis), name="ReverseTime", supports_step=False)
    merge = Concatenate() if merge_layer is None else merge_layer
    return Serial(Branch(forward_layer, Serial(flip, backward_layer, flip)), merge, name="Bidirectional")
