"""The names Trax code imports from `trax.fastmath`, mapped onto JAX.

Trax's `fastmath` dispatches to a backend (JAX, or TensorFlow-NumPy); here
JAX is the only backend, so `from trax_sl.fastmath import numpy as jnp` is
`jax.numpy`, `fastmath.random.get_prng(seed)` a JAX key, and the ops are
JAX's. The nested-structure helpers (`nested_map`, `tree_flatten`,
`tree_unflatten`, ...) keep Trax's rules: lists, tuples and dicts are
containers (JAX's pytrees also look into Sequences and other registered
nodes), and `None` leaves are skipped where Trax skips them.
"""

from __future__ import annotations

import contextlib
import enum
import types

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy import special

numpy = jnp


def _randint(key, shape, minval, maxval, dtype=np.int32):
    return jax.random.randint(key, shape, minval, maxval, dtype)


random = types.SimpleNamespace(
    get_prng=jax.random.PRNGKey,
    split=lambda prng, num=2: jax.random.split(prng, num),
    fold_in=jax.random.fold_in,
    uniform=jax.random.uniform,
    randint=_randint,
    normal=jax.random.normal,
    bernoulli=jax.random.bernoulli,
)

logsumexp = special.logsumexp
expit = special.expit
sigmoid = special.expit
erf = special.erf
top_k = lax.top_k
sort_key_val = lax.sort_key_val
scan = lax.scan
map = lax.map
fori_loop = lax.fori_loop
cond = lax.cond
lt = lax.lt
dynamic_slice = lax.dynamic_slice
dynamic_slice_in_dim = lax.dynamic_slice_in_dim
dynamic_update_slice = lax.dynamic_update_slice
dynamic_update_slice_in_dim = lax.dynamic_update_slice_in_dim
stop_gradient = lax.stop_gradient
remat = jax.checkpoint
jit = jax.jit
vmap = jax.vmap
grad = jax.grad
value_and_grad = jax.value_and_grad
vjp = jax.vjp
pmap = jax.pmap
psum = lax.psum
global_device_count = jax.device_count
local_device_count = jax.local_device_count


def index_update(x, idx, y):
    """`x` with `x[idx] = y` (Trax's name for `x.at[idx].set(y)`)."""
    return jnp.asarray(x).at[idx].set(y)


def index_add(x, idx, y):
    """`x` with `y` added at `idx`."""
    return jnp.asarray(x).at[idx].add(y)


def index_min(x, idx, y):
    """`x` with `min(x[idx], y)` at `idx`."""
    return jnp.asarray(x).at[idx].min(y)


def index_max(x, idx, y):
    """`x` with `max(x[idx], y)` at `idx`."""
    return jnp.asarray(x).at[idx].max(y)


def abstract_eval(f):
    """`f` on abstract values: returns a function from input signatures to output `ShapeDtypeStruct`s."""
    return lambda *args, **kwargs: jax.eval_shape(f, *args, **kwargs)


class Backend(enum.Enum):
    """The backends Trax names; JAX is the one here."""

    JAX = "jax"
    TFNP = "tensorflow-numpy"
    NUMPY = "numpy"


def backend_name() -> str:
    """'jax'."""
    return Backend.JAX.value


def is_backend(backend: Backend) -> bool:
    """Whether `backend` is the one in use (only JAX is)."""
    return backend == Backend.JAX


@contextlib.contextmanager
def use_backend(name):
    """Runs its block on `name`'s backend: JAX only, here."""
    value = name.value if isinstance(name, Backend) else name
    if value != Backend.JAX.value:
        raise ValueError(f"fastmath.use_backend: trax_sl runs on JAX only, got backend {value!r}")
    yield


# --- Nested structures (Trax's rules: lists, tuples and dicts are containers) ---------------------------------


def tree_flatten(tree) -> list:
    """The leaves of `tree` in order, Nones included."""
    if isinstance(tree, (list, tuple)):
        return [leaf for item in tree for leaf in tree_flatten(item)]
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in tree_flatten(value)]
    return [tree]


