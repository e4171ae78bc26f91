"""The trainer command line: a Trax-style gin file runs, kill -9 and restart, clear one-line errors."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import gin
import jax
import numpy as np
import pytest

import trax_sl
from trax_sl import layers as tl
from trax_sl import trainer
from trax_sl.supervised import checkpoints, training

from .supervised.test_dir_lock import HOLDER as LOCK_HOLDER

REPO = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))
STEPS = 40

HELPER_MODULE = """
import time

import gin

from trax_sl import layers as tl
from trax_sl.supervised import callbacks


@gin.configurable
def TinyLM(vocab_size=8, d_model=16, mode="train"):
    del mode
    return tl.Serial(tl.Embedding(vocab_size, d_model), tl.Dense(vocab_size))


@gin.configurable
class SlowSteps(callbacks.TrainingStepCallback):
    # Makes the run last long enough to be killed in the middle.
    def __init__(self, loop, seconds=0.0):
        super().__init__(loop)
        self._seconds = seconds

    def call_at(self, step):
        return True

    def on_step_begin(self, step):
        time.sleep(self._seconds)

    def on_step_end(self, step):
        pass
"""

# A Trax config (the copy task) with `trax.` renamed `trax_sl.`, and a small model.
TRAX_STYLE_CONFIG = f"""
import trax_sl.data
import trax_sl.optimizers
import trax_sl.supervised.trainer_lib
import cli_helpers

# Parameters for sequence_copy_inputs:
# ==============================================================================
sequence_copy_inputs.vocab_size = 8
sequence_copy_inputs.batch_size = 8
sequence_copy_inputs.train_length = 6
sequence_copy_inputs.eval_min_length = 2
sequence_copy_inputs.eval_max_length = 6
sequence_copy_inputs.pad_to_multiple = 16

# Parameters for multifactor:
# ==============================================================================
multifactor.constant = 0.05
multifactor.factors = 'constant * linear_warmup'
multifactor.warmup_steps = 5

# Parameters for Adam:
# ==============================================================================
Adam.b1 = 0.9
Adam.b2 = 0.98
Adam.eps = 1e-9
Adam.weight_decay_rate = 1e-5

# Parameters for train:
# ==============================================================================
train.eval_frequency = 10
train.eval_steps = 2
train.inputs = @trax_sl.data.sequence_copy_inputs
train.model = @cli_helpers.TinyLM
train.optimizer = @trax_sl.optimizers.Adam
train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
train.steps = {STEPS}
train.random_seed = 0
train.callbacks = [@cli_helpers.SlowSteps]
SlowSteps.seconds = 0.03
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli")
    (path / "cli_helpers.py").write_text(HELPER_MODULE)
    (path / "copy.gin").write_text(TRAX_STYLE_CONFIG)
    return path


def cli_command(workdir, *args):
    return [sys.executable, "-m", "trax_sl.trainer", f"--config_file={workdir / 'copy.gin'}", *args]


