"""Helpers of the SequenceLayers golden-number tests: deterministic values and tuple-tree surgery.

The golden numbers were made offline by SequenceLayers 0.2 (the notebook's
models, built with SL's configs) on weights and inputs from `fill`, so the
tests here rebuild the same weights without SL.
"""

import jax
import jax.numpy as jnp
import numpy as np


def fill(shape, k):
    """Deterministic test values in [-0.5, 0.5]: `0.5 * sin(0.37 * i + k)` in row-major order."""
    n = int(np.prod(shape))
    return (0.5 * np.sin(0.37 * np.arange(n) + k)).reshape(shape).astype(np.float32)


def golden_values(keys):
    """{name: array} for (name, shape) keys: scales and variances 1 + fill, the rest fill."""
    return {
        name: (1.0 + fill(shape, k)) if name.endswith(("_s", "_var")) else fill(shape, k)
        for k, (name, shape) in enumerate(keys)
    }


def zeros_like_signature(tree):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), tree)


def get_at(tree, path):
    for i in path:
        tree = tree[i]
    return tree


def set_at(tree, path, value):
    """A copy of a tuple tree with the leaf at `path` (indices) replaced."""
    if not path:
        return value
    items = list(tree)
    items[path[0]] = set_at(items[path[0]], path[1:], value)
    return tuple(items)


def residual_inner(path):
    """Path of a Residual's layers in its weights: Serial(Branch(Select, Parallel(Serial(), inner)), Add)."""
    return (*path, 0, 1, 1)
