"""Layers that can run in reverse to compute inputs from outputs.

Reversible layers reduce the memory required for backpropagation-based
training, especially for deep networks. In a series of reversible layers,
input activations from a forward pass don't need to be stored: they can be
reconstructed on the backward pass, layer by layer, from outputs to inputs.

`ReversibleSerial` does exactly that: its forward pass is a `jax.custom_vjp`
whose residuals are only the final outputs, the weights, the start and end
states and the rng; the backward pass walks the sublayers from last to first,
recomputing each one's inputs with `reverse` and its gradients with a VJP of
its forward pass on those inputs (`reverse_and_grad`).

See [The Reversible Residual Network](https://arxiv.org/abs/1707.04585) and
[Reformer](https://arxiv.org/abs/2001.04451).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import base, combinators, streaming


def _on_values(fn, item):
    """Applies `fn` to an array, or to a Sequence's values keeping its mask."""
    return item.apply_values(fn) if isinstance(item, seq.Sequence) else fn(item)


def _add_cotangents(a, b):
    """Sums two cotangent trees; float0 leaves (of integer and bool primals) stay as they are."""

    def add(x, y):
        if x.dtype == jax.dtypes.float0:
            return x
        return x + y

    return jax.tree.map(add, a, b)


class ReversibleLayer(base.Layer):
    """A layer whose inputs can be computed back from its outputs.

    Subclasses define `forward` and `reverse`; `reverse_and_grad` (used by
    `ReversibleSerial`'s backward pass) defaults to reversing and then taking
    the VJP of the forward pass at the reconstructed inputs.
    """

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        """Reverse this layer: compute input given output."""
        raise NotImplementedError(f"{self.name} must define reverse")

    def reverse_and_grad(self, output, grad, weights=(), state=(), new_state=(), rng=None):
        """Backward pass: computes the inverse of a layer and propagates gradients.

        Args:
          output: Output activations; can be a (possibly nested) tuple.
          grad: Gradient signal (cotangent) computed based on subsequent layers;
            the structure and shape must match the output.
          weights: Layer weights.
          state: Start state (what the forward pass was given).
          new_state: Updated state computed by the forward pass.
          rng: Single-use random number generator (JAX PRNG key), the forward pass's.

        Returns:
          A tuple `(x, (x_grad, weights_grad))`: the reconstructed input, the
          gradient signal for the input, and the gradient for the weights.
        """
        x = self.reverse(output, weights, state, new_state, rng)
        _, vjp_fn = jax.vjp(lambda x_, w_: self.pure_fn(x_, w_, state, rng)[0], x, weights)
        x_grad, weights_grad = vjp_fn(grad)
        return x, (x_grad, weights_grad)

    @property
    def has_backward(self) -> bool:
        """True: reversible layers provide their own backward pass (`backward`)."""
        return True

    def backward(self, inputs, output, grad, weights, state, new_state, rng):
        """Custom backward pass: `(x_grad, weights_grad)` from the output alone (inputs are ignored)."""
        del inputs
        _, inputs_weights_grad = self.reverse_and_grad(output, grad, weights, state, new_state, rng)
        return inputs_weights_grad


