"""Observation networks of Trax's RL agents: AtariCnn, AtariCnnBody and FrameStackMLP.

Names, arguments, defaults and layer trees are Trax's (`trax.models.atari_cnn`).
Inputs are trajectories: `[batch, time, ...]` observations, and each model
maps every time step to a feature vector `[batch, time, output_size]`. A step
sees its own observation and the `n_frames - 1` before it (frame stacking by
`ShiftRight`, zeros before the first frame); the convolutions of the CNNs act
on each frame alone, their time axis folded into the batch. As in Trax, the
models ignore `mode`, and they do not stream: each call sees whole
trajectories.
"""

from __future__ import annotations

from trax_sl.layers import activation_fns, attention, base, combinators, convolution, core


def _FrameStack(n_frames: int) -> list:  # noqa: N802
    """Stacks each frame with the `n_frames - 1` before it on the last axis.

    `[batch, time, ..., c]` -> `[batch, time, ..., c * n_frames]`: copies
    shifted right by 0, ..., n_frames - 1 steps (zeros shifted in),
    concatenated in that order.
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1:
        raise ValueError(f"frame stacking: n_frames must be an integer >= 1, got n_frames={n_frames!r}")
    if n_frames == 1:
        return []  # Nothing to stack: the frames flow through.
    # As Trax: branch n applies one ShiftRight instance n times (it has no weights to share).
    return [
        combinators.Branch(*[[attention.ShiftRight()] * n for n in range(n_frames)]),
        combinators.Concatenate(n_items=n_frames, axis=-1),
    ]


def _BytesToFloats() -> base.Layer:  # noqa: N802
    """Maps unsigned bytes [0, 255] to floats [0, 1]."""
    return base.Fn("BytesToFloats", lambda x: x / 255.0)


def AtariCnn(n_frames=4, hidden_sizes=(32, 32), output_size=128, mode="train") -> base.Layer:  # noqa: N802
    """Returns a small Atari CNN: byte frames `[batch, time, h, w, c]` -> features `[batch, time, output_size]`.

    n_in=1, n_out=1. Bytes to floats (x / 255), the frame stack of
    `n_frames` (channels times n_frames), Conv(hidden_sizes[0], 5x5, stride
    2, 'SAME'), Relu, Conv(hidden_sizes[1], 5x5, stride 2, 'SAME'), Relu,
    Flatten(n_axes_to_keep=2), Dense(output_size), Relu.

    `mode` is ignored, as in Trax. Predict mode: not streamable (its Conv
    layers fold time into the batch, which they do layer-wise only).
    """
    del mode
    return combinators.Serial(
        _BytesToFloats(),
        _FrameStack(n_frames=n_frames),
        convolution.Conv(hidden_sizes[0], (5, 5), (2, 2), "SAME"),
        activation_fns.Relu(),
        convolution.Conv(hidden_sizes[1], (5, 5), (2, 2), "SAME"),
        activation_fns.Relu(),
        core.Flatten(n_axes_to_keep=2),  # Batch, time and the rest.
        core.Dense(output_size),
        activation_fns.Relu(),
        name="AtariCnn",
    )


def AtariCnnBody(  # noqa: N802
    n_frames=4,
    hidden_sizes=(32, 64, 64),
    output_size=512,
    mode="train",
    kernel_initializer=None,
    padding="VALID",
) -> base.Layer:
    """Returns the DQN Atari CNN: byte frames `[batch, time, h, w, c]` -> features `[batch, time, output_size]`.

    n_in=1, n_out=1. Bytes to floats (x / 255), the frame stack of
    `n_frames`, Conv(hidden_sizes[0], 8x8, stride 4), Relu,
    Conv(hidden_sizes[1], 4x4, stride 2), Relu, Conv(hidden_sizes[2], 3x3),
    Relu (each Conv with `padding` and `kernel_initializer`, None for Conv's
    default), Flatten(n_axes_to_keep=2), Dense(output_size), Relu. With
    'VALID' padding frames need at least 36 pixels a side (84x84 in DQN).

    `mode` is ignored, as in Trax. Predict mode: not streamable (its Conv
    layers fold time into the batch, which they do layer-wise only).
    """
    del mode
    return combinators.Serial(
        _BytesToFloats(),
        _FrameStack(n_frames=n_frames),
        convolution.Conv(
            hidden_sizes[0], (8, 8), (4, 4), padding=padding, kernel_initializer=kernel_initializer
        ),
        activation_fns.Relu(),
        convolution.Conv(
            hidden_sizes[1], (4, 4), (2, 2), padding=padding, kernel_initializer=kernel_initializer
        ),
        activation_fns.Relu(),
        convolution.Conv(
            hidden_sizes[2], (3, 3), (1, 1), padding=padding, kernel_initializer=kernel_initializer
        ),
        activation_fns.Relu(),
        core.Flatten(n_axes_to_keep=2),  # Batch, time and the rest.
        core.Dense(output_size),
        activation_fns.Relu(),
        name="AtariCnnBody",
    )


def FrameStackMLP(n_frames=4, hidden_sizes=(64,), output_size=64, mode="train") -> base.Layer:  # noqa: N802
    """Returns an MLP on the last `n_frames` observations: `[batch, time, d]` -> `[batch, time, output_size]`.

    n_in=1, n_out=1. The frame stack of `n_frames` (`[batch, time, d *
    n_frames]`), then Dense(d_hidden) and Relu for each of `hidden_sizes`,
    then Dense(output_size).

    `mode` is ignored, as in Trax: the frame stack's ShiftRight layers stay
    in mode 'train' (a predict-mode ShiftRight passes its input through, as
    Trax's does). Predict mode: not streamable; each call stacks the frames
    of its own input, zeros before its first frame.
    """
    del mode
    return combinators.Serial(
        _FrameStack(n_frames=n_frames),
        [[core.Dense(d_hidden), activation_fns.Relu()] for d_hidden in hidden_sizes],
        core.Dense(output_size),
        name="FrameStackMLP",
    )
