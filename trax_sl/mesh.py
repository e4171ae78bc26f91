"""Device meshes: every mesh trax_sl runs on is made here.

The training loop's mesh (`make_mesh`) has the three axes of `MESH_AXES`:
'data' (batches split, weights replicated), 'fsdp' (batches split and the
large weights too: fully sharded data parallelism) and 'tensor' (the heads
and hidden units of a layer split: Megatron-style tensor parallelism). The
user gives their sizes as a dict (`{'fsdp': 8}`); missing axes have size 1,
which makes them no-ops. How each weight maps onto the axes is
`trax_sl.partitioning`'s.

`data_parallel_mesh` is the one-axis mesh of the pmap-style helpers:
`Accelerate` and `jit_forward` (this process's devices, Trax's pmap axis
'batch', `trax_sl.layers.acceleration.AXIS_NAME`) and `shard` (`DATA_AXIS`).

Devices are ordered process by process, so that each process's devices hold
one contiguous slice of a batch: its own part.

Axis types are Auto: the partitioner propagates shardings from the few that
are constrained (explicit axes would make the batch sharding part of every
intermediate's type).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
TENSOR_AXIS = "tensor"
MESH_AXES = (DATA_AXIS, FSDP_AXIS, TENSOR_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)  # The mesh axes a batch's leading axis is split over.


def make_mesh(mesh_shape: dict | None = None, n_devices: int | None = None) -> Mesh:
    """The training mesh: axes `MESH_AXES` over the first `n_devices` local devices of every process.

    Args:
        mesh_shape: Axis name -> size, e.g. `{'fsdp': 8}` or `{'data': 2,
            'fsdp': 2, 'tensor': 2}`; missing axes have size 1 and one size may
            be -1 for the devices left. None puts every device on 'data'.
        n_devices: Devices per process; None for all local devices.

    Raises:
        TypeError: If mesh_shape is not a dict.
        ValueError: On an unknown axis, a size that is not a positive int (or
            one -1), sizes whose product is not the number of devices, or (with
            several processes) a 'tensor' axis that spans processes.
    """
    devices = data_parallel_mesh(n_devices).devices.flatten()
    sizes = _axis_sizes({DATA_AXIS: -1} if mesh_shape is None else mesh_shape, len(devices))
    if jax.process_count() > 1 and (len(devices) // jax.process_count()) % sizes[-1]:
        raise ValueError(
            f"mesh_shape {dict(mesh_shape)}: the 'tensor' axis ({sizes[-1]}) must divide the "
            f"{len(devices) // jax.process_count()} devices of each process (a tensor-parallel group "
            f"works on one slice of the batch, which one process reads)"
        )
    return _reshaped(tuple(devices), sizes)


@functools.cache
def _reshaped(devices: tuple, sizes: tuple[int, ...]) -> Mesh:
    # Cached so that equal arguments give the same mesh (and jit's caches hit).
    grid = np.empty(len(devices), dtype=object)
    grid[:] = devices
    return Mesh(grid.reshape(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def _axis_sizes(mesh_shape, n_devices: int) -> tuple[int, ...]:
    """The size of each axis of MESH_AXES, checked, with a -1 resolved."""
    if not isinstance(mesh_shape, dict):
        raise TypeError(
            f"mesh_shape must be a dict of axis name to size, e.g. {{'fsdp': 8}}, got {mesh_shape!r}"
        )
    unknown = sorted(set(mesh_shape) - set(MESH_AXES), key=str)
    if unknown:
        raise ValueError(f"mesh_shape {mesh_shape}: unknown axes {unknown}; the axes are {list(MESH_AXES)}")
    sizes = [mesh_shape.get(axis, 1) for axis in MESH_AXES]
    for axis, size in zip(MESH_AXES, sizes):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not (size >= 1 or size == -1):
            raise ValueError(
                f"mesh_shape {mesh_shape}: the size of {axis!r} must be an int >= 1 or -1, got {size!r}"
            )
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh_shape {mesh_shape}: at most one axis may be -1 (the devices left)")
    known = math.prod(size for size in sizes if size != -1)
    if -1 in sizes:
        if n_devices % known:
            raise ValueError(
                f"mesh_shape {mesh_shape}: the other axes ({known} devices) do not divide the {n_devices} devices"
            )
        sizes[sizes.index(-1)] = n_devices // known
    elif known != n_devices:
        raise ValueError(
            f"mesh_shape {mesh_shape} has {known} devices but the run has {n_devices} "
            f"({jax.process_count()} process(es) x {n_devices // jax.process_count()}); make the sizes "
            f"multiply to {n_devices}, give one axis -1, or set n_devices (per process) to use fewer"
        )
    return tuple(int(size) for size in sizes)


def data_parallel_mesh(
    n_devices: int | None = None, *, axis_name: str = DATA_AXIS, all_processes: bool = True
) -> Mesh:
    """A one-axis mesh over the first `n_devices` local devices of every process (or of this one).

    Devices are ordered process by process, so that each process's devices
    hold one contiguous slice of the batch: its own part. Equal arguments
    give the same mesh object.

    Args:
        n_devices: Devices per process; None for all local devices.
        axis_name: The name of the mesh's axis.
        all_processes: Whether the mesh spans every process (for global
            arrays, as a training loop's) or only this one's devices (for
            arrays of this process, as `Accelerate`'s).

    Raises:
        ValueError: Unless n_devices is an int between 1 and the number of local devices.
    """
    n_local = jax.local_device_count()
    n_devices = n_local if n_devices is None else n_devices
    if (
        isinstance(n_devices, bool)
        or not isinstance(n_devices, (int, np.integer))
        or not 1 <= n_devices <= n_local
    ):
        raise ValueError(
            f"n_devices must be an int between 1 and the {n_local} local device(s) "
            f"({jax.default_backend()}), got n_devices={n_devices!r}"
        )
    return _mesh(int(n_devices), axis_name, all_processes)


@functools.cache
def _mesh(n_devices: int, axis_name: str, all_processes: bool) -> Mesh:
    # Cached: Accelerate asks for its mesh at every call.
    devices = jax.devices() if all_processes else jax.local_devices()
    by_process = sorted(devices, key=lambda d: (d.process_index, d.id))
    chosen = [
        device
        for _, group in itertools.groupby(by_process, key=lambda d: d.process_index)
        for device in list(group)[:n_devices]
    ]
    return Mesh(np.asarray(chosen), (axis_name,), axis_types=(AxisType.Auto,))
