"""verify_contract must pass good layers and catch broken ones: a checker that cannot fail protects nothing."""

import jax
import jax.numpy as jnp
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers import base, delay, test_utils
from trax_sl.shapes import ShapeDtype

SIGNATURE = ShapeDtype((3, 8, 2))


class CumSum(base.Layer):
    """Running sum over time; the `broken` switch selects one way of getting it wrong."""

    handles_sequences = True

    def __init__(self, broken=None, mode="train"):
        super().__init__(name=f"CumSum_{broken}")
        self._broken = broken
        self._mode = mode

    def init_weights_and_state(self, input_signature, rng):
        if self._mode != "predict":
            return (), ()
        batch = input_signature.shape[0]
        if self._broken == "state_dtype":
            return (), jnp.zeros((batch, 1, 2), jnp.int32)
        return (), jnp.zeros((batch, 1, 2), jnp.float32)

    def forward(self, x, weights, state, rng):
        x, was_sequence = delay.as_sequence(x)
        values = x.mask_invalid().values
        if self._broken == "no_mask":  # Multiplying by zero does not stop NaN.
            values = values + 0.0 * jnp.sum(x.values, axis=1, keepdims=True)
        if self._broken == "batch_mix":  # Each row sees its neighbour.
            values = values + 0.1 * jnp.roll(values, 1, axis=0)
        carry = state if self._mode == "predict" and self._broken != "forgets_state" else 0.0
        y = jnp.cumsum(values, axis=1) + carry
        new_state = y[:, -1:] if self._mode == "predict" else state
        if self._broken == "state_dtype" and self._mode == "predict":
            new_state = new_state.astype(jnp.float32)
        return delay.like_input(seq.Sequence(y, x.mask), was_sequence), new_state


def test_a_correct_layer_passes():
    report = test_utils.verify_contract(lambda mode: CumSum(mode=mode), SIGNATURE)
    assert report.checks == [
        "output_ratio",
        "padding invariance",
        "batch invariance",
        "step-wise == layer-wise",
        "reset rows == fresh streams",
        "gradients",
    ]


@pytest.mark.parametrize(
    "broken, message",
    [
        ("no_mask", "padding invariance"),
        ("batch_mix", "batch invariance"),
        ("forgets_state", "step-wise"),
        ("state_dtype", "state changed shape or dtype"),
    ],
)
def test_a_broken_layer_fails(broken, message):
    with pytest.raises(AssertionError, match=message):
        test_utils.verify_contract(lambda mode: CumSum(broken, mode=mode), SIGNATURE)


class ForgetsStateInLongBlocks(CumSum):
    """Correct for blocks of one or two steps; a block of three or more restarts the sum."""

    def forward(self, x, weights, state, rng):
        if self._mode == "predict" and x.shape[1] >= 3:
            state = jnp.zeros_like(state)
        return super().forward(x, weights, state, rng)


def test_chunkings_choose_the_step_wise_runs():
    layer = lambda mode: ForgetsStateInLongBlocks(mode=mode)
    report = test_utils.verify_contract(layer, SIGNATURE, chunkings=[[1], [2, 1]])
    assert report.chunkings == [[1], [2, 1]]  # In steps: block_size is 1.
    with pytest.raises(AssertionError, match=r"step-wise \(blocks of \[3, 3, 2\]"):
        test_utils.verify_contract(layer, SIGNATURE, chunkings=[[1], [3]])
    with pytest.raises(ValueError, match="block counts >= 1"):
        test_utils.verify_contract(layer, SIGNATURE, chunkings=[[0]])


class WrongLatency(delay.Lookahead):
    @property
    def output_latency(self):
        return 0


@pytest.mark.parametrize(
    "preserve_length, message",
    [(True, "step-wise"), (False, "output has 6 steps for 8 input steps")],
)
def test_a_wrong_declared_latency_fails(preserve_length, message):
    """Declared latency 0 for a two-step lookahead: the steps disagree, or the length does."""
    layer = lambda mode: WrongLatency(2, preserve_length_in_layer=preserve_length, mode=mode)
    with pytest.raises(AssertionError, match=message):
        test_utils.verify_contract(layer, SIGNATURE)


def test_a_layer_that_does_not_stream_is_refused():
    layer = lambda mode: tl.Fn(
        "Centred", lambda x: x - jnp.mean(x, axis=1, keepdims=True), supports_step=False
    )
    with pytest.raises(AssertionError, match="supports_step is False"):
        test_utils.verify_contract(layer, SIGNATURE)


def test_step_gradients_are_compared():
    class StepScaled(CumSum):
        """Correct values, but the step-wise gradient is cut by stop_gradient."""

        def forward(self, x, weights, state, rng):
            y, new_state = super().forward(x, weights, state, rng)
            if self._mode == "predict":
                y = seq.Sequence(jax.lax.stop_gradient(y.values), y.mask)
            return y, new_state

    with pytest.raises(AssertionError, match="gradients"):
        test_utils.verify_contract(lambda mode: StepScaled(mode=mode), SIGNATURE)


def _ahead(length, mode):
    """A Lookahead that keeps the length layer-wise, so its branch lines up with the others."""
    return delay.Lookahead(length, preserve_length_in_layer=True, mode=mode)


def test_latency_alignment_of_branches_keeps_the_contract():
    model = lambda mode: tl.Serial(tl.Branch(_ahead(1, mode), None, _ahead(3, mode)), tl.Concatenate(3))
    report = test_utils.verify_contract(model, SIGNATURE)
    assert (report.input_latency, report.output_latency) == (3, 3)
    residual = lambda mode: tl.Residual(_ahead(2, mode))
    report = test_utils.verify_contract(residual, SIGNATURE)
    assert (report.input_latency, report.output_latency) == (2, 2)
