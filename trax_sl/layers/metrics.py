"""Layers for computing loss functions and evaluation metrics.

A metric layer computes a scalar value from two or three stack items:

- model outputs: a batch of predicted values (typically vectors);
- targets: a batch of target values (e.g. categories or vectors);
- weights: floats that weigh batch items, sequence positions or vector
  components unevenly when combining them into one scalar.

For each item of a batch a raw value compares the model output with the
target (e.g. 1 if the largest component is the target category, else 0);
these are combined into one scalar by a sum, average or weighted average.

Sequences: when the model output, the targets or the weights are
`trax_sl.Sequence`s, their masks (and-ed) multiply the weights, so padding
never counts, whatever it holds. The two-input metrics, which take no
weights, are then weighed by the mask alone: `CategoryAccuracy` on Sequences
is the accuracy over valid steps. Invalid steps are zeroed before any
arithmetic, so neither values nor gradients there can be NaN. Metrics reduce
over time, so they do not stream (`supports_step` is False).

Every public metric is gin-configurable as `trax_sl.layers.<Name>` (see
`gin_names`), and direct calls see the bindings too.

The formulas are Trax's. Unlike Trax, weight sums are not averaged over
devices inside `pmap`: losses computed on globally sharded arrays (jit)
already see all weights.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trax_sl import checks
from trax_sl import sequence as seq
from trax_sl.layers import base, combinators, distributions, reductions, streaming


class _Metric(base.Layer):
    """A weightless, non-streaming layer that reduces its inputs to one value.

    `fn(*arrays, mask)` gets the inputs' values with invalid steps zeroed and
    `mask`, the and-ed `[batch, time]` mask of the Sequence inputs (None
    without Sequence inputs).
    """

    handles_sequences = True

    def __init__(self, name: str, fn, n_in: int):
        super().__init__(n_in=n_in, n_out=1, name=name)
        self._fn = fn

    streaming_spec = streaming.NOT_STREAMING

    def forward(self, inputs, weights, state, rng):
        del weights, rng
        items = tuple(inputs)
        mask = seq.combined_mask(items, self.name)
        arrays = tuple(_zero_invalid(x.values if isinstance(x, seq.Sequence) else x, mask) for x in items)
        return self._fn(*arrays, mask), state


def _fits(mask, shape) -> bool:
    return len(shape) >= 2 and tuple(shape[:2]) == tuple(mask.shape)


def _zero_invalid(x, mask):
    """Zeroes the invalid steps of `x` if it has the mask's [batch, time] axes."""
    x = jnp.asarray(x)
    if mask is None or not _fits(mask, x.shape):
        return x
    return jnp.where(seq.expand_mask(mask, x.ndim), x, jnp.zeros((), x.dtype))


def _valid(name: str, mask, shape):
    """The mask broadcast to per-item values of `shape` (all True without a mask)."""
    if mask is None:
        return jnp.ones(shape, jnp.bool_)
    if not _fits(mask, shape):
        raise ValueError(
            f"{name}: the Sequence mask {tuple(mask.shape)} does not fit per-item values "
            f"of shape {tuple(shape)}; expected [batch, time, ...] values"
        )
    return jnp.broadcast_to(seq.expand_mask(mask, len(shape)), shape)


def _item_weights(name: str, shape, mask, weights=None):
    """Weights of per-item values of `shape`: the given ones (or 1) where valid, else 0."""
    if weights is None:
        weights = jnp.ones(shape, jnp.float32)
    else:
        try:
            weights = jnp.broadcast_to(weights, shape)
        except ValueError as e:
            raise ValueError(
                f"{name}: weights of shape {tuple(jnp.shape(weights))} do not broadcast "
                f"to the per-item values' shape {tuple(shape)}"
            ) from e
    return jnp.where(_valid(name, mask, shape), weights, jnp.zeros((), weights.dtype))


def _weighted_mean(values, weights):
    return jnp.sum(values * weights) / jnp.sum(weights)


