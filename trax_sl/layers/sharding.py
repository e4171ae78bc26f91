"""Splitting weights across devices along one axis (Trax's base.shard family)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from trax_sl.mesh import DATA_AXIS, data_parallel_mesh


def _axis_to_shard(shape) -> int:
    """Small arrays split on their first axis, larger ones on their last."""
    return 0 if len(shape) < 3 else -1


def _n_shards(n_shards):
    return jax.local_device_count() if n_shards is None else n_shards


def shard(tensors, n_shards: int | None = None):
    """Splits each array into n_shards pieces stacked on a new leading axis.

    Device i of the local devices holds piece `i % n_shards`, the layout that
    `pmap`/`shard_map` over a leading device axis expects.
    """
    n_shards = _n_shards(n_shards)
    mesh = data_parallel_mesh(all_processes=False)
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))

    def shard_one(x):
        axis = _axis_to_shard(np.shape(x))
        if np.shape(x)[axis] % n_shards:
            raise ValueError(
                f"shard: cannot split shape {np.shape(x)} into {n_shards} equal pieces along axis {axis}"
            )
        pieces = np.split(np.asarray(x), n_shards, axis=axis)
        stacked = np.stack([pieces[i % n_shards] for i in range(mesh.devices.size)])
        return jax.device_put(stacked, sharding)

    return jax.tree.map(shard_one, tensors)


def unshard(tensors, n_shards: int | None = None):
    """Inverse of `shard`, outside of pmap; the result lives in host memory."""
    n_shards = _n_shards(n_shards)

    def unshard_one(x):
        pieces = list(np.asarray(x)[:n_shards])
        return np.concatenate(pieces, axis=_axis_to_shard(pieces[0].shape))

    return jax.tree.map(unshard_one, tensors)


def unshard_in_pmap(tensors, n_shards: int, axis_name: str = "batch"):
    """Inverse of `shard` inside pmap/shard_map over `axis_name` (per-device pieces)."""

    def unshard_one(x):
        gathered = jax.lax.all_gather(x, axis_name)
        group = jax.lax.axis_index(axis_name) // n_shards
        mine = jax.lax.dynamic_slice_in_dim(gathered, group * n_shards, n_shards, axis=0)
        return jnp.concatenate(list(mine), axis=_axis_to_shard(x.shape))

    return jax.tree.map(unshard_one, tensors)
