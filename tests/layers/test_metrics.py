"""Exact values of every metric on small hand-checked cases, with and without Sequence masks."""

import math

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
from trax_sl.layers import base, core, metrics

Sequence = trax_sl.Sequence
LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)

# Two rows of three steps over two categories. argmax: row 0 -> [0, 1, 0], row 1 -> [1, 1, 0].
LOGITS = np.float32([[[1, 0], [0, 1], [1, 0]], [[0, 1], [0, 1], [5, 5]]])
TARGETS = np.int32([[0, 0, 0], [1, 1, 0]])  # correct: [[1, 0, 1], [1, 1, 1]]
WEIGHTS = np.float32([[1, 2, 0], [1, 1, 1]])
LENGTHS = np.int32([3, 2])  # Row 1's last step is padding.


def padded(values, garbage=np.nan):
    """A Sequence of `values` with row 1's last step invalid and set to garbage."""
    values = np.array(values, dtype=np.asarray(values).dtype)
    values[1, 2] = garbage if np.issubdtype(values.dtype, np.floating) else 7
    return Sequence.from_lengths(jnp.asarray(values), LENGTHS)


def close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6, atol=1e-7)


# --- Accuracy ----------------------------------------------------------------------


def test_category_accuracy():
    close(metrics.CategoryAccuracy()((LOGITS, TARGETS)), 5 / 6)


def test_category_accuracy_counts_valid_steps_only():
    layer = metrics.CategoryAccuracy()
    close(layer((padded(LOGITS), TARGETS)), 4 / 5)
    # The mask may come with the targets instead.
    close(layer((LOGITS, padded(TARGETS))), 4 / 5)


def test_weighted_category_accuracy():
    # sum(w * correct) = 1 + 0 + 0 + 3 = 4 of sum(w) = 6; masked: 3 of 5.
    layer = metrics.WeightedCategoryAccuracy()
    close(layer((LOGITS, TARGETS, WEIGHTS)), 4 / 6)
    close(layer((padded(LOGITS), padded(TARGETS), WEIGHTS)), 3 / 5)


def test_masked_sequence_accuracy():
    # Row 0 is wrong at step 1 (weight 2); row 1 is right: 1/2. With weight 0 at
    # row 0's wrong step, both rows are right.
    layer = metrics.MaskedSequenceAccuracy()
    close(layer((LOGITS, TARGETS, WEIGHTS)), 0.5)
    close(layer((LOGITS, TARGETS, np.float32([[1, 0, 1], [1, 1, 1]]))), 1.0)


def test_masked_sequence_accuracy_ignores_padding():
    # Row 1's padding step predicts 0 against target 1: wrong if it counted.
    targets = np.int32([[0, 1, 0], [1, 1, 1]])
    layer = metrics.MaskedSequenceAccuracy()
    close(layer((LOGITS, targets, np.ones((2, 3), np.float32))), 0.5)
    close(layer((padded(LOGITS), targets, np.ones((2, 3), np.float32))), 1.0)


def test_accuracy_deprecated_combinator():
    layer = metrics.Accuracy()
    close(layer((LOGITS, TARGETS, WEIGHTS)), 4 / 6)
    close(layer((padded(LOGITS), TARGETS, WEIGHTS)), 3 / 5)
    assert (layer.name, layer.n_in, layer.n_out, repr(layer)) == ("Accuracy", 3, 1, "Accuracy_in3")


def test_accuracy_with_a_custom_classifier():
    # Classify by the sign of the single activation.
    layer = metrics.Accuracy(classifier=core.ThresholdToBinary(0.0))
    close(layer((np.float32([-1, 2, 3]), np.float32([0, 1, 0]), np.float32([1, 1, 1]))), 2 / 3)


def test_sequence_accuracy_deprecated_combinator():
    layer = metrics.SequenceAccuracy()
    close(layer((LOGITS, TARGETS, WEIGHTS)), 0.5)
    close(layer((LOGITS, TARGETS, np.float32([[1, 0, 1], [1, 1, 1]]))), 1.0)
    targets = np.int32([[0, 1, 0], [1, 1, 1]])
    close(layer((padded(LOGITS), targets, np.ones((2, 3), np.float32))), 1.0)


# --- Cross-entropy -----------------------------------------------------------------

# Logits [ln 3, 0]: softmax [3/4, 1/4]. Logits [0, 0]: [1/2, 1/2].
CE_LOGITS = np.float32([[[LN3, 0], [LN3, 0], [0, 0]]])
CE_TARGETS = np.int32([[0, 1, 1]])  # Cross-entropies: ln(4/3), ln 4, ln 2.
CE = [LN4 - LN3, LN4, LN2]


