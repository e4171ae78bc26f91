"""Trax's research.resampling: the shortening and upsampling layers of the Hourglass model.

Names, arguments and layer trees are Trax's (`trax.layers.research.resampling`,
https://arxiv.org/abs/2110.13711). They change the sequence length by a
factor (`shorten_factor`), so none of them streams; Trax's configs pick
them by name (`HourglassLM.downsampling_fn = @LinearPooling`).
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl.layers.base import Fn
from trax_sl.layers.combinators import Add, Branch, Residual, Select, Serial
from trax_sl.layers.core import Dense, Dropout
from trax_sl.layers.normalization import LayerNorm
from trax_sl.layers.pooling import AvgPool
from trax_sl.layers.research.rel_attention import RelativeAttentionLMLayer

__all__ = [
    "AttentionResampling",
    "AveragePooling",
    "FeedForwardBlock",
    "LinearPooling",
    "LinearUpsampling",
    "NaiveUpsampling",
    "NoUpsampling",
]


def AveragePooling(shorten_factor, *args, **kwargs):  # noqa: N802
    """Returns AvgPool over `shorten_factor` steps, stride `shorten_factor`: `[b, L, d]` -> `[b, L / k, d]`."""
    del args, kwargs
    return AvgPool(pool_size=(shorten_factor,), strides=(shorten_factor,))


def LinearPooling(shorten_factor, d_model, *args, dropout=0.0, mode="train", **kwargs):  # noqa: N802
    """Returns shortening by a Dense on each `shorten_factor` steps moved to depth: `[b, L, d]` -> `[b, L / k, d_model]`."""
    del args, kwargs
    return Serial(
        Fn(
            "Shorten",
            lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] // shorten_factor, -1)),
            supports_step=False,
        ),
        Dense(d_model),
        Dropout(rate=dropout, mode=mode),
    )


def LinearUpsampling(shorten_factor, d_model, *args, dropout=0.0, mode="train", **kwargs):  # noqa: N802
    """Returns Dense(shorten_factor * d_model), Dropout, then depth moved to time: `[b, L, d]` -> `[b, L * k, d_model]`."""
    del args, kwargs
    return Serial(
        Dense(shorten_factor * d_model),
        Dropout(rate=dropout, mode=mode),
        Fn(
            "ProlongBack",
            lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] * shorten_factor, -1)),
            supports_step=False,
        ),
    )


def NaiveUpsampling(shorten_factor, d_model, *args, **kwargs):  # noqa: N802
    """Returns each step repeated `shorten_factor` times: `[b, L, d]` -> `[b, L * k, d]`."""
    del d_model, args, kwargs
    return Fn("Repeat", lambda x: jnp.repeat(x, shorten_factor, axis=1), supports_step=False)


def NoUpsampling(shorten_factor, d_model, *args, **kwargs):  # noqa: N802
    """Returns zeros of the upsampled shape: `[b, L, d]` -> `[b, L * k, d]`."""
    del d_model, args, kwargs
    return Fn(
        "ReturnZero",
        lambda x: jnp.zeros((x.shape[0], x.shape[1] * shorten_factor, x.shape[2]), x.dtype),
        supports_step=False,
    )


def FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, activation):  # noqa: N802
    """Returns the feed-forward layers: Dense(d_ff), `activation`, Dropout, Dense(d_model)."""
    return [
        Dense(d_ff),
        activation(),
        Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode),
        Dense(d_model),
    ]


def AttentionResampling(  # noqa: N802
    shorten_factor,
    d_model,
    is_upsampling,
    d_ff,
    n_heads,
    dropout,
    dropout_shared_axes,
    mode,
    ff_activation,
    context_bias_layer,
    location_bias_layer,
    total_pooling,
    resampling_fn,
):
    """Returns resampling refined by relative attention to the unresampled vectors.

    Downsampling: `h` -> `y`; upsampling: `(h, x)` -> `(y, x)`, x the
    full-length residual, added to the upsampled vectors. The resampled
    `LayerNorm(resampling_fn(LayerNorm(h)))` (plus x when upsampling)
    attends (`RelativeAttentionLMLayer`, residual) to `LayerNorm(h)`; then a
    residual feed-forward block.
    """
    attention = RelativeAttentionLMLayer(
        d_model,
        context_bias_layer,
        location_bias_layer,
        total_pooling,
        n_heads=n_heads,
        dropout=dropout,
        mode=mode,
    )
    feed_forward = FeedForwardBlock(d_model, d_ff, dropout, dropout_shared_axes, mode, ff_activation)
    resampling = resampling_fn(shorten_factor, d_model, mode=mode)

    def _Dropout():  # noqa: N802
        return Dropout(rate=dropout, shared_axes=dropout_shared_axes, mode=mode)

    return [
        LayerNorm(),  # h
        Branch(Serial(resampling, LayerNorm()), []),  # h' h
        Serial(Select([0, 2, 1, 2]), Add()) if is_upsampling else [],  # h'+x h x
        Residual(Select([0, 1, 1]), attention, _Dropout()),  # queries h', keys and values h
        Residual(LayerNorm(), feed_forward, _Dropout()),
    ]
