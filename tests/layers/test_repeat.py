"""Repeat and CheckpointGradient: one compiled body, the original's numbers, masked input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from tests import jaxprs
from trax_sl import sequence as seq
from trax_sl.layers import test_utils
from trax_sl.shapes import ShapeDtype


def _masked_input():
    x = np.random.default_rng(3).standard_normal((2, 5, 3)).astype(np.float32)
    return seq.Sequence.from_lengths(jnp.asarray(x), jnp.asarray([5, 3])).mask_invalid()


# sequence_layers.jax 0.2: Repeat.Config(BatchNormalization.Config(), num_repeats=3) on
# _masked_input(), training=True (batch statistics over the valid steps), with repeat r's
# scale = 1 + 0.25 * (3r + c) and bias = 0.1 * (3r + c) - 0.3 for channel c; SL's epsilon 0.001.
# Rows are the valid steps.
SL_REPEAT_BATCHNORM_TRAIN = [
    [
        [2.587776, -6.139544, 5.730540],
        [-1.486114, 0.115244, 1.408223],
        [-3.753986, 0.771700, -3.022681],
        [4.589952, 2.133048, 0.473543],
        [-1.038726, -0.525390, -4.318208],
    ],
    [
        [-1.209749, 2.894915, 1.251641],
        [0.896246, 0.867262, 3.044239],
        [1.814600, 3.082766, -0.567298],
    ],
]


def test_repeat_takes_masked_input_and_matches_sequence_layers():
    """A MaskedSequence (x.mask_invalid()) repeats like any Sequence (it was refused: the scan
    carry changed pytree type from MaskedSequence to Sequence)."""
    x = _masked_input()
    layer = tl.Repeat(tl.BatchNorm(axis=(0, 1), epsilon=0.001), n_repeats=3)
    weights, state = layer.init(x)
    bias = 0.1 * np.arange(9, dtype=np.float32).reshape(3, 3) - 0.3
    scale = 1.0 + 0.25 * np.arange(9, dtype=np.float32).reshape(3, 3)
    assert [w.shape for w in weights] == [(3, 3), (3, 3)]  # (bias, scale), stacked per repeat
    y, _ = layer.pure_fn(x, (jnp.asarray(bias), jnp.asarray(scale)), state, None)
    assert isinstance(y, seq.Sequence)
    np.testing.assert_array_equal(np.asarray(y.mask), np.asarray(x.mask))
    for row, rows in enumerate(SL_REPEAT_BATCHNORM_TRAIN):
        np.testing.assert_allclose(np.asarray(y.values[row, : len(rows)]), np.asarray(rows), atol=2e-5)


def test_repeat_keeps_the_contract_on_masked_input():
    test_utils.verify_contract(
        lambda mode: tl.Repeat(tl.Serial(tl.Dense(4), tl.LayerNorm()), n_repeats=3).with_mode(mode),
        seq.Sequence(jnp.zeros((2, 8, 4)), jnp.ones((2, 8), bool)).mask_invalid(),
    )


def test_repeat_names_what_changed():
    x = seq.Sequence(jnp.zeros((2, 4, 3)), jnp.ones((2, 4), bool))
    with pytest.raises(ValueError, match=r"Sequence\(f32\[2,4,3\]\) -> Sequence\(f16\[2,4,3\]\)"):
        tl.Repeat(tl.Fn("Half", lambda v: v.astype(jnp.float16)), 2).init(x)
    with pytest.raises(ValueError, match="the stack items differ"):
        tl.Repeat(tl.combinators.StackOp(lambda v: v.values, name="Values"), 2).init(x)


def checkpoint_policies_in(fn, *args) -> list:
    """The policy of every rematerialised region in the jaxpr of `fn(*args)`, in order."""
    return [
        eqn.params["policy"]
        for eqn in jaxprs.equations(fn, *args)
        if "policy" in eqn.params and "prevent_cse" in eqn.params
    ]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, jax.checkpoint_policies.nothing_saveable),
        ("full", jax.checkpoint_policies.nothing_saveable),
        ("dots_saveable", jax.checkpoint_policies.dots_saveable),
        ("minimal", jax.checkpoint_policies.dots_with_no_batch_dims_saveable),
        (jax.checkpoint_policies.everything_saveable, jax.checkpoint_policies.everything_saveable),
    ],
)
def test_checkpoint_gradient_policies_keep_the_weights_and_gradients_of_the_layer(policy, expected):
    block = tl.Serial(tl.Dense(4), tl.Tanh(), tl.Dense(4))
    wrapped = tl.CheckpointGradient(block, policy=policy)
    x = jnp.arange(8.0).reshape(2, 4) / 8
    weights, state = block.init(ShapeDtype(x.shape))
    wrapped_weights, _ = wrapped.init(ShapeDtype(x.shape))
    assert jax.tree.structure(wrapped_weights) == jax.tree.structure(weights)  # Not nested.

    def loss(layer):
        return lambda w: jnp.sum(layer.pure_fn(x, w, state, None)[0] ** 2)

    expected_grads = jax.tree.leaves(jax.grad(loss(block))(weights))
    for a, b in zip(jax.tree.leaves(jax.grad(loss(wrapped))(weights)), expected_grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert checkpoint_policies_in(jax.grad(loss(wrapped)), weights) == [expected]


def test_checkpoint_gradient_names_the_policies_it_knows():
    with pytest.raises(
        ValueError, match=r"policy must be one of \['dots_saveable', 'full', 'minimal'\].*got 'some'"
    ):
        tl.CheckpointGradient(tl.Relu(), policy="some")


@pytest.mark.parametrize(
    ("remat", "expected"),
    [
        (True, [jax.checkpoint_policies.nothing_saveable]),
        ("minimal", [jax.checkpoint_policies.dots_with_no_batch_dims_saveable]),
        (False, []),
        ("none", []),
    ],
)
def test_repeat_remat_takes_a_policy(remat, expected):
    layer = tl.Repeat(tl.Serial(tl.Dense(4), tl.Tanh()), 3, remat=remat)
    x = jnp.ones((2, 4))
    weights, state = layer.init(ShapeDtype(x.shape))
    grad = jax.grad(lambda w: jnp.sum(layer.pure_fn(x, w, state, None)[0]))
    assert checkpoint_policies_in(grad, weights) == expected
    with pytest.raises(
        ValueError, match=r"Repeat: remat must be one of \['dots_saveable', 'full', 'minimal'\]"
    ):
        tl.Repeat(tl.Relu(), 2, remat="half")


def test_repeat_carries_several_stack_items():
    # A block that carries a second item along (as the Transformer blocks carry masks): (x, y) -> (Dense(x) + y, y).
    block = tl.Serial(tl.Parallel(tl.Dense(3), []), tl.Branch(tl.Add(), tl.Select([1])))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32))
    y = jnp.ones((2, 4, 3))
    repeated = tl.Repeat(block, 3)
    assert (repeated.n_in, repeated.n_out) == (2, 2)
    weights, state = repeated.init((ShapeDtype((2, 4, 3)), ShapeDtype((2, 4, 3))))
    out = repeated((x, y))
    expected = x
    for r in range(3):
        w = jax.tree.map(lambda a, r=r: a[r], weights)
        expected, _ = block.pure_fn((expected, y), w, jax.tree.map(lambda a, r=r: a[r], state), None)[0]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(out[1], y)


def test_repeat_refuses_a_layer_that_changes_the_number_of_items():
    with pytest.raises(ValueError, match=r"n_in = n_out >= 1\), got Dup with n_in=1, n_out=2"):
        tl.Repeat(tl.Dup(), 2)
