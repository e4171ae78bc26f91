"""Checkpoints: by-name round trip, atomic writes, pruning, corrupt-checkpoint fallback, exact resume."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import data, optimizers
from trax_sl import layers as tl
from trax_sl.supervised import checkpoints, training

V = 8


@pytest.fixture(autouse=True, scope="module")
def compilation_cache(tmp_path_factory):
    """Loops built alike compile alike: a persistent compilation cache compiles their steps once."""
    names = (
        "jax_compilation_cache_dir",
        "jax_persistent_cache_min_compile_time_secs",
        "jax_persistent_cache_min_entry_size_bytes",
    )
    saved = {name: getattr(jax.config, name) for name in names}
    cache_dir = str(tmp_path_factory.getbasetemp() / "jax_compilation_cache")
    for name, value in zip(names, (cache_dir, 0, 0)):
        jax.config.update(name, value)
    yield cache_dir
    for name, value in saved.items():
        jax.config.update(name, value)


DESCRIPTION = checkpoints.Description("Serial[Dense]", ("Adam",), None)


def checkpoint_of(step, scale=1.0):
    weights = ((jnp.full((2, 3), scale), ()), {"b": jnp.arange(4, dtype=jnp.int32)})
    state = ((), jnp.ones((1,), jnp.bfloat16) * scale)
    trainer = {"rng": jnp.array([1, 2], jnp.uint32), "tasks": ({"mu": jnp.full((3,), -scale)},)}
    return checkpoints.Checkpoint(step, weights, state, trainer, {"train_positions": [step]})


def save_all(directory, steps, n_to_keep=None, permanent=()):
    """Saves checkpoint_of(step, scale=step) for each step; returns the closed Checkpoints' directory."""
    found = checkpoints.Checkpoints(str(directory), n_to_keep)
    for step in steps:
        found.save(checkpoint_of(step, scale=float(step)), DESCRIPTION, permanent=step in permanent)
    found.close()
    return str(directory)


def restore_from(directory, step=None, expected=None, description=DESCRIPTION):
    found = checkpoints.Checkpoints(str(directory), create=False)
    expected = expected or checkpoint_of(0)
    try:
        if step is None:
            return found.restore_latest(lambda s: found.restore(s, expected, description))
        return found.restore(step, expected, description)
    finally:
        found.close()


def test_round_trip_by_name(tmp_path):
    saved = checkpoint_of(7, scale=2.5)
    found = checkpoints.Checkpoints(str(tmp_path))
    path = found.save(saved, DESCRIPTION)
    found.close()
    assert path == str(tmp_path / "step_00000007")
    assert sorted(os.listdir(path)) == [
        "_CHECKPOINT_METADATA",
        "commit_success.txt",
        "meta",
        "model",
        "trainer",
    ]
    restored = restore_from(tmp_path, 7)
    assert restored.step == 7 and restored.metadata == {"train_positions": [7]}
    for ours, theirs in [
        (saved.model_weights, restored.model_weights),
        (saved.model_state, restored.model_state),
        (saved.trainer, restored.trainer),
    ]:
        assert jax.tree.structure(ours) == jax.tree.structure(theirs)
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)


def test_restore_matches_names_not_order_and_names_both_sides_of_a_mismatch(tmp_path):
    save_all(tmp_path, [1])
    expected = checkpoint_of(1)
    # Dict entries are matched by key: a tree built in another order restores the same arrays.
    expected.trainer = {"tasks": expected.trainer["tasks"], "rng": expected.trainer["rng"]}
    assert restore_from(tmp_path, 1, expected).trainer["rng"].tolist() == [1, 2]
    expected.trainer = dict(expected.trainer, extra=expected.trainer["rng"])
    with pytest.raises(
        checkpoints.CheckpointMismatchError, match=r"\['extra'\] \(uint32\[2\]\) is missing there"
    ):
        restore_from(tmp_path, 1, expected)
    wider = checkpoint_of(1)
    wider.model_weights = ((jnp.zeros((2, 4)), ()), wider.model_weights[1])
    other = checkpoints.Description("Serial[Wider]", ("Adam",))
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"holds model 'Serial\[Dense\]', which does not fit this run's model 'Serial\[Wider\]': "
        r"\[0\]\[0\]\[0\] is float32\[2, 3\] there, float32\[2, 4\] here",
    ):
        restore_from(tmp_path, 1, wider, other)
    sgd = checkpoints.Description("Serial[Dense]", ("SGD",))
    with pytest.raises(
        checkpoints.CheckpointMismatchError, match="saved with optimizer.s. Adam; this run uses SGD"
    ):
        restore_from(tmp_path, 1, description=sgd)
    # A mismatch is not corruption: no fallback to older checkpoints (they would not fit either).
    save_all(tmp_path, [2])
    with pytest.raises(checkpoints.CheckpointMismatchError, match="step_00000002"):
        restore_from(tmp_path, description=sgd)


