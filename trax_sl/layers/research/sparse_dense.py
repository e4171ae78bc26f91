"""Sparse and factored replacements of Dense, and reversible permutations (Trax's research.sparsity).

Each layer maps `[..., d_in]` to `[..., d_out]` with fewer weights than a
Dense layer: low rank (`LowRankDense`), grouped over modules of the last axis
(`LocallyConnectedDense`, `LocallyConvDense`), gated and shared over modules
(`FactoredDense`, `MultiplicativeModularSparseDense`), or chosen by
`SparseDenseWithOptions`. Names, arguments, defaults and layer trees are
Trax's; Trax's shape assertions are kept (`assert_shape`, which nests the
weights as Trax does).

All are pointwise in time, except `LocallyConvDense` with
`length_kernel_size` > 1, a causal convolution over time: in predict mode
its state holds the last `length_kernel_size - 1` input steps (where Trax's
`_RememberPad` kept them), so it streams like `CausalConv`; and
`RandomLayer` with 0 < prob_a < 1 (so `SparseDenseWithOptions` with
`prob_sparse` in 'train' mode), which draws a branch per call and does not
stream.
"""

from __future__ import annotations

import functools
import math
import random

import jax.numpy as jnp

from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, convolution, core, reversible, streaming
from trax_sl.layers import initializers as init
from trax_sl.layers.assert_shape import assert_shape

__all__ = [
    "EinsumDense",
    "FactoredDense",
    "LocallyConnectedDense",
    "LocallyConvDense",
    "LowRankDense",
    "MergeLastTwoAxes",
    "MultiplicativeModularSparseDense",
    "RandomLayer",
    "ReversibleRandomPermute",
    "ReversibleReshapePermute",
    "SparseDenseWithOptions",
    "SplitLastAxis",
]


def _on_values(fn, item):
    """`fn` on an array, or on a Sequence's values keeping its mask."""
    return item.apply_values(fn) if isinstance(item, seq.Sequence) else fn(item)


# --- Reversible permutations of the last axis ------------------------------------------


