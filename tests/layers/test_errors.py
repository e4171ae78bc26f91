"""LayerError (DESIGN §3): path, creating file:line, function, input signature, cause."""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl.layers as tl
from trax_sl import Sequence
from trax_sl.shapes import ShapeDtype

THIS_FILE = inspect.currentframe().f_code.co_filename


def _line_below() -> int:
    """The line number after the caller's line: where the next statement creates a layer."""
    return inspect.currentframe().f_back.f_lineno + 1


def _created_at(line: int) -> str:
    return f"{THIS_FILE}:{line}"


class SquareDense(tl.Layer):
    """x @ w with w [d, d]; no __init__ of its own, so Layer.__init__ sees the creating line."""

    def init_weights_and_state(self, input_signature, rng):
        d = input_signature.shape[-1]
        return jax.random.normal(rng, (d, d)), ()

    def forward(self, x, weights, state, rng):
        return x @ weights, state


class TimeMix(tl.Layer):
    """Needs rank-3 inputs [batch, time, depth]."""

    def init_weights_and_state(self, input_signature, rng):
        d = input_signature.shape[-1]
        return jnp.ones((d, d)), ()

    def forward(self, x, weights, state, rng):
        return jnp.einsum("btd,de->bte", x, weights), state


class Dense(tl.Layer):
    """A Dense-like layer with its own __init__, as users write them."""

    def __init__(self, n_units):
        super().__init__(name=f"Dense_{n_units}")
        self._n_units = n_units

    def init_weights_and_state(self, input_signature, rng):
        return jax.random.normal(rng, (input_signature.shape[-1], self._n_units)), ()

    def forward(self, x, weights, state, rng):
        return x @ weights, state


class Failing(tl.Layer):
    """Raises a known exception object from forward."""

    error = RuntimeError("boom")

    def forward(self, x, weights, state, rng):
        raise self.error


def _check(err, *, path, line, function, signature, cause_type):
    """Asserts the parts of a LayerError message that DESIGN §3 lists."""
    message = str(err)
    first_line = message.splitlines()[0]
    assert isinstance(err, tl.LayerError)
    assert first_line.startswith(path + " "), first_line
    assert f"failed in {function}" in first_line
    assert _created_at(line) in message, message
    assert signature in message, message
    assert isinstance(err.__cause__, cause_type), repr(err.__cause__)
    assert not isinstance(err.__cause__, tl.LayerError)  # One LayerError, not wrapped ones.
    assert type(err.__cause__).__name__ in message
    assert err.cause is err.__cause__


# --- (1) Too few inputs on the stack ---------------------------------------------------------------------


def test_too_few_inputs_in_pure_fn():
    line = _line_below()
    model = tl.Serial(tl.Dup(), tl.Add(), tl.Add())  # Needs 2 inputs: a b -> 2a + b.
    x = jnp.ones((2, 3))
    weights, state = model.init((ShapeDtype((2, 3)), ShapeDtype((2, 3))))
    with pytest.raises(tl.LayerError) as info:
        model.pure_fn(x, weights, state, None)
    _check(
        info.value, path="Serial", line=line, function="pure_fn", signature="f32[2,3]", cause_type=ValueError
    )
    assert "takes 2 inputs" in str(info.value)
    assert "got one" in str(info.value)


def test_too_few_inputs_in_init():
    line = _line_below()
    model = tl.Serial(tl.Dup(), tl.Add(), tl.Add())
    with pytest.raises(tl.LayerError) as info:
        model.init(ShapeDtype((2, 3)))
    _check(info.value, path="Serial", line=line, function="init", signature="f32[2,3]", cause_type=ValueError)
    assert "takes 2 inputs" in str(info.value)


