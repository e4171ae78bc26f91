"""BERT (Trax's `trax.models.research.bert`): the encoder, its pooler and its heads.

Names, arguments, defaults, stack semantics and the layer tree are Trax's.
Trax's BERT loads pretrained TensorFlow checkpoints (`init_checkpoint`, a
model name it downloads or a path), which needs TensorFlow and a download;
that is refused here with a ValueError. Weights trained or converted
elsewhere load with `init_from_file` or a `weights =` assignment.
"""

from __future__ import annotations

import jax.numpy as jnp

from trax_sl import partitioning
from trax_sl.layers import (
    activation_fns,
    attention,
    base,
    combinators,
    core,
    metrics,
    normalization,
    position,
)
from trax_sl.layers import initializers as init
from trax_sl.layers.research import efficient_attention


class AddBias(base.Layer):
    """Adds a learned bias on the last axis: `[..., d]` -> `[..., d]`.

    n_in=1, n_out=1. Weights: the bias `[d]`, initialized to zeros.

    Predict mode: stateless; streams with block_size 1.
    """

    def __init__(self):
        super().__init__(name="AddBias")

    def weight_axes(self, weights):
        return partitioning.Axes("embed")

    def init_weights_and_state(self, input_signature, rng):
        del rng
        return jnp.zeros(input_signature.shape[-1], input_signature.dtype), base.EMPTY_STATE

    def forward(self, x, weights, state, rng):
        return x + jnp.reshape(weights, (1,) * (x.ndim - 1) + weights.shape), state


def _HeadDense(n_units):  # noqa: N802
    return core.Dense(
        n_units,
        kernel_initializer=init.RandomNormalInitializer(0.02),
        bias_initializer=init.RandomNormalInitializer(1e-6),
    )


def BERTClassifierHead(n_classes) -> base.Layer:  # noqa: N802
    """Returns the classification head: `(pooled, sequence_output)` -> logits `[batch, n_classes]`.

    n_in=2, n_out=1: Dense(n_classes) on BERT's pooled output.
    """
    return combinators.Serial(
        [combinators.Select([0], n_in=2), _HeadDense(n_classes)], name="BERTClassifierHead"
    )


def BERTRegressionHead() -> base.Layer:  # noqa: N802
    """Returns the regression head: `(pooled, sequence_output)` -> `[batch]`.

    n_in=2, n_out=1: Dense(1) on BERT's pooled output, its last axis removed.
    """
    return combinators.Serial(
        [
            combinators.Select([0], n_in=2),
            _HeadDense(1),
            base.Fn("RemoveAxis", lambda x: jnp.squeeze(x, axis=1)),
        ],
        name="BERTRegressionHead",
    )


def BERTMLMHead(vocab_size=30522) -> base.Layer:  # noqa: N802
    """Returns the masked-language-model head: `(pooled, sequence_output)` -> logits `[batch, time, vocab_size]`.

    n_in=2, n_out=1: Dense(vocab_size) on BERT's sequence output.
    """
    return combinators.Serial([combinators.Select([1], n_in=2), _HeadDense(vocab_size)], name="BERTMLMHead")


def BERTPretrainingLoss() -> base.Layer:  # noqa: N802
    """Returns the pretraining loss: the next-sentence and masked-LM cross entropies, summed.

    n_in=6: `(nsp_logits, mlm_logits, nsp_targets, nsp_weights, mlm_targets,
    mlm_weights)` -> a scalar.
    """
    nsp_loss = [combinators.Select([0, 2, 3], n_in=6), metrics.WeightedCategoryCrossEntropy()]
    mlm_loss = [combinators.Select([1, 4, 5], n_in=6), metrics.WeightedCategoryCrossEntropy()]
    return combinators.Serial(combinators.Branch(nsp_loss, mlm_loss), combinators.Add())


def BERTPretrainingHead(n_classes) -> base.Layer:  # noqa: N802
    """Returns the pretraining head: `(pooled, sequence_output)` -> `(nsp_logits, mlm_logits)`.

    n_in=2, n_out=2: BERTClassifierHead(n_classes) and BERTMLMHead() side by
    side. (Trax returns it in a one-element tuple, which Serial flattens.)
    """
    return combinators.Branch(BERTClassifierHead(n_classes), BERTMLMHead())


