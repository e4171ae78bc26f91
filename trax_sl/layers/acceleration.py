"""Running layers data parallel over devices: Accelerate and Trax's device helpers.

`Accelerate` compiles a layer with `jax.jit` over a one-axis `Mesh` named
'batch' (`trax_sl.mesh`'s data-parallel mesh, with Trax's axis name): inputs are split on their leading (batch) axis, weights are
replicated, and XLA's SPMD partitioner runs each device on its part of the
batch. The computation keeps the plain layer's global semantics, so results
equal the plain layer's (batch statistics and dropout masks included).

The functions keep Trax's pmap-style conventions, where a replicated or
per-device value has a leading axis of size `n_devices`: `for_n_devices`
makes such values, `reshape_by_device` splits a batch that way, and
`jit_forward` runs a forward function on each device's part of the batch
(through `jax.shard_map`), with `mean_or_pmean` averaging across devices.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from trax_sl.layers import base
from trax_sl.mesh import data_parallel_mesh

AXIS_NAME = "batch"  # The mesh axis the batch is split over (Trax's pmap axis_name).


def _check_n_devices(n_devices: int, where: str) -> int:
    available = jax.local_device_count()
    if not isinstance(n_devices, (int, np.integer)) or isinstance(n_devices, bool) or n_devices < 1:
        raise ValueError(f"{where}: n_devices must be a positive int, got n_devices={n_devices!r}")
    if n_devices > available:
        raise ValueError(
            f"{where}: n_devices={n_devices} is more than the {available} local device(s) "
            f"({jax.default_backend()})"
        )
    return int(n_devices)


def _mesh(n_devices: int) -> Mesh:
    """The one-axis 'batch' mesh over the first n_devices local devices."""
    return data_parallel_mesh(n_devices, axis_name=AXIS_NAME, all_processes=False)


def _batch_sharding(n_devices: int) -> NamedSharding:
    return NamedSharding(_mesh(n_devices), PartitionSpec(AXIS_NAME))


def _replicated_sharding(n_devices: int) -> NamedSharding:
    return NamedSharding(_mesh(n_devices), PartitionSpec())


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray)) and not isinstance(leaf, jax.core.Tracer)


def _has_shared(weights) -> bool:
    return any(base.is_shared(leaf) for leaf in jax.tree.leaves(weights, is_leaf=base.is_shared))


def _run_sharded(layer: Accelerate, x, weights, state, rng):
    """Runs layer's sublayer with the batch split over its devices, weights and state replicated.

    A batch that does not divide by the number of devices is split unevenly:
    the partitioner pads it and masks the padding out of reductions. JAX
    arrays cannot hold such a layout, so it stays inside: uneven inputs enter
    replicated, and outputs leave split only where their leading axis divides.
    """
    n = layer.n_devices
    batch, replicated = _batch_sharding(n), _replicated_sharding(n)

    def split(a):
        if not jnp.ndim(a):
            return jax.lax.with_sharding_constraint(a, replicated)
        if a.shape[0] % n:
            a = jax.lax.with_sharding_constraint(a, replicated)
        return jax.lax.with_sharding_constraint(a, batch)

    def join(a):
        divides = jnp.ndim(a) > 0 and a.shape[0] % n == 0
        return jax.lax.with_sharding_constraint(a, batch if divides else replicated)

    x = jax.tree.map(split, x)
    weights, state = jax.lax.with_sharding_constraint((weights, state), replicated)
    # The one sublayer needs no index in error paths (Accelerate > Serial > ...).
    y, new_state = layer.sublayer.pure_fn(x, weights, state, rng)
    return jax.tree.map(join, y), jax.lax.with_sharding_constraint(new_state, replicated)


_run_sharded_jit = jax.jit(_run_sharded, static_argnums=0)


class Accelerate(base.WrapsOneLayer):
    """Accelerates a layer, running it data parallel on several devices.

    By default it uses all local devices: the input is split on its first
    (batch) axis, each device computes on its part, and the weights are
    replicated on every device. With one device it just compiles the layer.
    Built on `jax.jit` over a 'batch' `Mesh`: the layer keeps its global
    semantics, so the output (and the new state) equals the plain layer's,
    whether or not the batch divides by the number of devices; the compiler
    pads an uneven batch internally and masks the padding out of reductions,
    so unlike Trax's explicit zero-padding it does not change batch
    statistics (BatchNorm), and the same rng gives the same dropout masks.

    It needs no `init` when the layer has been initialized::

        layer = tl.Serial(...)
        layer.init(...)
        fast_layer = tl.Accelerate(layer)
        y = fast_layer(x)  # Split x on batch and run data parallel.

    To set new weights, use `fast_layer.replicate_weights(new_weights)`
    instead of `layer.weights = new_weights`.

    n_in, n_out: the layer's. Every stack item `[batch, ...]` (Sequences too)
    is split on its leading axis. Weights and state are `(layer_weights,)`
    and `(layer_state,)`, as in other one-sublayer combinators.

    Predict mode: the state is the layer's; streams like the layer.
    """

    # Its weights are the sublayer's replicated; the sublayer keeps its own cache.
    cache_follows_sublayers = False

    def __init__(self, layer: base.Layer, n_devices: int | None = None):
        """Wraps `layer`.

        Args:
            layer: The layer to run data parallel.
            n_devices: How many local devices to use (the first ones); None or
                0 (as in Trax) means all of them.
        """
        if not isinstance(layer, base.Layer):
            raise TypeError(f"Accelerate: expected a Layer to accelerate, got {type(layer).__name__}")
        n_devices = _check_n_devices(n_devices or jax.local_device_count(), "Accelerate")
        super().__init__(n_in=layer.n_in, n_out=layer.n_out, name="Accelerate", sublayers_to_print=[layer])
        self._sublayers = (layer,)
        self._n_devices = n_devices

    @property
    def n_devices(self) -> int:
        return self._n_devices

    # --- Computation -----------------------------------------------------------

    def forward(self, x, weights, state, rng):
        if _has_shared(weights):
            # Shared weights resolve against the enclosing call's tree, which a
            # cached trace would keep stale: trace this call afresh.
            y, new_state = jax.jit(lambda *args: _run_sharded(self, *args))(x, weights[0], state[0], rng)
        else:
            y, new_state = _run_sharded_jit(self, x, weights[0], state[0], rng)
        return y, (new_state,)

    def pure_fn(self, x, weights, state, rng):
        """Calls `self.sublayer.pure_fn` in an accelerated (compiled, data-parallel) way.

        Concrete arrays are first placed on this layer's devices; inside a
        trace (jit, grad) the sharding becomes part of the enclosing computation.
        """
        return super().pure_fn(
            self._place_batch(x), self._place_replicated(weights), self._place_replicated(state), rng
        )

    def _place_batch(self, x):
        """Puts concrete inputs on this layer's devices, split on the batch axis where it divides."""

        def place(leaf):
            if not _is_array(leaf):
                return leaf
            divides = np.ndim(leaf) > 0 and np.shape(leaf)[0] % self._n_devices == 0
            return jax.device_put(
                leaf, _batch_sharding(self._n_devices) if divides else _replicated_sharding(self._n_devices)
            )

        return jax.tree.map(place, x)

    def _place_replicated(self, tree):
        return jax.tree.map(
            lambda a: jax.device_put(a, _replicated_sharding(self._n_devices)) if _is_array(a) else a, tree
        )

    # --- Interactive use: a replicated copy of the sublayer's cache -------------

    def init(self, input_signature, rng=None):
        """Calls `self.sublayer.init` and replicates its values onto devices.

        Returns `((weights,), (state,))`, replicated; the sublayer's cache gets
        `weights` and `state`.
        """
        super().init(input_signature, rng)  # Its assignments replicate (the weights and state setters).
        return self._cached("weights"), self._cached("state")

    def replicate_weights(self, weights) -> None:
        """Sets the weights of the sublayer and replicates them for this layer."""
        self.sublayer.weights = weights
        self._set_cached("weights", self._place_replicated((weights,)))
        self._own_initialized = True

    def replicate_state(self, state) -> None:
        """Sets the state of the sublayer and replicates it for this layer."""
        self.sublayer.state = state
        self._set_cached("state", self._place_replicated((state,)))

    def _adopt_sublayer_cache(self) -> None:
        """Replicates an initialized sublayer's cache when this layer has none of its own."""
        sub = self.sublayer
        if not self._initialized and (jax.tree.leaves(sub.weights) or jax.tree.leaves(sub.state)):
            self.replicate_weights(sub.weights)
            self.replicate_state(sub.state)

    @property
    def weights(self):
        """This layer's weights, `(sublayer_weights,)` replicated on every device.

        Taken from the sublayer when only the sublayer was initialized.
        """
        self._adopt_sublayer_cache()
        return self._cached("weights")

    @weights.setter
    def weights(self, weights):
        self.replicate_weights(self._unwrap("weights", weights))

    @property
    def state(self):
        """This layer's state, `(sublayer_state,)` replicated on every device."""
        self._adopt_sublayer_cache()
        return self._cached("state")

    @state.setter
    def state(self, state):
        self.replicate_state(self._unwrap("state", state))

    def _unwrap(self, what: str, tree):
        if not isinstance(tree, tuple) or len(tree) != 1:
            raise ValueError(
                f"Accelerate.{what} must be a 1-tuple (sublayer_{what},), got {type(tree).__name__} "
                f"of length {len(tree) if isinstance(tree, tuple) else 1}; to set the sublayer's "
                f"{what} use replicate_{what}"
            )
        return tree[0]

    def __call__(self, x, weights=None, state=None, rng=None):
        """Runs the layer interactively; the new state also goes to the sublayer's cache."""
        self._adopt_sublayer_cache()
        outputs = super().__call__(
            self._place_batch(x),
            None if weights is None else self._place_replicated(weights),
            None if state is None else self._place_replicated(state),
            rng,
        )
        self.sublayer.state = self._cached("state")[0]
        return outputs


