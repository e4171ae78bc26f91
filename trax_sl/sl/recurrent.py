"""SequenceLayers' LSTM: trax_sl's streaming LSTM under SequenceLayers' field names."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import trax_sl.layers as tl
from trax_sl.layers import base
from trax_sl.sl import common


def LSTM(  # noqa: N802 (SequenceLayers' name)
    units: int,
    activation=jnp.tanh,
    recurrent_activation=jax.nn.sigmoid,
    use_bias: bool = True,
    name: str | None = None,
    mode: str = "train",
) -> base.Layer:
    """An LSTM over time: `tl.LSTM(units)`.

    n_in=1, n_out=1. `[batch, time, d]` -> `[batch, time, units]`, the h of
    each step; a row's state does not advance at its invalid steps. The
    gates are SequenceLayers' (sigmoid gates, tanh cell); the weights are
    laid out as Trax's (one kernel on `[x, h]`, gate blocks i, j, f, o; see
    `tl.LSTMCell`) and initialized as Trax's.

    Predict mode: the state holds each row's `(c, h)` carry.
    """
    if activation is not jnp.tanh or recurrent_activation is not jax.nn.sigmoid or not use_bias:
        raise ValueError(
            "LSTM: only SequenceLayers' defaults (activation=jnp.tanh, recurrent_activation="
            "jax.nn.sigmoid, use_bias=True) are available"
        )
    return common.named(tl.LSTM(units, mode=mode), name)