def test_a_crash_mid_write_leaves_the_last_checkpoint_and_no_half_written_one(tmp_path):
    save_all(tmp_path, [1])
    # What a save killed mid-write leaves: Orbax's temporary directory, never a step's name.
    leftover = tmp_path / "step_00000002.orbax-checkpoint-tmp"
    shutil.copytree(tmp_path / "step_00000001", leftover)
    (leftover / "commit_success.txt").unlink()
    assert checkpoints.Checkpoints(str(tmp_path), create=False).steps() == [1]
    save_all(tmp_path, [2])  # Opened for writing, the leftover is removed before the next save.
    assert sorted(os.listdir(tmp_path)) == ["step_00000001", "step_00000002"]
    assert restore_from(tmp_path).step == 2


def test_pruning_keeps_the_newest_and_the_permanent(tmp_path):
    save_all(tmp_path, range(1, 7), n_to_keep=3, permanent=(2,))
    assert checkpoints.Checkpoints(str(tmp_path), create=False).steps() == [2, 4, 5, 6]
    # Reopened, it knows step 2 is permanent from its metadata.
    save_all(tmp_path, [7, 8], n_to_keep=3)
    assert checkpoints.Checkpoints(str(tmp_path), create=False).steps() == [2, 6, 7, 8]


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    save_all(tmp_path, [1, 2, 3])
    for data_file in (tmp_path / "step_00000003" / "model").rglob("d/*"):
        data_file.write_bytes(data_file.read_bytes()[:-8])  # Truncated.
    (tmp_path / "step_00000002" / "meta" / "metadata").write_text("{not json")
    with caplog.at_level(logging.WARNING):
        restored = restore_from(tmp_path)
    assert restored.step == 1
    np.testing.assert_array_equal(restored.model_weights[0][0], np.ones((2, 3)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "step_00000003 is unusable" in warnings[0] and "step_00000002 is unusable" in warnings[1]
    # The unusable ones are moved aside, so that saving their steps again meets nothing.
    assert checkpoints.Checkpoints(str(tmp_path), create=False).steps() == [1]
    assert sorted(p.name[:13] for p in (tmp_path / "unusable").iterdir()) == [
        "step_00000002",
        "step_00000003",
    ]

    (tmp_path / "step_00000001" / "meta" / "metadata").write_text("[]")
    with pytest.raises(
        checkpoints.CheckpointError, match="No usable checkpoint in .*step_00000001.*metadata format"
    ):
        restore_from(tmp_path)
    os.makedirs(tmp_path / "empty")
    assert restore_from(tmp_path / "empty") is None


def copy_inputs():
    return data.sequence_copy_inputs(
        vocab_size=V, batch_size=8, train_length=6, eval_min_length=2, eval_max_length=6, pad_to_multiple=16
    )


def make_loop(output_dir, random_seed=None, callbacks=None):
    """Evals and logs every 10 steps, checkpoints every 5: checkpoints at 15 hold unlogged losses."""
    inputs = copy_inputs()
    # A plain iterator (advanced on resume) for training, a restartable function for evals.
    task = training.TrainTask(
        inputs.train_stream(1),
        tl.WeightedCategoryCrossEntropy(),
        optimizers.Adam(0.05),
        loss_name="loss",
        n_steps_per_checkpoint=5,
    )
    eval_task = training.EvalTask(
        lambda position: inputs.eval_stream(1, position=position),
        [tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
        metric_names=["loss", "accuracy"],
    )
    model = tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3), tl.Dense(V))  # Dropout: the rng matters.
    return training.Loop(
        model,
        task,
        eval_tasks=eval_task,
        output_dir=output_dir,
        eval_at=lambda step: step % 10 == 0,
        random_seed=random_seed,
        callbacks=callbacks,
    )


def metrics_rows(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    for row in rows:
        for key in training.TIMING_KEYS:
            row.pop(key, None)
    return rows


def test_a_restarted_loop_ends_as_an_uninterrupted_one(tmp_path):
    straight = make_loop(str(tmp_path / "straight"), random_seed=0)
    straight.run(20)

    stopped = make_loop(str(tmp_path / "stopped"), random_seed=0)
    stopped.run(17)  # Checkpoints at 15 and 17 (the step run stops at), logged at 10.
    # Killed before run's final save: the checkpoint of step 17 never happened, steps 16 and 17 are lost.
    shutil.rmtree(tmp_path / "stopped" / "checkpoints" / "step_00000017")
    with open(tmp_path / "stopped" / "metrics.jsonl", "a") as f:
        f.write('{"step": 17, "train/lo')  # A line cut short by the crash.
    resumed = make_loop(str(tmp_path / "stopped"), random_seed=1)  # The checkpoint's weights and rng win.
    assert resumed.step == 15
    assert resumed.tasks[0].data_position == 15 and resumed.eval_tasks[0].data_position == 1
    resumed.run(5)

    assert metrics_rows(tmp_path / "straight") == metrics_rows(tmp_path / "stopped")
    jax.tree.map(np.testing.assert_array_equal, straight.model.weights, resumed.model.weights)
    for mode, metric in [("train", "metrics/loss"), ("eval", "metrics/loss"), ("eval", "metrics/accuracy")]:
        assert straight.history.get(mode, metric) == resumed.history.get(mode, metric)


def test_a_loop_with_more_or_fewer_eval_tasks_restores_the_training_and_starts_its_evals_anew(tmp_path):
    first = make_loop(str(tmp_path))
    first.run(5)
    weights = first.model.weights
    inputs = copy_inputs()
    for n_eval_tasks in (0, 2):
        tasks = [
            training.EvalTask(
                inputs.eval_stream(1), [tl.WeightedCategoryAccuracy()], metric_names=[f"accuracy{i}"]
            )
            for i in range(n_eval_tasks)
        ]
        task = training.TrainTask(
            inputs.train_stream(1), tl.WeightedCategoryCrossEntropy(), optimizers.Adam(0.05)
        )
        model = tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3), tl.Dense(V))
        loop = training.Loop(
            model, task, eval_tasks=tasks, output_dir=str(tmp_path), eval_at=lambda step: False
        )
        assert loop.step == 5 and [t.data_position for t in loop.eval_tasks] == [0] * n_eval_tasks
        jax.tree.map(np.testing.assert_array_equal, loop.model.weights, weights)
        loop.close()


