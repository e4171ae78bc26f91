"""trax_sl.fastmath: the names Trax code imports from trax.fastmath, with the cases of Trax's own tests."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import fastmath
from trax_sl.fastmath import numpy as fnp


def test_numpy_random_and_ops_are_jax():
    assert fnp is jnp
    key = fastmath.random.get_prng(0)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.PRNGKey(0)))
    first, second = fastmath.random.split(key)
    assert fastmath.random.uniform(first, (3,)).shape == (3,)
    values = fastmath.random.randint(second, (100,), 0, 5)
    assert values.dtype == jnp.int32 and 0 <= values.min() and values.max() < 5
    np.testing.assert_array_equal(fastmath.index_update(jnp.zeros(3), 1, 5.0), [0, 5, 0])
    np.testing.assert_array_equal(fastmath.index_add(jnp.ones(3), 2, 1.0), [1, 1, 2])
    assert float(fastmath.stop_gradient(jnp.float32(2))) == 2
    assert fastmath.abstract_eval(lambda x: x @ x.T)(jax.ShapeDtypeStruct((2, 3), jnp.float32)).shape == (
        2,
        2,
    )
    assert fastmath.backend_name() == "jax" and fastmath.is_backend(fastmath.Backend.JAX)
    with fastmath.use_backend(fastmath.Backend.JAX):
        pass
    refused = pytest.raises(ValueError, match="trax_sl runs on JAX only, got backend 'tensorflow-numpy'")
    with refused, fastmath.use_backend(fastmath.Backend.TFNP):
        pass


def test_nested_map_and_levels():
    assert fastmath.nested_map(lambda x: x + 1, {"a": [1, (2, None)], "b": 3}) == {
        "a": [2, (3, None)],
        "b": 4,
    }
    point = collections.namedtuple("Point", ["x", "y"])
    assert fastmath.nested_map(lambda x: -x, point(1, 2)) == point(-1, -2)
    # Level 1: f gets the containers whose items are leaves.
    assert fastmath.nested_map(sum, [(1, 2), [(3, 4), (5, 6)]], level=1) == [3, [7, 11]]
    assert fastmath.nested_map_multiarg(lambda a, b: a * b, (1, [2]), (3, [4])) == (3, [8])


def test_nested_zip_and_stack():
    assert fastmath.nested_zip([(1, 2), (3, 4)]) == [(1, 3), (2, 4)]  # Tuples zip into a list, as in Trax.
    assert fastmath.nested_zip([{"a": 1, "b": [2]}, {"a": 3, "b": [4]}]) == {"a": (1, 3), "b": [(2, 4)]}
    stacked = fastmath.nested_stack([(np.zeros(2), {"x": np.ones(1)}), (np.ones(2), {"x": np.zeros(1)})])
    np.testing.assert_array_equal(stacked[0], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(stacked[1]["x"], [[1], [0]])


def test_tree_flatten_leaves_and_unflatten():
    tree = ((1, [2, None]), {"a": 3}, ())
    assert fastmath.tree_flatten(tree) == [1, 2, None, 3]
    assert (
        fastmath.tree_leaves(tree) == [1, 2, 3] and fastmath.tree_leaves(tree, ignore_nones=False)[2] is None
    )
    assert fastmath.tree_unflatten([10, 20, 30, 40, 50], tree) == (((10, [20, 30]), {"a": 40}, ()), [50])
    # copy_from_tree: subtrees equal to () take nothing from the flat list (Trax's weights files).
    weights = ((), (np.ones(1), ()), ())
    new, rest = fastmath.tree_unflatten([np.zeros(1)], weights, copy_from_tree=[()])
    assert new[0] == () and new[1][1] == () and rest == []
    np.testing.assert_array_equal(new[1][0], [0])
