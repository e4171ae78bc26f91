"""research.sparsity, the Dense replacements: permutations, modular, factored and convolutional dense layers.

Mirrors Trax's trax/layers/research/sparsity_test.py (ReversibleReshapePermuteTest,
ReversibleRandomPermuteTest, LocallyConnectedDenseTest, SparseDenseWithOptionsTest) and checks
each layer's values against numpy, and the streaming of the convolutional one.
"""

import jax
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers import contract
from trax_sl.layers.research import sparse_dense as sd
from trax_sl.layers.research import sparsity
from trax_sl.shapes import ShapeDtype, signature

RNG = np.random.default_rng(0)


def inner(weights):
    """The weights (as numpy) of the layer an `assert_shape` function wrapped: AssertFunction's are `((), layer's, ())`."""
    assert len(weights) == 3 and weights[0] == () and weights[2] == ()
    return jax.tree.map(np.asarray, weights[1])


def test_sparsity_module_exports_every_public_name():
    for name in sd.__all__:
        assert getattr(sparsity, name) is getattr(sd, name)


# --- Reversible permutations ----------------------------------------------------------------


def test_reversible_reshape_permute():
    # Trax's ReversibleReshapePermuteTest.test_reversible_permute.
    layer = sparsity.ReversibleReshapePermute()
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7]])
    layer.init(signature(x))
    ys = layer(x)
    assert tl.to_list(ys) == [[1, 3, 5, 7, 2, 4, 6, 8], [0, 2, 4, 6, 1, 3, 5, 7]]
    assert tl.to_list(layer.reverse(ys, weights=layer.weights)) == tl.to_list(x)


def test_reversible_reshape_permute_multiplier_and_errors():
    # 32 = 2**5: the largest i <= 5 // 2 not dividing 5 is 2, so [.., 8, 4] is transposed.
    x = np.arange(32)
    y = np.asarray(sd.ReversibleReshapePermute()(x))
    np.testing.assert_array_equal(y, x.reshape((8, 4)).T.reshape(-1))
    # 16 = 2**4: 2 divides 4, 1 divides too, so the fallback 2**1.
    np.testing.assert_array_equal(
        sd.ReversibleReshapePermute()(np.arange(16)), np.arange(16).reshape((8, 2)).T.ravel()
    )
    with pytest.raises(tl.LayerError, match="power-of-2"):
        sd.ReversibleReshapePermute()(np.zeros((2, 6)))


def test_reversible_random_permute():
    # Trax's ReversibleRandomPermuteTest.test_reversible_permute.
    layer = sparsity.ReversibleRandomPermute()
    x = np.array(
        [
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
            [0, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13],
            [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13],
        ]
    )
    layer.init(signature(x))
    ys = layer(x)
    assert tl.to_list(ys) != tl.to_list(x)
    assert tl.to_list(ys[0]) == tl.to_list(ys[2])
    assert tl.to_list(ys[0]) != tl.to_list(ys[1])
    assert tl.to_list(layer.reverse(ys, weights=layer.weights)) == tl.to_list(x)
    # Trax's permutation: random.Random(42).shuffle(range(14)).
    assert tl.to_list(ys[0]) == [8, 12, 7, 6, 13, 11, 5, 2, 9, 3, 4, 0, 1, 10]


def test_reverse_of_a_sequence_keeps_its_mask():
    x = seq.Sequence(np.arange(16.0).reshape((1, 2, 8)), np.array([[True, False]]))
    for layer in (sd.ReversibleReshapePermute(), sd.ReversibleRandomPermute()):
        y = layer(x)
        back = layer.reverse(y)
        np.testing.assert_array_equal(back.mask, x.mask)
        np.testing.assert_array_equal(back.values[:, 0], x.values[:, 0])


# --- Modular dense layers -----------------------------------------------------------------


def test_split_and_merge_last_axes():
    x = np.arange(24.0).reshape((2, 3, 4))
    y = sd.SplitLastAxis(2)(x)
    np.testing.assert_array_equal(y, x.reshape((2, 3, 2, 2)))
    np.testing.assert_array_equal(sd.MergeLastTwoAxes()(y), x)


def test_locally_connected_dense_simple_call():
    # Trax's LocallyConnectedDenseTest.test_simple_call.
    layer = sparsity.LocallyConnectedDense(2, 8)
    x = np.array([[2, 5, 3, 4], [0, 1, 2, 3]])
    layer.init(signature(x))
    assert layer(x).shape == (2, 16)


