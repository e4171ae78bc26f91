"""Where a training run's metrics go: a one-line log, metrics.jsonl, TensorBoard, and the History.

At each logged step the loop hands over its scalars; `MetricsLogger` prints
one line (`Step 100: train/loss 2.31 | eval/loss 2.4 | eval/accuracy 0.31`),
appends one JSON object to `output_dir/metrics.jsonl` (`{"step": 100,
"train/loss": 2.31, "eval/loss": 2.4, ...}`), writes TensorBoard event files
in `output_dir/train` and `output_dir/eval`, and records the values in the
`History`. The log line and metrics.jsonl name a value by its key
`<mode>/<name>`; TensorBoard keeps Trax's layout, a run per mode and the tags
`metrics/<name>` and `training/<name>`, so that the train and eval curves of a
metric share one chart: `eval/loss` is the tag `metrics/loss` of the run
`eval`. With several tasks, keys read `train/<prefix>/<name>` and each task's
events go to `output_dir/<prefix>/{train,eval}`.

Text (samples of a language model) goes to the log and to TensorBoard's text
dashboard of the `train` run. Where no progress bar is drawn, `ProgressLine`
formats the lines that show progress between evaluations.
"""

from __future__ import annotations

import json
import os
import time
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
            'training' for the rest (learning rate, speed); the first part
            of the TensorBoard tag.
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
        """The metric's name in the log line and metrics.jsonl: `<mode>[/<prefix>]/<name>`."""
        return "/".join(part for part in (self.mode, self.prefix, self.name) if part)

    @property
    def tag(self) -> str:
        """The metric's TensorBoard tag (in the run `[<prefix>/]<mode>`): `<group>/<name>`, as Trax's."""
        return f"{self.group}/{self.name}"


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
        self._opened: set[tuple[str, str | None]] = set()  # Writers opened before (restart marked once).

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
            if self._restart_step is not None and (mode, prefix) not in self._opened:
                writer.session_start(self._restart_step)
            self._opened.add((mode, prefix))
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
            self._writer(s.mode, s.prefix).scalar(s.tag, s.value, step)
        for writer in self._writers.values():
            writer.flush()

    def text(self, step: int, name: str, text: str) -> None:
        """Logs `text` at `step`: as it is in the log, as preformatted text under the tag `name` in TensorBoard."""
        self._write_line(text)
        if self._output_dir is None:
            return
        writer = self._writer("train", None)
        writer.text(name, summaries.preformatted(text), step)
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
        """Closes the event files; later logs open new ones (as Trax's Loop does after each run)."""
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def format_line(step: int, scalars: list[Scalar]) -> str:
    """`Step 100: train/loss 2.31 | eval/loss 2.4 | eval/accuracy 0.31 | 12.6k tokens/s | MFU 34.7%`.

    The 'metrics' group, then the training speed and MFU where logged.
    """
    parts = [f"{s.key} {s.value:.4g}" for s in scalars if s.group == "metrics"]
    training = {s.name: s.value for s in scalars if s.group == "training"}
    if "tokens_per_second" in training:
        parts.append(f"{format_count(training['tokens_per_second'])} tokens/s")
    if "mfu" in training:
        parts.append(f"MFU {100 * training['mfu']:.1f}%")
    return f"Step {step}: " + " | ".join(parts)


def format_count(value: float) -> str:
    """`950`, `12.6k`, `3.4M`."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


class ProgressLine:
    """The line that shows a run's progress (from step `first` to `last`) where no progress bar is drawn."""

    def __init__(self, first: int, last: int):
        self._first, self._last = first, last
        self._start = self._time = time.time()
        self._step = first

    def line(self, step: int, losses: list[Scalar]) -> str:
        """`Step 120/900: train/loss 1.873 | 2.13 steps/s | ETA 6m05s`.

        The speed is that since the previous line; the ETA assumes the run's
        mean speed so far, evaluations and checkpoints included.
        """
        now = time.time()
        speed = (step - self._step) / max(now - self._time, 1e-9)
        eta = (self._last - step) * (now - self._start) / max(step - self._first, 1)
        self._step, self._time = step, now
        parts = [f"{s.key} {s.value:.4g}" for s in losses]
        parts += [f"{speed:.3g} steps/s", f"ETA {format_duration(eta)}"]
        return f"Step {step}/{self._last}: " + " | ".join(parts)


def format_duration(seconds: float) -> str:
    """`42s`, `6m05s`, `2h07m`."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
