"""kill -9 at random steps: a resumed run trains on exactly the batches an uninterrupted run trains on.

The inputs are a text pipeline of trax_sl.data steps (TFDS, Tokenize, filter,
shuffle, bucketing), which runs on Grain: the checkpoint holds the data
iterator's state (with examples waiting in buckets), and a restart restores it
instead of replaying the stream. Every step is logged and checkpointed, so a
loss that differs anywhere means a batch that differs.
"""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from trax_sl import data

from .test_trainer_cli import REPO, metrics_rows

STEPS = 14

HELPER_MODULE = """
import gin

from trax_sl import data
from trax_sl import layers as tl


@gin.configurable
def ByteLM(mode="train"):
    del mode
    return tl.Serial(tl.Embedding(256, 16), tl.Dense(256))


@gin.configurable
def text_inputs(name, data_dir):
    pipeline = data.Serial(
        data.TFDS(name, data_dir=data_dir, keys=("text",)),
        data.Tokenize(keys=[0], vocab_type="char"),
        data.Dup(),
        data.FilterByLength(max_length=100, min_length=8),
        data.Shuffle(8),
        data.BucketByLength(boundaries=[20, 50], batch_sizes=[4, 2, 2]),
        data.AddLossWeights(),
    )
    return data.make_inputs(train_stream=pipeline)
"""

CONFIG = f"""
import resume_helpers

train.model = @resume_helpers.ByteLM
train.inputs = @resume_helpers.text_inputs
train.optimizer = @trax_sl.optimizers.Adam
train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
multifactor.constant = 0.05
multifactor.factors = 'constant'
train.steps = {STEPS}
train.eval_frequency = 1
train.eval_steps = 1
train.checkpoints_at = {list(range(1, STEPS + 1))}
train.random_seed = 0
"""


def trainer(workdir, output_dir, corpus):
    name, data_dir = corpus
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, str(workdir)]))
    env.update(
        JAX_COMPILATION_CACHE_DIR=str(workdir / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    command = [
        sys.executable,
        "-m",
        "trax_sl.trainer",
        f"--config_file={workdir / 'resume.gin'}",
        f"--config=resume_helpers.text_inputs.name = '{name}'",
        f"--config=resume_helpers.text_inputs.data_dir = '{data_dir}'",
        f"--output_dir={output_dir}",
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def logged_steps(output_dir) -> int:
    try:
        return len((output_dir / "metrics.jsonl").read_text().splitlines())
    except FileNotFoundError:
        return 0


def test_runs_killed_at_random_steps_resume_on_the_batches_of_an_uninterrupted_run(tmp_path):
    (tmp_path / "resume_helpers.py").write_text(HELPER_MODULE)
    (tmp_path / "resume.gin").write_text(CONFIG)
    files = []
    for i in range(40):  # Files of 6..120 characters: buckets fill at different rates.
        files.append(str(tmp_path / f"m{i:02d}.py"))
        (tmp_path / f"m{i:02d}.py").write_text("x = 1\n" * (1 + (i * 7) % 20))
    data_dir = str(tmp_path / "tfds")
    corpus = (data.prepare_python_corpus(files, data_dir), data_dir)

    straight = trainer(tmp_path, tmp_path / "straight", corpus)
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    expected = metrics_rows(tmp_path / "straight")
    assert [row["step"] for row in expected] == list(range(1, STEPS + 1))
    assert len({row["train/loss"] for row in expected}) == STEPS  # Each step's batch shows in its loss.

    killed = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = []
    while logged_steps(killed) < STEPS - 3:
        target = logged_steps(killed) + int(rng.integers(1, 4))
        process = trainer(tmp_path, killed, corpus)
        deadline = time.time() + 240
        while logged_steps(killed) < target and process.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        assert process.poll() is None, process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
        kills.append(logged_steps(killed))
    assert len(kills) >= 3
    resumed = trainer(tmp_path, killed, corpus)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    got = metrics_rows(killed)
    assert [row["step"] for row in got] == list(range(1, STEPS + 1))
    for row, expected_row in zip(got, expected):
        assert row == expected_row, (kills, row["step"])