# --- Trax's pmap-style device helpers ------------------------------------------


def _axis_size(axis_name: str) -> int | None:
    """The size of a bound mapped axis (shard_map, vmap), or None outside one."""
    try:
        return jax.lax.axis_size(axis_name)
    except NameError:
        return None


def mean_or_pmean(n_devices: int, x, axis: int | None = None, *, axis_name: str = AXIS_NAME):
    """Computes the mean of a distributed value `x`.

    Outside a device-mapped function `x` holds one entry per device on its
    leading axis (as `jit_forward` returns per-device values): `axis=0`
    averages across devices, `axis=None` over everything. Inside one (a
    `jax.shard_map` or `jit_forward` over `axis_name`) `x` is this device's
    value and the mean across devices is a `jax.lax.pmean`.

    Args:
        n_devices: Number of devices (checked against the mapped axis).
        x: Distributed array.
        axis: Axis along which to compute means; can only be `0` or `None`.
        axis_name: The mapped axis of the devices (an extension of Trax).

    Returns:
        A local array.
    """
    if axis not in (None, 0):
        raise ValueError(f"mean_or_pmean: axis can only be None or 0, got axis={axis!r}")
    size = _axis_size(axis_name)
    if size is None:
        return jnp.mean(x, axis=axis)
    if size != n_devices:
        raise ValueError(
            f"mean_or_pmean: n_devices={n_devices} but the mapped axis {axis_name!r} spans {size} devices"
        )
    x = jax.lax.pmean(x, axis_name)
    return x if axis == 0 else jnp.mean(x)


