"""Array functions of probability distributions: categorical and Gaussian.

Categorical: `one_hot` targets, `log_softmax` log probabilities and
`logsoftmax_sample` draws from them. Gaussian: log densities with a full or a
diagonal covariance, and the log-likelihood of a mixture (`multigaussian_loss`).
Names, arguments and results are Trax's (`trax.layers.core`); layers use
them (`LogSoftmax`, `Softmax`, the cross-entropy metrics), and they are
exported as `tl.<name>` and `trax_sl.layers.core.<name>` too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# --- Categorical ------------------------------------------------------------------


def one_hot(x, n_categories: int, dtype=jnp.float32):
    """Makes a one-hot array (n+1 axes) from an integer categorical array (n axes).

    Values outside [0, n_categories) give all-zero vectors.
    """
    x = jnp.asarray(x)
    categories = jnp.arange(n_categories).reshape((1,) * x.ndim + (n_categories,))
    return (x[..., None] == categories).astype(dtype)


def log_softmax(x, axis: int = -1):
    """Returns log probabilities `x - logsumexp(x)` along `axis`.

    Args:
        x: Activations (logits).
        axis: Axis along which the values form one distribution.
    """
    return x - jax.scipy.special.logsumexp(x, axis=axis, keepdims=True)


def logsoftmax_sample(log_probs, temperature: float = 1.0, rng=None):
    """Returns a sample (the index along the last axis) from log probabilities.

    Gumbel-max sampling: argmax(log_probs + temperature * gumbel noise);
    temperature 1.0 samples from the distribution, 0.0 picks the argmax.
    With `rng` (a JAX key) the noise comes from `jax.random` and the function
    is jit-able; without it, from NumPy's global generator as in Trax.

    Args:
        log_probs: Log probabilities (e.g. from LogSoftmax), `[..., n]`.
        temperature: Scales the noise; must be >= 0 (checked when it is a Python number).
        rng: Optional JAX PRNG key.

    Returns:
        Integer indices, `[...]`.
    """
    if isinstance(temperature, (int, float, np.number)) and temperature < 0:  # Traced: unchecked.
        raise ValueError(f"logsoftmax_sample: temperature must be >= 0, got temperature={temperature}")
    if rng is None:
        u = np.random.uniform(low=1e-6, high=1.0 - 1e-6, size=np.shape(log_probs))
        g = -np.log(-np.log(u))
        return np.argmax(np.asarray(log_probs) + g * temperature, axis=-1)
    u = jax.random.uniform(rng, jnp.shape(log_probs), minval=1e-6, maxval=1.0 - 1e-6)
    g = -jnp.log(-jnp.log(u))
    return jnp.argmax(log_probs + g * temperature, axis=-1)


# --- Gaussian ---------------------------------------------------------------------


def log_gaussian_pdf(x, mu, sigma):
    """Returns log N(x | mu, sigma) for a full covariance matrix sigma.

    Args:
        x: Points, `[..., d]`.
        mu: Means, `[..., d]`.
        sigma: Covariance matrices, `[..., d, d]`.

    Returns:
        The log densities, `[...]`.
    """
    a = mu.shape[-1] * jnp.log(2 * jnp.pi)
    _, b = jnp.linalg.slogdet(sigma)
    diff = x - mu
    y = jnp.linalg.solve(sigma, diff[..., None])[..., 0]
    c = jnp.sum(diff * y, axis=-1)
    return -0.5 * (a + b + c)


def log_gaussian_diag_pdf(x, mu, diag_sigma):
    """Returns log N(x | mu, diag(diag_sigma)): diag_sigma holds the variances.

    As in Trax, 1e-6 is added to the determinant (the product of the
    variances) before its log.

    Args:
        x: Points, `[..., d]`.
        mu: Means, `[..., d]`.
        diag_sigma: Variances (the covariance's diagonal), `[..., d]`.

    Returns:
        The log densities, `[...]`.
    """
    a = mu.shape[-1] * jnp.log(2 * jnp.pi)
    b = jnp.log(jnp.prod(diag_sigma, axis=-1) + 1e-6)
    diff = x - mu
    c = jnp.sum(diff * diff / diag_sigma, axis=-1)
    return -0.5 * (a + b + c)


def multigaussian_loss(preds, targets, ngauss: int = 1):
    """Returns the log-likelihood of targets under a mixture of diagonal Gaussians.

    As in Trax, the result is the log-likelihood (higher is better), not its
    negation.

    Args:
        preds: `[batch, ngauss * (2 * d + 1)]`: ngauss mixture logits, then
            ngauss * d means, then ngauss * d values s with variances s^2 + 1e-6.
        targets: `[batch, d]`.
        ngauss: Number of mixture components.

    Returns:
        `[batch]` log-likelihoods.
    """
    ndims = targets.shape[-1]
    logits = preds[:, :ngauss]
    mus = preds[:, ngauss : ngauss * (ndims + 1)]
    sigmas = preds[:, ngauss * (ndims + 1) :]
    sigmas = sigmas * sigmas + 1e-6  # Makes them positive.
    loglogits = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    mus = jnp.reshape(mus, (-1, ngauss, ndims))
    sigmas = jnp.reshape(sigmas, (-1, ngauss, ndims))
    targets = jnp.reshape(targets, (-1, 1, ndims))
    glogprobs = log_gaussian_diag_pdf(targets, mus, sigmas)
    return jax.scipy.special.logsumexp(loglogits + glogprobs, axis=-1)
