"""Combinators that shape compilation: Repeat (one body, stacked weights) and CheckpointGradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl import shapes
from trax_sl.layers import base, streaming


class Repeat(base.Layer):
    """Applies `layer` n_repeats times in series, as one compiled body.

    Each repeat has weights (and state) of its own, stacked on a new leading
    axis of size n_repeats, and the repeats run in a `jax.lax.scan`, so the
    model is traced and compiled once whatever n_repeats is. The layer must
    map its input signature to itself (n_in = n_out, same shapes): a block
    that carries a mask or an encoding along with its activations repeats
    with them.

    `remat` rematerialises each repeat in training: True (or 'full') keeps
    only its input, or a policy of `REMAT_POLICIES` ('dots_saveable',
    'minimal') or `jax.checkpoint_policies`; False (or 'none') keeps everything.

    Stack: `x` (the layer's n_in items) -> `layer(layer(...layer(x)))`.
    Predict mode: the state is a tuple of each repeat's stream state, and the
    repeats run one after the other (the weights still stacked): each
    repeat's caches stay buffers of their own, so that a step moves none of
    them, as slicing them out of a stack and back would.
    """

    cache_follows_sublayers = False  # Its weights are the sublayer's stacked, one per repeat.

    handles_sequences = True

    def __init__(self, layer: base.Layer, n_repeats: int, remat=False, name: str | None = None):
        if n_repeats < 1:
            raise ValueError(f"Repeat: n_repeats must be >= 1, got n_repeats={n_repeats}")
        if layer.n_in != layer.n_out or layer.n_in < 1:
            raise ValueError(
                f"Repeat: the layer must give as many stack items as it takes (n_in = n_out >= 1), got "
                f"{layer.name} with n_in={layer.n_in}, n_out={layer.n_out}"
            )
        super().__init__(
            n_in=layer.n_in, n_out=layer.n_out, name=name or f"Repeat_{n_repeats}", sublayers_to_print=[layer]
        )
        self._sublayers = (layer,)
        self._n_repeats = n_repeats
        # False, None or 'none': no remat; True: 'full'; else a name of REMAT_POLICIES or a policy function.
        self._remat = (
            None
            if remat in (False, None, "none")
            else remat_policy(None if remat is True else remat, "Repeat: remat")
        )

    @property
    def sublayer(self) -> base.Layer:
        return self._sublayers[0]

    @property
    def n_repeats(self) -> int:
        return self._n_repeats

    @property
    def stacked_copies(self) -> int:
        return self._n_repeats

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        # The body keeps its output ratio at 1 to feed itself: n_repeats copies in series.
        return streaming.serial([streaming.spec.of(self.sublayer)] * self._n_repeats)

    def weight_axes(self, weights):
        """The sublayer's axes (of one repeat's weights) behind a leading 'layers' axis."""
        one = jax.tree.map(lambda w: jax.ShapeDtypeStruct(tuple(w.shape[1:]), w.dtype), weights)
        axes = base.sublayer_weight_axes(self.sublayer, one)
        return jax.tree.map(lambda a: a.prepend("layers"), axes)  # Axes and UNDECLARED are leaves.

    @property
    def state_per_copy(self) -> bool:
        """Whether the state is a tuple of the repeats' (predict mode) rather than their stack."""
        return self._has_predict_mode_sublayer()

    def init_with_output_signature(self, input_signature, rng):
        layer = self.sublayer
        outputs = []

        def init_one(r):
            w, s, out = base.init_sublayer(0, layer, input_signature, r)
            outputs.append(out)
            return w, s

        # One trace of the layer's init, vmapped: every repeat gets weights of its own.
        weights, state = jax.vmap(init_one)(jax.random.split(rng, self._n_repeats))
        n = layer.n_in
        out = seq.plain_sequences(base.as_items(outputs[0], n))
        expected = seq.plain_sequences(base.as_items(input_signature, n))

        def shown(items):
            return shapes.short_form(base.from_items(items, n))

        if jax.tree.structure(out) != jax.tree.structure(expected):
            raise ValueError(
                f"Repeat: {layer.name} must map its input to the same signature to repeat, got "
                f"{shown(expected)} -> {shown(out)} (the stack items differ: "
                f"{jax.tree.structure(expected)} -> {jax.tree.structure(out)})"
            )
        if shapes.signature(jax.tree.leaves(out)) != shapes.signature(jax.tree.leaves(expected)):
            raise ValueError(
                f"Repeat: {layer.name} must map its input to the same signature to repeat, "
                f"got {shown(expected)} -> {shown(out)}"
            )
        if self.state_per_copy:
            state = tuple(_repeat_of(state, r) for r in range(self._n_repeats))
        return weights, state, outputs[0]

    def forward(self, x, weights, state, rng):
        layer = self.sublayer
        rngs = None if rng is None else jax.random.split(rng, self._n_repeats)
        if self.state_per_copy:
            new_state = []
            for r in range(self._n_repeats):
                x, s = base.call_sublayer(
                    0, layer, x, _repeat_of(weights, r), state[r], None if rngs is None else rngs[r]
                )
                new_state.append(s)
            return x, tuple(new_state)
        n = layer.n_in

        def body(carry, weights_state_rng):
            w, s, r = weights_state_rng
            y, new_s = base.call_sublayer(0, layer, base.from_items(carry, n), w, s, r)
            return seq.plain_sequences(base.as_items(y, n)), new_s

        if self._remat is not None:
            body = jax.checkpoint(body, policy=self._remat)
        # The carry keeps one pytree type: a masked input enters as a plain Sequence. A body
        # without weights, state or rng has nothing to scan over: the length says how often.
        # Several stack items travel as one tuple, whatever sequence type the caller packed them in.
        y, new_state = jax.lax.scan(
            body, seq.plain_sequences(base.as_items(x, n)), (weights, state, rngs), length=self._n_repeats
        )
        return base.from_items(y, n), new_state