def jit_forward(forward: Callable, n_devices: int, do_mean: bool = True) -> Callable:
    """Returns a JIT-compiled forward function running on `n_devices`.

    `forward(x, weights, state, rng) -> (outputs, state)`, like a layer's
    `pure_fn`. With n_devices > 1 the returned function has pmap semantics:
    `weights` and `state` hold one copy per device on a leading axis (see
    `for_n_devices`), each device runs `forward` on its part of the batch
    (inside a `jax.shard_map` over 'batch', so `mean_or_pmean` works there)
    with its own rng from `jax.random.split(rng, n_devices)`, the outputs are
    joined back into one batch (per-device scalars become a `[n_devices]`
    array) and the new state keeps one entry per device; with `do_mean` each
    output is then averaged over its axis 0 (as in Trax: across devices for
    per-device scalars, else over the joined batch). n_devices = 1 compiles
    `forward` as it is and n_devices = 0 compiles it for the CPU, without
    averaging (as in Trax).
    """
    if n_devices == 0:
        return _jit_on_cpu(forward)
    n_devices = _check_n_devices(n_devices, "jit_forward")
    if n_devices == 1:
        return jax.jit(forward)

    def per_device(x, weights, state, rngs):
        # Each device sees its [1, ...] slice of every argument.
        x, weights, state, rng = jax.tree.map(lambda a: a[0], (x, weights, state, rngs))
        outputs, new_state = forward(x, weights, state, rng)
        return jax.tree.map(lambda a: a[None], (outputs, new_state))

    spec = PartitionSpec(AXIS_NAME)
    mapped = jax.shard_map(per_device, mesh=_mesh(n_devices), in_specs=spec, out_specs=spec)

    @jax.jit
    def predict(x, weights, state, rng):
        for path, a in jax.tree_util.tree_leaves_with_path((weights, state)):
            if not jnp.shape(a) or jnp.shape(a)[0] != n_devices:
                raise ValueError(
                    f"jit_forward: weights and state need one copy per device on a leading axis of "
                    f"size n_devices={n_devices} (see for_n_devices), got shape {jnp.shape(a)} at "
                    f"{'weights' if path[0].idx == 0 else 'state'}{jax.tree_util.keystr(path[1:])}"
                )
        rngs = None if rng is None else jax.random.split(rng, n_devices)
        outputs, new_state = mapped(reshape_by_device(x, n_devices), weights, state, rngs)
        outputs = jax.tree.map(_combine_devices, outputs)
        if do_mean:
            outputs = jax.tree.map(lambda y: mean_or_pmean(n_devices, y, axis=0), outputs)
        return outputs, new_state

    return predict


