"""The causal Conformer of the SequenceLayers notebook ("Example: Causal Conformer").

A streaming speech encoder (https://arxiv.org/abs/2005.08100, made causal):
convolutional subsampling of the features by 4 in time, then blocks of
feed-forward (half residual), local causal self-attention, a causal
convolution module and a second feed-forward. Every part streams, so the
whole encoder does: block_size 4 (the subsampling's strides), output_ratio
1/4, no latency.

SequenceLayers' `DenseShaped([hidden_size])` on `[..., a, b]` channels is
`Flatten(n_axes_to_keep=2)` then `Dense(hidden_size)` here (the same map,
its kernel reshaped to `[a * b, hidden_size]`); `Scale(0.5)` is a `Fn`.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl import checks
from trax_sl.layers import (
    activation_fns,
    base,
    combinators,
    convolution,
    core,
    normalization,
    position,
    self_attention,
)
from trax_sl.layers import repeat as repeat_layers


def _DenseShaped(n_units: int, use_bias: bool = True, *, kernel_axes: tuple) -> base.Layer:  # noqa: N802
    """SequenceLayers' DenseShaped([n_units]) on rank-4 inputs: `[b, t, a, c]` -> `[b, t, n_units]`."""
    dense = core.Dense(n_units, use_bias=use_bias, kernel_axes=kernel_axes)
    return combinators.Serial(core.Flatten(n_axes_to_keep=2), dense)


def ConvolutionSubsampling(hidden_size: int, mode: str = "train") -> base.Layer:  # noqa: N802
    """Returns the Conformer's convolutional subsampling: `[b, t, f]` -> `[b, t / 4, f / 4, hidden_size]`.

    n_in=1, n_out=1. The features get a channel axis, then twice
    Conv2D(hidden_size, kernel 3, strides 2, causal in time, 'same' over
    features), GroupNorm(1 group, cumulative) and Relu. Streams with
    block_size 4 and output_ratio 1/4, no latency.

    Predict mode: the state holds the convolutions' buffers and the group
    norms' running statistics per row.
    """
    checks.check_positive("ConvolutionSubsampling", hidden_size=hidden_size)

    def conv_norm_relu():
        return [
            convolution.Conv2D(
                filters=hidden_size, kernel_size=3, strides=2, time_padding="causal", mode=mode
            ),
            normalization.GroupNorm(num_groups=1, cumulative=True, mode=mode),
            activation_fns.Relu(),
        ]

    return combinators.Serial(
        base.Fn("ExpandDims", lambda x: jnp.expand_dims(x, -1)),
        conv_norm_relu(),
        conv_norm_relu(),
        name="ConvolutionSubsampling",
    )


def FeedForwardModule(hidden_size: int, dropout_rate: float, mode: str = "train") -> base.Layer:  # noqa: N802
    """Returns the Conformer's half-step feed-forward module: `[b, t, h]` -> same.

    n_in=1, n_out=1. `x + 0.5 * Dropout(Dense(h)(Dropout(Swish(Dense(4h)(LayerNorm(x))))))`.
    Pointwise in time; predict mode: stateless.
    """
    return combinators.Residual(
        normalization.LayerNorm(),
        core.Dense(4 * hidden_size),
        activation_fns.Swish(),
        core.Dropout(dropout_rate, mode=mode),
        core.Dense(hidden_size, kernel_axes=("mlp", "embed")),
        core.Dropout(dropout_rate, mode=mode),
        base.Fn("Scale", lambda x: 0.5 * x),
    )


def MultiHeadedSelfAttention(  # noqa: N802
    hidden_size: int, num_heads: int, max_horizon: int, dropout_rate: float, mode: str = "train"
) -> base.Layer:
    """Returns the Conformer's causal local self-attention module: `[b, t, h]` -> same.

    n_in=1, n_out=1. Residual of LayerNorm, LocalDotProductSelfAttention
    (`num_heads` heads of `h / num_heads`, each step sees itself and the
    `max_horizon` steps before it, computed `max_horizon` queries at a time),
    a Dense projection and Dropout. Streams with block_size 1, no latency.

    Predict mode: the state holds the keys and values of the last
    `max_horizon` steps.
    """
    if hidden_size % num_heads:
        raise ValueError(
            f"MultiHeadedSelfAttention: hidden_size must be a multiple of num_heads, got "
            f"hidden_size={hidden_size}, num_heads={num_heads}"
        )
    return combinators.Residual(
        normalization.LayerNorm(),
        self_attention.LocalDotProductSelfAttention(
            num_heads=num_heads,
            units_per_head=hidden_size // num_heads,
            block_size=max_horizon,
            max_past_horizon=max_horizon,
            max_future_horizon=0,
            attention_probabilities_dropout_rate=dropout_rate,
            mode=mode,
        ),
        _DenseShaped(hidden_size, kernel_axes=("heads", "embed")),  # The merged heads.
        core.Dropout(dropout_rate, mode=mode),
    )


