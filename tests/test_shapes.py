"""ShapeDtype, signature() and short_form()."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import Sequence, shapes
from trax_sl.shapes import ShapeDtype

# --- ShapeDtype ------------------------------------------------------------------


def test_shape_dtype_normalizes_shape_and_dtype():
    s = ShapeDtype([np.int64(2), 3], "int32")
    assert s.shape == (2, 3)
    assert all(type(d) is int for d in s.shape)
    assert s.dtype == np.dtype(np.int32)
    assert isinstance(s.dtype, np.dtype)
    assert s.ndim == 2


def test_shape_dtype_defaults_to_float32():
    s = ShapeDtype((4,))
    assert s.dtype == np.float32
    assert ShapeDtype(()).ndim == 0


def test_shape_dtype_is_frozen_hashable_and_compares_by_value():
    a = ShapeDtype((2, 3), np.float32)
    assert a == ShapeDtype([2, 3], "float32")
    assert a != ShapeDtype((2, 3), np.int32)
    assert a != ShapeDtype((3, 2), np.float32)
    assert len({a, ShapeDtype((2, 3))}) == 1
    with pytest.raises(AttributeError):
        a.shape = (1,)


def test_shape_dtype_as_struct_and_eval_shape():
    s = ShapeDtype((2, 3), jnp.bfloat16)
    struct = s.as_struct()
    assert isinstance(struct, jax.ShapeDtypeStruct)
    assert struct.shape == (2, 3) and struct.dtype == jnp.bfloat16
    out = jax.eval_shape(lambda x: jnp.sum(x, axis=0), struct)
    assert out.shape == (3,) and out.dtype == jnp.bfloat16


def test_shape_dtype_repr_is_short_form():
    assert repr(ShapeDtype((8, 16, 32))) == "f32[8,16,32]"
    assert repr(ShapeDtype((), np.int32)) == "i32[]"


# --- short_form ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, expected",
    [
        (np.float32, "f32[2,3]"),
        (np.float16, "f16[2,3]"),
        (jnp.bfloat16, "bf16[2,3]"),
        (np.int32, "i32[2,3]"),
        (np.int8, "i8[2,3]"),
        (np.uint8, "u8[2,3]"),
        (np.bool_, "bool[2,3]"),
        (np.complex64, "c64[2,3]"),
    ],
)
def test_short_form_dtype_abbreviations(dtype, expected):
    assert shapes.short_form(jnp.zeros((2, 3), dtype)) == expected
    assert shapes.short_form(ShapeDtype((2, 3), dtype)) == expected


def test_short_form_of_numpy_array_and_unknown_dtype():
    assert shapes.short_form(np.zeros((4, 1), np.float64)) == "f64[4,1]"
    # A dtype without an abbreviation keeps its numpy name.
    assert shapes.short_form(np.zeros((2,), np.uint16)) == "uint16[2]"


def test_short_form_recurses_into_tuples_lists_and_sequences():
    x = jnp.zeros((2, 3))
    i = jnp.zeros((4,), jnp.int32)
    assert shapes.short_form((x, i)) == "(f32[2,3], i32[4])"
    assert shapes.short_form([x, (i, x)]) == "(f32[2,3], (i32[4], f32[2,3]))"
    assert shapes.short_form(()) == "()"
    s = Sequence.from_values(jnp.zeros((2, 5, 7)))
    assert shapes.short_form(s) == "Sequence(f32[2,5,7])"
    assert shapes.short_form((s, x)) == "(Sequence(f32[2,5,7]), f32[2,3])"


def test_short_form_of_non_array_is_type_name():
    assert shapes.short_form("abc") == "str"
    assert shapes.short_form(None) == "NoneType"


def test_short_form_of_abstract_values():
    struct = jax.ShapeDtypeStruct((8, 16), jnp.int32)
    assert shapes.short_form(struct) == "i32[8,16]"
    seen = []
    jax.jit(lambda x: seen.append(shapes.short_form(x)) or x)(jnp.zeros((3, 1)))
    assert seen == ["f32[3,1]"]


# --- signature -------------------------------------------------------------------------


def test_signature_of_array():
    sig = shapes.signature(jnp.zeros((2, 3), jnp.int32))
    assert sig == ShapeDtype((2, 3), np.int32)
    assert isinstance(sig, ShapeDtype)
    assert shapes.signature(np.ones((5,), np.float64)) == ShapeDtype((5,), np.float64)


def test_signature_of_shape_dtype_is_itself():
    s = ShapeDtype((1, 2))
    assert shapes.signature(s) is s


def test_signature_of_shape_dtype_struct():
    assert shapes.signature(jax.ShapeDtypeStruct((4, 2), jnp.bfloat16)) == ShapeDtype((4, 2), jnp.bfloat16)


def test_signature_of_scalars():
    assert shapes.signature(np.float32(1.0)) == ShapeDtype((), np.float32)
    assert shapes.signature(True) == ShapeDtype((), np.bool_)
    assert shapes.signature(3).shape == ()


def test_signature_keeps_tuple_structure_and_turns_lists_into_tuples():
    x = jnp.zeros((2, 3))
    i = jnp.zeros((4,), jnp.int32)
    sig = shapes.signature((x, [i, x]))
    assert sig == (ShapeDtype((2, 3)), (ShapeDtype((4,), np.int32), ShapeDtype((2, 3))))
    assert isinstance(sig[1], tuple)
    assert shapes.signature(()) == ()


def test_signature_of_sequence_is_a_sequence_of_shape_dtypes():
    s = Sequence.from_lengths(jnp.zeros((2, 5, 3)), [2, 5])
    sig = shapes.signature(s)
    assert type(sig) is Sequence
    assert sig.values == ShapeDtype((2, 5, 3), np.float32)
    assert sig.mask == ShapeDtype((2, 5), np.bool_)
    # Sequence properties work on a signature too.
    assert sig.shape == (2, 5, 3)
    assert sig.channel_shape == (3,)
    assert sig.channel_spec == ShapeDtype((3,), np.float32)


def test_signature_keeps_masked_sequence_type():
    s = Sequence.from_lengths(jnp.zeros((2, 4)), [1, 3]).mask_invalid()
    sig = shapes.signature(s)
    assert type(sig) is type(s)
    assert sig.values == ShapeDtype((2, 4))


def test_signature_of_tuple_with_sequence():
    s = Sequence.from_values(jnp.zeros((1, 2, 3)))
    sig = shapes.signature((jnp.zeros((7,)), s))
    assert sig[0] == ShapeDtype((7,))
    assert isinstance(sig[1], Sequence) and sig[1].values == ShapeDtype((1, 2, 3))


def test_signature_rejects_non_arrays():
    with pytest.raises(TypeError, match="str"):
        shapes.signature("abc")
    with pytest.raises(TypeError, match="str"):
        shapes.signature({"a": "abc"})


def test_a_dict_item_has_a_hashable_dict_signature():
    # SequenceLayers' constants are one dict stack item (DESIGN §8): its signature is a dict that
    # caches keyed on signatures (tl.start_stream's compiled init) accept.
    sig = shapes.signature((jnp.zeros((2, 3)), {"source": Sequence.from_values(jnp.zeros((2, 4, 5)))}))
    constants = sig[1]
    assert isinstance(constants, dict) and isinstance(constants, shapes.NamedSignatures)
    assert constants["source"].values == shapes.ShapeDtype((2, 4, 5))
    hash(sig)
    assert shapes.short_form(sig) == "(f32[2,3], {source: Sequence(f32[2,4,5])})"
    structs = jax.tree.map(lambda s: s.as_struct(), constants)
    assert isinstance(structs, shapes.NamedSignatures) and structs["source"].values.shape == (2, 4, 5)


def test_from_abstract_turns_eval_shape_output_into_shape_dtypes():
    out = jax.eval_shape(lambda x: (x, jnp.sum(x, axis=1)), jnp.zeros((2, 3), jnp.int32))
    sig = shapes.from_abstract(out)
    assert sig == (ShapeDtype((2, 3), np.int32), ShapeDtype((2,), np.int32))


def test_splice_signatures_and_len_as_in_trax():
    sd1, sd2, sd3, sd4, sd5 = (ShapeDtype((n,)) for n in range(1, 6))
    assert shapes.splice_signatures(sd1, (sd2, sd3, sd4), (), sd5) == (sd1, sd2, sd3, sd4, sd5)
    assert shapes.splice_signatures((), (sd2,)) is sd2
    x = np.array([1, 2, 3])
    assert [len(shapes.signature(inputs)) for inputs in ((), x, (x, x))] == [0, 1, 2]
    assert sd1.as_tuple() == ((1,), np.float32) and sd1.replace(dtype=np.int32) == ShapeDtype((1,), np.int32)
