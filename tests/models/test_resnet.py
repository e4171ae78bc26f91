"""Resnet50 and WideResnet: Trax's signatures, output shapes (trax/models/resnet_test.py), weights trees, exact values."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.models import resnet
from trax_sl.shapes import ShapeDtype

EPS = 1e-5  # BatchNorm's default epsilon.


def conv(x, w, b, strides=(1, 1), padding="VALID"):
    """A reference NHWC convolution with an HWIO kernel, in numpy; 'SAME' pads as lax (and Trax) do."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (kh, kw), (sh, sw) = w.shape[:2], strides
    pads = [(0, 0)] * 2
    if padding == "SAME":
        totals = [max((-(-n // s) - 1) * s + k - n, 0) for n, k, s in zip(x.shape[1:3], (kh, kw), strides)]
        pads = [(t // 2, t - t // 2) for t in totals]
    x = np.pad(x, [(0, 0), *pads, (0, 0)])
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = sum(
        x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] @ w[i, j]
        for i in range(kh)
        for j in range(kw)
    )
    return y + np.asarray(b)


def eval_batch_norm(x, weights, state):
    """BatchNorm in eval mode: normalized by the running statistics, then scaled and shifted."""
    beta, gamma, mean, var = (np.asarray(a, np.float64) for a in (*weights, *state[:2]))
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def residual_parts(tree):
    """(shortcut, main) of a Residual's weights or state: Trax's Serial(Branch(shortcut, main), Add)."""
    (_, (shortcut, main)), _ = tree  # Branch is Serial(Select, Parallel(shortcut, main)).
    # A shortcut with less latency than main (counting image rows as time) comes wrapped in
    # Serial(shortcut, Delay), a step-only alignment without weights or state: take its leaves.
    return jax.tree.leaves(shortcut), main


def random_init(model, x, seed=0):
    """Random weights and BatchNorm statistics, shaped by the abstract init.

    Initializers compile per shape, slowly on CPU; these tests need none of them.
    """
    rng = np.random.default_rng(seed)
    weights, state = model.weights_and_state_signature(ShapeDtype(x.shape, x.dtype))

    def fill(s, low, high):
        if not jnp.issubdtype(s.dtype, jnp.floating):
            return jnp.zeros(s.shape, s.dtype)
        return jnp.asarray(rng.uniform(low, high, s.shape).astype(np.float32))

    # Running means and variances in [0.5, 1.5): positive variances.
    return jax.tree.map(lambda s: fill(s, -0.5, 0.5), weights), jax.tree.map(
        lambda s: fill(s, 0.5, 1.5), state
    )


def images(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_trax_signatures_and_defaults():
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    empty = inspect.Parameter.empty
    assert defaults(resnet.Resnet50) == {
        "d_hidden": 64,
        "n_output_classes": 1001,
        "mode": "train",
        "norm": tl.BatchNorm,
        "non_linearity": tl.Relu,
    }
    assert defaults(resnet.WideResnet) == {
        "n_blocks": 3,
        "widen_factor": 1,
        "n_output_classes": 10,
        "bn_momentum": 0.9,
        "mode": "train",
    }
    assert defaults(resnet.ConvBlock) == {
        "kernel_size": empty,
        "filters": empty,
        "strides": empty,
        "norm": empty,
        "non_linearity": empty,
        "mode": "train",
    }
    assert defaults(resnet.IdentityBlock) == {
        "kernel_size": empty,
        "filters": empty,
        "norm": empty,
        "non_linearity": empty,
        "mode": "train",
    }
    assert defaults(resnet.WideResnetBlock) == {
        "channels": empty,
        "strides": (1, 1),
        "bn_momentum": 0.9,
        "mode": "train",
    }
    assert defaults(resnet.WideResnetGroup) == {
        "n": empty,
        "channels": empty,
        "strides": (1, 1),
        "bn_momentum": 0.9,
        "mode": "train",
    }


def test_resnet50_output_shape_and_weights():
    # Trax's test_resnet (its shapes), abstractly: 53 convolutions compile slowly on CPU.
    model = resnet.Resnet50(d_hidden=8, n_output_classes=10)
    x = ShapeDtype((3, 256, 256, 3))
    assert model.output_signature(x) == ShapeDtype((3, 10))
    weights, _ = model.weights_and_state_signature(x)
    kernels = [w.shape for w in jax.tree.leaves(weights) if len(w.shape) == 4]
    assert len(kernels) == 1 + 4 * 4 + 12 * 3  # Stem, 4 ConvBlocks (3 + shortcut), 12 IdentityBlocks.
    assert kernels[0] == (7, 7, 3, 8)
    assert kernels[-1] == (1, 1, 64, 256)  # Last stage: filters 8 * (8, 8, 32).
    # AvgPool(7x7) with stride 1 (Trax's default strides): 8x8 -> 2x2 positions of 256 channels.
    assert weights[-1][0].shape == (2 * 2 * 256, 10)


def test_wide_resnet_output_shape_and_train_mode_batch_norm():
    # Trax's test_wide_resnet, plus what mode 'train' does to the BatchNorm statistics.
    model = resnet.WideResnet(n_blocks=1, n_output_classes=10)
    x = np.ones((3, 32, 32, 3), np.float32)
    weights, state = random_init(model, x)
    y, new_state = jax.jit(model.pure_fn)(x, weights, state, None)
    assert y.shape == (3, 10)
    counters = [s for s in jax.tree.leaves(new_state) if s.dtype == jnp.int32]
    assert len(counters) == 3 * 2 + 1 and all(int(c) == 1 for c in counters)  # 3 groups x 2 + the last.
    # The first BatchNorm (of group 1's first block) sees the stem's output: running statistics
    # move towards its batch statistics over (batch, height, width) with bn_momentum 0.9.
    stem = conv(x, *weights[1], padding="SAME")
    (_, main_state), (_, new_main_state) = residual_parts(state[2]), residual_parts(new_state[2])
    mean, var, _ = main_state[0]
    expected_mean = 0.9 * mean + 0.1 * np.mean(stem, axis=(0, 1, 2))
    expected_var = 0.9 * var + 0.1 * np.var(stem, axis=(0, 1, 2))
    np.testing.assert_allclose(new_main_state[0][0], expected_mean, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(new_main_state[0][1], expected_var, atol=1e-4, rtol=1e-4)
    # Mode 'eval' keeps them.
    _, eval_state = jax.jit(model.with_mode("eval").pure_fn)(x, weights, state, None)
    np.testing.assert_array_equal(residual_parts(eval_state[2])[1][0][0], mean)


def test_conv_block_is_a_bottleneck_with_a_projected_shortcut():
    block = tl.Serial(resnet.ConvBlock(3, (2, 3, 4), (2, 2), tl.BatchNorm, tl.Relu, mode="eval"))
    x = images((2, 6, 6, 3))
    weights, state = random_init(block, x, 1)
    (shortcut, main), (shortcut_state, main_state) = residual_parts(weights[0]), residual_parts(state[0])
    c1, n1, _, c2, n2, _, c3, n3 = main
    _, s1, _, _, s2, _, _, s3 = main_state
    h = relu(eval_batch_norm(conv(x, *c1, strides=(2, 2)), n1, s1))
    h = relu(eval_batch_norm(conv(h, *c2, padding="SAME"), n2, s2))
    h = eval_batch_norm(conv(h, *c3), n3, s3)
    s = eval_batch_norm(conv(x, *shortcut[:2], strides=(2, 2)), shortcut[2:], shortcut_state)
    y = block(x, weights=weights, state=state)
    assert y.shape == (2, 3, 3, 4)
    np.testing.assert_allclose(y, relu(h + s), atol=1e-5, rtol=1e-5)


def test_identity_block_adds_its_input():
    block = tl.Serial(resnet.IdentityBlock(3, (2, 3, 4), tl.BatchNorm, tl.Relu, mode="eval"))
    x = images((2, 5, 5, 4))
    weights, state = random_init(block, x, 2)
    (_, main), (_, main_state) = residual_parts(weights[0]), residual_parts(state[0])
    c1, n1, _, c2, n2, _, c3, n3 = main
    _, s1, _, _, s2, _, _, s3 = main_state
    h = relu(eval_batch_norm(conv(x, *c1), n1, s1))
    h = relu(eval_batch_norm(conv(h, *c2, padding="SAME"), n2, s2))
    h = eval_batch_norm(conv(h, *c3), n3, s3)
    np.testing.assert_allclose(block(x, weights=weights, state=state), relu(h + x), atol=1e-5, rtol=1e-5)


def test_blocks_take_other_norms_and_non_linearities():
    # Trax's Resnet50 docstring: FilterResponseNorm with ThresholdedLinearUnit instead of BatchNorm and Relu.
    block = tl.Serial(resnet.ConvBlock(3, (2, 3, 4), (2, 2), tl.FilterResponseNorm, tl.ThresholdedLinearUnit))
    assert block.output_signature(ShapeDtype((2, 6, 6, 3))) == ShapeDtype((2, 3, 3, 4))
    assert "FilterResponseNorm" in str(block) and "BatchNorm" not in str(block)


def test_wide_resnet_group_has_trax_residual_tree():
    # WideResnetGroup(n) is Residual(block, shortcut=conv) and ONE Residual around the other
    # n - 1 blocks; with n=1 (as in Trax's test) that Residual wraps nothing and doubles its input.
    group = tl.Serial(resnet.WideResnetGroup(1, 4, (2, 2), mode="eval"))
    x = images((2, 6, 6, 3))
    weights, state = random_init(group, x, 3)
    (shortcut, block), (_, block_state) = residual_parts(weights[0]), residual_parts(state[0])
    n1, _, c1, n2, _, c2 = block
    s1, _, _, s2, _, _ = block_state
    h = conv(relu(eval_batch_norm(x, n1, s1)), *c1, strides=(2, 2), padding="SAME")
    h = conv(relu(eval_batch_norm(h, n2, s2)), *c2, padding="SAME")
    s = conv(x, *shortcut, strides=(2, 2), padding="SAME")
    np.testing.assert_allclose(group(x, weights=weights, state=state), 2.0 * (h + s), atol=1e-5, rtol=1e-5)
    weights, _ = tl.Serial(resnet.WideResnetGroup(3, 4)).weights_and_state_signature(ShapeDtype((1, 4, 4, 4)))
    # Three blocks of 6 layers: one, then the other two flattened into one Serial (Trax's Residual).
    assert [len(residual_parts(w)[1]) for w in weights] == [6, 12]


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="WideResnet: n_blocks must be an integer >= 1, got n_blocks=0"):
        resnet.WideResnet(n_blocks=0)
    with pytest.raises(ValueError, match="Resnet50: d_hidden must be an integer >= 1"):
        resnet.Resnet50(d_hidden=0)