def _assert_same_shape(name: str, what: str, a, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{name}: {what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _predictions(name: str, model_output, targets):
    predictions = jnp.argmax(model_output, axis=-1)
    _assert_same_shape(name, "argmax(model_output) and targets", predictions, targets)
    return predictions


def _category_cross_entropy(model_output, targets, label_smoothing, cutoff):
    """Per-item cross-entropy of softmax(model_output) against (smoothed) one-hot targets."""
    n_categories = model_output.shape[-1]
    target_distributions = distributions.one_hot(targets, n_categories)
    if label_smoothing:
        target_distributions = target_distributions * (1.0 - label_smoothing) + label_smoothing / n_categories
    cross_entropies = -jnp.sum(target_distributions * distributions.log_softmax(model_output), axis=-1)
    if cutoff > 0.0:
        return jnp.maximum(cross_entropies, cutoff) - cutoff
    return cross_entropies


def _cross_entropies(log_probs, targets):
    """Per-item `-log_probs[target]` (Trax's `_CrossEntropy`)."""
    return -jnp.sum(log_probs * distributions.one_hot(targets, log_probs.shape[-1]), axis=-1)


def _binary_cross_entropy_of_probabilities(name: str, probabilities, targets, mask):
    """Trax's `_BinaryCrossEntropy`: summed binary cross-entropy / batch size.

    The model output holds probabilities (not logits). Invalid steps are set
    to 1/2 first, so that their logs stay finite.
    """
    _assert_same_shape(name, "model_output and targets", probabilities, targets)
    valid = _valid(name, mask, probabilities.shape)
    p = jnp.where(valid, probabilities, 0.5)
    per_item = targets * jnp.log(p) + (1 - targets) * jnp.log(1 - p)
    return -jnp.sum(jnp.where(valid, per_item, 0.0)) / probabilities.shape[0]


def _non_nan(x):
    """Replaces NaN (from 0/0: a category never predicted or never seen) with 0."""
    return jnp.where(jnp.isnan(x), 0.0, x)


def _f_scores(name: str, model_output, targets, mask, beta: float, initial_category_index: int):
    """(F-score, number of targets) per category from `initial_category_index` on."""
    predictions = _predictions(name, model_output, targets)
    n_categories = model_output.shape[-1]
    valid = _valid(name, mask, predictions.shape).astype(jnp.float32)[..., None]
    predicted = distributions.one_hot(predictions, n_categories)[..., initial_category_index:] * valid
    observed = distributions.one_hot(targets, n_categories)[..., initial_category_index:] * valid
    axes = tuple(range(predicted.ndim - 1))
    n_correct = jnp.sum(predicted * observed, axis=axes)
    n_k_targets = jnp.sum(observed, axis=axes)
    precision = _non_nan(n_correct / jnp.sum(predicted, axis=axes))
    recall = _non_nan(n_correct / n_k_targets)
    beta2 = beta**2
    f_scores = _non_nan((beta2 + 1) * (precision * recall) / (beta2 * precision + recall))
    return f_scores, n_k_targets


# --- Accuracy ----------------------------------------------------------------------


def CategoryAccuracy() -> base.Layer:  # noqa: N802
    """Returns a layer that computes category prediction accuracy.

    n_in=2 (model_output `[batch, ..., n_categories]`, integer targets
    `[batch, ...]`), n_out=1 (a scalar). The predicted category is the argmax
    of each vector; the result is the fraction of correct predictions (of
    valid steps, for Sequences).

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, mask):
        correct = jnp.equal(_predictions("CategoryAccuracy", model_output, targets), targets)
        return _weighted_mean(correct, _item_weights("CategoryAccuracy", targets.shape, mask))

    return _Metric("CategoryAccuracy", f, n_in=2)


def WeightedCategoryAccuracy() -> base.Layer:  # noqa: N802
    """Returns a layer that computes a weighted category prediction accuracy.

    n_in=3 (model_output `[batch, ..., n_categories]`, integer targets
    `[batch, ...]`, weights broadcastable to the targets' shape), n_out=1.
    Result: `sum(weights * correct) / sum(weights)`.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, weights, mask):
        name = "WeightedCategoryAccuracy"
        correct = jnp.equal(_predictions(name, model_output, targets), targets)
        return _weighted_mean(correct, _item_weights(name, targets.shape, mask, weights))

    return _Metric("WeightedCategoryAccuracy", f, n_in=3)


def MaskedSequenceAccuracy() -> base.Layer:  # noqa: N802
    """Returns a layer that computes sequence prediction accuracy with masking.

    n_in=3 (model_output `[batch, time, n_categories]`, integer targets
    `[batch, time]`, weights/mask of the targets' shape), n_out=1. A sequence
    is correct if its argmax predictions match the targets at every position
    of non-zero weight (and valid step); the result is the fraction of
    correct sequences in the batch.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, weights, mask):
        name = "MaskedSequenceAccuracy"
        predictions = _predictions(name, model_output, targets)
        is_padding = jnp.equal(_item_weights(name, targets.shape, mask, weights), 0)
        sequence_is_accurate = jnp.all(jnp.equal(predictions, targets) | is_padding, axis=-1)
        return jnp.average(sequence_is_accurate)

    return _Metric("MaskedSequenceAccuracy", f, n_in=3)


def _Accuracy() -> base.Layer:  # noqa: N802
    """Scores predicted against target categories: 1.0 where equal, else 0.0."""
    return base.Fn("_Accuracy", lambda predicted, target: jnp.equal(predicted, target).astype(jnp.float32))


def _WeightedMean() -> base.Layer:  # noqa: N802
    """Computes `sum(values * weights) / sum(weights)`."""

    def f(values, weights, mask):
        return _weighted_mean(values, _item_weights("_WeightedMean", values.shape, mask, weights))

    return _Metric("_WeightedMean", f, n_in=2)


def _WeightedSequenceMean() -> base.Layer:  # noqa: N802
    """The fraction of sequences whose 0/1 values are 1 wherever the weight is not 0."""

    def f(values, weights, mask):
        not_correct = (1.0 - values) * _item_weights("_WeightedSequenceMean", values.shape, mask, weights)
        not_correct_seq = jnp.sum(not_correct, axis=tuple(range(1, values.ndim)))
        return jnp.mean(1.0 - jnp.minimum(1.0, not_correct_seq))

    return _Metric("_WeightedSequenceMean", f, n_in=2)


def Accuracy(classifier: base.Layer | None = None) -> base.Layer:  # noqa: N802
    """Returns a layer that computes mean category prediction accuracy.

    DEPRECATED; use `WeightedCategoryAccuracy` instead.

    n_in=3 (model_output, targets, weights), n_out=1:
    `sum(weights * (classifier(model_output) == targets)) / sum(weights)`.

    Args:
        classifier: Layer that turns activation vectors into category
            predictions; None means `ArgMax()`.

    Not streamable (a reduction over time).
    """
    classifier = reductions.ArgMax() if classifier is None else classifier
    return combinators.Serial(
        classifier, _Accuracy(), _WeightedMean(), name="Accuracy", sublayers_to_print=[]
    )


def SequenceAccuracy(classifier: base.Layer | None = None) -> base.Layer:  # noqa: N802
    """Returns a layer that computes mean sequence prediction accuracy.

    DEPRECATED; use `MaskedSequenceAccuracy` instead.

    n_in=3 (model_output, targets, weights of 0s and 1s), n_out=1: the
    fraction of sequences whose predictions are right wherever the weight is 1.

    Args:
        classifier: Layer that turns activation vectors into category
            predictions; None means `ArgMax()`.

    Not streamable (a reduction over time).
    """
    classifier = reductions.ArgMax() if classifier is None else classifier
    return combinators.Serial(
        classifier, _Accuracy(), _WeightedSequenceMean(), name="SequenceAccuracy", sublayers_to_print=[]
    )


# --- Cross-entropy -----------------------------------------------------------------


def CategoryCrossEntropy(label_smoothing: float | None = None) -> base.Layer:  # noqa: N802
    r"""Returns a layer that computes cross-entropy from activations and integers.

    n_in=2 (pre-softmax model_output `[batch, ..., n_categories]`, integer
    targets `[batch, ...]`), n_out=1. Per item, with `q = softmax(v)` and `p`
    the one-hot target, or `(1 - eps) * one_hot + eps / n_categories` with
    label smoothing eps: `-sum_i p_i log q_i`; the result is their average
    (over valid steps, for Sequences).

    Args:
        label_smoothing: Creates soft targets if provided; between 0 and 1.

    Not streamable (a reduction over time).
    """
    if label_smoothing is not None:
        checks.check_between("CategoryCrossEntropy", 0, 1, label_smoothing=label_smoothing)

    def f(model_output, targets, mask):
        cross_entropies = _category_cross_entropy(model_output, targets, label_smoothing, 0.0)
        return _weighted_mean(cross_entropies, _item_weights("CategoryCrossEntropy", targets.shape, mask))

    return _Metric("CategoryCrossEntropy", f, n_in=2)


def WeightedCategoryCrossEntropy(  # noqa: N802
    label_smoothing: float | None = None,
    cutoff: float = 0.0,
) -> base.Layer:
    """Returns a layer like `CategoryCrossEntropy`, with weights as third input.

    n_in=3 (model_output, targets, weights broadcastable to the targets'
    shape), n_out=1: the weighted average of per-item cross-entropies.

    Args:
        label_smoothing: Creates soft targets if provided; between 0 and 1.
        cutoff: Per-item losses below it count as 0, the others are reduced
            by it (0.0: no cutoff).

    Not streamable (a reduction over time).
    """
    if label_smoothing is not None:
        checks.check_between("WeightedCategoryCrossEntropy", 0, 1, label_smoothing=label_smoothing)

    def f(model_output, targets, weights, mask):
        cross_entropies = _category_cross_entropy(model_output, targets, label_smoothing, cutoff)
        weights = _item_weights("WeightedCategoryCrossEntropy", targets.shape, mask, weights)
        return _weighted_mean(cross_entropies, weights)

    return _Metric("WeightedCategoryCrossEntropy", f, n_in=3)


def CrossEntropyLoss() -> base.Layer:  # noqa: N802
    """Returns a layer that outputs multiclass prediction-target cross-entropy.

    DEPRECATED; use `WeightedCategoryCrossEntropy` or `CategoryCrossEntropy`.

    n_in=3 (model_output holding log-probabilities, e.g. after `LogSoftmax`;
    targets; weights), n_out=1: the weighted mean of `-log_probs[target]`.

    Not streamable (a reduction over time).
    """

    def f(log_probs, targets, weights, mask):
        weights = _item_weights("CrossEntropyLoss", targets.shape, mask, weights)
        return _weighted_mean(_cross_entropies(log_probs, targets), weights)

    return _Metric("CrossEntropyLoss", f, n_in=3)


def CrossEntropyLossWithLogSoftmax() -> base.Layer:  # noqa: N802
    """Mean prediction-target cross-entropy for multiclass classification.

    n_in=3 (pre-softmax model_output, targets, weights), n_out=1: the
    weighted mean of `-log_softmax(model_output)[target]`.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, weights, mask):
        weights = _item_weights("CrossEntropyLossWithLogSoftmax", targets.shape, mask, weights)
        return _weighted_mean(_cross_entropies(distributions.log_softmax(model_output), targets), weights)

    return _Metric("CrossEntropyLossWithLogSoftmax", f, n_in=3)


def CrossEntropySum() -> base.Layer:  # noqa: N802
    """Sum of prediction-target cross entropies for multiclass classification.

    n_in=3 (model_output holding log-probabilities, targets, weights),
    n_out=1: `sum(weights * -log_probs[target])`.

    Not streamable (a reduction over time).
    """

    def f(log_probs, targets, weights, mask):
        weights = _item_weights("CrossEntropySum", targets.shape, mask, weights)
        return jnp.sum(_cross_entropies(log_probs, targets) * weights)

    return _Metric("CrossEntropySum", f, n_in=3)


def BinaryCrossEntropy() -> base.Layer:  # noqa: N802
    r"""Returns a layer that computes cross-entropy for binary classification.

    n_in=2 (activations x in (-inf, inf) and targets t in {0, 1}, of one
    shape), n_out=1. With `q = sigmoid(x)` the predicted probability of
    category 1, per item `-log q` if t = 1 and `-log(1 - q)` if t = 0; the
    result is their average (over valid steps, for Sequences). Computed as
    `log_sigmoid(x)` and `log_sigmoid(-x)`, which stay finite for large |x|.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, mask):
        _assert_same_shape("BinaryCrossEntropy", "model_output and targets", model_output, targets)
        binary_entropies = -(
            targets * jax.nn.log_sigmoid(model_output) + (1 - targets) * jax.nn.log_sigmoid(-model_output)
        )
        return _weighted_mean(binary_entropies, _item_weights("BinaryCrossEntropy", targets.shape, mask))

    return _Metric("BinaryCrossEntropy", f, n_in=2)


def BinaryCrossEntropyLoss() -> base.Layer:  # noqa: N802
    """Returns a layer that outputs binary prediction-target cross-entropy.

    DEPRECATED; use `BinaryCrossEntropy` instead (which takes logits and no
    weights).

    n_in=3 (model_output holding probabilities, targets in {0, 1} of the same
    shape, weights), n_out=1: the summed binary cross-entropy divided by the
    batch size (the weights only normalize themselves away, as in Trax).

    Not streamable (a reduction over time).
    """

    def f(probabilities, targets, weights, mask):
        name = "BinaryCrossEntropyLoss"
        loss = _binary_cross_entropy_of_probabilities(name, probabilities, targets, mask)
        return _weighted_mean(loss, _item_weights(name, jnp.shape(weights), mask, weights))

    return _Metric("BinaryCrossEntropyLoss", f, n_in=3)


def BinaryCrossEntropySum() -> base.Layer:  # noqa: N802
    """Sum of prediction-target cross entropies for binary classification.

    n_in=3 (model_output holding probabilities, targets in {0, 1}, weights),
    n_out=1: the summed binary cross-entropy divided by the batch size, times
    `sum(weights)` (Trax's formula).

    Not streamable (a reduction over time).
    """

    def f(probabilities, targets, weights, mask):
        name = "BinaryCrossEntropySum"
        loss = _binary_cross_entropy_of_probabilities(name, probabilities, targets, mask)
        return jnp.sum(loss * _item_weights(name, jnp.shape(weights), mask, weights))

    return _Metric("BinaryCrossEntropySum", f, n_in=3)


# --- Regression losses and sums ----------------------------------------------------


def _ElementwiseLoss(name: str, distance) -> base.Layer:  # noqa: N802
    def f(model_output, targets, weights, mask):
        _assert_same_shape(name, "model_output and targets", model_output, targets)
        _assert_same_shape(name, "model_output and weights", model_output, weights)
        weights = _item_weights(name, model_output.shape, mask, weights)
        return _weighted_mean(distance(model_output - targets), weights)

    return _Metric(name, f, n_in=3)


def L2Loss() -> base.Layer:  # noqa: N802
    """Returns a layer that computes an L2-like loss for one batch.

    n_in=3 (model_output, targets and weights, all of one shape), n_out=1:
    the weighted average of element-wise squared errors `(y_i - t_i)**2`.

    Not streamable (a reduction over time).
    """
    return _ElementwiseLoss("L2Loss", jnp.square)


def L1Loss() -> base.Layer:  # noqa: N802
    """Returns a layer that computes an L1 loss for one batch.

    n_in=3 (model_output, targets and weights, all of one shape), n_out=1:
    the weighted average of element-wise absolute errors `|y_i - t_i|`.

    Not streamable (a reduction over time).
    """
    return _ElementwiseLoss("L1Loss", jnp.abs)


def SmoothL1Loss() -> base.Layer:  # noqa: N802
    """Returns a layer that computes a weighted, smoothed L1 (Huber) loss for one batch.

    n_in=3 (model_output, targets and weights, all of one shape), n_out=1:
    the weighted average of `d**2 / 2` where `|d| < 1`, else `|d| - 1/2`,
    with `d = y_i - t_i`.

    Not streamable (a reduction over time).
    """

    def smooth_l1(difference):
        l1_dist = jnp.abs(difference)
        return jnp.where(l1_dist < 1, 0.5 * l1_dist**2, l1_dist - 0.5)

    return _ElementwiseLoss("SmoothL1Loss", smooth_l1)


def WeightedSum() -> base.Layer:  # noqa: N802
    """Returns a layer that computes a weighted sum of the given values.

    n_in=2 (values, weights broadcastable to the values' shape), n_out=1:
    `sum(values * weights)`.

    Not streamable (a reduction over time).
    """

    def f(values, weights, mask):
        return jnp.sum(values * _item_weights("WeightedSum", values.shape, mask, weights))

    return _Metric("WeightedSum", f, n_in=2)


# --- F-scores ----------------------------------------------------------------------


def MacroAveragedFScore(beta: float = 1.0, initial_category_index: int = 0) -> base.Layer:  # noqa: N802
    """Returns a layer that computes a macro-averaged F-score.

    n_in=2 (model_output `[batch, ..., n_categories]`, integer targets), n_out=1.
    The F-score of each category k (from `initial_category_index` on) compares
    the argmax predictions of k with the targets k:
    `(1 + beta**2) * precision * recall / (beta**2 * precision + recall)`,
    0 where undefined; the result is their plain mean, caring about all
    categories equally regardless of their size.

    Args:
        beta: The weight of recall in the F-score.
        initial_category_index: The first category scored.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, mask):
        f_scores, _ = _f_scores(
            "MacroAveragedFScore", model_output, targets, mask, beta, initial_category_index
        )
        return jnp.mean(f_scores)

    return _Metric("MacroAveragedFScore", f, n_in=2)


def WeightedFScore(beta: float = 1.0, initial_category_index: int = 0) -> base.Layer:  # noqa: N802
    """Returns a layer that computes a weighted F-score.

    n_in=2 (model_output, integer targets), n_out=1: the per-category F-scores
    of `MacroAveragedFScore`, averaged with the number of targets of each
    category as weights.

    Args:
        beta: The weight of recall in the F-score.
        initial_category_index: The first category scored.

    Not streamable (a reduction over time).
    """

    def f(model_output, targets, mask):
        f_scores, n_k_targets = _f_scores(
            "WeightedFScore", model_output, targets, mask, beta, initial_category_index
        )
        return jnp.average(f_scores, weights=n_k_targets)

    return _Metric("WeightedFScore", f, n_in=2)
