"""One writer per output_dir: an OS file lock held for a training run's life.

The lock is `fcntl.flock` on `<output_dir>/.trax_sl.lock`: the kernel drops it
when the holding process ends, however it ends (kill -9 included), so a
stale lock never blocks a restart. The file names the holder (host, pid,
start time) for the message a second trainer gets; its contents are
informational, the lock is what counts.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket

LOCK_NAME = ".trax_sl.lock"


class OutputDirInUse(RuntimeError):
    """Another process holds the output_dir's lock."""


def _holder_line(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
        return f"host {holder['host']}, pid {holder['pid']}, started {holder['started']}"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return "a process that has not yet written its name"


@contextlib.contextmanager
def hold(output_dir: str):
    """Holds the lock on `output_dir` (created if missing) for the `with` block.

    Raises:
      OutputDirInUse: another process holds it; the message names the holder.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputDirInUse(
                f"{output_dir} is in use by another trainer ({_holder_line(fd)}); "
                f"wait for it to end or choose another --output_dir"
            ) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode("utf-8"), 0)
        yield
    finally:
        os.close(fd)  # Closing the descriptor releases the lock.
