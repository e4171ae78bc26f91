"""deconvolution: Trax's ConvTranspose, hand-checked values, no streaming."""

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers.deconvolution import ConvTranspose
from trax_sl.shapes import ShapeDtype, signature


def test_call():
    # Trax: deconvolution_test.ConvTransposeTest.test_call.
    layer = ConvTranspose(30, (3, 3))
    x = np.ones((9, 5, 5, 20))
    layer.init(signature(x))
    y = layer(x)
    assert y.shape == (9, 7, 7, 30)


def test_hand_checked_values():
    # x = [1, 2, 3] along H, kernel [1, 10], stride 2: lax's transposed convolution (Trax's) dilates x to
    # [1, 0, 2, 0, 3], pads k - 1 = 1 each side and correlates: [10, 1, 20, 2, 30, 3]; 'SAME' keeps 3 * 2.
    x = np.array([1.0, 2.0, 3.0], np.float32).reshape((1, 3, 1, 1))
    kernel = np.array([1.0, 10.0], np.float32).reshape((2, 1, 1, 1))
    bias = np.array([0.5], np.float32)
    for padding in ("VALID", "SAME"):
        layer = ConvTranspose(1, (2, 1), strides=(2, 1), padding=padding)
        y, _ = layer.pure_fn(x, (kernel, bias), (), None)
        np.testing.assert_allclose(y.ravel(), [10.5, 1.5, 20.5, 2.5, 30.5, 3.5])


def test_weights_and_shapes():
    layer = ConvTranspose(4, (2, 3), strides=(2, 2), padding="SAME")
    weights, state = layer.init(ShapeDtype((2, 3, 5, 6)))
    assert [w.shape for w in weights] == [(2, 3, 6, 4), (4,)] and state == ()
    assert layer.output_signature(ShapeDtype((2, 3, 5, 6))).shape == (2, 6, 10, 4)
    # rhs_dilation widens the kernel: (2 - 1) * 2 + 1 = 3 along H.
    dilated = ConvTranspose(4, (2, 2), rhs_dilation=(2, 1))
    assert dilated.output_signature(ShapeDtype((1, 3, 3, 2))).shape == (1, 5, 4, 4)


def test_leading_axes_fold_into_the_batch():
    layer = ConvTranspose(2, (2, 2), strides=(2, 2))
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 4, 1)).astype(np.float32)
    weights, state = layer.init(ShapeDtype(x.shape))
    y, _ = layer.pure_fn(x, weights, state, None)
    flat, _ = layer.pure_fn(x.reshape((6, 4, 4, 1)), weights, state, None)
    assert y.shape == (3, 2, 8, 8, 2)
    np.testing.assert_allclose(y.reshape(flat.shape), flat, rtol=1e-6)


def test_kernel_initializer_spellings():
    ones = lambda shape, rng: np.ones(shape, np.float32)
    for layer in (
        ConvTranspose(2, (1, 1), kernel_initialzer=ones),
        ConvTranspose(2, (1, 1), kernel_initializer=ones),
    ):
        weights, _ = layer.init(ShapeDtype((1, 2, 2, 3)))
        np.testing.assert_array_equal(weights[0], np.ones((1, 1, 3, 2)))
    with pytest.raises(ValueError, match="not both"):
        ConvTranspose(2, (1, 1), kernel_initialzer=ones, kernel_initializer=ones)


def test_sequences_and_predict_mode_are_refused():
    layer = ConvTranspose(2, (2, 2))
    with pytest.raises(tl.LayerError, match="takes plain arrays"):
        layer(seq.Sequence(np.ones((1, 3, 3, 1), np.float32), np.ones((1, 3), bool)))
    predict = layer.with_mode("predict")
    assert not predict.supports_step
    with pytest.raises(tl.LayerError, match="does not stream"):
        weights, state = predict.init(ShapeDtype((1, 3, 3, 1)), jax.random.PRNGKey(0))
        predict.pure_fn(np.ones((1, 3, 3, 1), np.float32), weights, state, None)
