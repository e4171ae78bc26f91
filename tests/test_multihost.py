"""Multi-process training: 2 processes of 2 CPU devices train as 1 process of 4 devices does.

The trainer CLI runs as 2 local processes connected by `--coordinator_address`
on 127.0.0.1; jaxlib's CPU collectives between processes are gloo's (the
default of `jax_cpu_collectives_implementation`, set explicitly here). Each
process reads its own rows of the same global batches, so the 2-process run
and a 1-process, 4-device run see the same data: their metrics and weights
must agree, only process 0 may write files and log lines, and a 2-process
run restarted from its checkpoint must restore it on both processes. The
CLI starts `jax.distributed` only when its flags or the environment ask.
"""

import json
import os
import socket
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

import trax_sl
from trax_sl import data, trainer
from trax_sl import layers as tl
from trax_sl.supervised import checkpoints, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))
STEPS = 6
TIMEOUT = 120

HELPER_MODULE = """
import itertools

import gin
import jax
import numpy as np

from trax_sl import layers as tl
from trax_sl.data import Inputs

GLOBAL_BATCH, LENGTH, VOCAB = 8, 16, 8


@gin.configurable
def TinyLM(mode="train"):
    return tl.Serial(tl.Embedding(VOCAB, 16), tl.Dropout(0.3, mode=mode), tl.Dense(VOCAB))


@gin.configurable
def ByteLM(mode="train"):
    return tl.Serial(tl.Embedding(256, 16), tl.Dropout(0.3, mode=mode), tl.Dense(256))


@gin.configurable
def WideLM(mode="train"):
    # Weights of 4096 elements: large enough that FSDP splits them.
    return tl.Serial(tl.Embedding(VOCAB, 512), tl.Dropout(0.3, mode=mode), tl.Dense(VOCAB))


def batches(seed, position):
    # The same global batches however many processes read them; each process takes its own rows.
    process, n_processes = jax.process_index(), jax.process_count()
    rows = slice(process * GLOBAL_BATCH // n_processes, (process + 1) * GLOBAL_BATCH // n_processes)
    for i in itertools.count(position):
        rng = np.random.default_rng([seed, i])
        x = rng.integers(1, VOCAB, size=(GLOBAL_BATCH, LENGTH), dtype=np.int32)
        weights = (rng.uniform(size=(GLOBAL_BATCH, LENGTH)) < 0.8).astype(np.float32)
        yield x[rows], x[rows], weights[rows]


@gin.configurable
def process_rows_inputs():
    return Inputs(
        train_stream=lambda n_devices, position=0: batches(0, position),
        eval_stream=lambda n_devices, position=0: batches(1, position),
    )
"""

