"""Rotary positional embeddings (Trax's research.rotary_positional_embedding).

RoPE, https://arxiv.org/abs/2104.09864: `rotate(x)` and the layer `Rotate()`.
Trax's convention (features split into halves `x1, x2`, rotated by
`position / 10000 ** (2i / d)` radians to `[x1 cos - x2 sin, x2 cos + x1 sin]`)
is exactly that of `ApplyRotaryPositionalEncoding` with its defaults, so
`Rotate` is that layer under Trax's name, and streams: in predict mode its
state holds each row's position.
"""

from __future__ import annotations

from trax_sl.layers import base, position

__all__ = ["Rotate", "rotate"]


class Rotate(position.ApplyRotaryPositionalEncoding):
    """Trax's `Rotate()`: rotary positional embedding over the whole depth.

    n_in=1, n_out=1. `[batch, time, d]` float (d even) -> same shape. The
    step at position p (valid steps counted from 0; for arrays, the time
    index as in Trax) has its halves `x1, x2` rotated by
    `p / 10000 ** (2i / d)` radians: `[x1 cos - x2 sin, x2 cos + x1 sin]`.
    No weights. (Trax's layer takes no arguments; `mode` is ours, for
    building a predict-mode model directly.)

    Predict mode: the state holds each row's count of valid steps so far
    (`[batch]` int32), so a stream continues the positions.
    """

    def __init__(self, *, mode: str = "train"):
        super().__init__(max_wavelength=10000.0, axis=-1, mode=mode, name="Rotate")


def rotate(x):
    """Trax's `rotate`: RoPE of `[batch, time, d]` at positions 0 .. time - 1 (the array function of `Rotate`)."""
    y, _ = Rotate().forward(x, base.EMPTY_WEIGHTS, base.EMPTY_STATE, None)
    return y
