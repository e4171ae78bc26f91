"""Random keys for layers: the default key and deriving one key per sublayer."""

from __future__ import annotations

import jax

_default_rng = None


def default_rng():
    """The fixed key used when `layer(x)` or `init` gets no rng."""
    global _default_rng
    if _default_rng is None:
        _default_rng = jax.random.PRNGKey(0)
    return _default_rng


def split_rng(rng, n: int):
    """Derives n keys from rng; None (no randomness wanted) gives n Nones.

    fold_in with the index, not split + unstack: eagerly (in init) the latter
    compiles anew for every n, which dominated the first init of a model.
    """
    if rng is None:
        return [None] * n
    return [jax.random.fold_in(rng, i) for i in range(n)]


def train_rate(where: str, mode: str, rng, **rate) -> float:
    """The dropout-like rate to apply: `rate`'s one value in 'train' mode, else 0.0.

    Raises:
      ValueError: a non-zero rate in 'train' mode without an rng (naming `where` and the field).
    """
    ((key, value),) = rate.items()
    if mode != "train" or value == 0.0:
        return 0.0
    if rng is None:
        raise ValueError(f"{where}: mode='train' with {key}={value} needs an rng, got None")
    return value