def test_too_few_inputs_in_a_tuple():
    line = _line_below()
    gate = tl.Gate()
    a = jnp.zeros((2, 3))
    with pytest.raises(tl.LayerError) as info:
        gate.pure_fn((a, a), (), (), None)
    _check(
        info.value,
        path="Gate",
        line=line,
        function="pure_fn",
        signature="(f32[2,3], f32[2,3])",
        cause_type=ValueError,
    )
    assert "takes 3 inputs" in str(info.value) and "got 2" in str(info.value)


def test_too_few_inputs_when_called_interactively():
    line = _line_below()
    add = tl.Add()
    with pytest.raises(tl.LayerError) as info:
        add(jnp.ones((2, 3)))
    _check(info.value, path="Add", line=line, function="init", signature="f32[2,3]", cause_type=ValueError)


# --- (2) Shape mismatch inside a nested Serial ------------------------------------------------------------


def test_shape_mismatch_inside_residual_in_pure_fn():
    line = _line_below()
    inner = SquareDense()
    model = tl.Serial(tl.Fn("Id", lambda x: x), tl.Residual(inner))
    weights, state = model.init(ShapeDtype((2, 4)))
    with pytest.raises(tl.LayerError) as info:
        model.pure_fn(jnp.ones((2, 3)), weights, state, None)
    err = info.value
    _check(
        err,
        path="Serial > Residual[1] >",
        line=line,
        function="pure_fn",
        signature="f32[2,3]",
        cause_type=TypeError,
    )
    assert err.path[:2] == ["Serial", "Residual[1]"]
    assert err.path[-1].startswith("SquareDense")
    assert "(3,)" in str(err.__cause__) and "(4,)" in str(err.__cause__)


def test_shape_mismatch_inside_residual_under_jit():
    line = _line_below()
    inner = SquareDense()
    model = tl.Serial(tl.Fn("Id", lambda x: x), tl.Residual(inner))
    weights, state = model.init(ShapeDtype((2, 4)))
    with pytest.raises(tl.LayerError) as info:
        jax.jit(model.pure_fn)(jnp.ones((2, 3)), weights, state, None)
    _check(
        info.value,
        path="Serial > Residual[1] >",
        line=line,
        function="pure_fn",
        signature="f32[2,3]",
        cause_type=TypeError,
    )


def test_shape_mismatch_inside_residual_in_init_names_the_add():
    x_sig = ShapeDtype((2, 3))
    line = _line_below()
    residual = tl.Residual(tl.Fn("Widen", lambda x: jnp.concatenate([x, x], axis=-1)))
    model = tl.Serial(tl.Fn("Id", lambda x: x), residual)
    with pytest.raises(tl.LayerError) as info:
        model.init(x_sig)
    err = info.value
    # The Add inside Residual was created by the library on the user's Residual line.
    _check(
        err,
        path="Serial > Residual[1] > Add[1]",
        line=line,
        function="init",
        signature="f32[2,6]",
        cause_type=TypeError,
    )
    assert "f32[2,3]" in err.input_signature


def test_shape_mismatch_in_deeper_nesting_names_every_level():
    line = _line_below()
    bad = SquareDense()
    model = tl.Serial(tl.Serial(tl.Fn("Id", lambda x: x), tl.Serial(bad)), name="Outer")
    weights, state = model.init(ShapeDtype((1, 5)))
    with pytest.raises(tl.LayerError) as info:
        model.pure_fn(jnp.ones((1, 2)), weights, state, None)
    _check(
        info.value,
        path="Outer > Serial[0] > Serial[1] > SquareDense[0]",
        line=line,
        function="pure_fn",
        signature="f32[1,2]",
        cause_type=TypeError,
    )


def test_shape_mismatch_when_called_interactively():
    line = _line_below()
    dense = SquareDense()
    dense.init(ShapeDtype((2, 3)))
    with pytest.raises(tl.LayerError) as info:
        dense(jnp.ones((2, 4)))
    _check(
        info.value,
        path="SquareDense",
        line=line,
        function="pure_fn",
        signature="f32[2,4]",
        cause_type=TypeError,
    )


