"""Where weights and activations live on a mesh: logical axes, and the rules that map them onto mesh axes.

Every weight-bearing layer names the logical axes of its weights
(`Layer.weight_axes`): a Dense kernel is `Axes('embed', 'mlp')`, an
Embedding table `Axes('vocab', 'embed')`, a norm scale `Axes('norm')`. A
rules table (`axis_rules`, overridable in gin) maps each logical axis to mesh
axes of `trax_sl.mesh.MESH_AXES`; `weight_shardings` turns a tree of weights
and their axes into `NamedSharding`s on a mesh:

- each array axis takes the mesh axes its logical axis maps to, in order,
  skipping mesh axes of size 1 (no-ops), ones already used by another axis of
  the array, and ones whose size the array axis does not divide;
- FSDP: a weight of at least `fsdp_min_size` elements that no rule put on
  'fsdp' gets its largest axis that 'fsdp' divides (never a 'layers' axis,
  which `Repeat` scans over) sharded over 'fsdp';
- weights whose layer declares no axes (`UNDECLARED`) are replicated, and
  the first time a layer class is met this way a log line names it.

The mesh shape alone picks the layout: on `{'data': 8}` every weight is
replicated, on `{'fsdp': 8}` the large ones are split eight ways, on
`{'data': 2, 'fsdp': 2, 'tensor': 2}` heads and hidden units are split over
'tensor' and the rest over 'fsdp'.

Activations: while a training or eval step is traced under
`batch_sharded_activations(mesh)`, `constrain_batch` (called at block
boundaries, e.g. by `Residual`) pins the leading (batch) axis of its arrays
to `trax_sl.mesh.BATCH_AXES`, so the partitioner never gathers a batch;
`lookup_rows` (`Embedding`, `PositionalEncoding`) gathers rows of a whole
table into batch-split activations.
"""

from __future__ import annotations

import contextlib
import math
import threading

import gin
import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl.mesh import BATCH_AXES, FSDP_AXIS, MESH_AXES, TENSOR_AXIS


class Axes(tuple):
    """The logical axis names of one weight array, one per array axis (a tree leaf).

    `Axes('embed', 'mlp')` names a `[d_model, d_ff]` kernel. None names an
    axis that is never sharded.
    """

    def __new__(cls, *names):
        for name in names:
            if name is not None and not isinstance(name, str):
                raise TypeError(f"Axes takes axis names (str or None), got {name!r}")
        return super().__new__(cls, names)

    def __repr__(self) -> str:
        return f"Axes{tuple.__repr__(self)}"

    def prepend(self, name: str | None) -> Axes:
        """These axes behind a new leading one (e.g. 'layers' for stacked copies)."""
        return Axes(name, *self)


class _Undeclared:
    """The axes of a weight whose layer declares none (a tree leaf): replicated. One instance: UNDECLARED."""

    def __repr__(self) -> str:
        return "UNDECLARED"

    def prepend(self, name: str | None) -> _Undeclared:
        return self


UNDECLARED = _Undeclared()

# Logical axis -> mesh axes (a name, a tuple of names, or None for never sharded).
DEFAULT_RULES = {
    "batch": BATCH_AXES,
    "vocab": TENSOR_AXIS,
    "embed": FSDP_AXIS,
    "mlp": TENSOR_AXIS,
    "heads": TENSOR_AXIS,
    "kv_heads": TENSOR_AXIS,
    "head_dim": None,
    "length": None,
    "norm": None,
    "conv_window": None,
    "conv_in": FSDP_AXIS,
    "conv_out": TENSOR_AXIS,
    "hidden": TENSOR_AXIS,
    "layers": None,
}
_NEVER_FSDP = frozenset({"layers"})


@gin.configurable(module="trax_sl.partitioning")
def axis_rules(overrides: dict | None = None, fsdp_min_size: int = 4096) -> tuple[dict, int]:
    """The rules table (`DEFAULT_RULES` updated with `overrides`) and the FSDP size threshold.

    In gin: `axis_rules.overrides = {'embed': None, 'mlp': ('fsdp', 'tensor')}`.

    Raises:
        ValueError: If a rule names a mesh axis that does not exist.
    """
    rules = {**DEFAULT_RULES, **(overrides or {})}
    for logical, target in rules.items():
        names = _names(target)
        if any(name not in MESH_AXES for name in names):
            raise ValueError(
                f"axis_rules: logical axis {logical!r} maps to {target!r}; mesh axes are {list(MESH_AXES)}"
            )
    return rules, fsdp_min_size


def _names(target) -> tuple[str, ...]:
    if target is None:
        return ()
    return (target,) if isinstance(target, str) else tuple(target)


