"""BERT: Trax's signatures, its weights in the order of Trax's checkpoint loader, padding, heads.

Trax has no BERT test (bert.py says "TODO(piotrekp1): add tests"), so these
check what its code defines: the layer tree, the heads' arities and shapes,
and that `init_checkpoint` (TensorFlow checkpoints) is refused.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import bert
from trax_sl.shapes import ShapeDtype

SMALL = {"d_model": 8, "vocab_size": 10, "max_len": 16, "n_heads": 2, "d_ff": 16}


def signature(batch, length):
    return (ShapeDtype((batch, length), jnp.int32),) * 3


def test_trax_signatures_and_defaults():
    assert {k: p.default for k, p in inspect.signature(bert.BERT).parameters.items()} == {
        "d_model": 768,
        "vocab_size": 30522,
        "max_len": 512,
        "type_vocab_size": 2,
        "n_heads": 12,
        "d_ff": 3072,
        "n_layers": 12,
        "head": None,
        "init_checkpoint": None,
        "mode": "eval",
    }
    assert list(inspect.signature(bert.BERTClassifierHead).parameters) == ["n_classes"]
    assert not inspect.signature(bert.BERTRegressionHead).parameters
    assert inspect.signature(bert.BERTMLMHead).parameters["vocab_size"].default == 30522


def test_weights_are_in_the_order_trax_loads_a_checkpoint():
    # Trax's PretrainedBERT assigns a TF checkpoint's tensors to the flattened weights in this order.
    d, d_ff, heads, max_len, vocab = 8, 16, 2, 16, 10
    weights, _ = bert.BERT(n_layers=2, **SMALL).weights_and_state_signature(signature(2, 6))
    expected = [(vocab, d), (2, d), (max_len, d), (d,), (d,)]  # Trax's positions are [1, max_len, d].
    per_layer = [
        (heads, d, d // heads),  # query, key, value kernels, per head
        (heads, d, d // heads),
        (heads, d, d // heads),
        (heads, d // heads, d),  # attention output kernel
        (heads, d // heads),  # query, key, value biases
        (heads, d // heads),
        (heads, d // heads),
        (d,),  # attention output bias (AddBias)
        (d,),  # LayerNorm
        (d,),
        (d, d_ff),  # intermediate
        (d_ff,),
        (d_ff, d),  # output
        (d,),
        (d,),  # LayerNorm
        (d,),
    ]
    expected += 2 * per_layer + [(d, d), (d,)]  # The pooler.
    assert [w.shape for w in jax.tree.leaves(weights)] == expected
    # Embeddings (5 layers), 5 layers per block, Select, and the pooler's Fn, Dense, Tanh.
    assert len(weights) == 5 + 2 * 5 + 1 + 3


def test_bert_outputs_pooled_and_sequence_and_ignores_padding():
    model = bert.BERT(n_layers=1, **SMALL)
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 10, size=(2, 8)).astype(np.int32))
    ids = ids.at[0, 5:].set(0).at[1, 3:].set(0)  # Lengths 5 and 3; 0 is padding.
    types = jnp.zeros_like(ids).at[:, 2:].set(1)
    model.init(signature(2, 8), jax.random.PRNGKey(1))
    pooled, sequence = model((ids, types, ids))
    assert pooled.shape == (2, 8) and sequence.shape == (2, 8, 8)
    # The pooled output is Tanh(Dense(first token's vector)).
    w, b = model.weights[-2]
    np.testing.assert_allclose(pooled, np.tanh(sequence[:, 0] @ w + b[None]), atol=1e-5)
    # Padding is masked: more of it changes no valid step (positions are the same).
    longer = jnp.pad(ids, ((0, 0), (0, 2)))
    pooled_2, sequence_2 = model((longer, jnp.pad(types, ((0, 0), (0, 2))), longer))
    np.testing.assert_allclose(pooled_2, pooled, atol=1e-5)
    np.testing.assert_allclose(sequence_2[0, :5], sequence[0, :5], atol=1e-5)
    np.testing.assert_allclose(sequence_2[1, :3], sequence[1, :3], atol=1e-5)
    # Token types matter.
    assert not np.allclose(model((ids, 1 - types, ids))[0], pooled)


def test_heads():
    pooled = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32))
    sequence = jnp.asarray(np.random.default_rng(2).standard_normal((2, 5, 8)).astype(np.float32))
    inputs = (pooled, sequence)
    signatures = (ShapeDtype((2, 8)), ShapeDtype((2, 5, 8)))
    classifier = bert.BERTClassifierHead(3)
    (w, b) = classifier.init(signatures)[0][1]
    np.testing.assert_allclose(classifier(inputs), pooled @ w + b[None], atol=1e-6)
    # The others' shapes, abstractly (the pretraining head's MLM Dense is 8 x 30522).
    assert bert.BERTRegressionHead().output_signature(signatures).shape == (2,)
    assert bert.BERTMLMHead(vocab_size=7).output_signature(signatures).shape == (2, 5, 7)
    nsp, mlm = bert.BERTPretrainingHead(2).output_signature(signatures)
    assert nsp.shape == (2, 2) and mlm.shape == (2, 5, 30522)


def test_bert_with_a_head_is_serial_of_bert_and_head():
    model = bert.BERT(n_layers=1, head=lambda: bert.BERTClassifierHead(3), **SMALL)
    weights, _ = model.weights_and_state_signature(signature(2, 6))
    assert len(weights) == 2 and [w.shape for w in weights[1][1]] == [(8, 3), (3,)]
    assert model.n_in == 3 and model.n_out == 1


def test_pretraining_loss_sums_the_two_cross_entropies():
    rng = np.random.default_rng(3)
    nsp_logits = jnp.asarray(rng.standard_normal((2, 2)).astype(np.float32))
    mlm_logits = jnp.asarray(rng.standard_normal((2, 3, 5)).astype(np.float32))
    nsp_targets, nsp_weights = jnp.asarray([0, 1]), jnp.ones((2,))
    mlm_targets, mlm_weights = (
        jnp.asarray([[1, 2, 3], [4, 0, 1]]),
        jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]),
    )
    loss = bert.BERTPretrainingLoss()
    value = loss((nsp_logits, mlm_logits, nsp_targets, nsp_weights, mlm_targets, mlm_weights))

    def cross_entropy(logits, targets, weights):
        log_probs = jax.nn.log_softmax(logits)
        picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
        return -jnp.sum(picked * weights) / jnp.sum(weights)

    expected = cross_entropy(nsp_logits, nsp_targets, nsp_weights) + cross_entropy(
        mlm_logits, mlm_targets, mlm_weights
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_add_bias_starts_at_zero_and_adds_on_the_last_axis():
    layer = bert.AddBias()
    x = jnp.ones((2, 3, 4))
    weights, _ = layer.init(ShapeDtype((2, 3, 4)))
    np.testing.assert_array_equal(weights, np.zeros(4))
    np.testing.assert_array_equal(
        layer(x, weights=jnp.arange(4.0)), 1.0 + np.arange(4.0) * np.ones((2, 3, 1))
    )


def test_init_checkpoint_is_refused_in_train_mode_and_ignored_otherwise():
    with pytest.raises(ValueError, match="init_checkpoint='bert-base-uncased' is not supported.*TensorFlow"):
        bert.BERT(n_layers=1, init_checkpoint="bert-base-uncased", mode="train", **SMALL)
    # As in Trax, only 'train' mode loads a checkpoint.
    assert (
        bert.BERT(n_layers=1, init_checkpoint="/tmp/bert/model.ckpt", mode="eval", **SMALL).name
        == "PretrainedBERT"
    )


def test_bert_does_not_stream():
    model = bert.BERT(n_layers=1, mode="predict", **SMALL)
    assert not model.supports_step
    # Its bidirectional SelfAttention refuses predict mode at init, saying why.
    with pytest.raises(tl.LayerError, match="does not stream"):
        model.weights_and_state_signature(signature(2, 1))
