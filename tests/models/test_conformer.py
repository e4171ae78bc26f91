"""The notebook's causal Conformer: streaming properties, weights, SequenceLayers' numbers, stepping."""

import fractions

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import models
from trax_sl import sequence as seq
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype

from .golden import fill, get_at, golden_values, residual_inner, set_at, zeros_like_signature


def test_streaming_properties():
    model = models.ConformerEncoder(8, num_blocks=2, max_horizon=4, num_heads=2)
    assert (model.block_size, model.output_ratio, model.input_latency, model.output_latency) == (
        4,
        fractions.Fraction(1, 4),
        0,
        0,
    )
    assert model.supports_step
    subsampling = models.conformer.ConvolutionSubsampling(8)
    assert (subsampling.block_size, subsampling.output_ratio) == (4, fractions.Fraction(1, 4))
    # Behind the notebook's log-mel front end, a Conformer step takes 4 frames.
    front_end = models.LogMelFrontend(frame_length=16, frame_step=4, fft_length=16, num_mel_bins=8)
    speech = tl.Serial(front_end, model)
    assert (speech.block_size, speech.output_ratio) == (16, fractions.Fraction(1, 16))


def test_weights_shapes():
    model = models.ConformerEncoder(8, num_blocks=3, max_horizon=4, num_heads=2)
    weights, state = model.weights_and_state_signature(ShapeDtype((2, 16, 12)))
    subsampling, projection, blocks = weights[0], weights[1], weights[4]
    assert [w.shape for w in subsampling[1]] == [(3, 3, 1, 8), (8,)]
    assert [w.shape for w in subsampling[4]] == [(3, 3, 8, 8), (8,)]
    assert [w.shape for w in projection[1]] == [(3 * 8, 8), (8,)]  # 12 features / 4.
    # Three blocks stacked by Repeat; the attention projects to 2 heads of 4.
    attention = blocks[1][0][1][1][1]
    assert [w.shape for w in attention[0]] == [(3, 8, 2, 4)] * 3
    convolution = blocks[2][0][1][1]
    assert [w.shape for w in convolution[1]] == [(3, 8, 16), (3, 16)]
    assert [w.shape for w in convolution[3]] == [(3, 32, 1, 8), (3, 8)]
    batch_norm_state = state[4][2][0][1][1][4]
    assert [s.shape for s in batch_norm_state] == [(3, 8), (3, 8), (3,)]


def test_bad_arguments():
    with pytest.raises(
        ValueError, match="ConformerEncoder: hidden_size must be a multiple of num_heads, got hidden_size=10"
    ):
        models.ConformerEncoder(10, num_blocks=1, max_horizon=4)
    with pytest.raises(
        ValueError, match="ConformerEncoder: num_blocks must be an integer >= 1, got num_blocks=0"
    ):
        models.ConformerEncoder(8, num_blocks=0, max_horizon=4)


# Made by SequenceLayers 0.2 running the notebook's ConformerEncoder (hidden 4, 1 block,
# max_horizon 2, num_heads 2), eval mode, with the weights of `golden_values(CONFORMER_KEYS)`
# (and the Repeat axis added) on `4 * fill((2, 16, 8), 200)` with lengths [16, 11].
CONFORMER_KEYS = (
    [
        ("sub_conv1_k", (3, 3, 1, 4)),
        ("sub_conv1_b", (4,)),
        ("sub_gn1_s", (4,)),
        ("sub_gn1_b", (4,)),
        ("sub_conv2_k", (3, 3, 4, 4)),
        ("sub_conv2_b", (4,)),
        ("sub_gn2_s", (4,)),
        ("sub_gn2_b", (4,)),
        ("proj_k", (2, 4, 4)),
        ("proj_b", (4,)),
    ]
    + [
        (f"{ff}_{n}", s)
        for ff in ("ffs", "ffe")
        for n, s in (
            ("ln_s", (4,)),
            ("ln_b", (4,)),
            ("d1_k", (4, 16)),
            ("d1_b", (16,)),
            ("d2_k", (16, 4)),
            ("d2_b", (4,)),
        )
    ]
    + [
        ("mhsa_ln_s", (4,)),
        ("mhsa_ln_b", (4,)),
        ("mhsa_qkv", (4, 3, 2, 2)),
        ("mhsa_out_k", (2, 2, 4)),
        ("mhsa_out_b", (4,)),
        ("conv_ln_s", (4,)),
        ("conv_ln_b", (4,)),
        ("conv_d1_k", (4, 8)),
        ("conv_d1_b", (8,)),
        ("conv_dw_k", (32, 1, 4)),
        ("conv_dw_b", (4,)),
        ("conv_bn_s", (4,)),
        ("conv_bn_b", (4,)),
        ("conv_bn_mean", (4,)),
        ("conv_bn_var", (4,)),
        ("conv_d2_k", (4, 4)),
        ("conv_d2_b", (4,)),
        ("ln_s", (4,)),
        ("ln_b", (4,)),
    ]
)
CONFORMER_GOLDEN = np.array(
    [
        [
            [-1.0299681, -1.1926117, 2.0755703, 0.52503544],
            [1.7366217, -2.141537, -0.14464323, 0.92837244],
            [0.17087929, -0.88362277, -1.0997294, 2.0982616],
            [-0.41668966, -0.024759052, -1.3401762, 2.0839593],
        ],
        [
            [0.4900384, -0.5920482, 2.3239758, -1.6069835],
            [2.6032429, -1.7017101, -0.3400742, -0.06301673],
            [2.601677, 0.104171515, -1.8447949, -0.281873],
            [2.6480825, 0.18097952, -1.7667755, -0.46401495],
        ],
    ],
    np.float32,
)


