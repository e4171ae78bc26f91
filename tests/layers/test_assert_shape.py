"""AssertShape, AssertFunction and assert_shape: the cases of Trax's assert_shape_test.py, and streaming."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import sequence as seq
from trax_sl.layers import test_utils
from trax_sl.layers.assert_shape import assert_shape
from trax_sl.shapes import ShapeDtype


def arrays(*shapes):
    """Distinct values per item, so that a pass-through that swapped or changed items would show."""
    return [np.arange(np.prod(s), dtype=np.float32).reshape(s) + 100 * i for i, s in enumerate(shapes)]


# --- AssertShape (Trax's AssertShapeTest) ----------------------------------------------

# (Trax's test name, spec, input shapes)
SHAPE_PASSES = [
    ("simple", "aba,ba", [(10, 5, 10), (5, 10)]),
    ("same_shapes", "aba,ba", [(5, 5, 5), (5, 5)]),
    ("single_arg", "a", [(5,)]),
    ("scalar", "", [()]),
    ("square_matrix", "aa", [(3, 3)]),
    ("vector_scalar", "a,", [(5,), ()]),
    ("three_args", "a,b,a", [(5,), (2,), (5,)]),
    ("multiple_matching_dims", "a,b,a,ab", [(5,), (2,), (5,), (5, 2)]),
    ("numeric_dims", "23,1,93", [(2, 3), (1,), (9, 3)]),
    ("ellipsis_middle", "a...bc,abc", [(1, 5, 5, 2, 3), (1, 2, 3)]),
    ("ellipsis_prefix", "...bc,abc", [(5, 5, 2, 3), (1, 2, 3)]),
    ("ellipsis_matching_zero_dims", "...bc,abc", [(2, 3), (1, 2, 3)]),
    ("ellipsis_matching_ellipsis", "...bc,...bc", [(1, 2, 3), (1, 2, 3)]),
    ("prefix_ellipsis_matching_sufix_ellipsis", "bb...,...bb", [(2, 2, 5, 6), (5, 6, 2, 2)]),
    ("ellipsis_numeric", "...22,...3", [(1, 2, 3, 2, 2), (1, 2, 3, 3)]),
]

SHAPE_FAILS = [
    ("numeric_dims", "24,1,93", [(2, 3), (1,), (9, 3)]),
    ("middle_ellipsis", "ab...cde,2", [(2, 3, 4, 5), (2,)]),
    ("short_middle_ellipsis", "b...c,2", [(2,), (2,)]),
    ("double_ellipsis", "b......c,2", [(2, 3, 4, 5), (2,)]),
    ("typo_ellipsis", "b..c,2", [(2, 3, 4, 5), (2,)]),
    ("ellipsis_matching_ellipsis", "...a,...b", [(1, 2, 3, 7), (1, 2, 8)]),
    ("prefix_and_sufix_ellipsis", "...c...,2", [(2, 3, 4, 5), (2,)]),
    ("ellipsis_too_few_dims", "...abc,2", [(4, 5), (2,)]),
    ("ellipses_matching_dims", "...2,...8", [(1, 2, 3, 9), (1, 3, 3, 8)]),
    ("dims_matching", "aba,ab", [(10, 5, 10), (5, 8)]),
    ("rank", "aba,ab", [(10, 5, 10), (5, 10, 4)]),
    ("square_matrix", "aa", [(10, 5)]),
]


@pytest.mark.parametrize(("case", "spec", "shapes"), SHAPE_PASSES, ids=[c[0] for c in SHAPE_PASSES])
def test_assert_shape_passes_inputs_through(case, spec, shapes):
    layer = tl.AssertShape(spec)
    assert layer.n_in == layer.n_out == len(shapes)
    xs = arrays(*shapes)
    ys = layer(xs[0] if len(xs) == 1 else tuple(xs))
    ys = [ys] if len(xs) == 1 else list(ys)
    assert len(ys) == len(xs)
    for y, x in zip(ys, xs):
        np.testing.assert_array_equal(y, x)
        assert y.shape == x.shape


@pytest.mark.parametrize(("case", "spec", "shapes"), SHAPE_FAILS, ids=[c[0] for c in SHAPE_FAILS])
def test_assert_shape_raises_on_a_mismatch(case, spec, shapes):
    layer = tl.AssertShape(spec)  # As in Trax, even a malformed '...' raises only when the layer runs.
    xs = arrays(*shapes)
    with pytest.raises(tl.LayerError):
        layer(xs[0] if len(xs) == 1 else tuple(xs))


@pytest.mark.parametrize(
    ("spec", "shapes", "reason"),
    [
        ("aba,ab", [(10, 5, 10), (5, 8)], "input 1 has size 5 on axis 0 where 'a' is 10"),
        ("23,1,94", [(2, 3), (1,), (9, 3)], "input 2 has size 3 on axis 1 where the spec fixes 4"),
        ("...abc,2", [(4, 5), (2,)], "input 0 has rank 2 where the spec asks for at least 3"),
        ("...a,...b", [(1, 2, 3, 7), (1, 2, 8)], r"input 1: '\.\.\.' covers sizes \(1, 2\) where an earlier"),
        ("b..c,2", [(2, 3, 4, 5), (2,)], r"spec 'b\.\.c,2': input 0: its spec has 2 ellipses"),
    ],
)
def test_assert_shape_error_says_which_item_and_axis(spec, shapes, reason):
    with pytest.raises(tl.LayerError, match=reason) as error:
        tl.AssertShape(spec, message="in my block")(tuple(arrays(*shapes)))
    assert isinstance(error.value.__cause__, ValueError)
    assert "in my block" in str(error.value)


def test_assert_shape_constructor_refuses_unknown_characters():
    with pytest.raises(ValueError, match=r"got \['-', '>'\]"):
        tl.AssertShape("ab->ab")
    with pytest.raises(TypeError, match="must be a string"):
        tl.AssertShape(3)


def test_assert_shape_checks_sequence_values_and_passes_the_sequence_through():
    x = seq.Sequence.from_lengths(jnp.ones((2, 5, 3)), jnp.array([5, 2]))
    y = tl.AssertShape("bt3")(x)
    assert isinstance(y, seq.Sequence)
    np.testing.assert_array_equal(y.values, x.values)
    np.testing.assert_array_equal(y.mask, x.mask)
    with pytest.raises(tl.LayerError, match="where the spec fixes 4"):
        tl.AssertShape("bt4")(x)


def test_assert_shape_checks_at_trace_time_and_compiles_to_nothing():
    layer = tl.AssertShape("ab,b")
    x = (jnp.ones((2, 3)), jnp.ones((3,)))
    jaxpr = jax.make_jaxpr(lambda x: layer.pure_fn(x, (), (), None)[0])(x)
    assert not jaxpr.eqns  # The outputs are the inputs: no operation at run time.
    with pytest.raises(tl.LayerError):
        jax.jit(lambda x: layer.pure_fn(x, (), (), None))((jnp.ones((2, 3)), jnp.ones((2,))))


def test_letters_bind_per_call_not_across_calls():
    # Trax clears its sizes at each call; ours never keep any, so one layer takes new sizes each call.
    layer = tl.AssertFunction("ab->ab", tl.Relu())
    assert layer(jnp.ones((2, 3))).shape == (2, 3)
    assert layer(jnp.ones((4, 5))).shape == (4, 5)


# --- AssertFunction (Trax's AssertFunctionTest) ----------------------------------------

# (Trax's test name, specification, layer, input shape)
FUNCTION_PASSES = [
    ("simple", "abc->abc", lambda: tl.Dropout(rate=0.1), (2, 5, 20)),
    ("reduce_rank_ellipsis", "...ab->...c", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
    ("reduce_rank_explicit", "xyzab->xyzc", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
    ("reduce_rank_to_one", "abcde->x", lambda: tl.Flatten(n_axes_to_keep=0), (1, 2, 3, 4, 5)),
    (
        "two_outputs",
        "...cd->...x,...cd",
        lambda: tl.Branch(tl.Flatten(n_axes_to_keep=2), tl.Dropout(rate=0.1)),
        (1, 2, 3, 4),
    ),
    (
        "numeric_dimensions",
        "...34->1234,...34",
        lambda: tl.Branch(tl.Dropout(rate=0.1), tl.Serial()),
        (1, 2, 3, 4),
    ),
]

FUNCTION_FAILS = [
    ("simple", "abc->cba", lambda: tl.Dropout(rate=0.1), (2, 5, 20)),
    ("reduce_rank_explicit1", "abcde->abcde", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
    ("reduce_rank_explicit2", "abcde->abcd", lambda: tl.Flatten(n_axes_to_keep=3), (1, 2, 3, 4, 5)),
    (
        "too_many_outputs",
        "...cd->...x,...cd,...cd,...cd",
        lambda: tl.Branch(tl.Flatten(n_axes_to_keep=2), tl.Dropout(rate=0.1), tl.Serial()),
        (1, 2, 3, 4),
    ),
    (
        "multi_output_rank",
        "...34->...x,...y",
        lambda: tl.Branch(tl.Flatten(n_axes_to_keep=3), tl.Serial()),
        (1, 2, 3, 4),
    ),
]


@pytest.mark.parametrize(
    ("case", "spec", "make", "shape"), FUNCTION_PASSES, ids=[c[0] for c in FUNCTION_PASSES]
)
def test_assert_function_returns_the_layers_outputs(case, spec, make, shape):
    (x,) = arrays(shape)
    inner = make().with_mode("eval")  # Dropout off, so that the outputs can be compared.
    expected = inner(x)
    actual = tl.AssertFunction(spec, inner)(x)
    for y, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_array_equal(y, e)


@pytest.mark.parametrize(
    ("case", "spec", "make", "shape"), FUNCTION_FAILS, ids=[c[0] for c in FUNCTION_FAILS]
)
def test_assert_function_raises_on_a_mismatch(case, spec, make, shape):
    layer = tl.AssertFunction(spec, make())
    with pytest.raises(tl.LayerError):
        layer(*arrays(shape))


def test_assert_function_letters_are_shared_between_inputs_and_outputs():
    # Each side alone passes 'abc' and 'cba'; only the shared sizes (c = 20 from the input) fail.
    layer = tl.AssertFunction("abc->cba", tl.Relu())
    with pytest.raises(tl.LayerError, match=r"sizes of the inputs \(a=2, b=5, c=20\): output 0 has size 2"):
        layer(jnp.ones((2, 5, 20)))
    x = jnp.ones((1, 2, 3, 4))  # The input's '...' is (1, 2); Flatten keeps (1, 2, 3) before 'x'.
    with pytest.raises(tl.LayerError, match=r"'\.\.\.' covers sizes \(1, 2, 3\)"):
        tl.AssertFunction("...34->...x", tl.Flatten(n_axes_to_keep=3))(x)


def test_assert_function_weights_nest_as_trax_serial():
    layer = tl.AssertFunction("...a->...b", tl.Dense(3))
    weights, _ = layer.init(ShapeDtype((2, 4)), jax.random.PRNGKey(0))
    assert len(weights) == 3 and weights[0] == () and weights[2] == ()
    w, b = weights[1]
    assert w.shape == (4, 3) and b.shape == (3,)
    assert (layer.n_in, layer.n_out) == (1, 1)
    assert repr(layer) == "AssertFunction[\n  Dense_3\n]"


def test_assert_function_refuses_a_specification_without_one_arrow():
    with pytest.raises(ValueError, match="'<input specs>-><output specs>'"):
        tl.AssertFunction("abc", tl.Relu())


# --- The assert_shape decorator ----------------------------------------------------------


def test_assert_shape_decorator_on_a_layer_function():
    @assert_shape("...a->...")
    def ReduceSum():  # noqa: N802
        return tl.Fn("ReduceSum", lambda x: jnp.sum(x, axis=-1))

    np.testing.assert_array_equal(ReduceSum()(jnp.ones((2, 3))), [3.0, 3.0])

    @assert_shape("...a->...a")
    def BadReduceSum():  # noqa: N802
        return tl.Fn("ReduceSum", lambda x: jnp.sum(x, axis=-1))

    with pytest.raises(tl.LayerError, match="output 0 has size 2 on axis 0 where 'a' is 3"):
        BadReduceSum()(jnp.ones((2, 3)))


def test_assert_shape_decorator_on_a_layer_class():
    @assert_shape("...a->...a")
    class Double(tl.Layer):
        def forward(self, x, weights, state, rng):
            return 2 * x, state

    @assert_shape("ab->ba")
    class TraxStyleTranspose(tl.Layer):
        def forward(self, x):
            return x.T

    np.testing.assert_array_equal(Double()(jnp.ones((2, 3))), 2 * np.ones((2, 3)))
    assert TraxStyleTranspose()(jnp.ones((2, 3))).shape == (3, 2)

    @assert_shape("ab->ab")
    class WrongTranspose(tl.Layer):
        def forward(self, x):
            return x.T

    with pytest.raises(tl.LayerError, match="output 0 has size 3 on axis 0 where 'a' is 2"):
        WrongTranspose()(jnp.ones((2, 3)))


# --- Streaming ---------------------------------------------------------------------------


def test_streams_block_by_block():
    # The time letter 't' binds in each block (1 to 3 steps in one stream), in and out alike.
    def build(mode):
        return tl.Serial(tl.AssertShape("..."), tl.AssertFunction("btd->btf", tl.Dense(3)))

    assert build("predict").supports_step
    test_utils.verify_contract(build, ShapeDtype((2, 6, 4)), chunkings=[[3, 1, 2]], check_reset=False)
