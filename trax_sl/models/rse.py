"""Residual Shuffle-Exchange Networks (Trax's research model), https://arxiv.org/abs/2004.04662.

Names, arguments, defaults and layer trees are Trax's
(`trax.models.research.rse`): `ResidualShuffleExchange` and its public
parts `ResidualSwitchUnit`, `ShuffleLayer`, `ReverseShuffleLayer` and
`BenesBlock`. Trax's `assert_shape` decorators are left out (they check
shapes only). The shuffles permute the time axis, so nothing here streams.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import trax_sl.layers as tl
from trax_sl.layers import attention_core, base


def _inverse_sigmoid(x):
    return np.log(x / (1 - x))


class _ClippedScaling(base.Layer):
    """Multiplies its input pointwise by sigmoid(s), s a learned vector on the last axis.

    n_in=1, n_out=1. `[..., d]` -> same; s starts at
    `inverse_sigmoid(residual_weight)`, so the first scaling is
    `residual_weight`. Stateless.
    """

    def __init__(self, residual_weight):
        super().__init__(name="_ClippedScaling")
        self._residual_weight = residual_weight

    def init_weights_and_state(self, input_signature, rng):
        del rng
        s = _inverse_sigmoid(self._residual_weight) * np.ones((input_signature.shape[-1],))
        return jnp.asarray(s, jnp.float32), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        scale = jax.nn.sigmoid(weights).reshape((1,) * (x.ndim - 1) + weights.shape)
        return x * scale, state


def ResidualSwitchUnit(d_model, dropout=0.1, mode="train", residual_weight=0.9):  # noqa: N802
    r"""Returns the Residual Switch Unit (RSU) of the paper: `[batch, length, d_model]` -> same.

    Adjacent positions are paired, `i = [i_1, i_2]` (depth 2 * d_model), and

        g = GELU(LayerNorm(Z i)),  c = W g + B,
        [o_1, o_2] = sigmoid(S) * i + h * c

    with Z `[2m, 4m]` (no bias), W `[4m, 2m]`, B, S `[2m]` learned and
    `h = sqrt(1 - residual_weight**2) * 0.25`; S starts at
    `inverse_sigmoid(residual_weight)`. The pairs are unpaired again, then
    Dropout(dropout). The length must be even.
    """
    return tl.Serial(
        tl.Fn(
            "Reshape2Pairs", lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] // 2, -1)), supports_step=False
        ),
        tl.Residual(
            tl.Dense(4 * d_model, use_bias=False),
            tl.LayerNorm(),
            tl.Gelu(),
            tl.Dense(2 * d_model),
            tl.Fn("Scaling", lambda x: x * (np.sqrt(1 - residual_weight**2) * 0.25)),
            shortcut=_ClippedScaling(residual_weight),
        ),
        tl.Fn("UnPair", lambda x: jnp.reshape(x, (x.shape[0], x.shape[1] * 2, -1)), supports_step=False),
        tl.Dropout(rate=dropout, mode=mode),
    )


def _n_bits(length: int) -> int:
    """Bits that index `length` positions (Trax's formula; 1 for length 2)."""
    return int(np.log(length - 1) / np.log(2.0)) + 1


def _rotate_right(x, n_bits):
    """Rotates the `n_bits`-bit integers x right by one bit."""
    return np.right_shift(x, 1) + np.left_shift(np.bitwise_and(x, 1), n_bits - 1)


def _rotate_left(x, n_bits):
    """Rotates the `n_bits`-bit integers x left by one bit."""
    return np.bitwise_or(
        np.bitwise_and(np.left_shift(x, 1), (1 << n_bits) - 1), np.right_shift(x, n_bits - 1)
    )


def _shuffle(x, rotate):
    """`y[:, i] = x[:, rotate(i)]` (indices past the end clipped, as in Trax)."""
    length = x.shape[1]
    indices = rotate(np.arange(length, dtype=np.int32), _n_bits(length))
    return jnp.take(x, indices, axis=1, mode="clip")


def ShuffleLayer():  # noqa: N802
    """Returns the perfect shuffle on time: position i takes position rol(i) (left bit rotation).

    `[batch, length, d]` -> same; for length 8, positions 0..7 become
    0 2 4 6 1 3 5 7. log2(length) shuffles are the identity.
    """
    return tl.Fn("ShuffleLayer", lambda x: _shuffle(x, _rotate_left), supports_step=False)


def ReverseShuffleLayer():  # noqa: N802
    """Returns the inverse perfect shuffle: position i takes position ror(i) (right bit rotation).

    `[batch, length, d]` -> same; for length 8, positions 0..7 become
    0 4 1 5 2 6 3 7.
    """
    return tl.Fn("ReverseShuffleLayer", lambda x: _shuffle(x, _rotate_right), supports_step=False)


def _ForwardStep(d_model, dropout, mode):  # noqa: N802
    """`(bit, activations)` -> `(bit, ShuffleLayer(RSU(activations)))`: the body of a Scan."""
    return tl.Parallel([], tl.Serial(ResidualSwitchUnit(d_model, dropout, mode), ShuffleLayer()))


def _BackwardStep(d_model, dropout, mode):  # noqa: N802
    """`(bit, activations)` -> `(bit, ReverseShuffleLayer(RSU(activations)))`: the body of a Scan."""
    return tl.Parallel([], tl.Serial(ResidualSwitchUnit(d_model, dropout, mode), ReverseShuffleLayer()))


def BenesBlock(d_model, dropout, mode):  # noqa: N802
    """Returns a Beneš block: `[batch, length, d_model]` -> same; length a power of 2.

    log2(length) steps of RSU then shuffle, then as many of RSU then reverse
    shuffle; each half is a `Scan` over the bit indices, so its RSU's
    weights are shared by its steps.
    """

    def bit_sequence(x):
        return jnp.arange(0, _n_bits(x.shape[1]))

    return tl.Serial(
        tl.Dup(),
        tl.Fn("BitSeq", bit_sequence, supports_step=False),
        tl.Scan(_ForwardStep(d_model, dropout, mode)),
        tl.Scan(_BackwardStep(d_model, dropout, mode)),
        tl.Select([1]),
    )


class _PaddedValues(base.Layer):
    """A Sequence's values with its invalid steps zeroed (an array passes as is): Trax's padded ids.

    The shuffles permute positions across the whole length, so a mask
    cannot follow them; padding is token 0, as in Trax's padded batches.
    """

    handles_sequences = True

    def forward(self, x, weights, state, rng):
        return attention_core.masked_values(x), state


def ResidualShuffleExchange(  # noqa: N802
    vocab_size, d_model, input_dropout, dropout, mode="train", n_blocks=2
) -> base.Layer:
    """Returns a Residual Shuffle-Exchange Network: ids `[batch, length]` -> log-probabilities.

    n_in=1, n_out=1; the output is `[batch, length, vocab_size]`. The length
    must be a power of 2. Embedding, Dropout(input_dropout), `n_blocks`
    `BenesBlock`s, a `ResidualSwitchUnit`, Dense(vocab_size), LogSoftmax.
    Not streamable (the shuffles permute the time axis). A Sequence input is
    taken as its padded ids (zeros past each row's length), as Trax's batches.
    """
    return tl.Serial(
        _PaddedValues(),
        tl.Embedding(vocab_size, d_model),
        tl.Dropout(rate=input_dropout, mode=mode),
        *[BenesBlock(d_model, dropout, mode) for _ in range(n_blocks)],
        ResidualSwitchUnit(d_model, dropout, mode),
        tl.Dense(vocab_size),
        tl.LogSoftmax(),
    )
