"""Stack combinators: Serial, Parallel, Branch, Residual, Select and the items they move.

Stack semantics are Trax's: a layer takes its `n_in` items from the top of
the stack and pushes its `n_out` outputs back. Combinators pass Sequences
through untouched and derive the streaming properties (block size, output
ratio, latencies, receptive field) from their sublayers.
"""

from __future__ import annotations

import fractions

import jax.numpy as jnp

from trax_sl import partitioning
from trax_sl import sequence as seq
from trax_sl.layers import base, delay, streaming
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


# --- Serial and Parallel -------------------------------------------------------


def serial_arity(layers) -> tuple[int, int]:
    """(n_in, n_out) of layers in series: n_in is the running maximum of needs."""
    running_max, running_total = 0, 0
    for layer in layers:
        running_total += layer.n_in
        running_max = max(running_max, running_total)
        running_total -= layer.n_out
    return running_max, running_max - running_total


class Serial(Layer):
    """Applies sublayers one after another (function composition) on the stack.

    Each sublayer takes its n_in items off the top of the stack and pushes
    its n_out outputs. `Serial()` (no sublayers) is a one-input no-op; None
    entries are no-ops; nested lists are flattened.

    Stack: `x1 ... xn` (n = n_in) -> the stack the last sublayer leaves.
    As in Trax, a call may give more than n_in items: the ones the sublayers
    do not reach pass through, after the outputs (`Serial(Relu())((x, m))` is
    `(relu(x), m)`); a one-item tuple or list is that item.
    Predict mode: the state holds each sublayer's state.
    """

    handles_sequences = True

    def __init__(self, *sublayers, name: str | None = None, sublayers_to_print=None):
        layers = _ensure_flat(sublayers)
        n_in, n_out = serial_arity(layers) if layers else (1, 1)
        layers = _in_phase(layers, n_in)
        super().__init__(n_in=n_in, n_out=n_out, name=name, sublayers_to_print=sublayers_to_print)
        self._sublayers = layers

    def _items(self, xs) -> tuple:
        """The stack items given: a tuple or list is several (Trax's stack), anything else one."""
        return tuple(xs) if isinstance(xs, (tuple, list)) else (xs,)

    def _check_arity(self, x) -> None:
        if len(self._items(x)) < self.n_in:
            super()._check_arity(x)  # Too few: the base's message (and Serial's reason) says so.

    def _check_outputs(self, outputs) -> None:
        del outputs  # n_out plus the items passed through: forward packs them itself.

    def forward(self, xs, weights, state, rng):
        stack = self._items(xs)
        new_states = []
        for i, (layer, layer_rng) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = inputs_from_stack(stack, layer.n_in) if layer.n_in else ()
            outputs, s = base.call_sublayer(i, layer, inputs, weights[i], state[i], layer_rng)
            stack = base.as_items(outputs, layer.n_out) + tuple(stack[layer.n_in :])
            new_states.append(s)
        return base.from_items(stack, len(stack)), tuple(new_states)

    def init_with_output_signature(self, input_signature, rng):
        # Threads signatures through the sublayers as forward threads values.
        stack = self._items(input_signature)
        weights, states = [], []
        for i, (layer, layer_rng) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = inputs_from_stack(stack, layer.n_in) if layer.n_in else ()
            w, s, out = base.init_sublayer(i, layer, inputs, layer_rng)
            stack = base.as_items(out, layer.n_out) + tuple(stack[layer.n_in :])
            weights.append(w)
            states.append(s)
        return tuple(weights), tuple(states), base.from_items(stack, len(stack))

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
            if len(set(latencies[: layer.n_in])) > 1:
                return False
            latencies = _latencies_after(layer, latencies)
        return True


def _latencies_after(layer: Layer, latencies: list) -> list:
    """The step-wise latency of each stack item after `layer` (its inputs at one latency)."""
    start = latencies[0] if layer.n_in else fractions.Fraction(0)
    out = start * layer.output_ratio + layer.output_latency
    return [out] * layer.n_out + latencies[layer.n_in :]


def _in_phase(layers: tuple[Layer, ...], n_in: int) -> tuple[Layer, ...]:
    """Inserts step-only Delays so that each layer's step-wise input latency is a multiple of its period.

    A stride-k window after a layer with output latency L (say a lookahead
    convolution) would, step-wise, window steps offset by L from the
    layer-wise ones unless k divides L. SequenceLayers raises and asks for a
    Delay of `-L % k` before the layer; Serial inserts it (identity
    layer-wise, so only the step-wise latency grows). Printing the Serial
    shows the inserted `Delay`.
    """
    try:
        if not all(layer.supports_step for layer in layers):
            return layers
        latencies = [fractions.Fraction(0)] * n_in
        phased = []
        for layer in layers:
            inputs = latencies[: layer.n_in]
            behind = -inputs[0] % layer.latency_period if inputs else 0
            if behind and len(set(inputs)) == 1:
                mode = built_mode([layer])
                delays = [delay.Delay(int(behind), delay_layer_output=False, mode=mode) for _ in inputs]
                realign = delays[0] if len(delays) == 1 else Parallel(*delays)
                phased.append(realign)
                latencies = _latencies_after(realign, latencies)
            phased.append(layer)
            latencies = _latencies_after(layer, latencies)
    except ValueError:  # Sublayers that cannot stream (e.g. branches whose output ratios differ).
        return layers
    return tuple(phased)