def test_category_cross_entropy():
    close(metrics.CategoryCrossEntropy()((CE_LOGITS, CE_TARGETS)), sum(CE) / 3)


def test_category_cross_entropy_with_label_smoothing():
    # eps = 0.2 over 2 categories: p = 0.8 * one_hot + 0.1.
    per_item = [
        -(0.9 * math.log(0.75) + 0.1 * math.log(0.25)),
        -(0.1 * math.log(0.75) + 0.9 * math.log(0.25)),
        LN2,
    ]
    close(metrics.CategoryCrossEntropy(label_smoothing=0.2)((CE_LOGITS, CE_TARGETS)), sum(per_item) / 3)


def test_category_cross_entropy_ignores_padding():
    logits = Sequence.from_lengths(jnp.asarray(CE_LOGITS).at[0, 2].set(jnp.nan), jnp.int32([2]))
    close(metrics.CategoryCrossEntropy()((logits, CE_TARGETS)), (CE[0] + CE[1]) / 2)


def test_weighted_category_cross_entropy_with_cutoff():
    weights = np.float32([[1, 2, 1]])
    layer = metrics.WeightedCategoryCrossEntropy()
    close(layer((CE_LOGITS, CE_TARGETS, weights)), (CE[0] + 2 * CE[1] + CE[2]) / 4)
    # cutoff ln 2: max(ce, ln 2) - ln 2 = [0, ln 2, 0].
    close(metrics.WeightedCategoryCrossEntropy(cutoff=LN2)((CE_LOGITS, CE_TARGETS, weights)), 2 * LN2 / 4)


def test_cross_entropy_loss_takes_log_probabilities():
    log_probs = np.float32([[-0.5, -1.0], [-2.0, -0.25]])
    targets, weights = np.int32([1, 0]), np.float32([1, 3])
    close(metrics.CrossEntropyLoss()((log_probs, targets, weights)), (1.0 + 3 * 2.0) / 4)
    close(metrics.CrossEntropySum()((log_probs, targets, weights)), 1.0 + 3 * 2.0)


def test_cross_entropy_loss_with_log_softmax():
    weights = np.float32([[1, 1, 2]])
    layer = metrics.CrossEntropyLossWithLogSoftmax()
    close(layer((CE_LOGITS, CE_TARGETS, weights)), (CE[0] + CE[1] + 2 * CE[2]) / 4)
    logits = Sequence.from_lengths(jnp.asarray(CE_LOGITS).at[0, 2].set(jnp.nan), jnp.int32([2]))
    close(layer((logits, CE_TARGETS, weights)), (CE[0] + CE[1]) / 2)


def test_cross_entropy_sum_masks_padding():
    log_probs = np.float32([[[-0.5, -1.0], [-2.0, np.nan]]])
    sequence = Sequence.from_lengths(jnp.asarray(log_probs), jnp.int32([1]))
    close(metrics.CrossEntropySum()((sequence, np.int32([[1, 1]]), np.float32([[2, 2]]))), 2.0)


def test_binary_cross_entropy():
    # sigmoid(ln 3) = 3/4, sigmoid(0) = 1/2: -ln(3/4), -ln(1/4), ln 2.
    logits, targets = np.float32([LN3, LN3, 0]), np.int32([1, 0, 1])
    close(metrics.BinaryCrossEntropy()((logits, targets)), (LN4 - LN3 + LN4 + LN2) / 3)


def test_binary_cross_entropy_stays_finite_for_large_logits():
    close(metrics.BinaryCrossEntropy()((np.float32([100.0, 100.0]), np.int32([1, 0]))), 50.0)


def test_binary_cross_entropy_on_sequences():
    logits = padded(np.float32([[LN3, 0, 0], [LN3, LN3, 0]]))
    targets = np.int32([[1, 1, 0], [0, 1, 0]])
    # Valid items: -ln(3/4), ln 2, ln 2, ln 4, -ln(3/4).
    close(metrics.BinaryCrossEntropy()((logits, targets)), (2 * (LN4 - LN3) + 2 * LN2 + LN4) / 5)


def test_binary_cross_entropy_loss_and_sum_take_probabilities():
    # j = -(ln 0.5 + ln 0.25) / batch size 2 = 1.5 ln 2; the loss is j whatever the
    # weights, the sum j * sum(weights).
    probabilities, targets, weights = (
        np.float32([[0.5], [0.75]]),
        np.float32([[1], [0]]),
        np.float32([[1], [3]]),
    )
    close(metrics.BinaryCrossEntropyLoss()((probabilities, targets, weights)), 1.5 * LN2)
    close(metrics.BinaryCrossEntropySum()((probabilities, targets, weights)), 6 * LN2)


