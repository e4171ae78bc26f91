"""The Neural GPU (Trax's): https://arxiv.org/abs/1702.08727 (improved Neural GPU).

Names, arguments, defaults and layer trees are Trax's (`trax.models.neural_gpu`).
The memory is an image `[batch, height, length, d_feature]` of embedded
symbols; one convolutional GRU with diagonal gating, its weights shared, is
applied `steps` times, and a Dense layer reads the symbols out.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl import checks
from trax_sl.layers import activation_fns, base, combinators, convolution, core, rnn


def SaturationCost(x, limit=0.9):  # noqa: N802
    """Returns `min(0, |x| - limit)` elementwise: Trax's saturation cost (an array function)."""
    return jnp.minimum(0, jnp.abs(x) - limit)


def DiagonalGate() -> base.Layer:  # noqa: N802
    """Returns the diagonal gate: the first and last thirds of the channels shifted along length.

    n_in=1, n_out=1. `x [batch, height, length, depth]` -> same shape, depth
    divisible by 3: channels `[0, depth/3)` take the value one position to
    the left (`y[..., l, :] = x[..., l - 1, :]`), the middle third stays,
    the last third takes the value one position to the right; zeros enter
    at the ends.
    """

    def f(x):
        depth = x.shape[-1] // 3
        if 3 * depth != x.shape[-1]:
            raise ValueError(f"DiagonalGate: depth must be divisible by 3, got input shape {x.shape}")
        x = jnp.pad(x, [(0, 0), (0, 0), (1, 1), (0, 0)])
        return jnp.concatenate(
            [x[:, :, :-2, :depth], x[:, :, 1:-1, depth : 2 * depth], x[:, :, 2:, 2 * depth :]], axis=3
        )

    return base.Fn("DiagonalGate", f)


def ConvDiagonalGRU(units, kernel_size=(3, 3)) -> base.Layer:  # noqa: N802
    """Returns the improved Neural GPU's cell: a convolutional GRU with diagonal gating.

    n_in=1, n_out=1: `s [batch, height, length, units]` -> `s'`, a
    `GeneralGRUCell` whose transforms are Conv(units, kernel_size, 'SAME'),
    whose memory transform is `DiagonalGate`, with HardSigmoid gates and a
    HardTanh candidate (dropout 0.1 on the candidate in mode 'train').
    """

    def BuildConv():  # noqa: N802
        return convolution.Conv(filters=units, kernel_size=kernel_size, padding="SAME")

    return rnn.GeneralGRUCell(
        candidate_transform=BuildConv,
        memory_transform_fn=DiagonalGate,
        gate_nonlinearity=activation_fns.HardSigmoid,
        candidate_nonlinearity=activation_fns.HardTanh,
    )


def NeuralGPU(d_feature=96, steps=16, vocab_size=2, mode="train") -> base.Layer:  # noqa: N802
    """Returns a Neural GPU: symbols `[batch, height, length]` -> logits `[batch, height, length, vocab_size]`.

    n_in=1, n_out=1. Embedding(vocab_size, d_feature), then one
    `ConvDiagonalGRU(d_feature)` applied `steps` times (one instance: its
    weights are shared by all steps), then Dense(vocab_size). d_feature must
    be divisible by 3 (the diagonal gate's thirds).

    Args:
      d_feature: memory channels (the dimension of the symbol embedding).
      steps: how many times the recurrent cell is applied.
      vocab_size: number of symbols.
      mode: 'train' drops out the cell's candidate (rate 0.1); any other
        mode does not. (Trax ignores `mode` and so drops out in eval too;
        here `NeuralGPU(mode=m)` is `NeuralGPU().with_mode(m)`, except that
        'predict' computes as 'eval'.)

    Predict mode: not streamable (its convolutions mix the positions of
    every axis); mode='predict' computes the whole input as 'eval' does.
    """
    checks.check_positive("NeuralGPU", d_feature=d_feature, steps=steps, vocab_size=vocab_size)
    if d_feature % 3:
        raise ValueError(
            f"NeuralGPU: d_feature must be divisible by 3 (the diagonal gate splits the channels in "
            f"thirds), got d_feature={d_feature}"
        )
    cell = ConvDiagonalGRU(units=d_feature)
    if mode != "train":
        # The cell's Dropout is made in mode 'train' (GeneralGRUCell takes no mode); its 'eval'
        # twin drops nothing and shares the layer tree. Not 'predict': the cell does not stream.
        cell = cell.with_mode("eval")
    return combinators.Serial(
        core.Embedding(vocab_size=vocab_size, d_feature=d_feature),
        [cell] * steps,
        core.Dense(vocab_size),
        name="NeuralGPU",
    )
