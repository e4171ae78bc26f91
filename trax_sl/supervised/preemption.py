"""Stopping a training run cleanly on SIGTERM or SIGINT (a preempted job, Ctrl-C).

While `Loop.run` trains, `StopOnSignals` turns the first SIGTERM or SIGINT
into a request: the loop finishes the step it is in, saves a checkpoint,
flushes its logs and raises `Preempted`. A second signal aborts at once (the
handler that was there before runs: SIGINT's KeyboardInterrupt, SIGTERM's
exit). In a multi-process run the processes agree at each step boundary
(any one signalled stops them all), so no process waits in a collective for
one that stopped.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
from jax.experimental import multihost_utils

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):  # noqa: N818 (it is what happened, not an error of the caller)
    """The run stopped on a signal after saving the step it stopped at."""

    def __init__(self, signum: int, step: int, saved: str | None):
        self.signum = signum
        self.step = step
        self.saved = saved
        super().__init__(self.summary)

    @property
    def summary(self) -> str:
        """One line: the signal, the step, the checkpoint (gin may append lines to the message)."""
        where = f"; saved checkpoint {self.saved}" if self.saved else ""
        return f"stopped by {signal.Signals(self.signum).name} after step {self.step}{where}; run again to resume"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, the shell's code for a process a signal ended."""
        return 128 + self.signum


class StopOnSignals:
    """A context manager: SIGTERM/SIGINT request a stop; `requested()` says whether one did.

    Handlers are installed only in the main thread (Python delivers signals
    there); elsewhere the context does nothing and `requested()` stays False
    (unless another process asked).
    """

    def __init__(self, process_count: int = 1):
        self.signum: int | None = None
        self._process_count = process_count
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # The second signal: abort now, as without us.
            previous = self._previous.get(signum, signal.SIG_DFL)
            self.__exit__()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, previous)
                os.kill(os.getpid(), signum)
            return
        self.signum = signum

    def requested(self) -> bool:
        """Whether to stop at this step boundary (in a multi-process run: whether any process was signalled)."""
        if self._process_count == 1:
            return self.signum is not None
        signals = multihost_utils.process_allgather(np.int32(self.signum or 0))
        if self.signum is None and np.any(signals):
            self.signum = int(np.max(signals))
        return self.signum is not None