def tree_leaves(tree, ignore_nones: bool = True) -> list:
    """The leaves of `tree`, without Nones if `ignore_nones`."""
    return [leaf for leaf in tree_flatten(tree) if not ignore_nones or leaf is not None]


def tree_unflatten(flat, tree, copy_from_tree=None):
    """`(new_tree, rest)`: `tree`'s structure filled with the first items of `flat`, and the items left.

    A subtree equal to an item of `copy_from_tree` is kept as it is and takes
    nothing from `flat` (e.g. `copy_from_tree=[()]` for layers without weights).
    """
    for kept in copy_from_tree or ():
        try:
            if tree == kept:
                return tree, flat
        except (TypeError, ValueError):  # Arrays compared with other objects.
            continue
    if isinstance(tree, (list, tuple)):
        items, rest = [], flat
        for item in tree:
            new_item, rest = tree_unflatten(rest, item, copy_from_tree)
            items.append(new_item)
        return (tuple(items) if isinstance(tree, tuple) else items), rest
    if isinstance(tree, dict):
        values, rest = {}, flat
        for key, value in tree.items():
            values[key], rest = tree_unflatten(rest, value, copy_from_tree)
        return values, rest
    return flat[0], flat[1:]


def nested_map(f, obj, level: int = 0, ignore_nones: bool = True):
    """`obj` with `f` applied to each item `level` levels above the leaves (0: the leaves).

    Items made only of Nones stay None when `ignore_nones`.
    """
    if _is_at_level(obj, level):
        return None if ignore_nones and _is_made_of_nones(obj) else f(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # A namedtuple.
        return type(obj)(*nested_map(f, list(obj), level=level))
    if isinstance(obj, list):
        return [nested_map(f, item, level=level) for item in obj]
    if isinstance(obj, tuple):
        return tuple(nested_map(f, item, level=level) for item in obj)
    if isinstance(obj, dict):
        return {key: nested_map(f, value, level=level) for key, value in obj.items()}
    raise ValueError(f"nested_map: {obj!r} is neither a leaf nor a list, tuple or dict at level {level}")


def nested_map_multiarg(f, *objs, ignore_nones: bool = True):
    """`f` applied to the leaves of `objs` (of one structure) taken together."""
    first = objs[0]
    if isinstance(first, list):
        return [nested_map_multiarg(f, *(o[i] for o in objs)) for i in range(len(first))]
    if isinstance(first, tuple):
        return tuple(nested_map_multiarg(f, *(o[i] for o in objs)) for i in range(len(first)))
    if isinstance(first, dict):
        return {key: nested_map_multiarg(f, *(o[key] for o in objs)) for key in first}
    return None if ignore_nones and _is_made_of_nones(objs) else f(*objs)


def nested_zip(objs):
    """The structures in `objs` (all of one structure) as one, each leaf the tuple of their leaves."""
    if not isinstance(objs, (list, tuple)) or not objs:
        raise ValueError(f"nested_zip: expected a nonempty list or tuple of structures, got {objs!r}")
    if _is_at_level(objs, 1):
        return tuple(objs)
    first = objs[0]
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*nested_zip([list(o) for o in objs]))
    if isinstance(first, list):
        return [nested_zip([o[i] for o in objs]) for i in range(len(first))]
    if isinstance(first, tuple):
        return nested_zip([list(o) for o in objs])
    if isinstance(first, dict):
        return {key: nested_zip([o[key] for o in objs]) for key in first}
    raise ValueError(f"nested_zip: cannot zip {first!r}")


def nested_stack(objs, axis: int = 0, np_module=np):
    """The structures in `objs` as one, each leaf their leaves stacked on `axis`."""
    return nested_map(lambda leaves: np_module.stack(leaves, axis=axis), nested_zip(objs), level=1)


def _is_at_level(obj, level: int) -> bool:
    is_leaf = not isinstance(obj, (list, tuple, dict))
    if level == 0 or is_leaf:
        return (level == 0) == is_leaf
    items = obj.values() if isinstance(obj, dict) else obj
    return bool(items) and all(_is_at_level(item, level - 1) for item in items)


def _is_made_of_nones(obj) -> bool:
    leaves = tree_flatten(obj)
    return bool(leaves) and all(leaf is None for leaf in leaves)