def golden_conformer_weights_and_state(model, signature):
    # Every weight and the batch norm statistics are set below: no initialization needed.
    weights, state = zeros_like_signature(model.weights_and_state_signature(signature))
    p = golden_values(CONFORMER_KEYS)

    def r(name):  # The Repeat axis (one block).
        return jnp.asarray(p[name])[None]

    for path, value in (
        ((0, 1), (p["sub_conv1_k"], p["sub_conv1_b"])),
        ((0, 2), (p["sub_gn1_s"], p["sub_gn1_b"])),
        ((0, 4), (p["sub_conv2_k"], p["sub_conv2_b"])),
        ((0, 5), (p["sub_gn2_s"], p["sub_gn2_b"])),
        ((1, 1), (p["proj_k"].reshape((8, 4)), p["proj_b"])),
        ((4, 4), (r("ln_s"), r("ln_b"))),
    ):
        weights = set_at(weights, path, tuple(jnp.asarray(v) for v in value))
    for index, ff in ((0, "ffs"), (3, "ffe")):
        inner = residual_inner((4, index))
        weights = set_at(weights, (*inner, 0), (r(f"{ff}_ln_s"), r(f"{ff}_ln_b")))
        weights = set_at(weights, (*inner, 1), (r(f"{ff}_d1_k"), r(f"{ff}_d1_b")))
        weights = set_at(weights, (*inner, 4), (r(f"{ff}_d2_k"), r(f"{ff}_d2_b")))
    mhsa = residual_inner((4, 1))
    qkv = p["mhsa_qkv"]
    weights = set_at(weights, (*mhsa, 0), (r("mhsa_ln_s"), r("mhsa_ln_b")))
    weights = set_at(weights, (*mhsa, 1, 0), tuple(jnp.asarray(qkv[:, i])[None] for i in range(3)))
    weights = set_at(weights, (*mhsa, 2, 1), (r("mhsa_out_k").reshape((1, 4, 4)), r("mhsa_out_b")))
    conv = residual_inner((4, 2))
    weights = set_at(weights, (*conv, 0), (r("conv_ln_s"), r("conv_ln_b")))
    weights = set_at(weights, (*conv, 1), (r("conv_d1_k"), r("conv_d1_b")))
    weights = set_at(weights, (*conv, 3), (r("conv_dw_k"), r("conv_dw_b")))
    weights = set_at(weights, (*conv, 4), (r("conv_bn_b"), r("conv_bn_s")))  # (beta, gamma).
    weights = set_at(weights, (*conv, 6), (r("conv_d2_k"), r("conv_d2_b")))
    bn_state = (r("conv_bn_mean"), r("conv_bn_var"), jnp.ones((1,), jnp.int32))
    state = set_at(state, (*conv, 4), bn_state)
    return weights, state