# --- (3) Wrong input rank ---------------------------------------------------------------------------------


def test_wrong_rank_in_pure_fn():
    line = _line_below()
    mix = TimeMix()
    weights, state = mix.init(ShapeDtype((2, 5, 3)))
    with pytest.raises(tl.LayerError) as info:
        mix.pure_fn(jnp.ones((2, 3)), weights, state, None)
    _check(
        info.value, path="TimeMix", line=line, function="pure_fn", signature="f32[2,3]", cause_type=ValueError
    )


def test_wrong_rank_in_init_inside_serial():
    line = _line_below()
    mix = TimeMix()
    model = tl.Serial(tl.Fn("Id", lambda x: x), mix)
    with pytest.raises(tl.LayerError) as info:
        model.init(ShapeDtype((2, 3)))
    _check(
        info.value,
        path="Serial > TimeMix[1]",
        line=line,
        function="init",
        signature="f32[2,3]",
        cause_type=ValueError,
    )


def test_wrong_rank_on_a_sequence_shows_the_sequence():
    line = _line_below()
    mix = TimeMix()
    weights, state = mix.init(ShapeDtype((2, 5, 3)))
    s = Sequence.from_values(jnp.ones((2, 5, 3, 1)))
    with pytest.raises(tl.LayerError) as info:
        mix.pure_fn(s, weights, state, None)
    _check(
        info.value,
        path="TimeMix",
        line=line,
        function="pure_fn",
        signature="Sequence(f32[2,5,3,1])",
        cause_type=ValueError,
    )


# --- (4) A non-array input --------------------------------------------------------------------------------


def test_string_input_to_pure_fn():
    line = _line_below()
    dense = SquareDense()
    weights, state = dense.init(ShapeDtype((2, 3)))
    with pytest.raises(tl.LayerError) as info:
        dense.pure_fn("abc", weights, state, None)
    _check(
        info.value, path="SquareDense", line=line, function="pure_fn", signature="str", cause_type=TypeError
    )


def test_string_input_to_a_weightless_layer_call():
    line = _line_below()
    dup = tl.Dup()
    with pytest.raises(tl.LayerError) as info:
        dup("abc")
    err = info.value
    assert isinstance(err, tl.LayerError)
    assert err.path == ["Dup"]
    assert _created_at(line) in str(err)
    assert "layer input: str" in str(err)
    assert isinstance(err.__cause__, TypeError)
    assert "expected arrays or Sequences" in str(err)


def test_string_input_to_an_initialized_layer_call():
    line = _line_below()
    dense = SquareDense()
    dense.init(ShapeDtype((2, 3)))
    with pytest.raises(tl.LayerError) as info:
        dense("abc")
    err = info.value
    assert err.path == ["SquareDense"]
    assert _created_at(line) in str(err)
    assert "layer input: str" in str(err)
    assert isinstance(err.__cause__, TypeError)


def test_string_input_to_init():
    line = _line_below()
    dense = SquareDense()
    with pytest.raises(tl.LayerError) as info:
        dense.init("abc")
    _check(info.value, path="SquareDense", line=line, function="init", signature="str", cause_type=TypeError)


def test_string_inside_a_tuple_input():
    line = _line_below()
    add = tl.Add()
    with pytest.raises(tl.LayerError) as info:
        add.pure_fn((jnp.ones((2, 3)), "abc"), (), (), None)
    _check(
        info.value,
        path="Add",
        line=line,
        function="pure_fn",
        signature="(f32[2,3], str)",
        cause_type=TypeError,
    )


# --- The message and the cause -----------------------------------------------------------------------------