def _no_op_for_none(layer):
    if layer is None or layer == []:
        return Serial()
    if isinstance(layer, (list, tuple)):
        return Serial(layer)
    if not isinstance(layer, Layer):
        raise TypeError(f"expected a Layer, None or a list of layers, got {type(layer).__name__}")
    return layer


def built_mode(layers) -> str:
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
    try:
        if not all(layer.supports_step for layer in layers):
            return layers
        latencies = [layer.output_latency for layer in layers]
    except ValueError:  # Branches that cannot stream together (e.g. output ratios differ).
        return layers
    top = max(latencies, default=0)
    mode = built_mode(layers) if top else "train"
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


class Parallel(Layer):
    """Applies sublayers to successive spans of the stack, side by side.

    With F (1 in, 1 out), G (3 in, 1 out), H (2 in, 2 out):
    Stack: `a b c d e f` -> `F(a) G(b,c,d) h1 h2`. None is a one-input no-op.
    Predict mode: the state holds each sublayer's state.
    """

    handles_sequences = True

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
        for i, (layer, span) in enumerate(zip(self.sublayers, self._spans(base.as_items(xs, self.n_in)))):
            y, s = base.call_sublayer(
                i, layer, base.from_items(span, layer.n_in), weights[i], state[i], rngs[i]
            )
            outputs.extend(base.as_items(y, layer.n_out))
            new_states.append(s)
        return base.from_items(tuple(outputs), self.n_out), tuple(new_states)

    def init_with_output_signature(self, input_signature, rng):
        weights, states, outputs = [], [], []
        rngs = base.split_rng(rng, len(self.sublayers))
        spans = self._spans(base.as_items(input_signature, self.n_in))
        for i, (layer, span) in enumerate(zip(self.sublayers, spans)):
            w, s, out = base.init_sublayer(i, layer, base.from_items(span, layer.n_in), rngs[i])
            weights.append(w)
            states.append(s)
            outputs.extend(base.as_items(out, layer.n_out))
        return tuple(weights), tuple(states), base.from_items(tuple(outputs), self.n_out)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.parallel(
            ((layer.name, streaming.spec.of(layer)) for layer in self.sublayers), where=self.name
        )


# --- Stack manipulation ----------------------------------------------------------


class StackOp(base.PureLayer):
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
        items = base.as_items(xs, n_in)
        return base.from_items(tuple(items[i] for i in indices), n_out)

    return StackOp(select, n_in=n_in, n_out=n_out, name=name)


def Drop() -> Layer:  # noqa: N802
    """Drops the top stack item. Stack: `x` -> (nothing)."""
    return StackOp(lambda x: (), n_in=1, n_out=0, name="Drop")


def Dup() -> Layer:  # noqa: N802
    """Duplicates the top stack item. Stack: `x` -> `x x`."""
    return StackOp(lambda x: (x, x), n_in=1, n_out=2, name="Dup")


def Swap() -> Layer:  # noqa: N802
    """Swaps the top two stack items. Stack: `a b` -> `b a`."""
    return StackOp(lambda xs: (xs[1], xs[0]), n_in=2, n_out=2, name="Swap")


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
    identity when None. The sum is a block boundary: in a training step on a
    mesh its batch axis stays split over the batch axes
    (`trax_sl.partitioning.constrain_batch`).
    """
    layers = _ensure_flat(layers)
    layer = layers[0] if len(layers) == 1 else Serial(layers)
    branch = Branch(shortcut, layer)
    branch.hidden_in_paths = True
    add = Fn("Add", lambda a, b: partitioning.constrain_batch(a + b))
    return Serial(
        branch, add, name="Residual", sublayers_to_print=[layer] if shortcut is None else [layer, shortcut]
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
    return StackOp(lambda x: tuple(_deep_flatten(x)), n_in=1, n_out=1, name="FlattenList")


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
        name = "Concatenate" if axis == -1 else f"Concatenate_axis{axis}"  # Trax's names.
        super().__init__(n_in=n_items, n_out=1, name=name)
        self._axis = axis

    def forward(self, xs, weights, state, rng):
        items = base.as_items(xs, self.n_in)
        if any(isinstance(x, seq.Sequence) for x in items):
            ndim = items[0].ndim
            if _time_axis(self._axis, ndim):
                return seq.Sequence.concatenate_sequences(
                    [x if isinstance(x, seq.Sequence) else seq.Sequence.from_values(x) for x in items]
                ), state
            return seq.apply_to_values(
                lambda v: (jnp.concatenate(base.as_items(v, self.n_in), axis=self._axis), ()), xs, self.n_in
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
        return base.from_items(out, n), state