def test_locally_connected_dense_against_numpy():
    # 3 modules of 2, kernel 3 with circular padding: module j sees modules j-1, j, j+1 (mod 3).
    layer = sd.LocallyConnectedDense(3, 2, kernel_size=3)
    x = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    weights, _ = layer.init(signature(x))
    w, b = inner(weights)[1]  # [modules, kernel, d_module, units], [modules, units]
    modules = x.reshape((2, 5, 3, 2))
    expected = np.stack(
        [sum(modules[:, :, (j + k - 1) % 3] @ w[j, k] for k in range(3)) + b[j] for j in range(3)], axis=2
    )
    np.testing.assert_allclose(layer(x), expected.reshape((2, 5, 6)), rtol=1e-5, atol=1e-5)
    assert repr(sd.LocallyConnectedDense(1, 4)).split() == ["AssertFunction[", "Dense_4", "]"]


def _numpy_locally_conv(x, w, b, n_modules, length_kernel_size, kernel_size):
    """Conv over (time, modules): causal in time, zero-padded by half the kernel on each side over modules."""
    batch, time, d = x.shape
    m = x.reshape((batch, time, n_modules, d // n_modules))
    half = (kernel_size - 1) // 2
    m = np.pad(m, [(0, 0), (length_kernel_size - 1, 0), (half, half), (0, 0)])
    out = np.zeros((batch, time, n_modules, w.shape[-1]), np.float32)
    for t in range(time):
        for j in range(n_modules):
            for dt in range(length_kernel_size):
                for dk in range(kernel_size):
                    out[:, t, j] += m[:, t + dt, j + dk] @ w[dt, dk]
    return (out + b).reshape((batch, time, -1))


def test_locally_conv_dense_against_numpy():
    layer = sd.LocallyConvDense(3, 2, mode="eval", kernel_size=3, length_kernel_size=2)
    x = RNG.standard_normal((2, 5, 6)).astype(np.float32)
    weights, _ = layer.init(signature(x))
    w, b = inner(weights)[1]  # Conv's [time kernel, module kernel, d_module, units] and [units].
    assert w.shape == (2, 3, 2, 2) and b.shape == (2,)
    expected = _numpy_locally_conv(x, np.asarray(w), np.asarray(b), 3, 2, 3)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        sd.LocallyConvDense(2, 2, mode="eval", kernel_size=2)


def test_locally_conv_dense_streams():
    layer_fn = lambda mode: sd.LocallyConvDense(2, 3, mode=mode, kernel_size=3, length_kernel_size=3)
    assert layer_fn("predict").supports_step
    contract.verify_contract(layer_fn, ShapeDtype((2, 6, 4)), chunkings=[[1], [2, 3]], check_gradients=False)


def test_low_rank_and_einsum_dense_against_numpy():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    layer = sd.LowRankDense(5, 2)
    (w1, b1), (w2, b2) = inner(layer.init(signature(x))[0])
    np.testing.assert_allclose(layer(x), (x @ w1 + b1) @ w2 + b2, rtol=1e-5, atol=1e-5)
    layer = sd.EinsumDense(4, 5, use_bias=True)
    kernel, _, bias, _ = inner(layer.init(signature(x))[0])
    assert kernel.shape == (5, 4)  # Trax's layout: [d_output, d_input].
    np.testing.assert_allclose(layer(x), x @ np.asarray(kernel).T + bias, rtol=1e-5, atol=1e-5)


def test_factored_dense_against_numpy():
    layer = sd.FactoredDense(2, 4, 6)
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    gating, projection, _, _, bias, _ = inner(layer.init(signature(x))[0])
    assert (gating.shape, projection.shape, bias.shape) == ((2, 4), (4, 3), (6,))
    # Module n: (x * gating[n]) @ projection, then the bias over all 6 outputs.
    expected = np.concatenate([(x * gating[n]) @ projection for n in range(2)], axis=-1) + bias
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)
    no_bias = sd.FactoredDense(2, 4, 6, use_bias=False, use_bfloat16=True)
    weights = inner(no_bias.init(signature(x))[0])
    assert len(weights) == 4 and weights[0].dtype == np.dtype("bfloat16")
    with pytest.raises(ValueError, match="multiple of n_modules"):
        sd.FactoredDense(4, 4, 6)


def test_gate_and_project_takes_projection_gating_then_x():
    projection = np.array([[1.0], [2.0]])  # [d_in=2, d_module=1]
    gating = np.array([[1.0, 0.0], [0.0, 3.0]])  # [n_modules=2, d_in=2]
    x = np.array([[5.0, 7.0]])
    # Module 0: 5 * 1 * 1 = 5; module 1: 7 * 3 * 2 = 42.
    np.testing.assert_allclose(sd._GateAndProject()((projection, gating, x)), [[[5.0], [42.0]]])


def test_multiplicative_modular_sparse_dense_against_numpy():
    layer = sd.MultiplicativeModularSparseDense(2, 4)
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    multiplier, kernel, modular, _, _, bias, _ = inner(layer.init(signature(x))[0])
    assert (multiplier.shape, kernel.shape, modular.shape) == ((2, 4), (4, 2), (2, 2, 2))
    expected = np.concatenate([((x * multiplier[h]) @ kernel) @ modular[h] for h in range(2)], axis=-1) + bias
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-5)


