"""Initializers: functions `(shape, rng) -> array` for weights, as in Trax."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _fans(shape, out_dim: int = -1, in_dim: int = -2, nonreceptive_dims=None):
    """(fan_in, fan_out) of a weight shape; extra axes count as receptive field.

    Trax multiplies by the receptive field only for scalar shapes (an
    indentation slip), so its conv kernels get the fans of a 1x1 kernel; here
    the fans of a `[height, width, in, out]` kernel are `height * width * in`
    and `height * width * out`, as in variance scaling everywhere else.
    """
    shape = tuple(int(d) for d in shape)
    if nonreceptive_dims is None:
        nonreceptive_dims = ()
    elif not isinstance(nonreceptive_dims, (list, tuple)):
        nonreceptive_dims = (nonreceptive_dims,)
    if len(shape) > 1:
        excluded = {in_dim % len(shape), out_dim % len(shape)}
        excluded |= {d % len(shape) for d in nonreceptive_dims}
        receptive = int(np.prod([d for i, d in enumerate(shape) if i not in excluded]))
        return shape[in_dim] * receptive, shape[out_dim] * receptive
    if len(shape) == 1:
        return shape[0], shape[0]
    return 1, 1


def InitializerFromFile(path):  # noqa: N802
    """Returns an initializer that loads its array from a `.npy` file (no pickle)."""

    def init(shape, rng):
        del rng
        try:
            parameters = np.load(path, allow_pickle=False)
        except ValueError as e:  # An object array would need pickle, which runs code.
            raise ValueError(
                f"InitializerFromFile: cannot load {path} as a plain .npy array (pickled data "
                f"is refused): {e}"
            ) from e
        if not isinstance(parameters, np.ndarray):  # An .npz archive holds several arrays.
            parameters.close()
            raise TypeError(
                f"InitializerFromFile: {path} must hold one array (.npy), got {type(parameters).__name__}"
            )
        if tuple(parameters.shape) != tuple(shape):
            raise ValueError(
                f"InitializerFromFile: {path} holds shape {parameters.shape}, "
                f"the layer expects {tuple(shape)}"
            )
        return jnp.asarray(parameters)

    return init


def RandomNormalInitializer(stddev: float = 1e-2):  # noqa: N802
    """Returns an initializer of normal coefficients with standard deviation stddev."""

    def init(shape, rng):
        return (stddev * jax.random.normal(rng, tuple(shape))).astype(jnp.float32)

    return init


def RandomUniformInitializer(lim: float = 1.0):  # noqa: N802
    """Returns an initializer of uniform coefficients in [-lim, lim)."""

    def init(shape, rng):
        return jax.random.uniform(rng, tuple(shape), jnp.float32, -lim, lim)

    return init


def ScaledInitializer(out_dim, in_dim, scale, mode, distribution):  # noqa: N802
    """Returns an initializer whose variance is `scale / fan` (variance scaling).

    mode: 'fan_in', 'fan_out' or 'fan_avg'; distribution: 'truncated_normal',
    'normal' or 'uniform'.
    """
    if not scale > 0.0:  # Also rejects NaN.
        raise ValueError(f"ScaledInitializer: scale must be > 0, got {scale}")
    if mode not in ("fan_in", "fan_out", "fan_avg"):
        raise ValueError(f"ScaledInitializer: mode must be fan_in, fan_out or fan_avg, got {mode!r}")
    if distribution not in ("truncated_normal", "normal", "uniform"):
        raise ValueError(
            "ScaledInitializer: distribution must be truncated_normal, normal or "
            f"uniform, got {distribution!r}"
        )

    def init(shape, rng, nonreceptive_dims=None):
        shape = tuple(int(d) for d in shape)
        fan_in, fan_out = _fans(shape, out_dim, in_dim, nonreceptive_dims)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        gain = scale / fan
        if distribution == "truncated_normal":
            # The constant is the stddev of a standard normal truncated to [-2, 2].
            stddev = np.sqrt(gain) / 0.87962566103423978
            return (jax.random.truncated_normal(rng, -2.0, 2.0, shape) * stddev).astype(jnp.float32)
        if distribution == "normal":
            return (jax.random.normal(rng, shape) * np.sqrt(gain)).astype(jnp.float32)
        lim = np.sqrt(3.0 * gain)
        return jax.random.uniform(rng, shape, jnp.float32, -lim, lim)

    return init


def GlorotNormalInitializer(out_dim=-1, in_dim=-2, scale=1.0):  # noqa: N802
    """Returns a Glorot (fan_avg) normal initializer."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_avg", "normal")


def GlorotUniformInitializer(out_dim=-1, in_dim=-2, scale=1.0):  # noqa: N802
    """Returns a Glorot (fan_avg) uniform initializer."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_avg", "uniform")


def LeCunNormalInitializer(out_dim=-1, in_dim=-2, scale=1.0):  # noqa: N802
    """Returns a LeCun (fan_in) normal initializer."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_in", "normal")


def LeCunUniformInitializer(out_dim=-1, in_dim=-2, scale=1.0):  # noqa: N802
    """Returns a LeCun (fan_in) uniform initializer."""
    return ScaledInitializer(out_dim, in_dim, scale, "fan_in", "uniform")


def KaimingNormalInitializer(out_dim=-1, in_dim=-2, param=0.0):  # noqa: N802
    """Returns a Kaiming (He) normal initializer; param is the leak slope.

    The scale is Trax's `2 / sqrt(1 + param**2)` (He et al. use `2 / (1 +
    param**2)`); both are 2 for the default param=0.
    """
    return ScaledInitializer(out_dim, in_dim, 2.0 / np.sqrt(1 + param**2), "fan_in", "normal")


def KaimingUniformInitializer(out_dim=-1, in_dim=-2, param=0.0):  # noqa: N802
    """Returns a Kaiming (He) uniform initializer; param is the leak slope (see the normal one)."""
    return ScaledInitializer(out_dim, in_dim, 2.0 / np.sqrt(1 + param**2), "fan_in", "uniform")


def OrthogonalInitializer(stddev: float = 1.0):  # noqa: N802
    """Returns an initializer of (semi-)orthogonal matrices scaled by stddev."""

    def init(shape, rng):
        shape = tuple(int(d) for d in shape)
        full = (1,) * max(0, 2 - len(shape)) + shape
        n_rows, n_cols = int(np.prod(full[:-1])), full[-1]
        flat_shape = (n_cols, n_rows) if n_rows < n_cols else (n_rows, n_cols)
        q, r = jnp.linalg.qr(jax.random.normal(rng, flat_shape, jnp.float32))
        q = q * jnp.sign(jnp.diag(r)).reshape((1, -1))  # Makes the distribution uniform.
        if n_rows < n_cols:
            q = q.T
        return stddev * jnp.reshape(q, shape)

    return init


def AtariConvInit(kernel_shape, rng, dtype=jnp.float32):  # noqa: N802
    """The standard init of Atari conv kernels (HWIO): uniform in ±1/sqrt(fan_in)."""
    kernel_shape = tuple(kernel_shape)
    bound = 1.0 / np.sqrt(np.prod(kernel_shape[:-1]))
    return jax.random.uniform(rng, kernel_shape, dtype, -bound, bound)