def ConvolutionModule(  # noqa: N802
    hidden_size: int, dropout_rate: float, kernel_size: int = 32, mode: str = "train"
) -> base.Layer:
    """Returns the Conformer's causal convolution module: `[b, t, h]` -> same.

    n_in=1, n_out=1. Residual of LayerNorm, Dense(2h), GatedLinearUnit,
    DepthwiseConv1D(kernel_size, 'causal'), BatchNorm (per channel, over
    batch and time; SequenceLayers' epsilon 1e-3 and momentum 0.99), Swish,
    Dense(h), Dropout. Streams with block_size 1, no latency.

    Predict mode: the state holds the convolution's last `kernel_size - 1`
    steps and the batch norm's (trained) statistics.
    """
    return combinators.Residual(
        normalization.LayerNorm(),
        core.Dense(2 * hidden_size),
        repeat_layers.GatedLinearUnit(),
        convolution.DepthwiseConv1D(kernel_size=kernel_size, padding="causal", mode=mode),
        normalization.BatchNorm(axis=(0, 1), epsilon=1e-3, momentum=0.99, mode=mode),
        activation_fns.Swish(),
        core.Dense(hidden_size, kernel_axes=("mlp", "embed")),
        core.Dropout(dropout_rate, mode=mode),
    )


def ConformerBlock(  # noqa: N802
    hidden_size: int,
    dropout_rate: float,
    max_horizon: int,
    num_heads: int = 8,
    mode: str = "train",
    *,
    conv_kernel_size: int = 32,
) -> base.Layer:
    """Returns one causal Conformer block: `[b, t, h]` -> same.

    n_in=1, n_out=1. FeedForwardModule, MultiHeadedSelfAttention,
    ConvolutionModule, FeedForwardModule, LayerNorm. Streams with block_size
    1, no latency.

    Predict mode: the state holds the attention's KV cache, the convolution's
    buffer and the batch norm's statistics.
    """
    return combinators.Serial(
        FeedForwardModule(hidden_size, dropout_rate, mode=mode),
        MultiHeadedSelfAttention(hidden_size, num_heads, max_horizon, dropout_rate, mode=mode),
        ConvolutionModule(hidden_size, dropout_rate, kernel_size=conv_kernel_size, mode=mode),
        FeedForwardModule(hidden_size, dropout_rate, mode=mode),
        normalization.LayerNorm(),
        name="ConformerBlock",
    )


def ConformerEncoder(  # noqa: N802
    hidden_size: int,
    num_blocks: int,
    max_horizon: int,
    dropout_rate: float = 0.1,
    num_heads: int = 8,
    mode: str = "train",
    *,
    conv_kernel_size: int = 32,
    remat: str = "none",
) -> base.Layer:
    """Returns the causal Conformer encoder: features `[b, t, f]` -> `[b, t / 4, hidden_size]`.

    n_in=1, n_out=1. ConvolutionSubsampling (time and features / 4), a Dense
    projection of the `[f / 4, hidden_size]` channels to `hidden_size`,
    AddTimingSignal, Dropout, and `num_blocks` ConformerBlocks under one
    `Repeat` (one compiled body, stacked weights). `f` (e.g. log-mel bins from
    `LogMelFrontend`) is any size; `hidden_size` must be a multiple of
    `num_heads`. `remat` ('none', 'full', 'dots_saveable', 'minimal')
    rematerialises each block in training (`Repeat(..., remat=)`); the
    weights tree is the same for each. Streams with block_size 4,
    output_ratio 1/4, no latency.

    Predict mode: the state holds the subsampling's buffers and statistics,
    the timing signal's position per row and each block's KV cache,
    convolution buffer and batch norm statistics.
    """
    checks.check_positive(
        "ConformerEncoder",
        hidden_size=hidden_size,
        num_blocks=num_blocks,
        max_horizon=max_horizon,
        num_heads=num_heads,
        conv_kernel_size=conv_kernel_size,
    )
    if hidden_size % num_heads:
        raise ValueError(
            f"ConformerEncoder: hidden_size must be a multiple of num_heads, got "
            f"hidden_size={hidden_size}, num_heads={num_heads}"
        )
    block = ConformerBlock(
        hidden_size, dropout_rate, max_horizon, num_heads, mode=mode, conv_kernel_size=conv_kernel_size
    )
    return combinators.Serial(
        ConvolutionSubsampling(hidden_size, mode=mode),
        _DenseShaped(hidden_size, kernel_axes=(None, "embed")),  # Features x channels.
        position.AddTimingSignal(mode=mode),
        core.Dropout(dropout_rate, mode=mode),
        repeat_layers.Repeat(block, num_blocks, remat=remat),
        name="ConformerEncoder",
    )