def test_binary_cross_entropy_loss_ignores_padding_even_at_zero_probability():
    # Padding holds p = 0 with target 1: log 0 if it counted.
    sequence = Sequence.from_lengths(jnp.float32([[0.5, 0.0], [0.75, 0.0]]), jnp.int32([1, 1]))
    targets, weights = np.float32([[1, 1], [0, 1]]), np.ones((2, 2), np.float32)
    close(metrics.BinaryCrossEntropyLoss()((sequence, targets, weights)), 1.5 * LN2)
    close(metrics.BinaryCrossEntropySum()((sequence, targets, weights)), 3 * LN2)


# --- Regression losses and sums ----------------------------------------------------

Y, T, W = np.float32([0.0, 0.5, 3.0, -2.0]), np.float32([0.0, 0.0, 0.0, -2.0]), np.float32([1, 1, 2, 4])


def test_l2_loss():
    close(metrics.L2Loss()((Y, T, W)), (0.25 + 2 * 9) / 8)


def test_l1_loss():
    close(metrics.L1Loss()((Y, T, W)), (0.5 + 2 * 3) / 8)


def test_smooth_l1_loss():
    # 0.5 * 0.5**2 = 0.125 below 1; 3 - 0.5 = 2.5 above.
    close(metrics.SmoothL1Loss()((Y, T, W)), (0.125 + 2 * 2.5) / 8)


def test_elementwise_losses_on_sequences_with_channels():
    y = np.float32([[[1, 2], [3, np.nan]]])  # [batch 1, time 2, depth 2]
    sequence = Sequence.from_lengths(jnp.asarray(y), jnp.int32([1]))
    zeros, ones = np.zeros((1, 2, 2), np.float32), np.ones((1, 2, 2), np.float32)
    close(metrics.L2Loss()((sequence, zeros, ones)), (1 + 4) / 2)
    close(metrics.L1Loss()((sequence, zeros, ones)), (1 + 2) / 2)
    close(metrics.SmoothL1Loss()((sequence, zeros, ones)), (0.5 + 1.5) / 2)


def test_weighted_sum():
    layer = metrics.WeightedSum()
    close(layer((np.float32([1, 2, 3]), np.float32([1, 0, 2]))), 7.0)
    close(layer((padded(np.float32([[1, 2, 3], [4, 5, 6]])), np.ones((2, 3), np.float32))), 15.0)


# --- F-scores ----------------------------------------------------------------------

