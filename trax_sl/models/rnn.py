"""Recurrent models (Trax's): the language models RNNLM and GRULM, and LSTMSeq2SeqAttn, streaming.

Names, arguments, defaults and stack semantics are Trax's
(`trax.models.rnn`). Trax's `Scan(cell, axis=1, mode=mode)` streams here
(`combinators.control_flow.TimeScan`): a row's carry does not
advance at its invalid steps, and in predict mode the carry lives in the
state, so tokens fed one at a time give the logits of the whole sequence.
"""

from __future__ import annotations

from trax_sl import checks
from trax_sl.layers import attention, base, combinators, core, reductions
from trax_sl.layers import rnn as rnn_layers
from trax_sl.models import transformer


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

    Predict mode: the state holds each row's recurrent carry (frozen at
    invalid steps); as in Trax, feed the shifted tokens (0, then each
    previous token).
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
        combinators.Scan(MultiRNNCell(), axis=1, mode=mode),  # Streams over time (TimeScan).
        combinators.Select([0], n_in=2),  # Drop RNN state.
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="RNNLM",
    )


def GRULM(vocab_size: int = 256, d_model: int = 512, n_layers: int = 1, mode: str = "train") -> base.Layer:  # noqa: N802
    """Returns a GRU language model: token ids `[batch, time]` -> logits `[batch, time, vocab_size]`.

    n_in=1, n_out=1. ShiftRight, Embedding(vocab_size, d_model), `n_layers`
    GRU(d_model) layers, Dense(vocab_size). Streams with block_size 1 and no
    latency.

    Predict mode: the state holds each GRU's carry per row; as in Trax, feed
    the shifted tokens (0, then each previous token).
    """
    checks.check_positive("GRULM", vocab_size=vocab_size, d_model=d_model, n_layers=n_layers)
    return combinators.Serial(
        attention.ShiftRight(mode=mode),
        core.Embedding(vocab_size, d_model),
        [rnn_layers.GRU(d_model, mode=mode) for _ in range(n_layers)],
        core.Dense(vocab_size, kernel_axes=("embed", "vocab")),
        name="GRULM",
    )


def LSTMSeq2SeqAttn(  # noqa: N802
    input_vocab_size: int = 256,
    target_vocab_size: int = 256,
    d_model: int = 512,
    n_encoder_layers: int = 2,
    n_decoder_layers: int = 2,
    n_attention_heads: int = 1,
    attention_dropout: float = 0.0,
    mode: str = "train",
) -> base.Layer:
    """Returns an LSTM sequence-to-sequence model with attention: `(source, target)` -> `(log_probs, target)`.

    n_in=2, n_out=2. Source ids `[batch, source_time]` and target ids
    `[batch, time]` (0 marks padding) -> log-probabilities `[batch, time,
    target_vocab_size]` (step t predicts target token t from the source and
    target tokens < t) and the target ids, as in Trax:

    - the input encoder (Embedding, `n_encoder_layers` LSTMs) gives the keys
      and values; the pre-attention decoder (ShiftRight, Embedding, LSTM) on
      the target gives the queries;
    - a residual AttentionQKV (`n_attention_heads` heads) attends from the
      queries to the source, its padding (and a Sequence's invalid steps)
      masked out (a `[batch, 1, 1, source_time]` mask; Trax's is a float
      mask broadcast over the target steps);
    - `n_decoder_layers` LSTMs, Dense(target_vocab_size), LogSoftmax.

    Streams in the target (block_size 1, no latency); the source is given
    whole at every step. Predict mode: the encoder runs once per stream in
    'eval' mode (`EncodeOnce`: the source is not streamed; Trax reruns its
    encoder at every step), so the weights of Trax's `Parallel(encoder,
    pre_attention_decoder)` are `((encoder_weights,), decoder_weights)`. The
    state holds the encoded source, the attention's projected keys and values
    (computed on the first step), and each decoder LSTM's carry per row. As
    in Trax, feed the shifted target (0, then each previous token).
    """
    checks.check_positive(
        "LSTMSeq2SeqAttn",
        input_vocab_size=input_vocab_size,
        target_vocab_size=target_vocab_size,
        d_model=d_model,
        n_attention_heads=n_attention_heads,
    )
    input_encoder = combinators.Serial(
        core.Embedding(input_vocab_size, d_model),
        [rnn_layers.LSTM(d_model) for _ in range(n_encoder_layers)],
        name="InputEncoder",
    )
    pre_attention_decoder = combinators.Serial(
        attention.ShiftRight(mode=mode),
        core.Embedding(target_vocab_size, d_model),
        rnn_layers.LSTM(d_model, mode=mode),
        name="PreAttentionDecoder",
    )
    # Trax's PrepareAttentionInputs: (encoder_activations, decoder_activations, input_tokens) -> (q, k, v, mask).
    prepare_attention_inputs = combinators.Serial(
        combinators.Parallel([], [], attention.PaddingMask()),  # vec_e vec_d mask
        combinators.Select([1, 0, 0, 2]),  # q=vec_d k=vec_e v=vec_e mask
        name="PrepareAttentionInputs",
    )
    return combinators.Serial(  # tok_e tok_d
        combinators.Select([0, 1, 0, 1]),  # tok_e tok_d tok_e tok_d
        combinators.Parallel(transformer.EncodeOnce(input_encoder, mode=mode), pre_attention_decoder),
        prepare_attention_inputs,  # q k v mask tok_d
        combinators.Residual(
            attention.AttentionQKV(
                d_model,
                n_heads=n_attention_heads,
                dropout=attention_dropout,
                mode=mode,
                cache_KV_in_predict=True,
            )
        ),  # vec_d mask tok_d
        combinators.Select([0, 2]),  # vec_d tok_d
        [rnn_layers.LSTM(d_model, mode=mode) for _ in range(n_decoder_layers)],
        core.Dense(target_vocab_size, kernel_axes=("embed", "vocab")),
        reductions.LogSoftmax(),
        name="LSTMSeq2SeqAttn",
    )