class ReversibleConcatenatePair(ReversibleLayer):
    """Maps `(x, y) -> ([x, y], [x, y])`; `[x, y]` is concatenation on the last axis.

    n_in=2, n_out=2. `[batch, time, dx]`, `[batch, time, dy]` -> two copies of
    `[batch, time, dx + dy]`; the reverse splits the first copy in halves (so
    dx must equal dy for it to be exact).

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(self):
        super().__init__(n_in=2, n_out=2, name="ReversibleConcatenatePair")

    def forward(self, inputs, weights, state, rng):
        x, y = inputs
        r = jnp.concatenate((x, y), axis=-1)
        return (r, r), state

    def reverse(self, outputs, weights=(), state=(), new_state=(), rng=None):
        pair, _ = outputs
        first = _on_values(lambda v: jnp.split(v, 2, axis=-1)[0], pair)
        second = _on_values(lambda v: jnp.split(v, 2, axis=-1)[1], pair)
        return first, second


class ReversibleSelect(ReversibleLayer):
    """Reversible version of the Select combinator: every input must be selected.

    n_in=n_in (default max(indices) + 1), n_out=len(indices). Stack:
    `x0 ... x(n_in-1)` -> `x[indices[0]] x[indices[1]] ...`; the reverse picks
    each input from its first position in `indices`.

    Predict mode: stateless; streams with block_size 1.
    """

    handles_sequences = True

    def __init__(self, indices, n_in: int | None = None, name: str | None = None):
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise ValueError(f"ReversibleSelect: indices must be non-empty and >= 0, got {indices}")
        if n_in is None:
            n_in = max(indices) + 1
        missing = [i for i in range(n_in) if i not in indices]
        if missing or max(indices) >= n_in:
            raise ValueError(
                f"ReversibleSelect: to be reversible, indices must name every input 0..{n_in - 1} and "
                f"nothing else; got indices={indices} (missing {missing})"
            )
        name = name or f"ReversibleSelect{indices}".replace(" ", "")
        super().__init__(n_in=n_in, n_out=len(indices), name=name)
        self._indices = tuple(indices)
        self._reverse_indices = tuple(indices.index(i) for i in range(n_in))

    def forward(self, inputs, weights, state, rng):
        items = base.as_items(inputs, self.n_in)
        return base.from_items(tuple(items[i] for i in self._indices), self.n_out), state

    def reverse(self, outputs, weights=(), state=(), new_state=(), rng=None):
        items = base.as_items(outputs, self.n_out)
        return base.from_items(tuple(items[i] for i in self._reverse_indices), self.n_in)


def ReversibleSwap() -> ReversibleLayer:  # noqa: N802 (Trax's name)
    """Swaps the top two stack items, reversibly. Stack: `a b` -> `b a`."""
    return ReversibleSelect([1, 0], name="ReversibleSwap")


class ReversibleReshape(ReversibleLayer):
    """Reshapes the leading axes of each of n_in inputs from `shape1` to `shape2`.

    n_in=n_out=n_in. `[*shape1, ...]` -> `[*shape2, ...]`; the reverse reshapes
    back. Sequences come out as plain arrays (the reshape may fold time).

    Predict mode: not streamable (the shapes name fixed block lengths).
    """

    def __init__(self, shape1, shape2, n_in: int = 1):
        self._shape1 = list(shape1)
        self._shape2 = list(shape2)
        super().__init__(n_in=n_in, n_out=n_in, name=f"ReversibleReshape_{list(shape1)}_{list(shape2)}")

    streaming_spec = streaming.NOT_STREAMING

    @staticmethod
    def _reshape(items, from_shape, to_shape):
        def one(x):
            x = x.mask_invalid().values if isinstance(x, seq.Sequence) else x
            return jnp.reshape(x, to_shape + list(x.shape)[len(from_shape) :])

        return tuple(one(x) for x in items)

    def forward(self, inputs, weights, state, rng):
        return base.from_items(
            self._reshape(base.as_items(inputs, self.n_in), self._shape1, self._shape2), self.n_out
        ), state

    def reverse(self, outputs, weights=(), state=(), new_state=(), rng=None):
        return base.from_items(
            self._reshape(base.as_items(outputs, self.n_out), self._shape2, self._shape1), self.n_in
        )


class ReversiblePrintShape(ReversibleLayer):
    """Reversible PrintShape for debugging reversible serial layers.

    n_in=n_out=n_in. Returns its inputs unchanged and prints their shapes at run
    time (`PrintShape: msg: [f32[2,8,4], ...]`); the reverse is the identity.

    Predict mode: stateless; streams with block_size 1.
    """

    handles_sequences = True

    def __init__(self, n_in: int = 1, msg: str = ""):
        super().__init__(n_in=n_in, n_out=n_in, name="ReversiblePrintShape")
        self._msg = msg

    def forward(self, xs, weights, state, rng):
        info = f"PrintShape: {self._msg}: [{', '.join(shapes.short_form(x) for x in base.as_items(xs, self.n_in))}]"
        jax.debug.callback(functools.partial(print, info))
        return xs, state

    def reverse(self, outputs, weights=(), state=(), new_state=(), rng=None):
        return outputs


class ReversibleSerial(ReversibleLayer, combinators.Serial):
    """A reversible version of Serial whose backward pass stores no activations.

    n_in/n_out as Serial's. The sublayers must all be ReversibleLayers. The
    gradient is a `jax.custom_vjp`: the backward pass reconstructs each
    sublayer's inputs from its outputs (last to first) and takes that
    sublayer's VJP there, so memory does not grow with depth. Gradients equal
    those of the plain Serial (up to the rounding of the reconstruction).

    Predict mode: the state holds each sublayer's state; the streaming
    properties are Serial's. The gradient is plain autodiff there, because
    stream state carries gradients from block to block.
    """

    def __init__(self, *layers, mode: str | None = None):
        super().__init__(*layers, name="ReversibleSerial")
        # Like Trax, modes are usually given to the sublayers; by default this follows them.
        self._mode = combinators.built_mode(self.sublayers) if mode is None else mode
        for i, layer in enumerate(self.sublayers):
            if not isinstance(layer, ReversibleLayer):
                raise ValueError(  # noqa: TRY004 (Trax raises ValueError here)
                    f"ReversibleSerial: sublayer {i} is not a ReversibleLayer: {layer.name} "
                    f"({type(layer).__name__}); use the Reversible* layers"
                )

    def forward(self, xs, weights, state, rng):
        serial_forward = functools.partial(combinators.Serial.forward, self)
        if self._mode == "predict":
            # Stream state (buffers, caches) carries gradients from block to block, which the
            # reversible backward pass (gradients for inputs and weights only) would drop.
            return serial_forward(xs, weights, state, rng)

        @jax.custom_vjp
        def run(xs, weights, state, rng):
            return serial_forward(xs, weights, state, rng)

        def run_fwd(xs, weights, state, rng):
            ys, new_state = serial_forward(xs, weights, state, rng)
            # Only the outputs are kept: the inputs of every sublayer are rebuilt backwards.
            return (ys, new_state), (ys, weights, state, new_state, rng)

        def run_bwd(residuals, cotangents):
            ys, weights, state, new_state, rng = residuals
            ys_grad, _ = cotangents
            _, (xs_grad, weights_grad) = self.reverse_and_grad(ys, ys_grad, weights, state, new_state, rng)
            return xs_grad, weights_grad, None, None

        run.defvjp(run_fwd, run_bwd)
        return run(xs, weights, state, rng)

    def _reversed_sublayers(self, weights, state, new_state, rng):
        rngs = base.split_rng(rng, len(self.sublayers))
        return reversed(list(zip(self.sublayers, weights, state, new_state, rngs)))

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        stack = output
        for layer, w, s, ns, r in self._reversed_sublayers(weights, state, new_state, rng):
            layer_val = combinators.inputs_from_stack(stack, layer.n_out)
            layer_val = layer.reverse(layer_val, w, s, ns, rng=r)
            stack = combinators.outputs_onto_stack(layer_val, stack, layer.n_out)
        return stack

    def reverse_and_grad(self, output, grad, weights=(), state=(), new_state=(), rng=None):
        stack, stack_grad = output, grad
        weights_grad = []
        for layer, w, s, ns, r in self._reversed_sublayers(weights, state, new_state, rng):
            layer_val = combinators.inputs_from_stack(stack, layer.n_out)
            layer_ct = combinators.inputs_from_stack(stack_grad, layer.n_out)
            layer_val, (layer_ct, w_ct) = layer.reverse_and_grad(layer_val, layer_ct, w, s, ns, rng=r)
            weights_grad.insert(0, w_ct)
            stack = combinators.outputs_onto_stack(layer_val, stack, layer.n_out)
            stack_grad = combinators.outputs_onto_stack(layer_ct, stack_grad, layer.n_out)
        return stack, (stack_grad, tuple(weights_grad))


class ReversibleHalfResidual(ReversibleLayer):
    """Half of a RevNet-style residual: `[accumulator, *context] -> [accumulator + f(context), *context]`.

    n_in=n_out=1 + the context items f needs. `f` is `residual_layers` in
    series, followed by `attention_layer` when given (any layer; kept as a
    separate sublayer for Trax's weights layout). The reverse subtracts
    f(context) from the accumulator, computing f once for both the
    reconstruction and the gradient. The accumulator keeps its kind: a
    Sequence accumulator's mask is and-ed with f's output mask; a plain one
    gets f's values with invalid steps zeroed.

    Predict mode: the state holds f's sublayers' states. Streams when f keeps
    the time rate and has no output latency (the sum needs aligned steps).
    """

    handles_sequences = True

    def __init__(self, *residual_layers, attention_layer: base.Layer | None = None, name: str | None = None):
        compute_residual = combinators.Serial(*residual_layers)
        sublayers = (compute_residual,) if attention_layer is None else (compute_residual, attention_layer)
        n_context, _ = combinators.serial_arity(sublayers)
        super().__init__(n_in=n_context + 1, n_out=n_context + 1, name=name or "ReversibleHalfResidual")
        self._sublayers = sublayers

    @property
    def _chain_in_mode(self) -> combinators.Serial:
        # Built on demand from the current sublayers (with_mode twins them), for their streaming properties.
        return combinators.Serial(*self.sublayers)

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        chain = streaming.spec.of(self._chain_in_mode)
        spec = streaming.StreamingSpec(
            block_size=chain.block_size,
            input_latency=chain.input_latency,
            receptive_field=chain.receptive_field,
        )
        if not chain.supports_step:
            return spec.not_streaming()
        if chain.output_ratio != 1 or chain.output_latency:
            return spec.not_streaming("the residual must keep the time rate and have no output latency")
        return spec

    def init_with_output_signature(self, input_signature, rng):
        items = base.as_items(input_signature, self.n_in)
        context = base.from_items(items[1:], self.n_in - 1)
        weights, states, stack = self._init_chain(context, rng)
        accumulator, residual = (tuple(seq.values_of(s).shape) for s in (items[0], stack[0]))
        if accumulator != residual:
            raise ValueError(
                f"{self.name}: the residual layers give {residual} values, which cannot be added to "
                f"the accumulator's {accumulator}"
            )
        return weights, states, input_signature

    def _init_chain(self, context_signature, rng):
        stack = base.as_items(context_signature, self.n_in - 1)
        weights, states = [], []
        for i, (layer, r) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = combinators.inputs_from_stack(stack, layer.n_in)
            w, s, out = base.init_sublayer(i, layer, inputs, r)
            stack = base.as_items(out, layer.n_out) + tuple(stack[layer.n_in :])
            weights.append(w)
            states.append(s)
        return tuple(weights), tuple(states), stack

    def _residual(self, context: tuple, weights, state, rng):
        """(f(context), new states)."""
        stack = context
        new_states = []
        for i, (layer, r) in enumerate(zip(self.sublayers, base.split_rng(rng, len(self.sublayers)))):
            inputs = combinators.inputs_from_stack(stack, layer.n_in)
            outputs, s = base.call_sublayer(i, layer, inputs, weights[i], state[i], r)
            stack = base.as_items(outputs, layer.n_out) + tuple(stack[layer.n_in :])
            new_states.append(s)
        return stack[0], tuple(new_states)

    @staticmethod
    def _combine(accumulator, residual, sign: float):
        """accumulator + sign * residual, the accumulator keeping its kind."""
        if isinstance(residual, seq.Sequence):
            residual_values, residual_mask = residual.mask_invalid().values, residual.mask
        else:
            residual_values, residual_mask = residual, None
        if isinstance(accumulator, seq.Sequence):
            values = accumulator.values + sign * residual_values
            mask = accumulator.mask if residual_mask is None or sign < 0 else accumulator.mask & residual_mask
            return seq.Sequence(values, mask)
        return accumulator + sign * residual_values

    def forward(self, xs, weights, state, rng):
        accumulator, *context = base.as_items(xs, self.n_in)
        residual, new_state = self._residual(tuple(context), weights, state, rng)
        return (self._combine(accumulator, residual, 1.0), *context), new_state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        accumulator, *context = output
        residual, _ = self._residual(tuple(context), weights, state, rng)
        return (self._combine(accumulator, residual, -1.0), *context)

    def reverse_and_grad(self, output, ct, weights=(), state=(), new_state=(), rng=None):
        accumulator, *context = output
        accumulator_ct, *context_ct = ct
        context, context_ct = tuple(context), tuple(context_ct)

        def residual_values(context_, weights_):
            residual, _ = self._residual(context_, weights_, state, rng)
            if isinstance(residual, seq.Sequence):
                return residual.mask_invalid().values, residual
            return residual, residual

        values, vjp_fn, residual = jax.vjp(residual_values, context, weights, has_aux=True)
        del values
        # d(accumulator + f)/df is the identity on f's (masked) values.
        values_ct = seq.values_of(accumulator_ct)
        context_ct_from_f, weights_ct = vjp_fn(values_ct)
        x = (self._combine(accumulator, residual, -1.0), *context)
        x_ct = (accumulator_ct, *_add_cotangents(context_ct, context_ct_from_f))
        return x, (x_ct, weights_ct)
