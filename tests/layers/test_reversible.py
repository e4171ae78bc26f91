"""Reversible layers: exact reversal, gradients equal to plain autodiff, constant memory, streaming."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers import base, test_utils
from trax_sl.layers import reversible as rv
from trax_sl.layers.research import efficient_attention as ea
from trax_sl.shapes import ShapeDtype

RNG = np.random.default_rng(0)
A = RNG.standard_normal((2, 8, 4)).astype(np.float32)
B = RNG.standard_normal((2, 8, 4)).astype(np.float32)
SIG = (ShapeDtype(A.shape), ShapeDtype(B.shape))


def revnet(depth, mode="eval"):
    """`depth` RevNet blocks: (a, b) -> (a + f(b), b) -> swap -> (b + g(a'), a') -> swap."""
    layers = []
    for _ in range(depth):
        layers += [
            rv.ReversibleHalfResidual(tl.Dense(4), tl.Relu()),
            rv.ReversibleSwap(),
            rv.ReversibleHalfResidual(tl.Dense(4), tl.Tanh()),
            rv.ReversibleSwap(),
        ]
    return rv.ReversibleSerial(*layers, mode=mode)


def _loss(layer, state):
    def loss(xs, weights):
        (a, b), _ = layer.pure_fn(xs, weights, state, None)
        return jnp.sum(a * a) + jnp.sum(jnp.sin(b))

    return loss


# --- Stack layers, exact values -------------------------------------------------------


def test_concatenate_pair_select_swap_reshape_and_reverse():
    x, y = jnp.array([[1.0, 2.0]]), jnp.array([[3.0, 4.0]])
    pair = rv.ReversibleConcatenatePair()
    out = pair((x, y))
    np.testing.assert_array_equal(out[0], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(out[1], [[1, 2, 3, 4]])
    np.testing.assert_array_equal(pair.reverse(out)[1], y)

    select = rv.ReversibleSelect([2, 0, 1])
    assert (select.n_in, select.n_out, select.name) == (3, 3, "ReversibleSelect[2,0,1]")
    stacked = select((x, y, x + y))
    np.testing.assert_array_equal(stacked[0], x + y)
    back = select.reverse(stacked)
    np.testing.assert_array_equal(back[1], y)
    swap = rv.ReversibleSwap()
    assert swap.name == "ReversibleSwap"
    np.testing.assert_array_equal(swap.reverse(swap((x, y)))[0], x)

    reshape = rv.ReversibleReshape((2, 8), (16,))
    assert reshape(A).shape == (16, 4) and not reshape.supports_step
    np.testing.assert_array_equal(reshape.reverse(reshape(A)), A)


def test_print_shape_prints_and_is_the_identity(capsys):
    layer = rv.ReversiblePrintShape(n_in=2, msg="here")
    out = layer((A, B))
    jax.effects_barrier()
    assert "PrintShape: here: [f32[2,8,4], f32[2,8,4]]" in capsys.readouterr().out
    np.testing.assert_array_equal(layer.reverse(out)[0], A)


def test_half_residual_adds_f_of_the_context():
    layer = rv.ReversibleHalfResidual(tl.Fn("Double", lambda c: 2.0 * c))
    assert (layer.n_in, layer.n_out) == (2, 2)
    acc, ctx = jnp.array([[1.0, 1.0]]), jnp.array([[3.0, -1.0]])
    weights, state = layer.init((acc, ctx))
    out = layer((acc, ctx))
    np.testing.assert_array_equal(out[0], [[7.0, -1.0]])
    np.testing.assert_array_equal(out[1], ctx)
    np.testing.assert_array_equal(layer.reverse(out, weights, state)[0], acc)
    # A Sequence accumulator keeps its kind; its mask is and-ed with f's.
    seq_out = layer(
        (seq.Sequence.from_lengths(acc[None], jnp.array([1])), seq.Sequence(ctx[None], jnp.array([[False]])))
    )
    assert isinstance(seq_out[0], seq.Sequence) and not bool(seq_out[0].mask[0, 0])


def test_errors():
    with pytest.raises(ValueError, match="indices must name every input 0..2"):
        rv.ReversibleSelect([0, 2])
    with pytest.raises(ValueError, match="sublayer 1 is not a ReversibleLayer: Dense_4"):
        rv.ReversibleSerial(rv.ReversibleSwap(), tl.Dense(4))
    with pytest.raises(NotImplementedError, match="must define reverse"):
        rv.ReversibleLayer().reverse(A)


# --- ReversibleSerial: reversal, gradients, memory ------------------------------------------


def test_reverse_of_forward_is_the_input():
    layer = revnet(2)
    weights, state = layer.init(SIG, rng=jax.random.PRNGKey(1))
    outputs, new_state = layer.pure_fn((A, B), weights, state, None)
    assert not np.allclose(outputs[0], A)
    a, b = layer.reverse(outputs, weights, state, new_state)
    np.testing.assert_allclose(a, A, atol=1e-5)
    np.testing.assert_allclose(b, B, atol=1e-5)


def test_gradients_equal_plain_autodiff():
    layer = revnet(2)
    weights, state = layer.init(SIG, rng=jax.random.PRNGKey(2))
    plain = tl.Serial(*layer.sublayers)
    grad = jax.jit(jax.grad(_loss(layer, state), argnums=(0, 1)))
    reversible_grads = grad((A, B), weights)
    plain_grads = jax.jit(jax.grad(_loss(plain, state), argnums=(0, 1)))((A, B), weights)
    for r, p in zip(jax.tree.leaves(reversible_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(r, p, atol=1e-5, rtol=1e-5)
    # The same through backward(): (input grads, weight grads) from the outputs alone.
    outputs, new_state = layer.pure_fn((A, B), weights, state, None)
    cot = (2 * outputs[0], jnp.cos(outputs[1]))
    x_grad, w_grad = layer.backward(None, outputs, cot, weights, state, new_state, None)
    assert layer.has_backward
    np.testing.assert_allclose(x_grad[1], plain_grads[0][1], atol=1e-5)
    np.testing.assert_allclose(w_grad[2][0][0][0], plain_grads[1][2][0][0][0], atol=1e-5)


def _activation_residuals(fn, *args, capsys):
    """Number of [2, 8, 4] arrays the backward pass keeps, besides the arguments."""
    print_saved_residuals(fn, *args)
    lines = capsys.readouterr().out.splitlines()
    return sum(1 for line in lines if line.startswith("f32[2,8,4]") and "from the argument" not in line)


def test_memory_does_not_grow_with_depth(capsys):
    counts = {}
    for depth in (1, 3):
        layer = revnet(depth)
        weights, state = layer.init(SIG)
        counts["reversible", depth] = _activation_residuals(
            _loss(layer, state), (A, B), weights, capsys=capsys
        )
        plain = tl.Serial(*layer.sublayers)
        counts["plain", depth] = _activation_residuals(_loss(plain, state), (A, B), weights, capsys=capsys)
    # The reversible net keeps its two outputs (and the loss's cos); the plain one every block's activations.
    assert counts["reversible", 1] == counts["reversible", 3] <= 3
    assert counts["plain", 3] > counts["plain", 1] > counts["reversible", 1]


def test_half_residual_with_lsh_attention_recomputes_the_same_buckets():
    """The backward pass rehashes from the same state, so gradients equal autodiff's."""
    attention = ea.LSHSelfAttention(
        n_heads=2, d_qk=2, d_v=2, chunk_len=2, n_buckets=4, n_parallel_heads=None, mode="eval"
    )
    layer = rv.ReversibleSerial(rv.ReversibleHalfResidual(tl.LayerNorm(), attention_layer=attention))
    weights, state = layer.init(SIG)
    plain = tl.Serial(*layer.sublayers)
    reversible_grads = jax.jit(jax.grad(_loss(layer, state), argnums=(0, 1)))((A, B), weights)
    plain_grads = jax.jit(jax.grad(_loss(plain, state), argnums=(0, 1)))((A, B), weights)
    for r, p in zip(jax.tree.leaves(reversible_grads), jax.tree.leaves(plain_grads), strict=True):
        np.testing.assert_allclose(r, p, atol=1e-4, rtol=1e-4)


# --- Streaming -----------------------------------------------------------------------------


def test_contract_with_stream_state():
    """A convolved residual carries a buffer in predict mode; the pair streams as the plain layers would."""

    def build(mode):
        return rv.ReversibleSerial(
            rv.ReversibleHalfResidual(tl.CausalConv(2, kernel_width=2, mode=mode)),
            rv.ReversibleConcatenatePair(),
        )

    report = test_utils.verify_contract(build, (ShapeDtype((2, 4, 2)), ShapeDtype((2, 4, 2))))
    assert (report.block_size, report.input_latency, report.output_latency) == (1, 0, 0)
    # The mode follows the sublayers' when not given.
    assert rv.ReversibleSerial(rv.ReversibleHalfResidual(tl.CausalConv(2, mode="predict"))).mode == "predict"
    # A residual with output latency cannot be added step by step.
    assert not rv.ReversibleHalfResidual(tl.Lookahead(1)).supports_step
    with pytest.raises(base.LayerError, match="does not stream"):
        rv.ReversibleReshape((2, 8), (16,)).with_mode("predict").pure_fn(A, (), (), None)