# Predictions [0, 0, 1, 2] against targets [0, 1, 1, 1] over 3 categories:
# k=0: P 1/2, R 1, F1 2/3; k=1: P 1, R 1/3, F1 1/2; k=2: never a target, F1 0.
F_OUTPUT = np.float32([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
F_TARGETS = np.int32([0, 1, 1, 1])


def test_macro_averaged_f_score():
    close(metrics.MacroAveragedFScore()((F_OUTPUT, F_TARGETS)), (2 / 3 + 1 / 2 + 0) / 3)
    close(metrics.MacroAveragedFScore(initial_category_index=1)((F_OUTPUT, F_TARGETS)), 1 / 4)
    # beta = 2: (1 + 4) P R / (4 P + R): k=0 5/6, k=1 5/13.
    close(metrics.MacroAveragedFScore(beta=2.0)((F_OUTPUT, F_TARGETS)), (5 / 6 + 5 / 13) / 3)


def test_weighted_f_score():
    # Weighted by the target counts [1, 3, 0].
    close(metrics.WeightedFScore()((F_OUTPUT, F_TARGETS)), (2 / 3 + 3 / 2) / 4)
    close(metrics.WeightedFScore(initial_category_index=1)((F_OUTPUT, F_TARGETS)), 1 / 2)


def test_f_scores_count_valid_steps_only():
    # As one Sequence with a fifth, invalid step predicting 2 against target 0.
    output = jnp.asarray(np.concatenate([F_OUTPUT, np.float32([[0, 0, 1]])]))[None]
    sequence = Sequence.from_lengths(output, jnp.int32([4]))
    targets = np.int32([[0, 1, 1, 1, 0]])
    close(metrics.MacroAveragedFScore()((sequence, targets)), (2 / 3 + 1 / 2 + 0) / 3)
    close(metrics.WeightedFScore()((sequence, targets)), (2 / 3 + 3 / 2) / 4)


# --- Common behaviour --------------------------------------------------------------

CATEGORY_2 = (LOGITS, TARGETS)
CATEGORY_3 = (LOGITS, TARGETS, WEIGHTS)
ALL_METRICS = {  # name: example inputs (their number is the metric's n_in)
    "CategoryAccuracy": CATEGORY_2,
    "WeightedCategoryAccuracy": CATEGORY_3,
    "CategoryCrossEntropy": CATEGORY_2,
    "WeightedCategoryCrossEntropy": CATEGORY_3,
    "CrossEntropyLoss": CATEGORY_3,
    "CrossEntropyLossWithLogSoftmax": CATEGORY_3,
    "CrossEntropySum": CATEGORY_3,
    "BinaryCrossEntropy": (Y, T),
    "BinaryCrossEntropyLoss": (Y, T, W),
    "BinaryCrossEntropySum": (Y, T, W),
    "Accuracy": CATEGORY_3,
    "SequenceAccuracy": CATEGORY_3,
    "MaskedSequenceAccuracy": CATEGORY_3,
    "L2Loss": (Y, T, W),
    "L1Loss": (Y, T, W),
    "SmoothL1Loss": (Y, T, W),
    "WeightedSum": (Y, W),
    "MacroAveragedFScore": CATEGORY_2,
    "WeightedFScore": CATEGORY_2,
}


@pytest.mark.parametrize("name", list(ALL_METRICS))
def test_every_metric_is_a_non_streaming_layer_with_trax_arity(name):
    layer = getattr(metrics, name)()
    assert isinstance(layer, base.Layer)
    inputs = ALL_METRICS[name]
    assert (layer.name, layer.n_in, layer.n_out) == (name, len(inputs), 1)
    assert layer.supports_step is False
    assert layer(inputs).shape == ()
    with pytest.raises(base.LayerError, match="does not stream"):
        layer.with_mode("predict")(inputs)


def test_gradients_are_finite_and_zero_on_padding():
    logits = padded(LOGITS)

    def loss(values):
        return metrics.CategoryCrossEntropy().pure_fn((Sequence(values, logits.mask), TARGETS), (), (), None)[
            0
        ]

    grads = jax.jit(jax.grad(loss))(logits.values)
    assert bool(jnp.all(jnp.isfinite(grads)))
    np.testing.assert_array_equal(grads[1, 2], [0.0, 0.0])
    assert float(jnp.abs(grads[0, 0, 0])) > 0


def test_metrics_run_under_jit():
    layer = metrics.WeightedCategoryCrossEntropy(label_smoothing=0.1)
    args = (padded(LOGITS), TARGETS, WEIGHTS)
    jitted = jax.jit(lambda x: layer.pure_fn(x, (), (), None)[0])
    close(jitted(args), layer(args))


def test_label_smoothing_out_of_range_is_refused_at_construction():
    with pytest.raises(ValueError, match="label_smoothing must be between 0 and 1, got 1.5"):
        metrics.CategoryCrossEntropy(label_smoothing=1.5)
    with pytest.raises(ValueError, match="label_smoothing must be between 0 and 1, got -0.1"):
        metrics.WeightedCategoryCrossEntropy(label_smoothing=-0.1)


def test_shape_mismatch_names_the_metric_and_shapes():
    with pytest.raises(base.LayerError) as excinfo:
        metrics.CategoryAccuracy()((LOGITS, np.int32([0, 1])))
    assert (
        "CategoryAccuracy: argmax(model_output) and targets must have the same shape, got (2, 3) and (2,)"
        in str(excinfo.value)
    )
    with pytest.raises(base.LayerError, match=r"L2Loss: model_output and weights must have the same shape"):
        metrics.L2Loss()((Y, T, W[:2]))


def test_sequences_with_different_shapes_are_refused():
    a = Sequence.from_values(jnp.zeros((2, 3, 2)))
    b = Sequence.from_values(jnp.zeros((2, 4), jnp.int32))
    with pytest.raises(base.LayerError, match=r"different \[batch, time\] shapes: \(2, 3\) and \(2, 4\)"):
        metrics.CategoryAccuracy()((a, b))


def test_gin_configures_metrics_by_trax_names():
    gin.clear_config()
    try:
        gin.parse_config("trax_sl.layers.CategoryCrossEntropy.label_smoothing = 0.2")
        expected = -(0.9 * math.log(0.75) + 0.1 * math.log(0.25))
        close(metrics.CategoryCrossEntropy()((CE_LOGITS[:, :1], CE_TARGETS[:, :1])), expected)
    finally:
        gin.clear_config()
