"""SequenceLayers' combinators: Serial, Residual, Repeat, CheckpointGradient, Bidirectional.

They take SequenceLayers' arguments (a list of layers, `name=`,
`num_repeats=`, ...) and are trax_sl's combinators underneath, so they derive
their streaming properties the same way (`Residual` also aligns a branch that
lags, which SequenceLayers asks users to do by hand).

Constants: when a sublayer reads constants (see the package docstring), the
combinator takes `(x, constants)` from the stack, hands the constants to
every sublayer that reads them and returns `y` alone, as SequenceLayers
passes `constants=` down to every layer.
"""

from __future__ import annotations

import enum

import jax.numpy as jnp

import trax_sl.layers as tl
from trax_sl.layers import base, streaming
from trax_sl.layers.combinators import StackOp
from trax_sl.layers.combinators.control_flow import reverse_time
from trax_sl.sl import common


def _layers(layers, where: str) -> list[base.Layer]:
    """SequenceLayers' `layers` (a list, or one layer) as a list of one-in, one-out layers."""
    layers = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    for layer in layers:
        if not isinstance(layer, base.Layer):
            raise TypeError(f"{where}: expected layers, got {type(layer).__name__}: {layer!r:.80}")
        n_in = 2 if common.takes_constants(layer) else 1
        if (layer.n_in, layer.n_out) != (n_in, 1):
            raise ValueError(
                f"{where}: {layer.name} takes {layer.n_in} and gives {layer.n_out} stack items; "
                f"SequenceLayers' layers take one (two with constants) and give one"
            )
    return layers


class SerialWithConstants(base.Layer):
    """Serial of SequenceLayers' layers some of which read constants.

    n_in=2, n_out=1. Stack: `x constants` -> `y`: each sublayer gets `x`, or
    `(x, constants)` when it reads constants, and passes its output on.
    Streams as the sublayers in series (the constants are not streamed).

    Predict mode: the state holds each sublayer's state.
    """

    handles_sequences = True

    def __init__(self, layers, name: str | None = None):
        layers = _layers(layers, "Serial")
        super().__init__(n_in=2, n_out=1, name=name or "Serial")
        self._sublayers = tuple(layers)
        self.constant_names = common.union_of_constant_names(layers)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.serial(streaming.spec.of(layer) for layer in self.sublayers)

    def init_with_output_signature(self, input_signature, rng):
        x, constants = input_signature
        weights, states = [], []
        for i, (layer, layer_rng) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = (x, constants) if common.takes_constants(layer) else x
            w, s, x = base.init_sublayer(i, layer, inputs, layer_rng)
            weights.append(w)
            states.append(s)
        return tuple(weights), tuple(states), x

    def forward(self, inputs, weights, state, rng):
        x, constants = inputs
        new_states = []
        for i, (layer, layer_rng) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            layer_inputs = (x, constants) if common.takes_constants(layer) else x
            x, s = base.call_sublayer(i, layer, layer_inputs, weights[i], state[i], layer_rng)
            new_states.append(s)
        return x, tuple(new_states)


def Serial(layers, name: str | None = None) -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Applies `layers` one after another: `tl.Serial`, or SerialWithConstants when one reads constants.

    Stack: `x` -> `layers[-1](...layers[0](x))` (`x constants` -> `y` with constants).
    Predict mode: the state holds each sublayer's state.
    """
    layers = _layers(layers, "Serial")
    if any(common.takes_constants(layer) for layer in layers):
        return SerialWithConstants(layers, name=name)
    return tl.Serial(layers, name=name)


def _one(layers, where: str) -> base.Layer:
    """SequenceLayers' `layers` (a list or one layer) as one layer."""
    layers = _layers(layers, where)
    return layers[0] if len(layers) == 1 else Serial(layers)