def _reshape_multiplier(last_dim: int) -> int:
    """The size of the second factor `ReversibleReshapePermute` splits the last axis into.

    For a power of two `2**n`, `2**i` with i the largest of n//2 .. 1 that
    does not divide n (else 1): Trax's choice, which keeps the permutation's
    cycle long (e.g. 1024 = 32 * 32 repeats after 2 applications, 128 * 8
    after 10).
    """
    n = int(math.log2(last_dim)) if last_dim > 0 else 0
    if n < 1 or 2**n != last_dim:
        raise ValueError(
            f"ReversibleReshapePermute: the last axis must have a power-of-2 size >= 2, got {last_dim}"
        )
    exponent = next((i for i in range(n // 2, 0, -1) if n % i), 1)
    return 2**exponent


def _transpose_factors(x, first: int):
    """`x`'s last axis viewed as `[first, -1]`, transposed and flattened back."""
    shape = tuple(x.shape)
    factored = jnp.reshape(x, shape[:-1] + (first, -1))
    return jnp.reshape(jnp.swapaxes(factored, -1, -2), shape)


@assert_shape("...->...")
class ReversibleReshapePermute(reversible.ReversibleLayer):
    """A fixed, random-looking permutation of the last axis, done with reshapes; reversible.

    n_in=1, n_out=1. `[..., d]` -> `[..., d]` with d a power of 2: the last
    axis viewed as `[d / m, m]` (m from Trax's rule, about sqrt(d)) is
    transposed, so `[1 .. 8]` becomes `[1, 3, 5, 7, 2, 4, 6, 8]`. The same
    permutation for every position; its cycle is at most log2(d) long.

    Predict mode: stateless; pointwise in time.
    """

    def forward(self, x, weights, state, rng):
        m = _reshape_multiplier(x.shape[-1])
        return _transpose_factors(x, x.shape[-1] // m), state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng
        return _on_values(lambda y: _transpose_factors(y, _reshape_multiplier(y.shape[-1])), output)


def _random_permutation(size: int) -> list[int]:
    """Trax's permutation: Python's `random.Random(42)` shuffling `range(size)`."""
    permutation = list(range(size))
    random.Random(42).shuffle(permutation)
    return permutation


@assert_shape("...->...")
class ReversibleRandomPermute(reversible.ReversibleLayer):
    """A fixed random permutation of the last axis (Trax's, seed 42); reversible.

    n_in=1, n_out=1. `[..., d]` -> `[..., d]`, the same permutation for every
    position and every call.

    Predict mode: stateless; pointwise in time.
    """

    def forward(self, x, weights, state, rng):
        return x[..., jnp.array(_random_permutation(x.shape[-1]))], state

    def reverse(self, output, weights=(), state=(), new_state=(), rng=None):
        del weights, state, new_state, rng

        def unpermute(y):
            inverse = [0] * y.shape[-1]
            for i, p in enumerate(_random_permutation(y.shape[-1])):
                inverse[p] = i
            return y[..., jnp.array(inverse)]

        return _on_values(unpermute, output)


# --- Reshaping into modules -------------------------------------------------------------


@assert_shape("...a->...bc")
def SplitLastAxis(num_splits):  # noqa: N802
    """Returns a layer splitting the last axis into `num_splits` modules: `[..., d]` -> `[..., num_splits, d / num_splits]`.

    Predict mode: stateless; pointwise in time.
    """
    return base.Fn(
        f"SplitLastAxis_{num_splits}", lambda x: jnp.reshape(x, tuple(x.shape)[:-1] + (num_splits, -1))
    )


@assert_shape("...ab->...c")
def MergeLastTwoAxes():  # noqa: N802
    """Returns a layer merging the last two axes: `[..., a, b]` -> `[..., a * b]`.

    Predict mode: stateless; pointwise in time.
    """
    return base.Fn("MergeLastTwoAxes", lambda x: jnp.reshape(x, tuple(x.shape)[:-2] + (-1,)))


def _AddBias():  # noqa: N802
    """Trax's `tl.Add` of a bias from `Weights` to activations, broadcast explicitly. Stack: `b x` -> `x + b`."""

    def add(bias, x):
        return x + jnp.reshape(bias, (1,) * (x.ndim - bias.ndim) + tuple(bias.shape))

    return base.Fn("Add", add)


# --- Grouped (modular) dense layers -----------------------------------------------------


class _LocallyConnectedModules(core.LocallyConnected1d):
    """LocallyConnected1d over the modules axis of `[batch, time, modules, depth]`: pointwise in time.

    Its length axis is the modules axis SplitLastAxis adds, never time, so
    unlike a LocallyConnected1d over time it streams.
    """

    streaming_spec = streaming.POINTWISE


@assert_shape("...a->...b")
def LocallyConnectedDense(  # noqa: N802
    n_modules,
    n_units,
    kernel_size=1,
    kernel_initializer=init.GlorotUniformInitializer(),
    bias_initializer=init.RandomNormalInitializer(1e-6),
    use_bias=True,
):
    """Returns a Dense-like layer acting on `n_modules` modules of the last axis, each seeing `kernel_size` modules.

    `[..., d]` -> `[..., n_modules * n_units]`: the last axis split into
    `n_modules` modules, LocallyConnected1d (`n_units` filters, circular
    'WRAP' padding over modules) and the modules merged back; about
    `n_modules / kernel_size` times fewer weights than Dense. With
    `n_modules == 1` it is `Dense(n_units)`.

    Predict mode: stateless; pointwise in time.

    Args:
      n_modules: Number of modules the input and output are split into.
      n_units: Outputs (filters) of each module.
      kernel_size: Number of neighbouring modules each module sees (odd).
      kernel_initializer: Initializer of the kernels.
      bias_initializer: Initializer of the biases.
      use_bias: Whether to add a bias.
    """
    if n_modules == 1:
        return core.Dense(
            n_units,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            use_bias=use_bias,
        )
    return combinators.Serial(
        SplitLastAxis(n_modules),
        _LocallyConnectedModules(
            n_units,
            kernel_size,
            kernel_initializer=kernel_initializer,
            bias_initializer=bias_initializer,
            use_bias=use_bias,
            padding="WRAP",
        ),
        MergeLastTwoAxes(),
    )


@assert_shape("...a->...b")
def LocallyConvDense(n_modules, n_units, mode, kernel_size=1, length_kernel_size=1):  # noqa: N802
    """Returns a Dense-like layer: one convolution over the modules of the last axis (and causally over time).

    `[batch, time, d]` -> `[batch, time, n_modules * n_units]`: the last
    axis split into `n_modules` modules, then `Conv(n_units, (length_kernel_size,
    kernel_size))` over (time, modules), causal along time and zero-padded
    ('SAME') over modules, and the modules merged back. Like
    LocallyConnectedDense, but the kernel is shared by all modules. With
    `n_modules == 1` it is `Dense(n_units)` (as in Trax, `length_kernel_size`
    is then unused).

    Predict mode: the convolution's state holds the last
    `length_kernel_size - 1` input steps (Trax's `_RememberPad`); streams with
    block_size 1 and no latency.

    Args:
      n_modules: Number of modules the input and output are split into.
      n_units: Outputs (filters) of each module.
      mode: One of 'train', 'eval' or 'predict'.
      kernel_size: Number of neighbouring modules each module sees (odd).
      length_kernel_size: If > 1, also convolve causally over time with this kernel.
    """
    if n_modules == 1:
        return core.Dense(n_units)
    if kernel_size % 2 != 1:
        raise ValueError(f"LocallyConvDense: kernel_size must be odd, got kernel_size={kernel_size}")
    half = (kernel_size - 1) // 2
    return combinators.Serial(
        SplitLastAxis(n_modules),
        convolution.Conv(
            n_units,
            kernel_size=(length_kernel_size, kernel_size),
            padding=("causal", (half, half)),
            mode=mode,
        ),
        MergeLastTwoAxes(),
    )


@assert_shape("...a->...b")
def LowRankDense(n_units, d_lowrank):  # noqa: N802
    """Returns a Dense of rank `d_lowrank`: `Dense(d_lowrank)` then `Dense(n_units)`.

    Predict mode: stateless; pointwise in time.
    """
    return combinators.Serial(core.Dense(d_lowrank), core.Dense(n_units))


@assert_shape("...a->...b")
def EinsumDense(d_input, d_output, use_bias):  # noqa: N802
    """Returns Dense written as an einsum of a `[d_output, d_input]` kernel (Trax's, for decoding speed).

    `[..., d_input]` -> `[..., d_output]`; weights: the kernel, then the bias
    `[d_output]` when `use_bias`.

    Predict mode: stateless; pointwise in time.
    """
    layers = [
        core.Weights(init.GlorotUniformInitializer(), [d_output, d_input]),
        base.Fn("EinsumDense", lambda kernel, embeds: jnp.einsum("xd,...d->...x", kernel, embeds)),
    ]
    if use_bias:
        layers += [core.Weights(init.RandomNormalInitializer(1e-6), [d_output]), _AddBias()]
    return combinators.Serial(layers)


class _RandomCond(combinators.Cond):
    """Cond on a fresh uniform draw `< prob_a`; when the draw cannot change the branch, runs that branch alone.

    Then no draw is made (so no rng is needed) and it streams as that branch does.
    """

    def __init__(self, layer_a, layer_b, prob_a):
        condition = combinators.Serial(core.RandomUniform(), base.Fn("SmallerThan", lambda x: x < prob_a))
        super().__init__(condition, layer_a, layer_b)
        self._prob_a = prob_a

    def _fixed_branch(self) -> int | None:
        """The sublayer index always chosen (1: layer_a, 2: layer_b), or None when the draw decides."""
        if self._prob_a >= 1:
            return 1
        if self._prob_a <= 0:
            return 2
        return None

    @property
    def streaming_spec(self) -> streaming.StreamingSpec:
        fixed = self._fixed_branch()
        if fixed is not None:
            return streaming.spec.of(self.sublayers[fixed])
        return streaming.NOT_STREAMING.not_streaming(
            f"RandomLayer: prob_a={self._prob_a} draws a branch per call, so blocks of one stream "
            f"could take different branches"
        )

    def forward(self, xs, weights, state, rng):
        fixed = self._fixed_branch()
        if fixed is None:
            return super().forward(xs, weights, state, rng)
        # What Cond gives when its condition comes out `fixed`, with the same per-branch rng.
        branch_rng = base.split_rng(rng, 3)[fixed]
        y, branch_state = base.call_sublayer(
            fixed, self.sublayers[fixed], xs, weights[fixed], state[fixed], branch_rng
        )
        new_state = tuple(branch_state if i == fixed else s for i, s in enumerate(state))
        return y, new_state


def RandomLayer(layer_a, layer_b, prob_a):  # noqa: N802
    """Returns a layer running `layer_a` with probability `prob_a` (one draw per call), else `layer_b`.

    `Cond(Serial(RandomUniform(), SmallerThan(prob_a)), layer_a, layer_b)`,
    as in Trax; needs an rng.

    Predict mode: not streamable when 0 < prob_a < 1 (each call draws anew);
    with prob_a >= 1 (always `layer_a`) or <= 0 (always `layer_b`) it streams
    as that layer does.
    """
    return _RandomCond(layer_a, layer_b, prob_a)


_SPARSITY_TYPES = "None, 'mult', 'lowrank', 'einsum', 'local' or 'local3'"


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise ValueError(f"SparseDenseWithOptions: {what}")


@assert_shape("...a->...b")
def SparseDenseWithOptions(  # noqa: N802
    n_units,
    d_input=None,
    sparsity_type=None,
    sparsity=0,
    d_lowrank=None,
    prob_sparse=None,
    mode=None,
    use_bias=True,
    use_bfloat16=False,
):
    """Returns a Dense or one of its sparse versions, as `sparsity_type` says: `[..., d_input]` -> `[..., n_units]`.

    `sparsity_type` None/'None' (or `sparsity` 0): Dense; 'mult':
    FactoredDense(sparsity, d_input, n_units); 'lowrank':
    LowRankDense(n_units, d_lowrank); 'einsum': EinsumDense; 'local' /
    'local3': LocallyConnectedDense with `sparsity` modules and kernel 1 / 3.
    With `prob_sparse`, a RandomLayer choosing the sparse layer with that
    probability in 'train' mode (always in other modes), else a Dense;
    `use_bfloat16` is for Dense and 'mult' only, `use_bias=False` not for
    'lowrank', 'local', 'local3'.

    Predict mode: stateless; pointwise in time (with `prob_sparse`, in
    'train' mode a RandomLayer, which does not stream).
    """
    if prob_sparse is not None:
        if mode is not None and mode != "train":
            # Other modes use the sparse variant; the weights hold both, as in training.
            prob_sparse = 1.0
        return RandomLayer(
            SparseDenseWithOptions(
                n_units,
                d_input,
                sparsity_type,
                sparsity,
                d_lowrank,
                use_bias=use_bias,
                use_bfloat16=use_bfloat16,
            ),
            core.Dense(n_units, use_bias=use_bias, use_bfloat16=use_bfloat16),
            prob_sparse,
        )
    if sparsity_type is None or sparsity_type == "None" or sparsity == 0:
        return core.Dense(n_units, use_bias=use_bias, use_bfloat16=use_bfloat16)
    if sparsity_type == "mult":
        return FactoredDense(sparsity, d_input, n_units, use_bias=use_bias, use_bfloat16=use_bfloat16)
    if sparsity_type not in ("lowrank", "einsum", "local", "local3"):
        raise ValueError(
            f"SparseDenseWithOptions: unknown sparsity_type {sparsity_type!r}; use {_SPARSITY_TYPES}"
        )
    _require(
        not use_bfloat16,
        f"use_bfloat16=True is supported for sparsity_type None and 'mult' only, got {sparsity_type!r}",
    )
    if sparsity_type == "einsum":
        return EinsumDense(d_input, n_units, use_bias=use_bias)
    _require(use_bias, f"use_bias=False is not supported for sparsity_type {sparsity_type!r}")
    if sparsity_type == "lowrank":
        return LowRankDense(n_units, d_lowrank)
    _require(
        n_units % sparsity == 0,
        f"n_units must be a multiple of sparsity for sparsity_type {sparsity_type!r}, "
        f"got n_units={n_units}, sparsity={sparsity}",
    )
    kernel_size = 3 if sparsity_type == "local3" else 1
    return LocallyConnectedDense(sparsity, n_units // sparsity, kernel_size=kernel_size)


# --- Multiplicative (factored) dense layers --------------------------------------------


def _GateAndProject():  # noqa: N802
    """Returns the gating and projection of FactoredDense in one einsum (saves memory).

    Stack: `projection [d_in, d_module]`, `gating [n_modules, d_in]`,
    `x [..., d_in]` -> `[..., n_modules, d_module]`, module n being
    `(x * gating[n]) @ projection`.
    """

    def gate_and_project(projection, gating, x):
        return jnp.einsum("...d,nd,dm->...nm", x, gating, projection)

    return base.Fn("_GateAndProject", gate_and_project)


@assert_shape("...a->...b")
def FactoredDense(n_modules, d_in, d_out, use_bias=True, use_bfloat16=False):  # noqa: N802
    """Returns a Dense-like layer factored over `n_modules` modules, with about 1/n_modules of the weights.

    `[..., d_in]` -> `[..., d_out]`: module n of the output (`d_out /
    n_modules` wide) is `(x * gating[n]) @ projection`, with trainable gating
    vectors `[n_modules, d_in]` and one projection `[d_in, d_out /
    n_modules]` shared by the modules; then a bias `[d_out]` when `use_bias`.
    Weights in bfloat16 when `use_bfloat16`.

    Predict mode: stateless; pointwise in time.

    Args:
      n_modules: Number of modules (subvectors) of the output.
      d_in: Last axis of the input.
      d_out: Last axis of the output; a multiple of `n_modules`.
      use_bias: Whether to add a bias at the end.
      use_bfloat16: Whether the weights are bfloat16 (else float32).
    """
    if d_out % n_modules != 0:
        raise ValueError(f"FactoredDense: d_out ({d_out}) must be a multiple of n_modules ({n_modules})")
    d_module = d_out // n_modules
    layers = [
        core.Weights(
            init.RandomNormalInitializer(stddev=0.5), shape=[n_modules, d_in], use_bfloat16=use_bfloat16
        ),
        core.Weights(init.GlorotUniformInitializer(), shape=[d_in, d_module], use_bfloat16=use_bfloat16),
        _GateAndProject(),
        MergeLastTwoAxes(),
    ]
    if use_bias:
        layers += [
            core.Weights(init.RandomNormalInitializer(1e-6), shape=[d_out], use_bfloat16=use_bfloat16),
            _AddBias(),
        ]
    return combinators.Serial(layers)


@assert_shape("...a->...a")
def MultiplicativeModularSparseDense(sparsity, d_feature):  # noqa: N802
    """Returns a Dense replacement `[..., d_feature]` -> `[..., d_feature]`: FactoredDense, then a modular dense.

    Module h of the output (`d_feature / sparsity` wide) is
    `((x * multiplier[h]) @ kernel) @ modular[h] + bias`: per-module gating
    `[sparsity, d_feature]`, a kernel `[d_feature, d_module]` shared by the
    modules, a per-module kernel `[sparsity, d_module, d_module]`, all in one
    einsum; then a bias `[d_feature]`.

    Predict mode: stateless; pointwise in time.

    Args:
      sparsity: Number of modules the output is divided into.
      d_feature: Last axis of the input and the output; a multiple of `sparsity`.
    """
    if d_feature % sparsity != 0:
        raise ValueError(
            f"MultiplicativeModularSparseDense: d_feature ({d_feature}) must be a multiple of "
            f"sparsity ({sparsity})"
        )
    d_module = d_feature // sparsity

    def sparse_dense_einsum(modular, kernel, multiplier, embeds):
        return jnp.einsum("hxo,dx,hd,...d->...ho", modular, kernel, multiplier, embeds)

    return combinators.Serial(
        core.Weights(init.RandomNormalInitializer(stddev=0.5), shape=[sparsity, d_feature]),
        core.Weights(init.GlorotUniformInitializer(), [d_feature, d_module]),
        core.Weights(
            functools.partial(init.GlorotUniformInitializer(), nonreceptive_dims=[0]),
            [sparsity, d_module, d_module],
        ),
        base.Fn("SparseDenseEinsum", sparse_dense_einsum),
        MergeLastTwoAxes(),
        core.Weights(init.RandomNormalInitializer(1e-6), [d_feature]),
        _AddBias(),
    )