def BERT(  # noqa: N802
    d_model=768,
    vocab_size=30522,
    max_len=512,
    type_vocab_size=2,
    n_heads=12,
    d_ff=3072,
    n_layers=12,
    head=None,
    init_checkpoint=None,
    mode="eval",
) -> base.Layer:
    """Returns BERT (defaults: bert-base-uncased): `(token_ids, type_ids, idx)` -> `(pooled, sequence_output)`.

    n_in=3 (`idx` is dropped), n_out=2. Token ids and token type ids `[batch,
    time]` (token 0 is padding) are embedded and summed, learned positions
    added, LayerNorm; then `n_layers` post-norm blocks (tl.SelfAttention with
    biases, masked by the padding, plus AddBias; LayerNorm; Dense(d_ff), Gelu,
    Dense(d_model); LayerNorm; epsilon 1e-12). The pooled output is
    Tanh(Dense(d_model)) of the first token's vector `[batch, d_model]`; the
    sequence output is `[batch, time, d_model]`. With `head` (a function
    returning a layer, e.g. BERTClassifierHead with its n_classes bound by
    gin), the result is `Serial(bert, head())`.

    `init_checkpoint` (a model name or the path of a TensorFlow checkpoint)
    is refused with a ValueError in 'train' mode: loading needs TensorFlow
    and a download. In other modes Trax ignores it, and so does this.

    Not streamable: every step attends to the whole sequence (tl.SelfAttention
    raises in predict mode).
    """
    init_checkpoint = init_checkpoint if mode == "train" else None
    layer_norm_eps = 1e-12
    d_head = d_model // n_heads

    embeddings = [
        combinators.Select([0, 1, 0], n_in=3),  # Drops 'idx' input.
        combinators.Parallel(
            core.Embedding(vocab_size, d_model),
            core.Embedding(type_vocab_size, d_model),
            [attention.PaddingMask(), base.Fn("Squeeze", lambda x: jnp.squeeze(x, (1, 2)))],
        ),
        combinators.Add(),
        position.PositionalEncoding(max_len, mode=mode),
        normalization.LayerNorm(epsilon=layer_norm_eps),
    ]

    encoder = []
    for _ in range(n_layers):
        attn = efficient_attention.SelfAttention(
            n_heads=n_heads, d_qk=d_head, d_v=d_head, bias=True, masked=True, mode=mode
        )
        feed_forward = [
            core.Dense(d_ff),
            activation_fns.Gelu(),
            core.Dense(d_model, kernel_axes=("mlp", "embed")),
        ]
        encoder += [
            combinators.Select([0, 1, 1]),  # Save a copy of the mask.
            combinators.Residual(attn, AddBias()),
            normalization.LayerNorm(epsilon=layer_norm_eps),
            combinators.Residual(*feed_forward),
            normalization.LayerNorm(epsilon=layer_norm_eps),
        ]
    encoder += [combinators.Select([0], n_in=2)]  # Drop the mask.

    pooler = [
        base.Fn("Pooler", lambda x: (x[:, 0, :], x), n_out=2, supports_step=False),
        core.Dense(d_model),
        activation_fns.Tanh(),
    ]

    bert = PretrainedBERT(embeddings + encoder + pooler, init_checkpoint=init_checkpoint)
    if head is not None:
        bert = combinators.Serial(bert, head())
    return bert


class PretrainedBERT(combinators.Serial):
    """Trax's Serial that loads a pretrained TensorFlow checkpoint into BERT's weights.

    Only `init_checkpoint=None` is supported here: a Serial of `sublayers`.
    """

    def __init__(self, *sublayers, init_checkpoint=None):
        if init_checkpoint is not None:
            raise ValueError(
                f"BERT: init_checkpoint={init_checkpoint!r} is not supported: Trax loads pretrained "
                "checkpoints with TensorFlow (and downloads them by name), which trax_sl does not do; "
                "pass init_checkpoint=None and load converted weights with init_from_file or a "
                "`weights =` assignment"
            )
        super().__init__(*sublayers, name="PretrainedBERT")