def _combine_devices(y):
    """[n_devices, batch, ...] -> [n_devices * batch, ...]; per-device scalars stay [n_devices]."""
    return y if y.ndim < 2 else jnp.reshape(y, (-1,) + y.shape[2:])


def _jit_on_cpu(forward: Callable) -> Callable:
    compiled = jax.jit(forward)

    def on_cpu_forward(x, weights, state, rng):
        return compiled(*on_cpu((x, weights, state, rng)))

    return on_cpu_forward


def reshape_by_device(x, n_devices: int, pure_np: bool = False):
    """Reshapes possibly nested `x` into a shape `(n_devices, ...)`.

    Each array (and each Sequence's values and mask) `[batch, ...]` becomes
    `[n_devices, batch // n_devices, ...]`; with `pure_np` as NumPy arrays.
    """

    def split(a):
        shape = np.shape(a)
        if not shape or shape[0] % n_devices:
            raise ValueError(
                f"reshape_by_device: number of devices ({n_devices}) does not evenly divide batch size "
                f"(leading axis of shape {shape})"
            )
        new_shape = (n_devices, shape[0] // n_devices) + shape[1:]
        return np.reshape(a, new_shape) if pure_np else jnp.reshape(jnp.asarray(a), new_shape)

    return jax.tree.map(split, x)


def for_n_devices(x, n_devices: int):
    """Replicates/broadcasts `x` for `n_devices`.

    With n_devices > 1 each array gets a leading axis of size n_devices,
    entry i stored on local device i (pmap's layout); inside a trace, a
    broadcast. With n_devices = 1, `x` as it is.
    """
    if n_devices <= 1:
        return x
    n_devices = _check_n_devices(n_devices, "for_n_devices")
    devices = jax.local_devices()[:n_devices]
    sharding = _batch_sharding(n_devices)

    def replicate(a):
        if isinstance(a, jax.core.Tracer):
            return jnp.broadcast_to(a, (n_devices,) + a.shape)
        one = (a if isinstance(a, jax.Array) else np.asarray(a))[None]
        copies = [jax.device_put(one, device) for device in devices]
        return jax.make_array_from_single_device_arrays((n_devices,) + one.shape[1:], sharding, copies)

    return jax.tree.map(replicate, x)


def on_cpu(x):
    """Puts `x` in CPU memory in JAX."""
    return jax.device_put(x, jax.devices("cpu")[0])


def _accelerators() -> list:
    found = []
    for backend in ("gpu", "tpu"):
        try:
            found += jax.devices(backend)
        except RuntimeError:  # No such backend here.
            pass
    return found


def on_accelerator(x):
    """Puts `x` in (single) accelerator memory in JAX.

    On the accelerator when there is exactly one; on the default device when
    there is none (CPU-only machines); left where it is when there are several
    (as in Trax: it is to be split over them).
    """
    accelerators = _accelerators()
    if len(accelerators) > 1:
        return x
    return jax.device_put(x, accelerators[0] if accelerators else jax.devices()[0])
