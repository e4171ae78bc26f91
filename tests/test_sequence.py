"""Sequence: values [batch, time, ...] with a validity mask [batch, time] (DESIGN §2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import MaskedSequence, Sequence
from trax_sl.shapes import ShapeDtype


def _values(shape, dtype=np.float32):
    return jnp.asarray(np.arange(1, 1 + np.prod(shape)).reshape(shape).astype(dtype))


def _mask(rows):
    return jnp.asarray(np.array(rows, dtype=bool))


# --- Construction ----------------------------------------------------------------------


def test_constructor_keeps_values_and_mask():
    v = _values((2, 3, 4))
    m = _mask([[1, 0, 1], [0, 0, 1]])
    s = Sequence(v, m)
    assert s.values is v
    assert s.mask is m


@pytest.mark.parametrize(
    "values_shape, mask_shape",
    [
        ((2, 3, 4), (2, 4)),  # time differs
        ((2, 3, 4), (3, 3)),  # batch differs
        ((2, 3, 4), (2,)),  # mask rank 1
        ((2, 3, 4), (2, 3, 4)),  # mask rank 3
        ((3,), (3, 1)),  # values without a time axis
    ],
)
def test_bad_constructions_raise_value_error(values_shape, mask_shape):
    with pytest.raises(ValueError, match="batch, time"):
        Sequence(jnp.zeros(values_shape), jnp.ones(mask_shape, bool))


_INT_MASK_MESSAGE = (
    "Sequence: mask must have dtype bool (True at valid steps), got a mask of dtype int32 and "
    "shape (1, 4). Convert it first: pass mask.astype(bool) or mask != 0 (or build the Sequence "
    "with Sequence.from_lengths(values, lengths))"
)


def test_int_mask_is_refused_with_the_fix():
    # [1, 1, 2, 0] once became [1, 1, 0, 0] without a word (issue 15).
    with pytest.raises(ValueError) as info:
        Sequence(jnp.ones((1, 4, 2)), jnp.asarray([[1, 1, 2, 0]], jnp.int32))
    assert str(info.value) == _INT_MASK_MESSAGE


@pytest.mark.parametrize(
    "mask, dtype_name",
    [
        (np.array([[1.0, 1.0, 0.0, 0.0]], np.float32), "float32"),
        (jnp.asarray([[1, 0, 0, 0]], jnp.uint8), "uint8"),
        ([[1, 1, 0, 0]], "int64"),
        (ShapeDtype((1, 4), np.float32), "float32"),
    ],
)
def test_non_bool_masks_are_refused_naming_their_dtype(mask, dtype_name):
    with pytest.raises(ValueError, match=rf"got a mask of dtype {dtype_name} and shape \(1, 4\).*mask != 0"):
        Sequence(jnp.ones((1, 4, 2)), mask)


def test_non_bool_mask_is_refused_under_jit_and_bool_masks_still_work():
    with pytest.raises(ValueError, match="dtype int32"):
        jax.jit(lambda v, m: Sequence(v, m).lengths())(jnp.ones((1, 4)), jnp.ones((1, 4), jnp.int32))
    s = Sequence(jnp.ones((1, 4)), _mask([[1, 1, 0, 0]]))
    with pytest.raises(ValueError, match="dtype int32"):
        Sequence.concatenate_sequences([s, Sequence(jnp.ones((1, 1)), jnp.ones((1, 1), jnp.int32))])
    assert jax.jit(lambda v, m: Sequence(v, m).lengths())(s.values, s.mask).tolist() == [2]
    assert Sequence(jnp.ones((1, 2)), [[True, False]]).mask == [[True, False]]


def test_from_values_is_all_valid():
    v = _values((2, 3, 4))
    s = Sequence.from_values(v)
    assert s.mask.shape == (2, 3)
    assert s.mask.dtype == jnp.bool_
    assert bool(jnp.all(s.mask))
    np.testing.assert_array_equal(s.values, v)


def test_from_values_accepts_numpy_and_rank_two():
    s = Sequence.from_values(np.ones((3, 5), np.int32))
    assert isinstance(s.values, jax.Array)
    assert s.mask.shape == (3, 5)
    assert s.dtype == jnp.int32


def test_from_values_rejects_values_without_time_axis():
    with pytest.raises(ValueError):
        Sequence.from_values(jnp.zeros((4,)))


def test_from_lengths_mask_is_valid_prefix():
    s = Sequence.from_lengths(_values((3, 4, 2)), [0, 2, 4])
    expected = [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    np.testing.assert_array_equal(s.mask, np.array(expected, bool))
    assert s.mask.dtype == jnp.bool_


def test_from_lengths_with_wrong_number_of_lengths_raises():
    with pytest.raises(ValueError):
        Sequence.from_lengths(jnp.zeros((2, 4, 1)), [1, 2, 3])


def test_lengths():
    s = Sequence(jnp.zeros((3, 4)), _mask([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]))
    lengths = s.lengths()
    np.testing.assert_array_equal(lengths, [2, 0, 3])
    assert lengths.dtype == jnp.int32
    np.testing.assert_array_equal(Sequence.from_lengths(jnp.zeros((2, 5)), [5, 1]).lengths(), [5, 1])


# --- mask_invalid ------------------------------------------------------------------------


def test_mask_invalid_zeroes_invalid_steps_only():
    v = jnp.array([[[1.0, 2.0], [3.0, jnp.nan], [jnp.inf, 6.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]])
    s = Sequence.from_lengths(v, [1, 3])
    masked = s.mask_invalid()
    expected = [[[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]], [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]]]
    np.testing.assert_array_equal(masked.values, expected)
    assert masked.mask is s.mask
    assert masked.values.dtype == v.dtype
    # The original is unchanged.
    assert bool(jnp.isnan(s.values[0, 1, 1]))


def test_mask_invalid_returns_masked_sequence_and_is_idempotent():
    s = Sequence.from_lengths(_values((2, 3)), [2, 1])
    once = s.mask_invalid()
    assert isinstance(once, MaskedSequence)
    assert once is not s
    twice = once.mask_invalid()
    assert twice is once
    np.testing.assert_array_equal(twice.values, [[1, 2, 0], [4, 0, 0]])


def test_mask_invalid_on_int_values_and_rank_four():
    v = _values((2, 2, 2, 2), np.int32)
    s = Sequence(v, _mask([[1, 0], [0, 1]]))
    out = s.mask_invalid().values
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out[0, 0], v[0, 0])
    np.testing.assert_array_equal(out[0, 1], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[1, 0], np.zeros((2, 2)))
    np.testing.assert_array_equal(out[1, 1], v[1, 1])


# --- pad_time ----------------------------------------------------------------------------


def test_pad_time_invalid_padding():
    s = Sequence.from_lengths(_values((2, 2, 1)), [1, 2])
    p = s.pad_time(1, 2, valid=False)
    assert p.shape == (2, 5, 1)
    np.testing.assert_array_equal(p.values[..., 0], [[0, 1, 2, 0, 0], [0, 3, 4, 0, 0]])
    np.testing.assert_array_equal(p.mask, _mask([[0, 1, 0, 0, 0], [0, 1, 1, 0, 0]]))


def test_pad_time_valid_padding():
    s = Sequence.from_lengths(_values((1, 2)), [2])
    p = s.pad_time(2, 1, valid=True)
    np.testing.assert_array_equal(p.values, [[0, 0, 1, 2, 0]])
    np.testing.assert_array_equal(p.mask, _mask([[1, 1, 1, 1, 1]]))


def test_pad_time_keeps_masked_sequence_type():
    m = Sequence.from_lengths(_values((1, 3)), [1]).mask_invalid()
    p = m.pad_time(0, 2, valid=False)
    assert isinstance(p, MaskedSequence)
    np.testing.assert_array_equal(p.values, [[1, 0, 0, 0, 0]])
    assert type(Sequence.from_values(_values((1, 3))).pad_time(1, 0, False)) is Sequence


# --- concatenate_sequences ----------------------------------------------------------------


def test_concatenate_sequences_joins_values_and_masks_along_time():
    a = Sequence.from_lengths(_values((2, 2, 1)), [1, 2])
    b = Sequence.from_lengths(10 * _values((2, 3, 1)), [3, 0])
    c = Sequence.concatenate_sequences([a, b])
    assert c.shape == (2, 5, 1)
    np.testing.assert_array_equal(c.values[..., 0], [[1, 2, 10, 20, 30], [3, 4, 40, 50, 60]])
    np.testing.assert_array_equal(c.mask, _mask([[1, 0, 1, 1, 1], [1, 1, 0, 0, 0]]))


def test_concatenate_single_and_empty():
    a = Sequence.from_lengths(_values((1, 2)), [1])
    c = Sequence.concatenate_sequences((a,))
    np.testing.assert_array_equal(c.values, a.values)
    np.testing.assert_array_equal(c.mask, a.mask)
    with pytest.raises(ValueError, match="at least one"):
        Sequence.concatenate_sequences([])


# --- apply_values ------------------------------------------------------------------------


def test_apply_values_passes_args_and_keeps_mask():
    s = Sequence.from_lengths(_values((2, 3, 2)), [1, 3])
    out = s.apply_values(jnp.sum, axis=-1, keepdims=True)
    np.testing.assert_array_equal(out.values[..., 0], [[3, 7, 11], [15, 19, 23]])
    assert out.mask is s.mask
    out2 = s.apply_values(jnp.multiply, 2.0)
    np.testing.assert_array_equal(out2.values, 2 * s.values)


def test_apply_values_on_masked_sequence_forgets_zeroed_invalid_steps():
    m = Sequence.from_lengths(_values((1, 3)), [1]).mask_invalid()
    shifted = m.apply_values(lambda v: v + 1.0)
    # fn may write into invalid steps, so the result is no longer known to be masked.
    assert not isinstance(shifted, MaskedSequence)
    np.testing.assert_array_equal(shifted.values, [[2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(shifted.mask_invalid().values, [[2.0, 0.0, 0.0]])


# --- Slicing -----------------------------------------------------------------------------------


def test_time_slicing():
    s = Sequence.from_lengths(_values((2, 4, 1)), [1, 3])
    part = s[:, 1:3]
    assert type(part) is Sequence
    np.testing.assert_array_equal(part.values[..., 0], [[2, 3], [6, 7]])
    np.testing.assert_array_equal(part.mask, _mask([[0, 0], [1, 1]]))


def test_batch_slicing_and_strided_time():
    s = Sequence.from_lengths(_values((3, 4)), [1, 2, 4])
    rows = s[1:3]
    np.testing.assert_array_equal(rows.values, [[5, 6, 7, 8], [9, 10, 11, 12]])
    np.testing.assert_array_equal(rows.lengths(), [2, 4])
    strided = s[:, ::2]
    np.testing.assert_array_equal(strided.values, [[1, 3], [5, 7], [9, 11]])
    np.testing.assert_array_equal(strided.mask, _mask([[1, 0], [1, 0], [1, 1]]))


def test_slicing_keeps_masked_sequence_type():
    m = Sequence.from_lengths(_values((1, 4)), [2]).mask_invalid()
    assert isinstance(m[:, 1:], MaskedSequence)


@pytest.mark.parametrize("key", [0, (slice(None), 1), (Ellipsis, slice(0, 1)), (slice(None), slice(None), 0)])
def test_slicing_that_would_drop_batch_or_time_raises(key):
    s = Sequence.from_values(_values((2, 3, 4)))
    with pytest.raises(IndexError):
        s[key]


# --- Properties ---------------------------------------------------------------------------------


def test_shape_ndim_dtype_channel_shape_and_spec():
    s = Sequence.from_values(jnp.zeros((2, 5, 3, 4), jnp.bfloat16))
    assert s.shape == (2, 5, 3, 4)
    assert isinstance(s.shape, tuple)
    assert s.ndim == 4
    assert s.dtype == jnp.bfloat16
    assert s.channel_shape == (3, 4)
    assert s.channel_spec == ShapeDtype((3, 4), jnp.bfloat16)
    r2 = Sequence.from_values(jnp.zeros((2, 5), jnp.int32))
    assert r2.channel_shape == ()
    assert r2.channel_spec == ShapeDtype((), jnp.int32)


# --- JAX transformations -----------------------------------------------------------------------


def test_sequence_is_a_pytree():
    s = Sequence.from_lengths(_values((2, 3)), [1, 2])
    leaves, treedef = jax.tree.flatten(s)
    assert len(leaves) == 2
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert type(rebuilt) is Sequence
    doubled = jax.tree.map(lambda x: x * 2, s)
    np.testing.assert_array_equal(doubled.values, 2 * s.values)


def test_works_under_jit():
    @jax.jit
    def f(s):
        return s.mask_invalid().pad_time(1, 0, valid=False)[:, :3], s.lengths()

    s = Sequence.from_lengths(_values((2, 3)), [1, 2])
    out, lengths = f(s)
    assert isinstance(out, MaskedSequence)
    np.testing.assert_array_equal(out.values, [[0, 1, 0], [0, 4, 5]])
    np.testing.assert_array_equal(out.mask, _mask([[0, 1, 0], [0, 1, 1]]))
    np.testing.assert_array_equal(lengths, [1, 2])


def test_jit_keeps_masked_sequence_so_mask_invalid_is_skipped():
    m = Sequence.from_lengths(_values((1, 2)), [1]).mask_invalid()
    out = jax.jit(lambda s: s)(m)
    assert isinstance(out, MaskedSequence)
    assert out.mask_invalid() is out


def test_works_under_vmap_over_a_batch_of_sequences():
    n, b, t, c = 3, 2, 4, 2
    values = _values((n, b, t, c))
    lengths = np.array([[1, 4], [0, 2], [3, 3]])
    mask = np.arange(t)[None, None, :] < lengths[:, :, None]
    sequences = [Sequence(values[i], jnp.asarray(mask[i])) for i in range(n)]
    # A batch of Sequences: one Sequence pytree whose leaves are stacked.
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *sequences)
    assert type(stacked) is Sequence and stacked.mask.shape == (n, b, t)

    def per_sequence(s):
        masked = s.mask_invalid()
        return masked, jnp.sum(masked.values, axis=(1, 2)), s.lengths()

    out, sums, got_lengths = jax.vmap(per_sequence)(stacked)
    for i, one in enumerate(sequences):
        expected, expected_sums, expected_lengths = per_sequence(one)
        np.testing.assert_array_equal(out.values[i], expected.values)
        np.testing.assert_array_equal(sums[i], expected_sums)
        np.testing.assert_array_equal(got_lengths[i], expected_lengths)
    np.testing.assert_array_equal(got_lengths, lengths)
    assert isinstance(out, MaskedSequence)


def test_works_under_grad_of_values():
    mask = _mask([[1, 1, 0], [1, 0, 0]])
    v = _values((2, 3))

    def loss(values):
        s = Sequence(values, mask).mask_invalid()
        return jnp.sum(s.values**2)

    g = jax.grad(loss)(v)
    np.testing.assert_array_equal(g, np.where(np.asarray(mask), 2 * np.asarray(v), 0.0))


def test_grad_through_slicing_and_padding():
    s_mask = _mask([[1, 1, 1, 1]])

    def loss(values):
        s = Sequence(values, s_mask)[:, 1:3].pad_time(1, 1, valid=False)
        return jnp.sum(s.values * jnp.arange(4.0).reshape((1, 4)))

    g = jax.grad(loss)(jnp.ones((1, 4)))
    # Steps 1 and 2 land at padded positions 1 and 2.
    np.testing.assert_array_equal(g, [[0.0, 1.0, 2.0, 0.0]])
