"""Activation layers: element-wise nonlinearities, as in Trax.

Each is its own layer (Trax separates the activation from `Dense`). All are
pointwise in time, so on a `Sequence` they act on the values and keep the
mask, and in predict mode they are stateless and stream with block_size 1.
The math follows Trax's code (which its tests pin), also where a Trax
docstring formula says otherwise; see `HardSigmoid` and `ParametricRelu`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from trax_sl import partitioning
from trax_sl.layers import base
from trax_sl.layers.base import Fn

# The defaults of Trax's Selu: the constants of Klambauer et al. (2017).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_LAMBDA = 1.0507009873554804934193349852946


def Relu() -> base.Layer:  # noqa: N802
    """Returns a layer computing the rectified linear unit: `0 if x <= 0 else x`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Relu", lambda x: jnp.where(x <= 0, jnp.zeros_like(x), x))


def ParametricRelu(a: float = 1.0) -> base.Layer:  # noqa: N802
    """Returns a ReLU with slope `a` for positive inputs: `0 if x <= 0 else a * x`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.

    Trax computes `max(a * x, 0)`, which equals this for `a >= 0`; for `a < 0`
    this layer follows the documented formula instead.

    Args:
      a: Slope of the line for positive inputs.
    """
    return Fn("ParametricRelu", lambda x: a * jnp.where(x <= 0, jnp.zeros_like(x), x))


def LeakyRelu(a: float = 0.01) -> base.Layer:  # noqa: N802
    """Returns a ReLU with slope `a` for negative inputs: `x if x >= 0 else a * x`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.

    Args:
      a: Slope of the line for negative inputs.
    """
    return Fn("LeakyRelu", lambda x: jnp.where(x >= 0, x, a * x))


def Elu(a: float = 1.0) -> base.Layer:  # noqa: N802
    """Returns an exponential linear unit: `x if x > 0 else a * (exp(x) - 1)`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.

    Args:
      a: Coefficient of the exponential for negative inputs; the output tends
        to `-a` as `x` goes to minus infinity.
    """
    return Fn("Elu", lambda x: jnp.where(x > 0, x, a * jnp.expm1(x)))


def Selu(alpha: float = _SELU_ALPHA, lmbda: float = _SELU_LAMBDA) -> base.Layer:  # noqa: N802
    """Returns a scaled ELU: `lmbda * (x if x > 0 else alpha * (exp(x) - 1))`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.

    Args:
      alpha: Coefficient of the exponential for negative inputs.
      lmbda: Coefficient scaling the whole function.
    """
    return Fn("Selu", lambda x: lmbda * jnp.where(x > 0, x, alpha * jnp.expm1(x)))


def Gelu() -> base.Layer:  # noqa: N802
    """Returns the exact Gaussian error linear unit: `x / 2 * (1 + erf(x / sqrt(2)))`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    # math.sqrt, not np.sqrt: a Python float keeps bfloat16 inputs bfloat16.
    return Fn("Gelu", lambda x: x * 0.5 * (1.0 + jax.scipy.special.erf(x / math.sqrt(2.0))))


def FastGelu() -> base.Layer:  # noqa: N802
    """Returns the tanh approximation of Gelu: `x / 2 * (1 + tanh(a * x + a * b * x**3))`.

    With `a = 0.7978845608` (sqrt(2 / pi)) and `b = 0.044715`, as in Trax.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("FastGelu", lambda x: 0.5 * x * (1 + jnp.tanh(x * 0.7978845608 * (1 + 0.044715 * x * x))))


def Sigmoid() -> base.Layer:  # noqa: N802
    """Returns a layer computing the logistic sigmoid `1 / (1 + exp(-x))`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Sigmoid", jax.nn.sigmoid)


def Tanh() -> base.Layer:  # noqa: N802
    """Returns a layer computing the hyperbolic tangent.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Tanh", jnp.tanh)


def HardSigmoid() -> base.Layer:  # noqa: N802
    """Returns a piecewise-linear sigmoid: `max(0, min(1, 1 + x))`.

    0 for `x <= -1`, `1 + x` in between, 1 for `x >= 0`. This is what Trax
    computes (its tests and its NeuralGPU rely on it), not the `min(1, max(0,
    x))` its docstring shows.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("HardSigmoid", lambda x: jnp.maximum(0, jnp.minimum(1, 1 + x)))


def HardTanh() -> base.Layer:  # noqa: N802
    """Returns a piecewise-linear tanh: `max(-1, min(1, x))`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("HardTanh", lambda x: jnp.maximum(-1, jnp.minimum(1, x)))


def Softplus() -> base.Layer:  # noqa: N802
    """Returns a layer computing softplus `log(exp(x) + 1)`, without overflow.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Softplus", lambda x: jnp.logaddexp(x, 0.0))


def Exp() -> base.Layer:  # noqa: N802
    """Returns a layer computing the element-wise exponential.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Exp", jnp.exp)


def Log() -> base.Layer:  # noqa: N802
    """Returns a layer computing the element-wise natural logarithm.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Log", jnp.log)


def Swish() -> base.Layer:  # noqa: N802
    """Returns a layer computing swish `x * sigmoid(x)`.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """
    return Fn("Swish", lambda x: x * jax.nn.sigmoid(x))


def _glu(x):
    if x.ndim == 0 or x.shape[-1] % 2:
        raise ValueError(
            f"Glu: the last axis is split into two halves, so it must have an even size; "
            f"got shape {tuple(x.shape)}"
        )
    a, b = jnp.split(x, 2, axis=-1)
    return a * jax.nn.sigmoid(b)


def Glu() -> base.Layer:  # noqa: N802
    """Returns a gated linear unit: `a * sigmoid(b)`, `a, b` the halves of the last axis.

    n_in=1, n_out=1; [..., 2 * d] -> [..., d]. Predict mode: stateless; streams
    with block_size 1.
    """
    return Fn("Glu", _glu)


class ThresholdedLinearUnit(base.Layer):
    """Thresholded linear unit `max(x, threshold)`, c.f. arXiv:1911.09737.

    One weight, the scalar threshold (float32), initialized to zero. The output
    has the shape and (floating) dtype of the input.

    n_in=1, n_out=1; any shape. Predict mode: stateless; streams with block_size 1.
    """

    def weight_axes(self, weights):
        return partitioning.Axes()  # A scalar.

    def init_weights_and_state(self, input_signature, rng):
        """Initializes this layer's single weight, the threshold, to zero."""
        del input_signature, rng
        return jnp.zeros((), jnp.float32), base.EMPTY_STATE

    def forward(self, inputs, weights, state, rng):
        """Returns `max(inputs, threshold)` and the (empty) state."""
        del rng
        threshold = weights
        if jnp.issubdtype(inputs.dtype, jnp.floating):
            threshold = threshold.astype(inputs.dtype)
        return jnp.maximum(inputs, threshold), state