def test_sequence_layers_golden_numbers():
    model = models.ConformerEncoder(4, num_blocks=1, max_horizon=2, num_heads=2, mode="eval")
    x = seq.Sequence.from_lengths(jnp.asarray(4.0 * fill((2, 16, 8), 200)), [16, 11])
    weights, state = golden_conformer_weights_and_state(model, x)
    y = jax.jit(model.pure_fn)(x, weights, state, None)[0]
    np.testing.assert_array_equal(y.mask, [[True] * 4, [True] * 3 + [False]])
    valid = np.asarray(y.mask)[:, :, None]
    np.testing.assert_allclose(np.where(valid, y.values, 0), np.where(valid, CONFORMER_GOLDEN, 0), atol=2e-5)


def test_notebook_example_steps_four_frames_at_a_time():
    """The notebook's check: stepping 4 input frames at a time gives the layer-wise output.

    The notebook's sizes (hidden 1024, 8 blocks, max_horizon 128, 128 features)
    made small; num_heads 8 and the kernel of 32 as there. The stream starts
    from a trained state (batch norm statistics after a training step).
    """
    model = models.ConformerEncoder(16, num_blocks=2, max_horizon=4, dropout_rate=0.1, mode="train")
    rng = np.random.default_rng(0)
    x = seq.Sequence.from_lengths(jnp.asarray(rng.standard_normal((2, 32, 16)).astype(np.float32)), [32, 27])
    signature = tl.base.as_signature(x)
    weights, state = jax.jit(lambda rng: model.init_tree(signature, rng)[:2])(jax.random.PRNGKey(0))
    _, trained_state = jax.jit(model.pure_fn)(x, weights, state, jax.random.PRNGKey(1))
    eval_model = model.with_mode("eval")
    y = jax.jit(eval_model.pure_fn)(x, weights, trained_state, None)[0]
    assert y.shape == (2, 8, 16)

    # The trained batch norm statistics carry into the stream (each block's, out of the Repeat's stack).
    predict, stream_state = tl.start_stream(model, x[:, :4], weights, trained_state)
    batch_norm = (4, *residual_inner((2,)), 4)
    for block in range(2):
        np.testing.assert_array_equal(
            get_at(stream_state, (4, block, *residual_inner((2,)), 4))[0],
            get_at(trained_state, batch_norm)[0][block],
        )
    step = jax.jit(lambda block, s: predict.pure_fn(block, weights, s, None))
    outputs = []
    for i in range(8):
        y_i, stream_state = step(x[:, i * 4 : (i + 1) * 4], stream_state)
        outputs.append(y_i)
    y_step = seq.Sequence.concatenate_sequences(outputs)
    np.testing.assert_array_equal(y_step.mask, y.mask)
    valid = np.asarray(y.mask)[:, :, None]
    np.testing.assert_allclose(
        np.where(valid, y_step.values, 0), np.where(valid, y.values, 0), atol=1e-4, rtol=1e-4
    )
    # The statistics are the trained ones, not the fresh ones.
    assert not np.allclose(get_at(trained_state, batch_norm)[0], 0.0)


def test_contract():
    test_utils.verify_contract(
        lambda mode: models.ConformerEncoder(
            8, num_blocks=1, max_horizon=4, num_heads=2, mode=mode, conv_kernel_size=3
        ),
        ShapeDtype((2, 16, 8)),
        # Every layer's gradients are checked in tests/layers; the step loop's backward pass
        # through the whole Conformer takes XLA most of a minute to compile on CPU.
        check_gradients=False,
    )


@pytest.mark.parametrize("remat", ["full", "dots_saveable", "minimal"])
def test_remat_keeps_the_weights_and_gradients_and_rematerialises_the_blocks(remat):
    from tests.layers.test_repeat import checkpoint_policies_in

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 12))
    plain = models.ConformerEncoder(
        8, num_blocks=2, max_horizon=4, num_heads=2, dropout_rate=0.0, mode="eval"
    )
    rematerialised = models.ConformerEncoder(
        8, num_blocks=2, max_horizon=4, num_heads=2, dropout_rate=0.0, mode="eval", remat=remat
    )
    weights, state = plain.init(ShapeDtype(x.shape))
    assert jax.tree.structure(rematerialised.init(ShapeDtype(x.shape))[0]) == jax.tree.structure(weights)

    def grad(model):
        return jax.grad(lambda w: jnp.sum(jnp.tanh(model.pure_fn(x, w, state, None)[0])))

    for a, b in zip(
        jax.tree.leaves(grad(rematerialised)(weights)), jax.tree.leaves(grad(plain)(weights)), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert checkpoint_policies_in(grad(rematerialised), weights) == [tl.repeat.REMAT_POLICIES[remat]]
    assert checkpoint_policies_in(grad(plain), weights) == []