def partition_spec(axes, shape, mesh: Mesh, rules: dict | None = None, fsdp_min_size: int = 4096):
    """The PartitionSpec of one array of `shape` whose logical axes are `axes` (see the module doc)."""
    if rules is None:
        rules, fsdp_min_size = axis_rules()
    shape = tuple(shape)
    if axes is UNDECLARED:
        return PartitionSpec()
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} name {len(axes)} array axes, but the weight has shape {list(shape)}")
    used: set[str] = set()
    spec: list = []
    for logical, size in zip(axes, shape):
        chosen: list[str] = []
        for mesh_axis in _names(rules.get(logical)):
            n = mesh.shape[mesh_axis]
            if n > 1 and mesh_axis not in used and size % (n * _size(mesh, chosen)) == 0:
                chosen.append(mesh_axis)
                used.add(mesh_axis)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    n_fsdp = mesh.shape[FSDP_AXIS]
    if n_fsdp > 1 and FSDP_AXIS not in used and math.prod(shape) >= fsdp_min_size:
        free = [
            i
            for i, (logical, size) in enumerate(zip(axes, shape))
            if spec[i] is None and logical not in _NEVER_FSDP and size % n_fsdp == 0
        ]
        if free:
            spec[max(free, key=lambda i: shape[i])] = FSDP_AXIS
    while spec and spec[-1] is None:
        spec.pop()
    return PartitionSpec(*spec)


def _size(mesh: Mesh, names) -> int:
    return math.prod(mesh.shape[name] for name in names)


def weight_shardings(axes_tree, weights, mesh: Mesh):
    """A NamedSharding per array of `weights` (arrays or ShapeDtypeStructs), from `axes_tree` (its axes)."""
    rules, fsdp_min_size = axis_rules()
    return jax.tree.map(
        lambda axes, w: NamedSharding(mesh, partition_spec(axes, w.shape, mesh, rules, fsdp_min_size)),
        axes_tree,
        weights,
    )


_logged_undeclared: set[str] = set()


def note_undeclared(layer_name: str) -> None:
    """Logs once per layer class that its weights declare no axes (and are replicated)."""
    if layer_name not in _logged_undeclared:
        _logged_undeclared.add(layer_name)
        logging.info(
            "%s declares no logical axes for its weights (Layer.weight_axes): they are replicated on "
            "every device, not sharded.",
            layer_name,
        )


def bytes_per_device(tree) -> int:
    """The bytes one device holds of the arrays of `tree` (the most any device holds)."""
    totals: dict = {}
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if sharding is None:
            continue
        nbytes = math.prod(sharding.shard_shape(leaf.shape)) * leaf.dtype.itemsize
        for device in sharding.device_set:
            totals[device] = totals.get(device, 0) + nbytes
    return max(totals.values(), default=0)


class _Active(threading.local):
    mesh: Mesh | None = None


_active = _Active()


@contextlib.contextmanager
def batch_sharded_activations(mesh: Mesh):
    """While tracing a step inside, `constrain_batch` splits batches over `BATCH_AXES` of `mesh`."""
    previous, _active.mesh = _active.mesh, mesh
    try:
        yield
    finally:
        _active.mesh = previous


def lookup_rows(table, indices, **take_options):
    """`jnp.take(table, indices, axis=0)` with its rows split by batch (inside `batch_sharded_activations`).

    With a 'tensor' axis the table is made whole first: rows gathered from a
    table split over 'tensor' and 'fsdp' come out split the table's way,
    which the partitioner can only re-split for the batch by replicating
    them (XLA's "involuntary full rematerialization"). Without one (FSDP,
    data parallel) the partitioner gathers from the split table itself, with
    less memory and time. Elsewhere a plain `jnp.take`.
    """
    mesh = _active.mesh
    if mesh is not None and mesh.shape[TENSOR_AXIS] > 1:
        table = jax.lax.with_sharding_constraint(table, NamedSharding(mesh, PartitionSpec()))
    return constrain_batch(jnp.take(table, indices, axis=0, **take_options))


def constrain_batch(tree):
    """`tree` with the leading axis of its arrays split over the batch axes (inside `batch_sharded_activations`).

    Arrays whose leading axis the batch axes do not divide, and everything
    outside a step being traced, are left as they are.
    """
    mesh = _active.mesh
    if mesh is None:
        return tree
    n = _size(mesh, BATCH_AXES)
    if n == 1:
        return tree
    sharding = NamedSharding(mesh, PartitionSpec(BATCH_AXES))

    def constrain(x):
        if isinstance(x, jax.Array) and x.ndim >= 1 and x.shape[0] % n == 0:
            return jax.lax.with_sharding_constraint(x, sharding)
        return x

    return jax.tree.map(constrain, tree)
