"""One writer per output_dir: the lock a training run holds (issue 14)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from trax_sl.supervised import dir_lock

HOLDER = textwrap.dedent(
    """
    import sys, time
    from trax_sl.supervised import dir_lock
    with dir_lock.hold(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(600)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock on tmp_path / 'run'."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "holding\n"
    yield process
    process.kill()
    process.wait(timeout=60)


def test_a_second_holder_is_refused_naming_the_first(tmp_path, holder):
    with pytest.raises(dir_lock.OutputDirInUse) as error, dir_lock.hold(str(tmp_path / "run")):
        pass
    message = str(error.value)
    assert f"{tmp_path / 'run'} is in use by another trainer" in message
    assert f"pid {holder.pid}" in message and "started 20" in message


def test_a_killed_holder_leaves_no_stale_lock(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    with dir_lock.hold(str(tmp_path / "run")):
        assert os.path.exists(tmp_path / "run" / dir_lock.LOCK_NAME)


def test_the_lock_is_released_at_the_end_of_the_block(tmp_path):
    with dir_lock.hold(str(tmp_path)):
        pass
    with dir_lock.hold(str(tmp_path)):
        pass