def cli_env(workdir):
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([REPO, str(workdir)]),
        JAX_NUMPY_RANK_PROMOTION="raise",
        # The three runs compile the same steps: compile them once.
        JAX_COMPILATION_CACHE_DIR=str(workdir.parent / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    return env


def run_cli(workdir, *args):
    return subprocess.run(
        cli_command(workdir, *args),
        check=False,
        env=cli_env(workdir),
        capture_output=True,
        text=True,
        timeout=300,
    )


def metrics_rows(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in training.TIMING_KEYS:
            row.pop(key, None)
    return rows


def final_weights(output_dir):
    model = tl.Serial(tl.Embedding(8, 16), tl.Dense(8))
    return checkpoints.load_model(str(output_dir / "checkpoints" / f"step_{STEPS:08d}"), model)[0]


@pytest.fixture(scope="module")
def reference_run(workdir):
    output_dir = workdir / "reference"
    result = run_cli(workdir, f"--output_dir={output_dir}")
    assert result.returncode == 0, result.stderr
    return output_dir, result


def test_a_trax_style_gin_file_runs(reference_run):
    output_dir, result = reference_run
    rows = metrics_rows(output_dir)
    assert [row["step"] for row in rows] == [1, 10, 20, 30, 40]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"] / 10
    assert rows[-1]["eval/accuracy"] == 1.0
    assert f"Step {STEPS}: train/loss " in result.stdout
    config = (output_dir / "config.gin").read_text()
    assert f"train.steps = {STEPS}" in config and "Adam.b2 = 0.98" in config
    assert len(os.listdir(output_dir / "train")) == 1 and len(os.listdir(output_dir / "eval")) == 1
    assert sorted(os.listdir(output_dir / "checkpoints")) == [
        "step_00000020",
        "step_00000030",
        "step_00000040",
    ]


def start_run(workdir, output_dir):
    """The trainer on copy.gin in the background, its output discarded (to be killed)."""
    return subprocess.Popen(
        cli_command(workdir, f"--output_dir={output_dir}"),
        env=cli_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def restart_and_compare(workdir, output_dir, reference_dir):
    """Runs the trainer again on output_dir; its metrics and final weights must equal the reference run's."""
    result = run_cli(workdir, f"--output_dir={output_dir}")
    assert result.returncode == 0, result.stderr
    assert metrics_rows(output_dir) == metrics_rows(reference_dir)
    jax.tree.map(np.testing.assert_array_equal, final_weights(output_dir), final_weights(reference_dir))
    return result


def test_killed_with_sigkill_and_restarted_it_ends_as_an_uninterrupted_run(workdir, reference_run):
    reference_dir, _ = reference_run
    output_dir = workdir / "killed"
    process = start_run(workdir, output_dir)
    checkpoint = output_dir / "checkpoints" / "step_00000010"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    saved = sorted(os.listdir(output_dir / "checkpoints"))
    assert "step_00000010" in saved and f"step_{STEPS:08d}" not in saved  # Killed mid-training.

    restart_and_compare(workdir, output_dir, reference_dir)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_preempted_run_saves_says_so_and_resumes_as_an_uninterrupted_run(workdir, reference_run, signum):
    reference_dir, _ = reference_run
    output_dir = workdir / f"preempted_{signum}"
    process = subprocess.Popen(
        cli_command(workdir, f"--output_dir={output_dir}"),
        env=cli_env(workdir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoint = output_dir / "checkpoints" / "step_00000010"
    deadline = time.time() + 240
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr
    name = signal.Signals(signum).name
    line = stderr.strip().splitlines()[-1]
    assert line.startswith(f"trax_sl.trainer: stopped by {name} after step "), stderr
    step = int(line.split("after step ")[1].split(";")[0])
    assert line.endswith(f"saved checkpoint step_{step:08d}; run again to resume")
    assert (output_dir / "checkpoints" / f"step_{step:08d}").is_dir()

    result = restart_and_compare(workdir, output_dir, reference_dir)
    assert f"Restored step {step} from {output_dir}" in result.stdout


def test_a_second_trainer_on_a_busy_output_dir_exits_1_naming_the_first(workdir, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
        env=cli_env(workdir),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"
        result = run_cli(workdir, f"--output_dir={tmp_path}")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"OutputDirInUse: {tmp_path} is in use by another trainer (host " in result.stderr
    assert f"pid {holder.pid}" in result.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_a_gin_typo_exits_1_naming_it_without_a_traceback(workdir, tmp_path):
    result = run_cli(workdir, f"--output_dir={tmp_path}", "--config=train.stepz = 3")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("trax_sl.trainer: error:")]
    expected = (
        "trax_sl.trainer: error: bad gin configuration: Configurable 'train' doesn't have a parameter named "
        "'stepz'. In bindings string line 1 train.stepz = 3"
    )
    assert errors == [expected]


@gin.configurable(module="test_trainer_cli")
def InProcessLM(mode="train"):  # noqa: N802
    del mode
    return tl.Serial(tl.Embedding(8, 16), tl.Dense(8))


def run_main(capsys, *argv):
    """Runs trainer.main in this process with the given flags; returns (exit status, stderr)."""
    trainer.FLAGS.unparse_flags()
    trainer.FLAGS(["trainer", *argv])
    try:
        with pytest.raises(SystemExit) as exit_info:
            trainer.main(["trainer"])
    finally:
        trainer.FLAGS.unparse_flags()
        gin.clear_config()
    return exit_info.value.code, capsys.readouterr().err.strip()


def test_a_missing_config_file_or_configurable_exits_1_naming_it(capsys, tmp_path):
    missing = str(tmp_path / "nowhere.gin")
    status, error = run_main(capsys, f"--config_file={missing}", f"--output_dir={tmp_path}")
    assert (status, error) == (1, f"trax_sl.trainer: error: config file not found: {missing}")
    status, error = run_main(capsys, "--config=tran.steps = 3", f"--output_dir={tmp_path}")
    assert status == 1
    assert error == (
        "trax_sl.trainer: error: bad gin configuration: No configurable matching 'tran'. "
        "In bindings string line 1 tran.steps = 3"
    )
    status, error = run_main(capsys, "--config=train.steps = 3", f"--output_dir={tmp_path}")
    assert status == 1
    assert error == (
        "trax_sl.trainer: error: RuntimeError: Required bindings for `train` not provided in config: "
        "['model', 'inputs']"
    )


def test_a_missing_dataset_exits_1_naming_it_and_the_data_dir(capsys, tmp_path):
    config = tmp_path / "tfds.gin"
    config.write_text(
        textwrap.dedent(
            """
            train.model = @test_trainer_cli.InProcessLM
            train.inputs = @trax_sl.data.make_inputs
            make_inputs.train_stream = [@trax_sl.data.TFDS(), @trax_sl.data.Batch()]
            TFDS.dataset_name = 'no_such_dataset'
            Batch.batch_size = 2
            """
        )
    )
    data_dir = tmp_path / "data"
    args = [f"--config_file={config}", f"--output_dir={tmp_path / 'out'}", f"--data_dir={data_dir}"]
    status, error = run_main(capsys, *args)
    assert status == 1
    assert error.startswith(
        f"trax_sl.trainer: error: FileNotFoundError: TFDS: no dataset 'no_such_dataset' in data_dir '{data_dir}'"
    )
    assert "\n" not in error


def test_distributed_flags_reach_jax_distributed_initialize(capsys, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    missing = str(tmp_path / "nowhere.gin")
    flags = ["--coordinator_address=10.0.0.1:1234", "--num_processes=2", "--process_id=1"]
    status, _ = run_main(capsys, *flags, f"--config_file={missing}")
    assert status == 1
    assert calls == [{"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}]


def test_killed_inside_an_async_checkpoint_save_it_resumes_from_the_one_before(workdir, reference_run):
    reference_dir, _ = reference_run
    output_dir = workdir / "killed_while_saving"
    process = start_run(workdir, output_dir)
    root, deadline = output_dir / "checkpoints", time.time() + 240
    # Files are written in a background thread into a temporary directory: kill -9 while it exists.
    while process.poll() is None and time.time() < deadline:
        if root.is_dir() and any(".orbax-checkpoint-tmp" in name for name in os.listdir(root)):
            os.kill(process.pid, signal.SIGKILL)
            break
    assert process.wait(timeout=60) == -signal.SIGKILL
    left = sorted(os.listdir(root))
    assert any(".orbax-checkpoint-tmp" in name for name in left), left  # Killed inside the save.

    restart_and_compare(workdir, output_dir, reference_dir)
    assert not any(".orbax-checkpoint-tmp" in name for name in os.listdir(root))


def limit_file_size(n_bytes):
    """preexec_fn: writes past `n_bytes` fail with EFBIG (as on a full disk) instead of killing the process."""

    def limit():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))

    return limit


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_one_line_and_loses_nothing(workdir):
    # A wider model, whose checkpoint files (unlike the logs) outgrow the 16 KB the run may write per file.
    args = ["--config=TinyLM.d_model = 512", "--config=train.steps = 12"]
    env = {k: v for k, v in cli_env(workdir).items() if not k.startswith("JAX_COMPILATION_CACHE")}

    def run_wide(output_dir, **kwargs):
        command = cli_command(workdir, f"--output_dir={output_dir}", *args)
        return subprocess.run(command, check=False, env=env, capture_output=True, timeout=300, **kwargs)

    reference = run_wide(workdir / "wide")
    assert reference.returncode == 0, reference.stderr
    output_dir = workdir / "disk_full"
    full = run_wide(output_dir, text=True, preexec_fn=limit_file_size(16 * 1024))
    assert full.returncode == 1, full.stderr
    assert "Traceback" not in full.stderr
    line = full.stderr.strip().splitlines()[-1]
    assert line.startswith("trax_sl.trainer: error: CheckpointError: ") and "could not" in line, full.stderr
    assert "File too large" in line
    assert checkpoints.step_checkpoints(str(output_dir)) == []

    again = run_wide(output_dir)
    assert again.returncode == 0, again.stderr
    assert metrics_rows(output_dir) == metrics_rows(workdir / "wide")
    model = tl.Serial(tl.Embedding(8, 512), tl.Dense(8))
    restored, expected = (
        checkpoints.load_model(str(path / "checkpoints"), model)[0] for path in (output_dir, workdir / "wide")
    )
    jax.tree.map(np.testing.assert_array_equal, restored, expected)


def test_resuming_under_another_optimizer_exits_1_naming_both(workdir, tmp_path):
    assert run_cli(workdir, f"--output_dir={tmp_path}", "--config=train.steps = 2").returncode == 0
    result = run_cli(
        workdir, f"--output_dir={tmp_path}", "--config=train.steps = 4", "--config=train.optimizer = @SGD"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"trax_sl.trainer: error: CheckpointMismatchError: {tmp_path}/checkpoints/step_00000002 was saved "
        "with optimizer(s) Adam; this run uses SGD"
    )


def test_a_file_as_output_dir_or_a_wrongly_typed_gin_value_exits_1_naming_it(capsys, tmp_path):
    model = [
        "--config=train.model = @test_trainer_cli.InProcessLM",
        "--config=train.inputs = @trax_sl.data.addition_inputs",
    ]
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    status, error = run_main(capsys, *model, f"--output_dir={a_file}")
    assert (status, error) == (
        1,
        (
            f"trax_sl.trainer: error: NotADirectoryError: train: output_dir {a_file} is a file, not a "
            f"directory; pass a directory (it is created if missing)"
        ),
    )
    assert a_file.read_text() == "not a directory"
    status, error = run_main(
        capsys, *model, "--config=train.steps = '20'", f"--output_dir={tmp_path / 'out'}"
    )
    assert (status, error) == (
        1,
        (
            "trax_sl.trainer: error: BindingTypeError: train.steps = '20' has type str, but train's steps "
            "takes int (write 20 without quotes)"
        ),
    )
    assert not (tmp_path / "out").exists()  # Refused before anything ran.