def Residual(layers, shortcut_layers=None, name: str | None = None) -> base.Layer:  # noqa: N802
    """Adds `layers` (in series) to a shortcut of the input: `tl.Residual`.

    Stack: `x` -> `layers(x) + shortcut_layers(x)` (the shortcut is the
    identity when None); `x constants` -> the same when some layer reads
    constants. A branch with less output latency is delayed to line up.
    Predict mode: the state holds each branch's state.
    """
    body = _one(layers, "Residual")
    shortcut = None if shortcut_layers is None else _one(shortcut_layers, "Residual")
    if shortcut is not None and common.takes_constants(body) != common.takes_constants(shortcut):
        # Both branches take what is on the stack, so both take the constants.
        body, shortcut = (_ignoring_constants(b) for b in (body, shortcut))
    layer = common.takes_constants_of(tl.Residual(body, shortcut=shortcut), [body, shortcut])
    return common.named(layer, name or "Residual")


def _ignoring_constants(layer: base.Layer) -> base.Layer:
    """`layer` taking `x constants` (dropping the constants) if it reads none."""
    if common.takes_constants(layer):
        return layer
    wrapped = tl.Parallel(layer, tl.Drop(), name=layer.name)
    wrapped.constant_names = ()  # Takes the constants item, reads none of its names.
    return wrapped


class _CarryConstants(base.Layer):
    """Runs `layer` on `(x, constants)` held in one stack item, and keeps the constants.

    n_in=1, n_out=1: `(x, constants)` -> `(layer(x, constants), constants)`,
    so that `tl.Repeat` (which repeats a one-in, one-out body) carries the
    constants through its repeats unchanged. Streams as `layer`.
    Predict mode: the state is the layer's.
    """

    handles_sequences = True

    def __init__(self, layer: base.Layer):
        super().__init__(name=layer.name, sublayers_to_print=[layer])
        self._sublayers = (layer,)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        return streaming.spec.of(self.sublayers[0])

    def weight_axes(self, weights):
        return base.sublayer_weight_axes(self.sublayers[0], weights)

    def init_with_output_signature(self, input_signature, rng):
        w, s, y = base.init_sublayer(0, self.sublayers[0], tuple(input_signature), rng)
        return w, s, (y, input_signature[1])

    def forward(self, x, weights, state, rng):
        y, state = base.call_sublayer(0, self.sublayers[0], tuple(x), weights, state, rng)
        return (y, x[1]), state


def Repeat(  # noqa: N802 (SequenceLayers' name)
    layer, num_repeats: int, remat: bool = False, name: str | None = None
) -> base.Layer:
    """Applies `layer` num_repeats times, each repeat with weights of its own: `tl.Repeat`.

    One compiled body whatever num_repeats is (weights stacked on a leading
    axis). Stack: `x` -> `layer(...layer(x))`; `x constants` -> the same when
    the layer reads constants. Predict mode: each repeat's state, stacked.
    """
    layer = _one(layer, "Repeat")
    if not common.takes_constants(layer):
        return tl.Repeat(layer, num_repeats, remat=remat, name=name)
    pack = StackOp(lambda xs: tuple(xs), n_in=2, n_out=1, name="PackConstants")
    unpack = StackOp(lambda pair: pair[0], n_in=1, n_out=1, name="UnpackConstants")
    repeat = tl.Serial(
        pack, tl.Repeat(_CarryConstants(layer), num_repeats, remat=remat), unpack, name=name or "Repeat"
    )
    return common.takes_constants_of(repeat, [layer])


def CheckpointGradient(  # noqa: N802 (SequenceLayers' name)
    layer, prevent_cse: bool = True, policy=None, name: str | None = None
) -> base.Layer:
    """Runs `layer` and recomputes its activations in the backward pass: `tl.CheckpointGradient`.

    `policy` is a `jax.checkpoint_policies` function (or a name of
    `tl.repeat.REMAT_POLICIES`); None saves nothing. Same stack, streaming
    properties and weights as `layer`. Predict mode: the state is the layer's.
    """
    layer = _one(layer, "CheckpointGradient")
    checkpointed = tl.CheckpointGradient(layer, policy=policy, prevent_cse=prevent_cse)
    return common.named(common.takes_constants_of(checkpointed, [layer]), name)


