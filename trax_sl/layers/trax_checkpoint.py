"""Trax's weights files (`.pkl.gz`), read without running the code a pickle may hold.

Trax saves a model (`save_to_file`, and its training checkpoints
`model.pkl.gz`) as a gzipped pickle of a dict: `flat_weights` and
`flat_state` (the leaves of the weights and state trees, in order),
`input_signature`, and for checkpoints `step`, `slots`, `opt_params`,
`history`. A pickle names the functions it calls when loaded, so an
ordinary `pickle.load` of a file from elsewhere runs whatever it names
(`os.system`, ...). This reader resolves only an allowlist: numpy's array
reconstruction, plain containers and scalars, and Trax's `ShapeDtype` and
`History`, mapped onto plain stand-ins; any other name stops the read with
`pickle.UnpicklingError` before it is called. Object arrays (which would
hold pickled Python objects) are refused too. This module is the only place
in trax_sl where pickle is read.

`read(path)` returns the dict; `Layer.init_from_file` uses `assign` to put
its leaves into a layer's weights and state trees (matched by order and
shape, as Trax matches them, the copies a `Repeat` stacks each in turn).
"""

from __future__ import annotations

import collections
import gzip
import pickle

import jax
import numpy as np
from absl import logging

from trax_sl import shapes

GZIP_MAGIC = b"\x1f\x8b"


class TraxShapeDtype:
    """Stands in for `trax.shapes.ShapeDtype` while reading (slots state: shape, dtype)."""

    def __setstate__(self, state):
        slots = state[1] if isinstance(state, tuple) else state
        self.shape, self.dtype = tuple(slots["shape"]), slots["dtype"]


class TraxHistory:
    """Stands in for `trax.supervised.history.History` while reading: its values as a plain dict."""

    def __setstate__(self, state):
        self.values = state.get("_values", {}) if isinstance(state, dict) else {}


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_scalar():
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import scalar
    return scalar


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("builtins", "list"): lambda: list,
    ("builtins", "tuple"): lambda: tuple,
    ("builtins", "dict"): lambda: dict,
    ("builtins", "set"): lambda: set,
    ("builtins", "frozenset"): lambda: frozenset,
    ("builtins", "complex"): lambda: complex,
    ("collections", "defaultdict"): lambda: collections.defaultdict,
    ("collections", "OrderedDict"): lambda: collections.OrderedDict,
    ("trax.shapes", "ShapeDtype"): lambda: TraxShapeDtype,
    ("trax.supervised.history", "History"): lambda: TraxHistory,
}


class _AllowlistUnpickler(pickle.Unpickler):
    def __init__(self, file, where: str):
        super().__init__(file)
        self._where = where

    def find_class(self, module: str, name: str):
        make = _ALLOWED.get((module, name))
        if make is None:
            raise pickle.UnpicklingError(
                f"{self._where}: refuses to load {module}.{name}: a Trax weights file holds only numpy arrays, "
                f"plain containers, ShapeDtype and History (reading it would have called {module}.{name})"
            )
        return make()


