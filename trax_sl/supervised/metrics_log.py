"""Where a training run's metrics go: a one-line log, metrics.jsonl, TensorBoard, and the History.

At each logged step the loop hands over its scalars; `MetricsLogger` prints
one line (`Step 100: train loss 2.31 | eval loss 2.4 accuracy 0.31`),
appends one JSON object to `output_dir/metrics.jsonl` (`{"step": 100,
"train/loss": 2.31, "eval/loss": 2.4, ...}`), writes TensorBoard event files
in `output_dir/train` and `output_dir/eval` (tags `metrics/<name>` and
`training/<name>`, as Trax's), and records the values in the `History`.
With several tasks, each task's events go to `output_dir/<prefix>/{train,eval}`
and its keys read `train/<prefix>/<name>`.
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Callable

from trax_sl.layers import serialization
from trax_sl.supervised import summaries
from trax_sl.supervised.history import History

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.gin"


class Scalar(typing.NamedTuple):
    """One logged value.

    Attributes:
        mode: 'train' or 'eval'.
        prefix: The task's prefix when there are several tasks, else None.
        group: 'metrics' for losses and metrics (shown in the one-line log),
            'training' for the rest (learning rate, speed).
        name: The metric's name.
        value: Its value.
    """

    mode: str
    prefix: str | None
    group: str
    name: str
    value: float

    @property
    def key(self) -> str:
        """The metric's key in metrics.jsonl."""
        return "/".join(part for part in (self.mode, self.prefix, self.name) if part)


class MetricsLogger:
    """Writes a run's logged scalars to the log, metrics.jsonl, TensorBoard and the History.

    Only the logging line and the History are kept when `output_dir` is None
    or `write_files` is False (processes other than the chief).
    """

    def __init__(
        self,
        output_dir: str | None,
        history: History,
        write_line: Callable[[str], None] = print,
        write_files: bool = True,
    ):
        self._output_dir = output_dir if write_files else None
        self.history = history
        self._write_line = write_line
        self._writers: dict[tuple[str, str | None], summaries.SummaryWriter] = {}
        self._restart_step: int | None = None

    @property
    def metrics_path(self) -> str | None:
        return None if self._output_dir is None else os.path.join(self._output_dir, METRICS_FILE)

    def resume_at(self, step: int) -> None:
        """Forgets what was logged after `step`, for a run resumed from its checkpoint at `step`.

        Lines of metrics.jsonl after `step` (and a last line cut short by a
        crash) are removed, so the file reads as if the run had not stopped;
        TensorBoard is told to drop its events after `step`.
        """
        self._restart_step = step + 1
        path = self.metrics_path
        if path is None or not os.path.exists(path):
            return
        kept = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # A line cut short by a crash.
                if isinstance(row, dict) and row.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        data = "".join(kept).encode()
        serialization.atomic_write(path, lambda f: f.write(data))

    def _writer(self, mode: str, prefix: str | None) -> summaries.SummaryWriter:
        if (mode, prefix) not in self._writers:
            writer = summaries.SummaryWriter(os.path.join(self._output_dir, prefix or "", mode))
            if self._restart_step is not None:
                writer.session_start(self._restart_step)
            self._writers[(mode, prefix)] = writer
        return self._writers[(mode, prefix)]

    def log(self, step: int, scalars: list[Scalar]) -> None:
        """Logs `scalars` at `step`: one line, one metrics.jsonl row, TensorBoard, History."""
        for s in scalars:
            name = "/".join(part for part in (s.group, s.prefix, s.name) if part)
            self.history.append(s.mode, name, step, s.value)
        self._write_line(format_line(step, scalars))
        if self._output_dir is None:
            return
        row = {"step": int(step)}
        row.update({s.key: float(s.value) for s in scalars})
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        for s in scalars:
            self._writer(s.mode, s.prefix).scalar(f"{s.group}/{s.name}", s.value, step)
        for writer in self._writers.values():
            writer.flush()

    def save_gin_config(self, config: str, step: int) -> None:
        """Writes the operative gin config to config.gin and to TensorBoard's text dashboard."""
        if self._output_dir is None:
            return
        data = config.encode()
        serialization.atomic_write(os.path.join(self._output_dir, CONFIG_FILE), lambda f: f.write(data))
        writer = self._writer("train", None)
        writer.text("gin_config", summaries.markdownify_operative_config_str(config), step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def format_line(step: int, scalars: list[Scalar]) -> str:
    """`Step 100: train loss 2.31 | eval loss 2.4 accuracy 0.31` (the 'metrics' group only)."""
    parts: dict[str, list[str]] = {}
    for s in scalars:
        if s.group == "metrics":
            head = "/".join(part for part in (s.mode, s.prefix) if part)
            parts.setdefault(head, []).append(f"{s.name} {s.value:.4g}")
    body = " | ".join(f"{head} {' '.join(values)}" for head, values in parts.items())
    return f"Step {step}: {body}"
