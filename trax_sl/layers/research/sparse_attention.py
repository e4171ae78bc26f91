"""Causal self-attention with sparse Q/K/V projections (Trax's research.sparsity attention layers).

Each is Trax's: `DotProductCausalAttention` between heads of queries, keys
and values computed by the sparse Dense replacements of `sparse_dense`
(modular, convolutional, low-rank, multiplicative) instead of Dense layers.
Names, arguments, defaults and layer trees are Trax's.

All stream with block_size 1 and no latency: in predict mode the state holds
the attention's KV cache (`max_inference_length` valid steps per row) and,
for the convolutional projections with `length_kernel_size` > 1, the last
`length_kernel_size - 1` input steps of each convolution.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl.layers import attention, base, combinators
from trax_sl.layers.assert_shape import assert_shape
from trax_sl.layers.research.sparse_dense import (
    FactoredDense,
    LocallyConnectedDense,
    LocallyConvDense,
    LowRankDense,
    MultiplicativeModularSparseDense,
)

__all__ = [
    "ConvCausalAttention",
    "LowRankCausalAttention",
    "ModularCausalAttention",
    "MultiplicativeCausalAttention",
    "MultiplicativeConvCausalAttention",
    "MultiplicativeModularCausalAttention",
]

_OUTPUT_LAYER_TYPES = ("none", "mult", "conv", "multconv")
_V_CONCAT_TYPES = ("original", "fixed", "none")


def _check_modules(where: str, d_feature: int, n_modules: int, what: str = "sparsity") -> None:
    if d_feature % n_modules:
        raise ValueError(
            f"{where}: d_feature ({d_feature}) must be a multiple of the number of modules "
            f"({what}={n_modules})"
        )


def _causal_attention(projection, n_heads, dropout, max_inference_length, mode):
    """ConfigurableAttention with `projection()` for Q, K, V and the output, and causal dot-product attention."""
    return attention.ConfigurableAttention(
        projection(),
        projection(),
        projection(),
        projection(),
        n_heads=n_heads,
        qkv_attention_layer=attention.DotProductCausalAttention(
            dropout=dropout, max_inference_length=max_inference_length, mode=mode
        ),
    )


@assert_shape("bld->bld")
def ModularCausalAttention(  # noqa: N802
    d_feature, n_heads=1, sparsity=None, dropout=0.0, max_inference_length=2048, kernel_size=1, mode="train"
):
    """Returns causal multi-head self-attention with LocallyConnectedDense Q/K/V and output layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. Like CausalAttention,
    with `LocallyConnectedDense(sparsity, d_feature / sparsity, kernel_size)`
    (`sparsity` defaults to `n_heads`) in place of each Dense.

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row); streams with block_size 1.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      sparsity: Number of modules of LocallyConnectedDense (None: n_heads).
      dropout: Dropout rate on the attention weights ('train' mode).
      max_inference_length: KV cache length in predict mode.
      kernel_size: Kernel size of LocallyConnectedDense.
      mode: One of 'train', 'eval' or 'predict'.
    """
    n_modules = n_heads if sparsity is None else sparsity
    _check_modules("ModularCausalAttention", d_feature, n_modules)

    def projection():
        return LocallyConnectedDense(n_modules, d_feature // n_modules, kernel_size=kernel_size)

    return _causal_attention(projection, n_heads, dropout, max_inference_length, mode)


@assert_shape("bld->bld")
def ConvCausalAttention(  # noqa: N802
    d_feature, n_heads=1, sparsity=None, dropout=0.0, max_inference_length=2048, kernel_size=1, mode="train"
):
    """Returns causal multi-head self-attention with LocallyConvDense Q/K/V and output layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. Like CausalAttention,
    with `LocallyConvDense(sparsity, d_feature / sparsity, kernel_size)`
    (`sparsity` defaults to `n_heads`; no convolution over time) in place of
    each Dense.

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row); streams with block_size 1.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      sparsity: Number of modules of LocallyConvDense (None: n_heads).
      dropout: Dropout rate on the attention weights ('train' mode).
      max_inference_length: KV cache length in predict mode.
      kernel_size: Kernel size of LocallyConvDense over modules (odd).
      mode: One of 'train', 'eval' or 'predict'.
    """
    n_modules = n_heads if sparsity is None else sparsity
    _check_modules("ConvCausalAttention", d_feature, n_modules)

    def projection():
        return LocallyConvDense(n_modules, d_feature // n_modules, mode=mode, kernel_size=kernel_size)

    return _causal_attention(projection, n_heads, dropout, max_inference_length, mode)


@assert_shape("bld->bld")
def LowRankCausalAttention(  # noqa: N802
    d_feature, n_heads=1, dropout=0.0, max_inference_length=2048, lowrank=64, mode="train"
):
    """Returns causal multi-head self-attention with LowRankDense Q/K/V and output layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. Like CausalAttention,
    with `LowRankDense(d_feature, lowrank)` in place of each Dense.

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row); streams with block_size 1.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      dropout: Dropout rate on the attention weights ('train' mode).
      max_inference_length: KV cache length in predict mode.
      lowrank: Rank of the projections.
      mode: One of 'train', 'eval' or 'predict'.
    """
    return _causal_attention(
        lambda: LowRankDense(d_feature, lowrank), n_heads, dropout, max_inference_length, mode
    )


@assert_shape("bld->bld")
def MultiplicativeCausalAttention(  # noqa: N802
    d_feature, n_heads=1, sparsity=None, dropout=0.0, max_inference_length=2048, mode="train"
):
    """Returns causal multi-head self-attention with FactoredDense Q/K/V and output layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. Like CausalAttention,
    with `FactoredDense(sparsity, d_feature, d_feature)` (`sparsity` defaults
    to `n_heads`) in place of each Dense: each module scales the embedding by
    its own gates, then all share one projection, which still expresses e.g.
    permutations with fewer weights.

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row); streams with block_size 1.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      sparsity: Number of modules of FactoredDense (None: n_heads).
      dropout: Dropout rate on the attention weights ('train' mode).
      max_inference_length: KV cache length in predict mode.
      mode: One of 'train', 'eval' or 'predict'.
    """
    sparsity = n_heads if sparsity is None else sparsity
    return _causal_attention(
        lambda: FactoredDense(sparsity, d_feature, d_feature), n_heads, dropout, max_inference_length, mode
    )


@assert_shape("bld->bld")
def MultiplicativeModularCausalAttention(  # noqa: N802
    d_feature, n_heads=1, sparsity=None, dropout=0.0, max_inference_length=2048, mode="train"
):
    """Returns causal multi-head self-attention with MultiplicativeModularSparseDense Q/K/V and output layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. Like CausalAttention,
    with `MultiplicativeModularSparseDense(sparsity, d_feature)` (`sparsity`
    defaults to `n_heads`) in place of each Dense.

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row); streams with block_size 1.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      sparsity: Number of modules (None: n_heads).
      dropout: Dropout rate on the attention weights ('train' mode).
      max_inference_length: KV cache length in predict mode.
      mode: One of 'train', 'eval' or 'predict'.
    """
    sparsity = n_heads if sparsity is None else sparsity
    return _causal_attention(
        lambda: MultiplicativeModularSparseDense(sparsity, d_feature),
        n_heads,
        dropout,
        max_inference_length,
        mode,
    )


def _v_concat_layers(v_concat_type, sparsity, d_module):
    """Layers joining the shared FactoredDense output `m` and the input `x` into what V's convolution sees.

    Stack: `m x` -> `v_in`. 'none': `m`; 'original': `[m, x]` on the last
    axis (modules then do not line up with those of Q/K: kept for old
    experiments); 'fixed': per module, `[m_module, x_module]`.
    """
    if v_concat_type == "original":
        return [combinators.Concatenate()]
    if v_concat_type == "none":
        return [combinators.Select([0], n_in=2)]

    def to_modules(x):
        return jnp.reshape(x, (x.shape[0], x.shape[1], sparsity, d_module))

    return [
        combinators.Parallel(base.Fn("Reshape1", to_modules), base.Fn("Reshape2", to_modules)),
        combinators.Concatenate(),
        base.Fn("Reshape3", lambda x: jnp.reshape(x, (x.shape[0], x.shape[1], 2 * sparsity * d_module))),
    ]


@assert_shape("bld->bld")
def MultiplicativeConvCausalAttention(  # noqa: N802
    d_feature,
    n_heads=1,
    sparsity=None,
    length_kernel_size=3,
    dropout=0.0,
    force_no_dropout=False,
    max_inference_length=2048,
    share_qk=False,
    output_layer_type="none",
    v_concat_type="none",
    mode="train",
):
    """Returns causal multi-head self-attention whose Q/K/V come from one FactoredDense and LocallyConvDense layers.

    n_in=1, n_out=1; `[batch, time, d_feature]` -> same. One
    `FactoredDense(sparsity, d_feature, d_feature)` output `m` is shared:
    Q and K are `LocallyConvDense(kernel_size=3, length_kernel_size)` of `m`
    (one layer for both with `share_qk`), V is
    `LocallyConvDense(kernel_size=1, length_kernel_size)` of `m` joined with
    the input as `v_concat_type` says ('none': `m` alone; 'fixed': each
    module of `m` with the same module of the input; 'original': `m` and the
    input concatenated whole). Then DotProductCausalAttention, MergeHeads and
    the `output_layer_type` layers: 'none', 'mult' (FactoredDense), 'conv'
    (LocallyConvDense) or 'multconv' (both).

    Predict mode: the state holds the KV cache (`max_inference_length` valid
    steps per row) and each convolution's last `length_kernel_size - 1`
    input steps; streams with block_size 1 and no latency.

    Args:
      d_feature: Depth of the activations.
      n_heads: Number of attention heads.
      sparsity: Number of modules (None: n_heads); usually n_heads.
      length_kernel_size: Kernel size of the causal convolutions over time.
      dropout: Dropout rate on the attention weights ('train' mode).
      force_no_dropout: If True, dropout is 0 whatever `dropout` says.
      max_inference_length: KV cache length in predict mode.
      share_qk: If True, Q and K are one and the same layer's output.
      output_layer_type: One of 'none', 'mult', 'conv', 'multconv'.
      v_concat_type: One of 'original', 'fixed', 'none'.
      mode: One of 'train', 'eval' or 'predict'.
    """
    where = "MultiplicativeConvCausalAttention"
    if output_layer_type not in _OUTPUT_LAYER_TYPES:
        raise ValueError(
            f"{where}: output_layer_type must be one of {_OUTPUT_LAYER_TYPES}, got {output_layer_type!r}"
        )
    if v_concat_type not in _V_CONCAT_TYPES:
        raise ValueError(f"{where}: v_concat_type must be one of {_V_CONCAT_TYPES}, got {v_concat_type!r}")
    dropout = 0.0 if force_no_dropout else dropout
    sparsity = n_heads if sparsity is None else sparsity
    _check_modules(where, d_feature, sparsity)
    d_module = d_feature // sparsity

    def conv(kernel_size):
        return LocallyConvDense(
            sparsity, d_module, mode=mode, kernel_size=kernel_size, length_kernel_size=length_kernel_size
        )

    output_layers = []
    if "mult" in output_layer_type:
        output_layers.append(FactoredDense(sparsity, d_feature, d_feature))
    if "conv" in output_layer_type:
        output_layers.append(conv(3))
    v_layers = [
        *_v_concat_layers(v_concat_type, sparsity, d_module),
        conv(1),
        attention.SplitIntoHeads(n_heads),
    ]
    causal_attention = attention.DotProductCausalAttention(
        dropout=dropout, max_inference_length=max_inference_length, mode=mode
    )
    if share_qk:
        return combinators.Serial(
            combinators.Select([0, 0]),  # x x
            FactoredDense(sparsity, d_feature, d_feature),  # m x
            combinators.Select([0, 0]),  # m m x
            conv(3),  # qk m x
            attention.SplitIntoHeads(n_heads),
            combinators.Select([0, 0]),  # qk qk m x
            combinators.Parallel([], [], v_layers),  # qk qk v
            causal_attention,
            attention.MergeHeads(n_heads),
            output_layers,
        )
    return combinators.Serial(
        combinators.Select([0, 0]),  # x x
        FactoredDense(sparsity, d_feature, d_feature),  # m x
        combinators.Select([0, 0, 0]),  # m m m x
        combinators.Parallel(
            [conv(3), attention.SplitIntoHeads(n_heads)],
            [conv(3), attention.SplitIntoHeads(n_heads)],
            v_layers,
        ),  # q k v
        causal_attention,
        attention.MergeHeads(n_heads),
        output_layers,
    )