# --- SparseDenseWithOptions and RandomLayer -------------------------------------------------


def test_sparse_dense_with_options_simple_call():
    # Trax's SparseDenseWithOptionsTest.test_simple_call.
    d_input, d_output = 16, 32
    settings = [
        (None, 0, 0, False),
        (None, 0, 0, True),
        ("einsum", 0, 0, False),
        ("lowrank", 0, 8, False),
        ("mult", 2, 0, False),
        ("mult", 2, 0, True),
        ("local", 2, 0, False),
        ("local3", 2, 0, False),
    ]
    for stype, sparsity_level, d_lowrank, use_bfloat16 in settings:
        layer = sparsity.SparseDenseWithOptions(
            d_output,
            d_input=d_input,
            sparsity_type=stype,
            sparsity=sparsity_level,
            d_lowrank=d_lowrank,
            use_bfloat16=use_bfloat16,
        )
        x = np.ones((1, 1, d_input))
        layer.init(signature(x))
        assert layer(x).shape == (1, 1, d_output), (stype, sparsity_level, d_lowrank, use_bfloat16)


def test_sparse_dense_with_options_picks_trax_layers():
    def built(**options):
        return repr(sd.SparseDenseWithOptions(8, d_input=4, sparsity=2, d_lowrank=3, **options))

    assert "Dense_8" in built() and "Weights" not in built()
    assert "_GateAndProject" in built(sparsity_type="mult")
    assert "Dense_3" in built(sparsity_type="lowrank")
    assert "EinsumDense" in built(sparsity_type="einsum")
    assert "LocallyConnected1d_4_1" in built(sparsity_type="local")
    assert "LocallyConnected1d_4_3" in built(sparsity_type="local3")
    with pytest.raises(ValueError, match="unknown sparsity_type 'dense'"):
        built(sparsity_type="dense")
    with pytest.raises(ValueError, match="use_bfloat16"):
        built(sparsity_type="lowrank", use_bfloat16=True)
    with pytest.raises(ValueError, match="use_bias=False"):
        built(sparsity_type="local", use_bias=False)
    with pytest.raises(ValueError, match="multiple of sparsity"):
        sd.SparseDenseWithOptions(7, d_input=4, sparsity_type="local", sparsity=2)


def test_random_layer_and_sparse_dense_with_prob_sparse():
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    train = sd.SparseDenseWithOptions(
        6, d_input=4, sparsity_type="mult", sparsity=2, prob_sparse=0.5, mode="train"
    )
    weights, state = train.init(signature(x))
    factored, dense = train.sublayers[1].sublayers[1:]  # AssertFunction > Cond(cond, sparse, dense)
    cond_weights, cond_state = weights[1], state[1]
    sparse_y = factored.pure_fn(x, cond_weights[1], cond_state[1], None)[0]
    dense_y = dense.pure_fn(x, cond_weights[2], cond_state[2], None)[0]
    # In 'train' mode each call draws a branch; in other modes the sparse one always runs, and streams.
    drawn = {bool(np.allclose(train(x, rng=jax.random.PRNGKey(i)), sparse_y)) for i in range(16)}
    assert drawn == {True, False}
    assert not train.supports_step
    evaluated = sd.SparseDenseWithOptions(
        6, d_input=4, sparsity_type="mult", sparsity=2, prob_sparse=0.5, mode="eval"
    )
    np.testing.assert_allclose(evaluated.pure_fn(x, weights, state, None)[0], sparse_y, rtol=1e-6)
    assert evaluated.supports_step
    always_b = sd.RandomLayer(factored, dense, 0.0)
    np.testing.assert_allclose(always_b.pure_fn(x, cond_weights, cond_state, None)[0], dense_y, rtol=1e-6)
