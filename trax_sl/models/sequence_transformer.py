"""The Transformer encoder of the SequenceLayers notebook ("Example: Transformer Encoder").

Pre-norm blocks of RMSNorm + self-attention with rotary position encoding of
queries and keys, and RMSNorm + a GeGLU feed-forward network, under one
`Repeat`. The attention horizons decide how it streams: finite horizons (or
`max_past_horizon=-1` with a `cache_size`) stream with block_size 1 and a
latency of `max_future_horizon` per layer; `max_future_horizon=-1` (the
notebook's unmasked example) attends to the whole sequence and does not.

SequenceLayers' `DenseShaped([model_dimension])` on the attention's
`[..., heads, units]` output is `Flatten(n_axes_to_keep=2)` then `Dense`
here, and its `GatedUnit(jax.nn.gelu, None)` is the `GeGLU` Fn below.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import shapes
from trax_sl.layers import activation_fns, base, combinators, core, normalization, position, self_attention
from trax_sl.layers import repeat as repeat_layers


def GeGLU() -> base.Layer:  # noqa: N802
    """Returns SequenceLayers' `GatedUnit(jax.nn.gelu, None)`: `[..., 2d]` -> `gelu(a) * b`, `[..., d]`.

    n_in=1, n_out=1; a, b the halves of the last axis; gelu is jax's tanh
    approximation (jax.nn.gelu's default). Predict mode: stateless.
    """

    def geglu(x):
        if x.shape[-1] % 2:
            raise ValueError(f"GeGLU: the last axis must be even, got {shapes.short_form(x)}")
        feature, gate = jnp.split(x, 2, axis=-1)
        return jax.nn.gelu(feature) * gate

    return base.Fn("GeGLU", geglu)


def SelfAttentionNetwork(  # noqa: N802
    model_dimension: int,
    dropout_rate: float,
    num_heads: int,
    units_per_head: int,
    max_past_horizon: int,
    max_future_horizon: int,
    cache_size: int | None = None,
    mode: str = "train",
) -> base.Layer:
    """Returns the residual self-attention module: `[b, t, model_dimension]` -> same.

    n_in=1, n_out=1. `x + Dropout(Dense(Flatten(DotProductSelfAttention(RMSNorm(x)))))`,
    the attention without biases, with RoPE (max_wavelength 10000) on queries
    and keys and dropout on its probabilities shared across queries.

    Predict mode: the state holds the attention's KV cache, its delayed
    queries and the RoPE positions per row.
    """
    return combinators.Residual(
        normalization.RMSNorm(),
        self_attention.DotProductSelfAttention(
            num_heads=num_heads,
            units_per_head=units_per_head,
            max_past_horizon=max_past_horizon,
            max_future_horizon=max_future_horizon,
            use_bias=False,
            query_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000, mode=mode),
            key_network=position.ApplyRotaryPositionalEncoding(max_wavelength=10000, mode=mode),
            attention_probabilities_dropout_rate=dropout_rate,
            broadcast_dropout_across_queries=True,
            cache_size=cache_size,
            mode=mode,
        ),
        core.Flatten(n_axes_to_keep=2),
        core.Dense(model_dimension, use_bias=False, kernel_axes=("heads", "embed")),  # The merged heads.
        core.Dropout(dropout_rate, mode=mode),
    )


def FeedForwardNetwork(  # noqa: N802
    model_dimension: int, ffn_dim: int, dropout_rate: float, mode: str = "train"
) -> base.Layer:
    """Returns the residual GeGLU feed-forward module: `[b, t, model_dimension]` -> same.

    n_in=1, n_out=1. RMSNorm, Dense(2 * ffn_dim), GeGLU, Dropout,
    Dense(model_dimension), Dropout (Dense layers without biases), added to
    the input. Pointwise in time; predict mode: stateless.
    """
    return combinators.Residual(
        normalization.RMSNorm(),
        core.Dense(2 * ffn_dim, use_bias=False),
        GeGLU(),
        core.Dropout(dropout_rate, mode=mode),
        core.Dense(model_dimension, use_bias=False, kernel_axes=("mlp", "embed")),
        core.Dropout(dropout_rate, mode=mode),
    )


def SequenceTransformer(  # noqa: N802
    model_dimension: int,
    num_layers: int,
    num_heads: int,
    units_per_head: int,
    ffn_dim: int,
    dropout_rate: float,
    max_past_horizon: int,
    max_future_horizon: int,
    cache_size: int | None = None,
    mode: str = "train",
) -> base.Layer:
    """Returns the notebook's Transformer encoder: `[b, t, d]` -> `[b, t, model_dimension]`.

    n_in=1, n_out=1. AddTimingSignal, Dense(model_dimension, no bias) and
    Relu, `num_layers` blocks (SelfAttentionNetwork, FeedForwardNetwork)
    under one `Repeat`, RMSNorm. Step t attends to the steps within
    `max_past_horizon` before and `max_future_horizon` after it (-1:
    unlimited). Streams (block_size 1, input and output latency
    `num_layers * max_future_horizon`) when `max_future_horizon >= 0` and
    either `max_past_horizon >= 0` or a `cache_size` bounds the KV cache;
    otherwise supports_step is False.

    Predict mode: the state holds the timing signal's position per row and
    each layer's KV cache, delayed queries and RoPE positions.
    """
    block = combinators.Serial(
        SelfAttentionNetwork(
            model_dimension,
            dropout_rate,
            num_heads,
            units_per_head,
            max_past_horizon,
            max_future_horizon,
            cache_size=cache_size,
            mode=mode,
        ),
        FeedForwardNetwork(model_dimension, ffn_dim, dropout_rate, mode=mode),
        name="TransformerBlock",
    )
    return combinators.Serial(
        position.AddTimingSignal(mode=mode),
        # Project to model_dimension for Repeat.
        core.Dense(model_dimension, use_bias=False, kernel_axes=(None, "embed")),
        activation_fns.Relu(),
        repeat_layers.Repeat(block, num_layers),
        normalization.RMSNorm(),
        name="SequenceTransformer",
    )
