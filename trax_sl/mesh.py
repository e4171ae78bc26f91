"""Device meshes: the one-axis data-parallel mesh that trax_sl runs on.

Data parallelism in trax_sl has one layout: a one-axis `Mesh` whose axis
splits batches on their leading axis, with weights, state and optimizer state
replicated. `data_parallel_mesh` builds it for the training loop (the
devices of every process), for `Accelerate` and the pmap-style helpers (this
process's devices) and for `shard`. The axis is `DATA_AXIS`, except where
Trax's names are the API: `Accelerate`, `jit_forward` and `mean_or_pmean`
keep Trax's pmap axis 'batch' (`trax_sl.layers.acceleration.AXIS_NAME`).

Axis types are Auto: the partitioner propagates shardings from the few that
are constrained (explicit axes would make the batch sharding part of every
intermediate's type).
"""

from __future__ import annotations

import functools
import itertools

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

DATA_AXIS = "data"


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