def test_cause_is_the_original_exception_object():
    line = _line_below()
    failing = Failing()
    model = tl.Serial(tl.Dup(), tl.Parallel(None, failing))
    # Failing fails in init too, so build the (empty) weights and state trees by hand.
    weights = state = ((), ((), ()))
    with pytest.raises(tl.LayerError) as info:
        model.pure_fn(jnp.ones((2, 3)), weights, state, None)
    err = info.value
    assert err.__cause__ is Failing.error
    assert err.cause is Failing.error
    assert err.path == ["Serial", "Parallel[1]", "Failing[1]"]
    assert err.function_name == "pure_fn"
    assert err.caller == _created_at(line)
    assert err.input_signature == "f32[2,3]"
    assert "cause: RuntimeError: boom" in str(err)


def test_message_layout():
    line = _line_below()
    failing = Failing()
    with pytest.raises(tl.LayerError) as info:
        failing.pure_fn(jnp.zeros((8, 16, 32)), (), (), None)
    assert str(info.value).splitlines() == [
        "Failing failed in pure_fn",
        f"  layer created at: {_created_at(line)}",
        "  layer input: f32[8,16,32]",
        "  cause: RuntimeError: boom",
    ]


def test_error_in_an_init_weights_and_state():
    class BadInit(tl.Layer):
        def init_weights_and_state(self, input_signature, rng):
            raise KeyError("no such weight")

    line = _line_below()
    model = tl.Serial(tl.Fn("Id", lambda x: x), BadInit())
    with pytest.raises(tl.LayerError) as info:
        model.init(ShapeDtype((4,), np.int32))
    _check(
        info.value,
        path="Serial > BadInit[1]",
        line=line,
        function="init",
        signature="i32[4]",
        cause_type=KeyError,
    )


def test_caller_of_a_user_layer_with_its_own_init_is_the_creating_line():
    # Users write layers with their own __init__ (see STYLE.md's Dense); the
    # error must point at the line that built the layer, not at super().__init__.
    line = _line_below()
    dense = Dense(4)
    assert dense.caller == _created_at(line)
    weights, state = dense.init(ShapeDtype((2, 5)))
    with pytest.raises(tl.LayerError) as info:
        dense.pure_fn(jnp.ones((2, 3)), weights, state, None)
    _check(
        info.value, path="Dense_4", line=line, function="pure_fn", signature="f32[2,3]", cause_type=TypeError
    )


def test_caller_of_library_combinators_is_the_users_line():
    line = _line_below()
    branch = tl.Branch(tl.Fn("A", lambda x: x), tl.Fn("B", lambda x: x))
    assert branch.caller == _created_at(line)
    assert all(sub.caller == _created_at(line) for sub in branch.sublayers)


def test_serial_says_which_sublayer_runs_short_of_inputs():
    double = tl.Fn("Double", lambda x: 2 * x)
    model = tl.Serial(double, tl.Add())
    with pytest.raises(
        tl.LayerError, match=r"Add\[1\] needs 2 items but 1 would be on the stack after Double\[0\]"
    ):
        model(jnp.ones((2, 3)))


@pytest.mark.parametrize("serial_mode", ["train", "predict"])
def test_a_bad_block_is_named_by_the_outermost_layer(serial_mode):
    """Issue 13: a 7-step block for a model of block_size 8 names 8, not an inner layer's 2."""
    convs = lambda mode: [
        tl.Conv1d(8, 4, stride=2, padding="causal", mode=mode),
        tl.Conv1d(8, 6, stride=4, padding="causal", mode=mode),
    ]
    model = tl.Serial(*convs("predict")) if serial_mode == "train" else tl.Serial(*convs("eval")).with_mode("predict")
    assert model.block_size == 8
    weights, state = model.init(ShapeDtype((2, 8, 3)))
    with pytest.raises(tl.LayerError) as error:
        model.pure_fn(jnp.zeros((2, 7, 3)), weights, state, None)
    assert "Serial: in predict mode each block must be a multiple of block_size=8 time steps, got a block of 7" in str(
        error.value
    )
    y, _ = model.pure_fn(jnp.zeros((2, 16, 3)), weights, state, None)
    assert y.shape == (2, 2, 8)
