"""Constructor argument checks shared by layers, models and data pipelines.

Each raises at once with what was expected, what was received and where:
`Conv1D: kernel_size must be an integer >= 1, got kernel_size=0`.
"""

from __future__ import annotations

import jax
import numpy as np

from trax_sl import shapes

MODES = ("train", "eval", "predict")


def check_mode(where: str, mode) -> None:
    """Raises ValueError unless `mode` is one of 'train', 'eval', 'predict'."""
    if mode not in MODES:
        raise ValueError(f"{where}: mode must be one of {MODES}, got mode={mode!r}")


def check_positive(where: str, **values) -> None:
    """Raises ValueError unless every value is an integer >= 1 (bools are not integers here)."""
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}: {key} must be an integer >= 1, got {key}={value!r}")


def check_mode_name(where: str, **values) -> None:
    """Raises TypeError unless every value is a string naming a mode (e.g. a padding: 'causal')."""
    for key, value in values.items():
        if not isinstance(value, str):
            raise TypeError(f"{where}: {key} must be a mode name, got {key}={value!r}")


def check_non_negative(where: str, **values) -> None:
    """Raises ValueError unless every value is an integer >= 0 (a count that may be zero)."""
    for key, value in values.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {key} must be an integer >= 0, got {key}={value!r}")


def check_rate(where: str, **values) -> None:
    """Raises ValueError unless every value is a rate in [0, 1) (e.g. a dropout rate)."""
    for key, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{where}: {key} must be in [0, 1), got {key}={value!r}")


def positive_ints(where: str, key: str, value, n: int) -> tuple[int, ...]:
    """An int (for each of n axes) or a sequence of n ints, each >= 1, as a tuple of n ints."""
    values = (value,) * n if isinstance(value, (int, np.integer)) else tuple(value)
    if len(values) != n:
        raise ValueError(f"{where}: {key} must have {n} entries (one per windowed axis), got {key}={value!r}")
    for v in values:
        check_positive(where, **{key: v})
    return tuple(int(v) for v in values)


def check_rank(where: str, x, rank: int) -> None:
    """Raises ValueError unless `x` (an array, Sequence or signature) has rank `rank`."""
    if len(x.shape) != rank:
        raise ValueError(
            f"{where}: expected inputs of rank {rank} ([batch, time, ..., channels]), "
            f"got {shapes.short_form(x)}"
        )


def check_array_leaves(where: str, x) -> None:
    """Raises TypeError unless every leaf of `x` is an array, a number or a shape signature."""
    for leaf in jax.tree.leaves(x):
        if not isinstance(
            leaf,
            (
                jax.Array,
                np.ndarray,
                np.generic,
                bool,
                int,
                float,
                complex,
                shapes.ShapeDtype,
                jax.ShapeDtypeStruct,
            ),
        ):
            raise TypeError(
                f"{where} expected arrays or Sequences as inputs, got {type(leaf).__name__} ({leaf!r:.60})"
            )


def check_between(where: str, low: float, high: float, /, **values) -> None:
    """Raises ValueError unless every value lies in [low, high] (e.g. a label smoothing in [0, 1])."""
    for key, value in values.items():
        if not low <= value <= high:
            raise ValueError(f"{where}: {key} must be between {low} and {high}, got {value!r}")
