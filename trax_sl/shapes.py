"""Shapes and dtypes of the values a layer computes on."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class ShapeDtype:
    """The shape and dtype of one array, without its values.

    Works wherever JAX takes an abstract value (`jax.eval_shape`), and prints
    in the short form used by error messages: `f32[8,16,32]`.
    """

    shape: tuple[int, ...]
    dtype: Any = np.float32

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", np.dtype(self.dtype))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def as_struct(self) -> jax.ShapeDtypeStruct:
        return jax.ShapeDtypeStruct(self.shape, self.dtype)

    def __len__(self) -> int:
        """1: a signature of one array has one item (Trax's; a tuple signature's len counts its items)."""
        return 1

    def as_tuple(self) -> tuple:
        """`(shape, dtype)`."""
        return self.shape, self.dtype

    def replace(self, **kwargs) -> ShapeDtype:
        """A copy with `shape` and/or `dtype` replaced."""
        return dataclasses.replace(self, **kwargs)

    def __repr__(self) -> str:
        return short_form(self)


_DTYPE_ABBREVIATIONS = {
    "float32": "f32",
    "float64": "f64",
    "float16": "f16",
    "bfloat16": "bf16",
    "int32": "i32",
    "int64": "i64",
    "int16": "i16",
    "int8": "i8",
    "uint8": "u8",
    "uint32": "u32",
    "bool": "bool",
    "complex64": "c64",
}


class NamedSignatures(dict):
    """The signature of a dict stack item (e.g. SequenceLayers' `constants`): a dict of signatures.

    Hashable (by identity), unlike a dict, so that caches keyed on signatures
    (compiled stream starts) accept it; a pytree like a dict.
    """

    __hash__ = object.__hash__


jax.tree_util.register_pytree_with_keys(
    NamedSignatures,
    lambda d: (tuple((jax.tree_util.DictKey(k), v) for k, v in d.items()), tuple(d)),
    lambda keys, values: NamedSignatures(zip(keys, values)),
)


def short_form(x) -> str:
    """Returns `f32[8,16]` for an array or signature; recurses into tuples.

    Objects that name themselves (a `short_form()` method: Sequences, markers
    such as base.SHARED) come first, since a Sequence also has a shape.
    """
    if hasattr(type(x), "short_form"):
        return x.short_form()
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(short_form(item) for item in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{key}: {short_form(item)}" for key, item in x.items()) + "}"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        dtype = str(np.dtype(x.dtype)) if x.dtype is not None else "?"
        dims = ",".join(str(d) for d in x.shape)
        return f"{_DTYPE_ABBREVIATIONS.get(dtype, dtype)}[{dims}]"
    return type(x).__name__


def signature(obj):
    """Returns the ShapeDtype tree of `obj`: arrays, tuples/lists, dicts and Sequences.

    The structure is kept (a Sequence of arrays becomes a Sequence of
    ShapeDtypes: any pytree node class is rebuilt around the signatures of its
    children), so the result can be passed to `Layer.init`.
    """
    if isinstance(obj, ShapeDtype):
        return obj
    if hasattr(type(obj), "tree_flatten") and hasattr(type(obj), "tree_unflatten"):
        children, aux = obj.tree_flatten()
        return type(obj).tree_unflatten(aux, [signature(child) for child in children])
    if isinstance(obj, (tuple, list)):
        return tuple(signature(item) for item in obj)
    if isinstance(obj, dict):  # One stack item of named side inputs (SequenceLayers' constants).
        return NamedSignatures((key, signature(item)) for key, item in obj.items())
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):
        return ShapeDtype(obj.shape, obj.dtype)
    if isinstance(obj, (bool, int, float, complex, np.generic)):
        return ShapeDtype((), np.asarray(obj).dtype)
    raise TypeError(
        f"signature: expected an array, a Sequence or a tuple or dict of them, got {type(obj).__name__}"
    )


def splice_signatures(*sigs):
    """One signature of the items of `sigs` in order: `sd1, (sd2, sd3), (), sd4` -> `(sd1, sd2, sd3, sd4)`.

    A signature is a `ShapeDtype` or a tuple of them; the result is a single
    `ShapeDtype` if it has one item, else a tuple (Trax's splice_signatures).
    """
    items = [item for sig in sigs for item in (sig if isinstance(sig, (list, tuple)) else (sig,))]
    return items[0] if len(items) == 1 else tuple(items)


def from_abstract(tree):
    """Turns the ShapeDtypeStruct leaves of `jax.eval_shape` into ShapeDtypes."""
    return jax.tree.map(lambda leaf: ShapeDtype(leaf.shape, leaf.dtype), tree)
