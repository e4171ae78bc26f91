"""Mixed precision: a `Policy` of parameter, compute and output dtypes, and `WithPolicy` to run a layer under one.

Under `Policy(param_dtype=float32, compute_dtype=bfloat16, output_dtype=float32)`
(`get_policy('bfloat16')`) the weights, and so the optimizer state, stay
float32 (the master copy the updates go to); each call casts them and the
floating inputs to bfloat16, so matmuls and convolutions run in bfloat16, and
casts the floating outputs to float32, so that losses and metrics on top are
float32. Inside, the layers keep their numerically sensitive parts in at least
float32 whatever the compute dtype: softmax logits (`attention_core`),
normalisation statistics (`normalization`). Integer inputs (token ids) and
masks are left as they are.

In predict mode the stream state is made for the compute dtype: KV caches and
other carried activations are bfloat16.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import shapes
from trax_sl.layers import base

# Names `get_policy` knows besides the explicit form `params=float32,compute=bfloat16,output=float32`.
_NAMED = {
    "float32": ("float32", "float32", "float32"),
    "bfloat16": ("float32", "bfloat16", "float32"),
    "mixed_bfloat16": ("float32", "bfloat16", "float32"),
}
_EXPLICIT = re.compile(r"^params=(\w+),compute=(\w+),output=(\w+)$")


@dataclasses.dataclass(frozen=True)
class Policy:
    """The dtypes of a layer's weights (`param_dtype`), its arithmetic (`compute_dtype`) and its outputs."""

    param_dtype: np.dtype | str = "float32"
    compute_dtype: np.dtype | str = "float32"
    output_dtype: np.dtype | str = "float32"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            try:
                dtype = np.dtype(jnp.dtype(value))
            except TypeError as e:
                raise ValueError(f"Policy: {field.name} must be a floating dtype, got {value!r}") from e
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ValueError(f"Policy: {field.name} must be a floating dtype, got {dtype}")
            object.__setattr__(self, field.name, dtype)

    def __str__(self) -> str:
        return f"params={self.param_dtype},compute={self.compute_dtype},output={self.output_dtype}"

    def cast_to_param(self, tree):
        """`tree` with its floating arrays (or ShapeDtypes) in `param_dtype`."""
        return cast_floating(tree, self.param_dtype)

    def cast_to_compute(self, tree):
        """`tree` with its floating arrays (or ShapeDtypes) in `compute_dtype`."""
        return cast_floating(tree, self.compute_dtype)

    def cast_to_output(self, tree):
        """`tree` with its floating arrays (or ShapeDtypes) in `output_dtype`."""
        return cast_floating(tree, self.output_dtype)


def get_policy(policy: Policy | str | None) -> Policy:
    """A `Policy` from itself, None (all float32), `'float32'`, `'bfloat16'` (float32 weights and
    outputs, bfloat16 compute; also `'mixed_bfloat16'`) or `'params=float32,compute=bfloat16,output=float32'`.
    """
    if isinstance(policy, Policy):
        return policy
    if policy is None:
        return Policy()
    if isinstance(policy, str):
        spec = policy.replace(" ", "").lower()
        match = _EXPLICIT.match(spec)
        dtypes = _NAMED.get(spec) or (match.groups() if match else None)
        if dtypes is not None:
            return Policy(*dtypes)
    raise ValueError(
        f"precision: expected a Policy, one of {sorted(_NAMED)} or "
        f"'params=<dtype>,compute=<dtype>,output=<dtype>', got {policy!r}"
    )


def cast_floating(tree, dtype):
    """`tree` with every floating array or `ShapeDtype` leaf in `dtype`; other leaves as they are."""

    def cast(leaf):
        leaf_dtype = getattr(leaf, "dtype", None)
        if leaf_dtype is None or not jnp.issubdtype(leaf_dtype, jnp.floating) or leaf_dtype == dtype:
            return leaf
        if isinstance(leaf, (shapes.ShapeDtype, jax.ShapeDtypeStruct)):
            return shapes.ShapeDtype(leaf.shape, dtype)
        return leaf.astype(dtype)

    return jax.tree.map(cast, tree)


class WithPolicy(base.WrapsOneLayerInPlace):
    """Runs `layer` under a precision `Policy`; its weights and state are `layer`'s own trees.

    `init` makes the weights in the policy's `param_dtype` (the stream state of
    predict mode in its `compute_dtype`); each call computes in
    `compute_dtype` and returns `output_dtype`. Gradients reach the weights in
    `param_dtype`. The weights tree is `layer`'s, not nested, so a checkpoint
    of the model trained under a policy loads into the model without one.
    Same stack and streaming properties as `layer`.
    """

    def __init__(self, layer: base.Layer, policy: Policy | str = "bfloat16"):
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name="WithPolicy", sublayers_to_print=[layer])
        self._sublayers = (layer,)
        self._policy = get_policy(policy)

    @property
    def policy(self) -> Policy:
        return self._policy

    def init_with_output_signature(self, input_signature, rng):
        policy = self._policy
        with base.init_outputs_cast(policy.cast_to_compute):
            weights, state, out = base.init_sublayer(
                0, self.sublayer, policy.cast_to_compute(input_signature), rng
            )
        return policy.cast_to_param(weights), state, policy.cast_to_output(out)

    def forward(self, x, weights, state, rng):
        policy = self._policy
        with base.shared_weights_mapped(policy.cast_to_compute):  # Shared layers inside compute alike.
            y, state = base.call_sublayer(
                0, self.sublayer, policy.cast_to_compute(x), policy.cast_to_compute(weights), state, rng
            )
        return policy.cast_to_output(y), state
