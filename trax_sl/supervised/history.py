"""History: the metrics a training run recorded, by mode and name (Trax's `History`)."""

from __future__ import annotations


class History:
    """Values of metrics recorded during training and evaluation.

    `history.append('eval', 'metrics/accuracy', 100, 0.31)` records a value;
    `history.get('eval', 'metrics/accuracy')` returns `[(step, value), ...]`.
    `to_dict` gives plain JSON data (checkpoints store it); `from_dict` reads it.
    """

    def __init__(self):
        self._values: dict[str, dict[str, list[tuple[int, float]]]] = {}

    @classmethod
    def from_dict(cls, data: dict) -> History:
        """A History from the output of `to_dict`."""
        history = cls()
        for mode, metrics in data.items():
            for metric, pairs in metrics.items():
                history._values.setdefault(mode, {})[metric] = [(int(s), float(v)) for s, v in pairs]
        return history

    def to_dict(self) -> dict:
        """The recorded values as JSON-able data: `{mode: {metric: [[step, value], ...]}}`."""
        return {
            mode: {metric: [[step, value] for step, value in pairs] for metric, pairs in metrics.items()}
            for mode, metrics in self._values.items()
        }

    def append(self, mode: str, metric: str, step: int, value: float) -> None:
        """Records `value` of `metric` in `mode` at `step`."""
        self._values.setdefault(mode, {}).setdefault(metric, []).append((int(step), float(value)))

    def get(self, mode: str, metric: str) -> list[tuple[int, float]]:
        """The `(step, value)` pairs recorded for `metric` in `mode` (empty if none)."""
        return list(self._values.get(mode, {}).get(metric, []))

    @property
    def modes(self) -> list[str]:
        """The modes with recorded values, sorted."""
        return sorted(self._values)

    def metrics_for_mode(self, mode: str) -> list[str]:
        """The metrics recorded in `mode`, sorted."""
        return sorted(self._values.get(mode, {}))

    def __str__(self) -> str:
        return str(self._values)
