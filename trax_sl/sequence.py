"""Sequence: values `[batch, time, ...]` with a validity mask `[batch, time]`."""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as _AbcSequence

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl import shapes


def expand_mask(mask, ndim: int):
    """Reshapes a `[batch, time]` mask to broadcast against an `ndim` array."""
    return jnp.reshape(mask, tuple(mask.shape) + (1,) * (ndim - mask.ndim))


def _check_mask_dtype(mask) -> None:
    """Raises ValueError unless `mask` is bool: an int or float mask has no single meaning.

    Reads the dtype only (static under `jit`), so it costs nothing per step.
    """
    dtype = getattr(mask, "dtype", None)
    if dtype is None and isinstance(mask, (list, tuple)):
        dtype = np.asarray(mask).dtype
    if dtype is None or np.dtype(dtype) == np.bool_:
        return
    raise ValueError(
        f"Sequence: mask must have dtype bool (True at valid steps), got a mask of dtype "
        f"{np.dtype(dtype).name} and shape {tuple(np.shape(mask))}. Convert it first: pass "
        f"mask.astype(bool) or mask != 0 (or build the Sequence with "
        f"Sequence.from_lengths(values, lengths))"
    )


@jax.tree_util.register_pytree_node_class
class Sequence:
    """A batch of sequences: `values [batch, time, ...]` and `mask [batch, time]`.

    `mask[b, t]` is True where step t of row b is valid; it must be bool (an
    int or float mask is refused, with the fix). Invalid steps may hold
    anything (garbage, NaN); `mask_invalid()` zeroes them. A registered pytree,
    so Sequences pass through `jax.jit`, `jax.vmap` and `jax.grad`.
    """

    def __init__(self, values, mask):
        values_shape = getattr(values, "shape", None)
        mask_shape = getattr(mask, "shape", None)
        if (
            values_shape is not None
            and mask_shape is not None
            and (len(mask_shape) != 2 or tuple(values_shape[:2]) != tuple(mask_shape))
        ):
            raise ValueError(
                f"Sequence: values must be [batch, time, ...] and mask "
                f"[batch, time]; got values {tuple(values_shape)} and mask "
                f"{tuple(mask_shape)}"
            )
        _check_mask_dtype(mask)
        self.values = values
        self.mask = mask

    # Pytree protocol. Unflattening skips validation on purpose: JAX rebuilds
    # trees with placeholder leaves.
    def tree_flatten(self):
        return (self.values, self.mask), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        del aux
        obj = object.__new__(cls)
        obj.values, obj.mask = children
        return obj

    @classmethod
    def from_values(cls, values) -> Sequence:
        """A Sequence whose every step is valid."""
        values = jnp.asarray(values)
        return Sequence(values, jnp.ones(values.shape[:2], dtype=jnp.bool_))

    @classmethod
    def from_lengths(cls, values, lengths) -> Sequence:
        """A Sequence whose row b is valid for its first `lengths[b]` steps."""
        values = jnp.asarray(values)
        lengths = jnp.asarray(lengths)
        steps = jnp.arange(values.shape[1])
        mask = steps.reshape((1, -1)) < lengths.reshape((-1, 1))
        return Sequence(values, mask)

    @classmethod
    def concatenate_sequences(cls, sequences: _AbcSequence[Sequence]) -> Sequence:
        """Concatenates Sequences along time (values and masks)."""
        if not sequences:
            raise ValueError("concatenate_sequences: expected at least one Sequence")
        values = jnp.concatenate([s.values for s in sequences], axis=1)
        mask = jnp.concatenate([s.mask for s in sequences], axis=1)
        return Sequence(values, mask)

    def mask_invalid(self) -> MaskedSequence:
        """Returns a Sequence whose invalid steps are zero."""
        values = jnp.where(
            expand_mask(self.mask, self.values.ndim), self.values, jnp.zeros((), self.values.dtype)
        )
        return MaskedSequence(values, self.mask)

    def lengths(self):
        """The number of valid steps of each row, `[batch]` int32."""
        return jnp.sum(self.mask.astype(jnp.int32), axis=1)

    def pad_time(self, front: int, back: int, valid: bool) -> Sequence:
        """Pads `front` steps before and `back` after, zero values, mask `valid`."""
        pad_values = [(0, 0), (front, back)] + [(0, 0)] * (self.values.ndim - 2)
        values = jnp.pad(self.values, pad_values)
        mask = jnp.pad(self.mask, [(0, 0), (front, back)], constant_values=valid)
        # Zero padding keeps a MaskedSequence's invalid steps zero.
        return type(self)(values, mask)

    def apply_values(self, fn: Callable, *args, **kwargs) -> Sequence:
        """Applies `fn` to the values, keeping the mask."""
        return Sequence(fn(self.values, *args, **kwargs), self.mask)

    def __getitem__(self, key) -> Sequence:
        """Slices batch and time: `x[:, a:b]`, `x[1:3]`."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > 2 or any(k is Ellipsis or k is None for k in key):
            raise IndexError(
                f"Sequence: only the batch and time axes can be sliced "
                f"(e.g. x[:, 2:5]); got {key!r}. Use apply_values for channels."
            )
        if any(not isinstance(k, slice) for k in key):
            raise IndexError(f"Sequence: index with slices so that batch and time axes stay; got {key!r}")
        return type(self)(self.values[key], self.mask[key])

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def ndim(self) -> int:
        return len(self.values.shape)

    @property
    def dtype(self):
        return self.values.dtype

    @property
    def channel_shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape[2:])

    @property
    def channel_spec(self) -> shapes.ShapeDtype:
        return shapes.ShapeDtype(self.channel_shape, self.dtype)

    def short_form(self) -> str:
        """`Sequence(f32[8,16,32])`: the short form error messages print."""
        return f"Sequence({shapes.short_form(self.values)})"

    def __repr__(self) -> str:
        if isinstance(self.values, (np.ndarray, jax.Array)) and not isinstance(self.values, jax.core.Tracer):
            return f"{type(self).__name__}(values={self.values!r}, mask={self.mask!r})"
        return f"{type(self).__name__}({shapes.short_form(self.values)})"


@jax.tree_util.register_pytree_node_class
class MaskedSequence(Sequence):
    """A Sequence known to hold zeros at its invalid steps."""

    def mask_invalid(self) -> MaskedSequence:
        return self


def is_sequence(x) -> bool:
    """Whether x is a Sequence (values and a mask), not a plain array."""
    return isinstance(x, Sequence)


def as_sequence(x) -> tuple[Sequence, bool]:
    """(x as a Sequence, whether x was one): a plain array is an all-valid Sequence."""
    if isinstance(x, Sequence):
        return x, True
    return Sequence.from_values(x), False


def like_input(y: Sequence, was_sequence: bool):
    """The output kind follows the input kind: `y`, or its values when the input was an array."""
    return y if was_sequence else y.values


def plain_sequences(tree):
    """`tree` with each MaskedSequence as a plain Sequence of the same arrays.

    Whether invalid steps are known to be zero is not part of a signature:
    code that compares signatures or carries a tree through a `lax.scan`
    (whose carry must keep its pytree type) uses this on both sides.
    """
    return jax.tree.map(
        lambda s: Sequence(s.values, s.mask) if isinstance(s, MaskedSequence) else s,
        tree,
        is_leaf=lambda s: isinstance(s, Sequence),
    )


def values_of(x):
    """The values of a Sequence (or of a Sequence signature); anything else as it is."""
    return x.values if isinstance(x, Sequence) else x


def combined_mask(items, where: str = ""):
    """The and-ed mask of the Sequences among `items` (None when there are none).

    Raises:
      ValueError: two Sequences differ in [batch, time] (`where` prefixes the message).
    """
    masks = [item.mask for item in items if isinstance(item, Sequence)]
    if not masks:
        return None
    mask = masks[0]
    for other in masks[1:]:
        if tuple(other.shape) != tuple(mask.shape):
            raise ValueError(
                f"{where + ': ' if where else ''}Sequence inputs have different [batch, time] shapes: "
                f"{tuple(mask.shape)} and {tuple(other.shape)}"
            )
        if other is not mask:
            mask = mask & other
    return mask


def apply_to_values(fn, x, n_in: int):
    """Runs `fn` (on plain arrays; returns (outputs, state)) over stack items that may be Sequences.

    Sequence inputs are unwrapped to their values, invalid steps zeroed;
    outputs shaped `[batch, time, ...]` like the mask come back as Sequences
    with the combined (and-ed) mask, others (reductions over time) as arrays.
    """
    items = (x,) if n_in == 1 else tuple(x)
    mask = combined_mask(items)
    if mask is None:
        return fn(x)

    # Invalid steps are zeroed even for pointwise math: garbage there would not
    # reach valid outputs, but NaN would reach weight gradients (NaN * 0).
    values = tuple(item.mask_invalid().values if isinstance(item, Sequence) else item for item in items)
    outputs, state = fn(values[0] if n_in == 1 else values)
    is_tuple = isinstance(outputs, tuple)
    flat = outputs if is_tuple else (outputs,)

    def time_bearing(y) -> bool:
        return hasattr(y, "shape") and tuple(y.shape[:2]) == tuple(mask.shape)

    flat = tuple(Sequence(y, mask) if time_bearing(y) else y for y in flat)
    return (flat if is_tuple else flat[0]), state