def _repeat_of(stacked, r: int):
    """Repeat r's tree of a tree stacked per repeat."""
    return jax.tree.map(lambda a: a[r], stacked)


# What `CheckpointGradient(layer, policy=...)` and the models' `remat` take by name: which activations
# the backward pass keeps (the rest it recomputes), as `jax.checkpoint_policies` say.
REMAT_POLICIES = {
    "full": jax.checkpoint_policies.nothing_saveable,  # Keep only the inputs; recompute everything.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # Keep every matmul's output.
    # Keep the matmuls with the weights (no batch dimensions); recompute attention's.
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(policy, what: str = "CheckpointGradient: policy"):
    """A `jax.checkpoint` policy from a name in `REMAT_POLICIES`, a policy function, or None ('full')."""
    if policy is None:
        return REMAT_POLICIES["full"]
    if callable(policy):
        return policy
    if policy in REMAT_POLICIES:
        return REMAT_POLICIES[policy]
    raise ValueError(
        f"{what} must be one of {sorted(REMAT_POLICIES)}, a jax.checkpoint_policies "
        f"function or None, got {policy!r}"
    )


class CheckpointGradient(base.WrapsOneLayerInPlace):
    """Runs `layer` and recomputes its activations in the backward pass.

    Saves memory in training (rematerialisation, `jax.checkpoint`); the values
    and gradients are those of `layer`. `policy` says what the backward pass
    keeps instead of recomputing: None or 'full' nothing (only the input),
    'dots_saveable' every matmul's output, 'minimal' the matmuls with the
    weights, or any `jax.checkpoint_policies` function. Same stack, streaming
    properties, weights and state as `layer` (its trees, not nested, so a
    checkpoint loads with or without it).
    Predict mode: the state is the layer's.
    """

    def __init__(self, layer: base.Layer, policy=None, prevent_cse: bool = True):
        super().__init__(
            n_in=layer.n_in, n_out=layer.n_out, name="CheckpointGradient", sublayers_to_print=[layer]
        )
        self._sublayers = (layer,)
        self._policy = remat_policy(policy)
        self._prevent_cse = prevent_cse

    def forward(self, x, weights, state, rng):
        run = jax.checkpoint(
            lambda x, w, s, r: base.call_sublayer(0, self.sublayer, x, w, s, r),
            policy=self._policy,
            prevent_cse=self._prevent_cse,
        )
        return run(x, weights, state, rng)


def GatedLinearUnit() -> base.Layer:  # noqa: N802 (SequenceLayers' name)
    """Splits the last axis in halves a, b and returns `a * sigmoid(b)`.

    n_in=1, n_out=1; `[batch, time, 2d]` -> `[batch, time, d]`.
    Predict mode: stateless; streams with block_size 1.
    """

    def glu(x):
        if x.shape[-1] % 2:
            raise ValueError(f"GatedLinearUnit: the last axis must be even, got {shapes.short_form(x)}")
        a, b = jnp.split(x, 2, axis=-1)
        return a * jax.nn.sigmoid(b)

    return base.Fn("GatedLinearUnit", glu)
