"""Recurrent language models (Trax's): RNNLM and GRULM, streaming.

Names, arguments, defaults and stack semantics are Trax's
(`trax.models.rnn`). Trax's `Scan(cell, axis=1, mode=mode)` is the
streaming scan over time of `trax_sl.layers.rnn`: a row's carry does not
advance at its invalid steps, and in predict mode the carry lives in the
state, so tokens fed one at a time give the logits of the whole sequence.
"""

from __future__ import annotations

from trax_sl import checks
from trax_sl.layers import attention, base, combinators, core
from trax_sl.layers import rnn as rnn_layers


def RNNLM(  # noqa: N802
    vocab_size: int,
    d_model: int = 512,
    n_layers: int = 2,
    rnn_cell=rnn_layers.LSTMCell,
    rnn_cell_d_state_multiplier: int = 2,
    dropout: float = 0.1,
    mode: str = "train",
) -> base.Layer:
    """Returns an RNN language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding(vocab_size, d_model), Dropout,
    then `n_layers` cells `rnn_cell(n_units=d_model)` stacked in one step
    function (a multi-layer cell) scanned over time from a zero state
    `[batch, n_layers * rnn_cell_d_state_multiplier * d_model]` (split among
    the layers), and Dense(vocab_size). The logits at step t predict token t
    from tokens < t. `rnn_cell_d_state_multiplier` must give each cell its
    state size: 2 for LSTMCell (c and h), 1 for GRUCell. Trax requires
    n_layers == 2; any n_layers >= 1 works here. Streams with block_size 1
    and no latency.

    Predict mode: the state holds the last token (ShiftRight) and each row's
    recurrent carry (frozen at invalid steps).
    """
    checks.check_positive(
        "RNNLM",
        vocab_size=vocab_size,
        d_model=d_model,
        n_layers=n_layers,
        rnn_cell_d_state_multiplier=rnn_cell_d_state_multiplier,
    )

    def MultiRNNCell():  # noqa: N802
        """Multi-layer RNN cell: `(x, state) -> (y, new_state)`, the state split among the layers."""
        return combinators.Serial(
            combinators.Parallel([], combinators.Split(n_items=n_layers)),
            combinators.SerialWithSideOutputs([rnn_cell(n_units=d_model) for _ in range(n_layers)]),
            combinators.Parallel([], combinators.Concatenate(n_items=n_layers)),
            name="MultiRNNCell",
        )

    zero_state = rnn_layers.MakeZeroState(depth_multiplier=n_layers * rnn_cell_d_state_multiplier)
    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        core.Embedding(vocab_size, d_model),
        core.Dropout(rate=dropout, mode=mode),
        combinators.Branch([], zero_state),
        # Trax's Scan(MultiRNNCell(), axis=1, mode=mode), streaming.
        rnn_layers._TimeRecurrence(MultiRNNCell(), mode=mode),
        combinators.Select([0], n_in=2),  # Drop RNN state.
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="RNNLM",
    )


def GRULM(vocab_size: int = 256, d_model: int = 512, n_layers: int = 1, mode: str = "train") -> base.Layer:  # noqa: N802
    """Returns a GRU language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding(vocab_size, d_model), `n_layers`
    GRU(d_model) layers, Dense(vocab_size). Streams with block_size 1 and no
    latency.

    Predict mode: the state holds the last token (ShiftRight) and each GRU's
    carry per row.
    """
    checks.check_positive("GRULM", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers)
    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        core.Embedding(vocab_size, d_model),
        [rnn_layers.GRU(d_model, mode=mode) for _ in range(n_layers)],
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="GRULM",
    )
