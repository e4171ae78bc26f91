"""Where Trax's trainers run: the local devices a batch is split over."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def check_trainer_devices(where: str, n_devices: int | None, adasum: bool) -> int:
    """The number of local devices a trainer splits batches over (all by default); raises for what is not supported."""
    if adasum:
        raise ValueError(
            f"{where}: adasum=True (Adasum gradient merging) is not supported; gradients are averaged "
            "over the batch as one (adasum=False)"
        )
    n_devices = n_devices or jax.local_device_count()
    if n_devices > jax.local_device_count():
        raise ValueError(f"{where}: n_devices={n_devices}, but this process has {jax.local_device_count()}")
    return n_devices


def placed_on(mesh: Mesh, n_devices: int, x):
    """A batch array split over the mesh's devices on its leading axis (replicated if it does not divide)."""
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    divides = x.ndim and x.shape[0] % n_devices == 0
    spec = PartitionSpec("batch") if divides else PartitionSpec()
    return jax.device_put(x, NamedSharding(mesh, spec))