def resume_to_20_steps_as_an_uninterrupted_run(tmp_path, stopped_at: int) -> None:
    """Resumes the run in tmp_path/'stopped' (expected at `stopped_at`) to step 20; checks it equals a straight run."""
    straight = make_loop(str(tmp_path / "straight"), random_seed=0)
    straight.run(20)
    resumed = make_loop(str(tmp_path / "stopped"), random_seed=1)  # The checkpoint's weights and rng win.
    assert resumed.step == stopped_at
    resumed.run(20 - stopped_at)
    assert metrics_rows(tmp_path / "straight") == metrics_rows(tmp_path / "stopped")
    jax.tree.map(np.testing.assert_array_equal, straight.model.weights, resumed.model.weights)


def test_a_run_that_stops_between_checkpoints_resumes_where_it_stopped(tmp_path):
    make_loop(str(tmp_path / "stopped"), random_seed=0).run(17)
    resume_to_20_steps_as_an_uninterrupted_run(tmp_path, stopped_at=17)


def test_the_model_of_a_checkpoint_loads_by_path(tmp_path):
    loop = make_loop(str(tmp_path))
    loop.run(5)
    loop.close()
    model = tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3), tl.Dense(V))
    for path in ("checkpoints/step_00000005", "checkpoints", "."):
        weights, _ = checkpoints.load_model(str(tmp_path / path), model)
        jax.tree.map(np.testing.assert_array_equal, weights, loop.model.weights)
    with pytest.raises(
        checkpoints.CheckpointMismatchError,
        match=r"holds model .Serial\[Embedding_8_16 Dropout Dense_8\]., which does not fit .Serial\[Embedding_8_16 Dropout Dense_4\].",
    ):
        checkpoints.load_model(str(tmp_path), tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3), tl.Dense(4)))
    with pytest.raises(checkpoints.CheckpointError, match="step_00000099: unreadable metadata"):
        loop.load_checkpoint(filename="step_00000099")


def test_a_restart_with_no_checkpoint_drops_the_metrics_of_the_run_that_never_checkpointed(tmp_path):
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    # Killed before its first checkpoint: rows and events of steps a restart trains again.
    (stopped / "metrics.jsonl").write_text('{"step": 10, "train/loss": 9.0}\n{"step": 20, "tr')
    make_loop(str(stopped), random_seed=0).run(20)
    make_loop(str(tmp_path / "straight"), random_seed=0).run(20)
    assert metrics_rows(stopped) == metrics_rows(tmp_path / "straight")


def test_a_named_checkpoint_is_never_without_a_complete_copy_while_it_is_replaced(tmp_path):
    named = checkpoints.Checkpoints(str(tmp_path / "lowest_loss"), n_to_keep=1)
    named.save(checkpoint_of(4, 4.0), DESCRIPTION)
    named.wait()
    named.save(checkpoint_of(8, 8.0), DESCRIPTION)  # Written in the background from here.
    seen = []
    while named._manager.is_saving_in_progress():
        final = [
            name
            for name in os.listdir(tmp_path / "lowest_loss")
            if name.startswith("step_") and "." not in name
        ]
        assert final, "no complete copy"
        seen.append(tuple(sorted(final)))
    named.close()
    assert os.listdir(tmp_path / "lowest_loss") == ["step_00000008"]
    assert restore_from(tmp_path / "lowest_loss").step == 8
    assert seen and ("step_00000004",) in seen, seen  # Polled while the new copy was being written.