class CombinationMode(enum.Enum):
    """How Bidirectional (and other SequenceLayers combinators) combine two outputs.

    STACK: a new first channel axis of size 2; CONCAT: along the last
    channel axis; ADD, MEAN, PRODUCT: elementwise. Channel shapes broadcast
    (SequenceLayers' rules).
    """

    STACK = 1
    CONCAT = 2
    ADD = 3
    MEAN = 4
    PRODUCT = 5


def combine(mode: CombinationMode, *values):
    """Combines arrays `[batch, time, ...channels]` as `mode` says (SequenceLayers' broadcasting)."""
    ndim = max(v.ndim for v in values)
    # Missing channel axes are leading ones, as in SequenceLayers.
    values = [jnp.reshape(v, v.shape[:2] + (1,) * (ndim - v.ndim) + v.shape[2:]) for v in values]
    if mode == CombinationMode.CONCAT:
        if ndim == 2:
            values = [v[..., None] for v in values]
            ndim = 3
        leading = jnp.broadcast_shapes(*(v.shape[:-1] for v in values))
        return jnp.concatenate([jnp.broadcast_to(v, leading + v.shape[-1:]) for v in values], axis=-1)
    shape = jnp.broadcast_shapes(*(v.shape for v in values))
    values = [jnp.broadcast_to(v, shape) for v in values]
    if mode == CombinationMode.STACK:
        return jnp.stack(values, axis=2)
    if mode == CombinationMode.ADD:
        return sum(values[1:], values[0])
    if mode == CombinationMode.MEAN:
        return sum(values[1:], values[0]) / len(values)
    if mode == CombinationMode.PRODUCT:
        out = values[0]
        for v in values[1:]:
            out = out * v
        return out
    raise ValueError(f"unknown combination {mode!r}; expected a CombinationMode")


def Bidirectional(  # noqa: N802 (SequenceLayers' name)
    forward, backward, combination: CombinationMode = CombinationMode.STACK, name: str | None = None
) -> base.Layer:
    """Runs `forward` on the input and `backward` on it reversed in time, and combines them.

    n_in=1 (2 with constants), n_out=1. Stack: `x` ->
    `combine(forward(x), reverse(backward(reverse(x))))`, masks and-ed. Each
    row is reversed within its valid length (as `tl.Bidirectional`);
    SequenceLayers reverses the physical time axis, which its docstring warns
    mis-masks causal convolutions in the backward direction. The two agree on
    rows without padding.

    Not streamable (reversing time needs the whole sequence), as in SequenceLayers.
    """
    if not isinstance(combination, CombinationMode):
        raise TypeError(f"Bidirectional: combination must be a CombinationMode, got {combination!r}")
    forward, backward = _one(forward, "Bidirectional"), _one(backward, "Bidirectional")
    if forward.output_ratio != backward.output_ratio:
        raise ValueError(
            f"Bidirectional: the output ratios of forward ({forward.output_ratio}) and backward "
            f"({backward.output_ratio}) must be equal"
        )
    flip = StackOp(lambda x: reverse_time(x, 1), name="ReverseTime", supports_step=False)
    merge = tl.Fn(f"Combine{combination.name.title()}", lambda a, b: combine(combination, a, b))
    if common.takes_constants(forward) or common.takes_constants(backward):
        forward, backward = _ignoring_constants(forward), _ignoring_constants(backward)
        backward_path = tl.Serial(tl.Parallel(flip, None), backward, flip)
    else:
        backward_path = tl.Serial(flip, backward, flip)
    layer = tl.Serial(tl.Branch(forward, backward_path), merge, name=name or "Bidirectional")
    return common.takes_constants_of(layer, [forward, backward])
