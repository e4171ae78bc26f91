"""SIGTERM / SIGINT stop a run at a step boundary, save it, and the resumed run equals an uninterrupted one."""

import os
import signal
import time

import pytest

from trax_sl.supervised import callbacks, preemption

from .test_checkpoints import make_loop, resume_to_20_steps_as_an_uninterrupted_run


def signal_at(step: int, *signums: int):
    """A callback class that sends `signums` to this process during `step`."""

    class Signal(callbacks.TrainingStepCallback):
        def call_at(self, at):
            return at == step

        def on_step_begin(self, at):
            pass

        def on_step_end(self, at):
            for signum in signums:
                os.kill(os.getpid(), signum)
                # Pending signals of one kind merge into one: let the handler run before the next.
                time.sleep(0.1)

    return Signal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_saves_it_and_the_resumed_run_is_the_same(tmp_path, signum):
    stopped = make_loop(str(tmp_path / "stopped"), random_seed=0, callbacks=[signal_at(12, signum)])
    before = signal.getsignal(signum)
    with pytest.raises(preemption.Preempted) as stop:
        stopped.run(20)
    assert signal.getsignal(signum) == before  # The loop's handlers are gone again.
    name = signal.Signals(signum).name
    assert str(stop.value) == f"stopped by {name} after step 12; saved checkpoint step_00000012; run again to resume"
    assert stop.value.exit_code == 128 + signum
    assert os.path.isdir(tmp_path / "stopped" / "checkpoints" / "step_00000012")

    resume_to_20_steps_as_an_uninterrupted_run(tmp_path, stopped_at=12)


def test_a_second_sigint_aborts_at_once(tmp_path):
    loop = make_loop(str(tmp_path), random_seed=0, callbacks=[signal_at(3, signal.SIGINT, signal.SIGINT)])
    # The second signal does what SIGINT did before the loop: Python's KeyboardInterrupt here (a
    # process started in the background by a shell begins with SIGINT ignored, and would ignore it).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            loop.run(20)
    finally:
        signal.signal(signal.SIGINT, before)
    assert loop.step == 3  # Interrupted inside step 3: nothing saved after it.
    assert not os.path.exists(tmp_path / "checkpoints" / "step_00000003")
