"""Constructor argument checks shared by layers, models and data pipelines.

Each raises at once with what was expected, what was received and where:
`Conv1D: kernel_size must be an integer >= 1, got kernel_size=0`.
"""

from __future__ import annotations

import numpy as np

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


def check_rate(where: str, **values) -> None:
    """Raises ValueError unless every value is a rate in [0, 1) (e.g. a dropout rate)."""
    for key, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{where}: {key} must be in [0, 1), got {key}={value!r}")


def check_between(where: str, low: float, high: float, /, **values) -> None:
    """Raises ValueError unless every value lies in [low, high] (e.g. a label smoothing in [0, 1])."""
    for key, value in values.items():
        if not low <= value <= high:
            raise ValueError(f"{where}: {key} must be between {low} and {high}, got {value!r}")