CONFIG = """
import multihost_helpers

train.model = @multihost_helpers.TinyLM
train.inputs = @multihost_helpers.process_rows_inputs
train.optimizer = @trax_sl.optimizers.Adam
train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
multifactor.constant = 0.05
multifactor.factors = 'constant'
train.eval_frequency = 3
train.eval_steps = 1
train.random_seed = 0
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(workdir, output_dir, steps, n_processes, devices_per_process, *bindings):
    """Runs the trainer CLI as `n_processes` local processes, with more gin `bindings`; returns each one's stdout."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([REPO, str(workdir)]),
        JAX_PLATFORMS="cpu",
        JAX_NUM_CPU_DEVICES=str(devices_per_process),
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        JAX_NUMPY_RANK_PROMOTION="raise",
        # The two 2-process runs compile the same steps: compile them once.
        JAX_COMPILATION_CACHE_DIR=str(workdir / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [
        sys.executable,
        "-m",
        "trax_sl.trainer",
        f"--config_file={workdir / 'config.gin'}",
        f"--config=train.steps = {steps}",
        f"--output_dir={output_dir}",
        *(f"--config={binding}" for binding in bindings),
    ]
    if n_processes > 1:
        command.append(f"--coordinator_address=127.0.0.1:{free_port()}")
        command.append(f"--num_processes={n_processes}")
    logs = [workdir / f"{output_dir.name}.{steps}.{i}.log" for i in range(n_processes)]
    processes = []
    for i, log in enumerate(logs):
        process_flags = [f"--process_id={i}"] if n_processes > 1 else []
        with open(log, "w") as out:
            processes.append(
                subprocess.Popen(command + process_flags, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        codes = [process.wait(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    outputs = [log.read_text() for log in logs]
    assert codes == [0] * n_processes, "\n\n".join(outputs)
    return outputs


def metrics_rows(output_dir):
    rows = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        for key in training.TIMING_KEYS:
            row.pop(key, None)
    return rows


def final_weights(output_dir, d_model=16, vocab=8):
    model = tl.Serial(tl.Embedding(vocab, d_model), tl.Dropout(0.3), tl.Dense(vocab))
    return checkpoints.load_model(str(output_dir / "checkpoints" / f"step_{STEPS:08d}"), model)[0]


def assert_same_run(got_dir, expected_dir, d_model=16, vocab=8):
    expected, got = metrics_rows(expected_dir), metrics_rows(got_dir)
    assert [sorted(row) for row in got] == [sorted(row) for row in expected]
    for row, expected_row in zip(got, expected):
        np.testing.assert_allclose(
            [row[k] for k in sorted(row)], [expected_row[k] for k in sorted(row)], rtol=1e-5
        )
    differences = jax.tree.map(
        lambda a, b: float(np.abs(a - b).max()),
        final_weights(got_dir, d_model, vocab),
        final_weights(expected_dir, d_model, vocab),
    )
    assert max(jax.tree.leaves(differences)) < 1e-5, differences


def test_two_processes_train_as_one_process_with_their_devices(tmp_path):
    (tmp_path / "multihost_helpers.py").write_text(HELPER_MODULE)
    (tmp_path / "config.gin").write_text(CONFIG)
    one, two = tmp_path / "one_process", tmp_path / "two_processes"

    run_trainer(tmp_path, one, STEPS, n_processes=1, devices_per_process=4)
    first = run_trainer(tmp_path, two, 3, n_processes=2, devices_per_process=2)
    resumed = run_trainer(tmp_path, two, STEPS, n_processes=2, devices_per_process=2)

    # Process 0 alone logs and writes: one metrics.jsonl row per logged step, one event file per run.
    assert "Step 3: train/loss" in first[0] and "Step 6: train/loss" in resumed[0]
    assert "Step " not in first[1] + resumed[1]
    assert [row["step"] for row in metrics_rows(two)] == [1, 3, 6]
    assert len(os.listdir(two / "train")) == 2 and len(os.listdir(two / "eval")) == 2

    # Both processes resumed from step 3 (else their steps would not match) and end as one process does.
    assert_same_run(two, one)


def test_fsdp_across_two_processes_restarts_and_trains_as_one_process(tmp_path):
    # fsdp=8 over 2 processes x 4 devices: each process holds half of each large weight's shards and
    # writes only those to the checkpoint; the restarted run reads them back on both processes.
    (tmp_path / "multihost_helpers.py").write_text(HELPER_MODULE)
    (tmp_path / "config.gin").write_text(CONFIG)
    fsdp = ("train.model = @multihost_helpers.WideLM", "train.mesh_shape = {'fsdp': 8}")
    one, two = tmp_path / "one_process", tmp_path / "two_processes"

    started = run_trainer(tmp_path, one, STEPS, 1, 8, *fsdp)
    assert "(mesh data=1 fsdp=8 tensor=1, 8 devices)" in started[0]
    first = run_trainer(tmp_path, two, 3, 2, 4, *fsdp)
    resumed = run_trainer(tmp_path, two, STEPS, 2, 4, *fsdp)
    assert "Per device: weights 4.0 KiB" in first[0] and "Restored step 3" in resumed[0]
    assert_same_run(two, one, d_model=512)


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


def test_jax_distributed_starts_when_the_flags_or_the_environment_ask(capsys, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    missing = f"--config_file={tmp_path / 'nowhere.gin'}"  # Ends the run right after the start.
    unset = {"coordinator_address": None, "num_processes": None, "process_id": None}

    assert run_main(capsys, missing)[0] == 1
    assert calls == []  # One process: jax.distributed is left alone.
    run_main(capsys, missing, "--distributed")  # jax detects the cluster (Cloud TPU, SLURM, Open MPI).
    assert calls == [unset]
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")  # jax reads it itself.
    run_main(capsys, missing)
    assert calls == [unset, unset]
    run_main(capsys, missing, "--nodistributed")
    assert calls == [unset, unset]


def test_a_failing_jax_distributed_start_exits_1_with_one_line(capsys, tmp_path, monkeypatch):
    def initialize(**kwargs):
        raise ValueError("Number of processes must be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    status, error = run_main(capsys, "--coordinator_address=10.0.0.1:1234", f"--output_dir={tmp_path}")
    assert status == 1
    assert error == (
        "trax_sl.trainer: error: jax.distributed.initialize: Number of processes must be defined. (give "
        "--coordinator_address, --num_processes and --process_id, or run where JAX detects the cluster: "
        "Cloud TPU, SLURM, Open MPI)"
    )


def test_the_main_jobs_inputs_train_alike_on_1x4_2x2_and_4x1_processes_by_devices(tmp_path):
    # The main job's built-in inputs (python_chars_inputs) with a global batch of 8: 1 process of 4
    # devices, 2 of 2 and 4 of 1 read the same global batches (each process its rows) and train alike,
    # the multi-process runs restarted from their step-3 checkpoints.
    (tmp_path / "multihost_helpers.py").write_text(HELPER_MODULE)
    (tmp_path / "config.gin").write_text(CONFIG)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    files = []
    for i in range(4):
        files.append(str(corpus / f"module_{i}.py"))
        (corpus / f"module_{i}.py").write_text("".join(f"value_{i}_{j} = {i * j} * 2\n" for j in range(40)))
    data_dir = str(tmp_path / "tfds")
    data.prepare_python_corpus(files, data_dir)  # Once, before the processes read it.
    inputs = (
        "train.model = @multihost_helpers.ByteLM",
        "train.inputs = @trax_sl.data.python_chars_inputs",
        "trax_sl.data.python_chars_inputs.batch_size = 8",
        "trax_sl.data.python_chars_inputs.sequence_length = 16",
        f"trax_sl.data.python_chars_inputs.data_dir = '{data_dir}'",
        f"trax_sl.data.python_chars_inputs.files = {files}",
    )
    runs = {}
    for n_processes, devices in ((1, 4), (2, 2), (4, 1)):
        runs[n_processes] = tmp_path / f"{n_processes}x{devices}"
        if n_processes > 1:
            run_trainer(tmp_path, runs[n_processes], 3, n_processes, devices, *inputs)
        resumed = run_trainer(tmp_path, runs[n_processes], STEPS, n_processes, devices, *inputs)
        assert ("Restored step 3" in resumed[0]) == (n_processes > 1)
    assert [row["step"] for row in metrics_rows(runs[4])] == [1, 3, 6]
    for n_processes in (2, 4):
        assert_same_run(runs[n_processes], runs[1], vocab=256)