def is_trax_file(path) -> bool:
    """Whether `path` is gzip-compressed (a Trax `.pkl.gz`), not trax_sl's zip."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def read(path) -> dict:
    """The dict in the Trax weights file `path`, read through the allowlist.

    Raises:
        pickle.UnpicklingError: If the file names anything outside the allowlist.
        ValueError: If it is not a dict with `flat_weights`, or holds object arrays.
    """
    where = f"Trax weights file {path}"
    with gzip.open(path, "rb") as f:
        content = _AllowlistUnpickler(f, where).load()
    if not isinstance(content, dict) or "flat_weights" not in content:
        raise ValueError(f"{where}: expected a dict with 'flat_weights', got {type(content).__name__}")
    if isinstance(content["flat_weights"], int):
        raise ValueError(  # noqa: TRY004  (a format trax_sl does not read, not a wrong type)
            f"{where}: its weights are in a separate .npy.gz file (Trax's large-model format), not read here"
        )
    for leaf in jax.tree.leaves(content, is_leaf=lambda x: isinstance(x, np.ndarray)):
        if isinstance(leaf, np.ndarray) and leaf.dtype == object:
            raise ValueError(f"{where}: holds an object array, which only pickled code could fill")
    return content


def input_signature(content: dict, n_in: int):
    """The first `n_in` items of the file's input signature as trax_sl `ShapeDtype`s, or None.

    Trax records the signature of a whole batch (inputs, targets, weights);
    a model takes the items it needs from the front, as Trax's stack does.
    """
    signature = content.get("input_signature")
    if signature is None:
        return None
    items = signature if isinstance(signature, (list, tuple)) else (signature,)
    items = tuple(shapes.ShapeDtype(s.shape, s.dtype) for s in items[:n_in])
    return items[0] if n_in == 1 else items


def assign(flat: list, layer, tree, what: str, where: str, given: str = "the file"):
    """`tree` (`layer`'s weights or state, as arrays or ShapeDtypes) with its leaves from `flat`, a list of arrays.

    Trax lists a model's arrays in the order its layers run, so the arrays
    are matched by order and shape, layer by layer: where trax_sl stacks the
    copies of a repeated block (`Repeat`, as the Transformer models build
    their blocks), the file's arrays of each copy in turn fill that copy's
    slice. A file array of the same size whose shape differs only by axes of
    size 1 (Trax keeps a leading 1 on positional-encoding tables) is
    reshaped. Trax's empty entries (`()`, None) in `flat` are skipped.
    `given` names where `flat` comes from in errors.
    """
    arrays = [np.asarray(x) for x in flat if not (x is None or (isinstance(x, tuple) and not x))]
    leaves, treedef = jax.tree.flatten(tree)
    slots = _slots(layer, tree, is_state=what == "state")
    if len(arrays) != len(slots):
        raise ValueError(
            f"{where}: {given} has {len(arrays)} {what} arrays, this model {len(slots)}; it holds another "
            f"model's (or configuration's)"
        )
    placed = [np.zeros(tuple(leaf.shape), leaf.dtype) for leaf in leaves]
    for i, (array, slot) in enumerate(zip(arrays, slots)):
        shape = tuple(leaves[slot.leaf].shape)[len(slot.copy) :]
        if array.shape != shape:
            if array.size != int(np.prod(shape)) or _squeezed(array.shape) != _squeezed(shape):
                raise ValueError(
                    f"{where}: {what} array {i} has shape {array.shape} in the file, this model's is {shape}"
                )
            array = array.reshape(shape)
        placed[slot.leaf][slot.copy] = array
    return jax.tree.unflatten(treedef, [jax.numpy.asarray(p) for p in placed])


def in_trax_order(layer, weights) -> list:
    """The arrays of `layer`'s `weights` as Trax lists them: each copy a `Repeat` stacks in turn.

    What `assign` reads back into the tree: the layout-free order in which a
    model's arrays match Trax's and those of the same model built with or
    without its blocks stacked.
    """
    leaves = jax.tree.leaves(weights)
    return [leaves[slot.leaf][slot.copy] for slot in _slots(layer, weights, is_state=False)]


def convert_weights(weights, from_layer, to_layer, input_signature):
    """`from_layer`'s `weights` in `to_layer`'s tree: the same model laid out otherwise.

    For a model built with and without its blocks stacked (`scan_layers`):
    the arrays are matched in Trax's order (`in_trax_order`), each copy of a
    `Repeat` in turn, and checked against the shapes `to_layer` expects for
    `input_signature`. E.g. decode with the unrolled blocks of a model
    trained with scanned ones:

        decoder = models.TransformerLM(..., mode='predict', scan_layers=False)
        decoder_weights = convert_weights(weights, trained, decoder, signature)

    Raises:
        ValueError: If the two layers do not hold the same arrays.
    """
    signature, _ = to_layer.weights_and_state_signature(input_signature)
    where = f"convert_weights({from_layer.name} -> {to_layer.name})"
    given = f"{from_layer.name}'s tree"
    return assign(in_trax_order(from_layer, weights), to_layer, signature, "weight", where, given)


def _slots(layer, tree, is_state: bool) -> list[_Slot]:
    leaves, treedef = jax.tree.flatten(tree)
    slots = jax.tree.unflatten(treedef, [_Slot(i, ()) for i in range(len(leaves))])
    return _in_trax_order(layer, slots, is_state)


class _Slot:
    """Where one array of a Trax file goes: leaf `leaf` of the tree, at index `copy` of its stacked axes."""

    def __init__(self, leaf: int, copy: tuple[int, ...]):
        self.leaf, self.copy = leaf, copy

    def in_copy(self, r: int) -> _Slot:
        return _Slot(self.leaf, (*self.copy, r))


def _in_trax_order(layer, tree, is_state: bool) -> list[_Slot]:
    """The slots of `tree` (`layer`'s weights or, `is_state`, state: a tree of `_Slot`s) in Trax's order.

    A shared layer's tree after its first use (SHARED) has no slots, as Trax lists its arrays once.
    """
    subs = layer.sublayers
    if is_state and layer.state_per_copy:
        # A predict-mode Repeat's state is a tuple of the copies' own.
        return [slot for copy in tree for slot in _in_trax_order(subs[0], copy, is_state)]
    if layer.stacked_copies:  # One tree per copy, each copy's arrays in turn.
        return [
            slot
            for r in range(layer.stacked_copies)
            for slot in _in_trax_order(subs[0], jax.tree.map(lambda s, r=r: s.in_copy(r), tree), is_state)
        ]
    if layer.weights_are_sublayers:
        return _in_trax_order(subs[0], tree, is_state)
    if subs and isinstance(tree, tuple) and len(tree) == len(subs):
        return [slot for sub, sub_tree in zip(subs, tree) for slot in _in_trax_order(sub, sub_tree, is_state)]
    return jax.tree.leaves(tree)


def state_or_none(content: dict, layer, state_signature, where: str):
    """The file's state placed in `state_signature`'s tree, or None (logged) when its arrays do not fit.

    Trax keeps state that trax_sl layers do not (a `Dropout` keeps its rate),
    so a Trax model's state often has other arrays than the same trax_sl
    model's; then the model keeps its freshly initialized state.
    """
    try:
        return assign(content.get("flat_state") or [], layer, state_signature, "state", where)
    except ValueError:
        n_file = len([x for x in content.get("flat_state") or [] if isinstance(x, np.ndarray)])
        logging.warning(
            "%s: the file's state (%d arrays) does not fit this model's (%d arrays); the model keeps its "
            "initial state (Trax layers keep state that trax_sl's do not, such as Dropout's rate)",
            where,
            n_file,
            len(jax.tree.leaves(state_signature)),
        )
        return None


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)
