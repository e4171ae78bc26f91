"""Sublayers' weights and state are live views of the model's, as in Trax (combinators_test, core_test)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl.shapes import ShapeDtype


def test_a_sublayers_weights_are_its_part_of_the_models_and_assigning_them_changes_the_model():
    # Trax combinators_test.test_assign_sublayer_weights.
    layer = tl.Dense(5, use_bias=False)
    model = tl.Serial(tl.Serial(layer, tl.Dense(6)), tl.Dense(7))
    weights, _ = model.init(ShapeDtype((5,)))
    assert layer.weights is weights[0][0]
    new_layer_weights = jnp.ones((5, 5))
    layer.weights = new_layer_weights
    assert model.weights[0][0] is new_layer_weights
    w6, b6 = model.weights[0][1]
    expected = (np.ones(5) @ np.ones((5, 5))) @ np.asarray(w6) + np.asarray(b6)
    np.testing.assert_allclose(model.sublayers[0](jnp.ones((5,))), expected, rtol=1e-6)  # Runs on its view.


def test_separate_instances_have_separate_weights_and_shared_ones_one():
    # Trax core_test.test_separate_instances_have_separate_weights / test_shared_instance_means_shared_weights.
    model = tl.Serial(tl.Dense(5), tl.Dense(5))
    model.init(ShapeDtype((5,)))
    (w0, b0), (w1, b1) = model.sublayers[0].weights, model.sublayers[1].weights
    assert w0.tolist() != w1.tolist() and b0.tolist() != b1.tolist()
    shared = tl.Dense(5)
    model = tl.Serial(shared, tl.Serial(shared))
    weights, _ = model.init(ShapeDtype((5,)))
    assert shared.weights is weights[0]
    shared.weights = (jnp.zeros((5, 5)), jnp.ones(5))
    np.testing.assert_array_equal(model(jnp.ones((5,))), jnp.ones(5))  # Both uses see the new weights.


def test_cond_weights_follow_their_branches():
    # Trax combinators_test CondTest.test_weights_and_state.
    cond = tl.Fn("SmallerThan3", lambda x: x < 3.0)
    true, false, different = tl.Dense(5), tl.Dense(5), tl.Dense(5)
    different.init(ShapeDtype((3,)))
    layer = tl.Cond(cond, true, false)
    layer.init((ShapeDtype(()), ShapeDtype((3,))))
    assert layer.weights == (cond.weights, true.weights, false.weights)
    false.weights = true.weights
    assert layer.weights[2] is true.weights
    layer.weights = (cond.weights, true.weights, different.weights)
    assert false.weights is different.weights
    assert layer.state == (cond.state, true.state, false.state)


def test_a_combinator_around_initialized_layers_runs_with_their_weights():
    dense = tl.Dense(4)
    dense.init(ShapeDtype((1, 3)))
    x = jnp.arange(6.0).reshape(2, 3)
    np.testing.assert_allclose(tl.Chunk(dense, 1)(x), dense(x), rtol=1e-6)
    model = tl.Serial(dense, tl.Relu())
    assert model.weights == (dense.weights, ())  # Not initialized itself: its sublayers' weights.
    np.testing.assert_allclose(model(x), jax.nn.relu(dense(x)), rtol=1e-6)
    assert model.weights[0] is dense.weights
    with pytest.raises(tl.LayerError, match="needs them before it runs"):
        tl.Serial(dense, tl.Dense(2))(x)  # The second Dense has no weights anywhere.


def test_predict_mode_state_of_a_sublayer_is_its_part_of_the_stream():
    lm = tl.Serial(
        tl.Embedding(10, 4), tl.CausalAttention(4, n_heads=1, max_inference_length=8, mode="predict")
    )
    lm.init(ShapeDtype((1, 1), jnp.int32))
    attention = lm.sublayers[1]
    for token in (3, 5):
        lm(jnp.array([[token]]))
        assert attention.state is lm.state[1]
    assert jax.tree.structure(attention.state) == jax.tree.structure(lm.state[1])


def test_a_mode_twin_reads_its_own_tree():
    d = tl.Dense(3)
    model = tl.Serial(d, tl.Dense(2))
    model.init(ShapeDtype((1, 3)))
    twin = model.with_mode("eval")
    assert twin.sublayers[0].weights is d.weights
    twin.sublayers[0].weights = (jnp.zeros((3, 3)), jnp.zeros(3))
    assert float(jnp.abs(model.weights[0][0]).sum()) > 0  # The original keeps its weights.
    assert float(jnp.abs(twin.weights[0][0]).sum()) == 0
    # A twin of a sublayer is a copy of its part, not a view into the model.
    sub_twin = d.with_mode("eval")
    sub_twin.weights = (jnp.ones((3, 3)), jnp.ones(3))
    assert d.weights[0] is model.weights[0][0] and float(d.weights[0].sum()) != 9.0


def test_replacing_the_model_weights_with_another_tree_detaches_stale_views():
    d = tl.Dense(3)
    model = tl.Serial(d)
    model.init(ShapeDtype((1, 3)))
    model.weights = ()  # No part for d any more.
    assert d.weights == ()
    d.weights = (jnp.ones((3, 3)), jnp.zeros(3))  # d keeps its own from now on.
    assert model.weights == ()
