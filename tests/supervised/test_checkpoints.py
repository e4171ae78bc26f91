"""Checkpoints: by-name round trip, atomic writes, pruning, corrupt-checkpoint fallback, exact resume."""

import json
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import data, optimizers, shapes
from trax_sl import layers as tl
from trax_sl.layers import serialization
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


def checkpoint_of(step, scale=1.0):
    weights = ((jnp.full((2, 3), scale), ()), {"b": jnp.arange(4, dtype=jnp.int32)})
    state = ((), jnp.ones((1,), jnp.bfloat16) * scale)
    trainer = {"rng": jnp.array([1, 2], jnp.uint32), "tasks": ({"mu": jnp.full((3,), -scale)},)}
    return checkpoints.Checkpoint(step, weights, state, trainer, {"train_positions": [step]})


def signatures(checkpoint):
    def to_struct(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)

    model = (to_struct(checkpoint.model_weights), to_struct(checkpoint.model_state))
    return model, to_struct(checkpoint.trainer)


def test_round_trip_by_name(tmp_path):
    saved = checkpoint_of(7, scale=2.5)
    path = checkpoints.save(str(tmp_path), checkpoints.step_name(7), saved, shapes.ShapeDtype((1, 3)))
    assert path == str(tmp_path / "checkpoints" / "step_00000007")
    assert sorted(os.listdir(path)) == ["checkpoint.json", "model.weights", "trainer.weights"]
    names = serialization.read_header(os.path.join(path, "model.weights"))["arrays"]
    assert sorted(names) == ["state[1]", "weights[0][0]", "weights[1]['b']"]
    trainer_names = serialization.read_header(os.path.join(path, "trainer.weights"))["arrays"]
    assert sorted(trainer_names) == ["weights['rng']", "weights['tasks'][0]['mu']"]

    restored = checkpoints.restore(path, *signatures(saved))
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


def test_restore_matches_names_not_order_and_names_what_is_missing_or_different(tmp_path):
    path = checkpoints.save(str(tmp_path), "named", checkpoint_of(1))
    (weights_sig, state_sig), trainer_sig = signatures(checkpoint_of(1))
    # Dict entries are matched by key: a tree built in another order restores the same arrays.
    reordered = {"tasks": trainer_sig["tasks"], "rng": trainer_sig["rng"]}
    assert checkpoints.restore(path, (weights_sig, state_sig), reordered).trainer["rng"].tolist() == [1, 2]
    with pytest.raises(checkpoints.CheckpointError, match="has no array \"weights\\['extra'\\]\""):
        checkpoints.restore(path, (weights_sig, state_sig), dict(trainer_sig, extra=trainer_sig["rng"]))
    wider = ((jax.ShapeDtypeStruct((2, 4), jnp.float32), ()), weights_sig[1])
    with pytest.raises(
        checkpoints.CheckpointError, match=r"weights\[0\]\[0\] is float32\[2, 3\] in the file"
    ):
        checkpoints.restore(path, (wider, state_sig), trainer_sig)


def test_a_crash_mid_write_leaves_the_last_checkpoint_and_no_half_written_one(tmp_path, monkeypatch):
    checkpoints.save(str(tmp_path), checkpoints.step_name(1), checkpoint_of(1))
    real_save_layer = serialization.save_layer

    def crash_on_second_file(path, *args):
        if path.endswith("trainer.weights"):
            raise KeyboardInterrupt  # As if killed mid-write.
        real_save_layer(path, *args)

    monkeypatch.setattr(serialization, "save_layer", crash_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save(str(tmp_path), checkpoints.step_name(2), checkpoint_of(2))
    assert [step for step, _ in checkpoints.step_checkpoints(str(tmp_path))] == [1]
    # A leftover of a harder crash (no cleanup ran) is ignored, then removed.
    os.makedirs(tmp_path / "checkpoints" / ".tmp-step_00000003-abc")
    assert [step for step, _ in checkpoints.step_checkpoints(str(tmp_path))] == [1]
    checkpoints.remove_leftovers(str(tmp_path))
    assert os.listdir(tmp_path / "checkpoints") == ["step_00000001"]


def test_prune_keeps_the_newest_and_the_permanent(tmp_path):
    for step in range(1, 7):
        checkpoints.save(str(tmp_path), checkpoints.step_name(step), checkpoint_of(step), permanent=step == 2)
        checkpoints.prune(str(tmp_path), 3)
    assert [step for step, _ in checkpoints.step_checkpoints(str(tmp_path))] == [2, 4, 5, 6]


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    for step in (1, 2, 3):
        checkpoints.save(str(tmp_path), checkpoints.step_name(step), checkpoint_of(step, scale=float(step)))
    model_file = tmp_path / "checkpoints" / "step_00000003" / "model.weights"
    model_file.write_bytes(model_file.read_bytes()[:-40])  # Truncated.
    json_file = tmp_path / "checkpoints" / "step_00000002" / "checkpoint.json"
    json_file.write_text("{not json")
    sigs = signatures(checkpoint_of(1))
    with caplog.at_level(logging.WARNING):
        restored = checkpoints.restore_latest(str(tmp_path), lambda p: checkpoints.restore(p, *sigs))
    assert restored.step == 1
    np.testing.assert_array_equal(restored.model_weights[0][0], np.ones((2, 3)))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "step_00000003 is unusable" in warnings[0] and "step_00000002 is unusable" in warnings[1]

    model_file = tmp_path / "checkpoints" / "step_00000001" / "model.weights"
    model_file.write_bytes(b"garbage")
    with pytest.raises(
        checkpoints.CheckpointError, match="No usable checkpoint in .*step_00000001.*not a trax_sl"
    ):
        checkpoints.restore_latest(str(tmp_path), lambda p: checkpoints.restore(p, *sigs))
    assert checkpoints.restore_latest(str(tmp_path / "empty"), lambda p: None) is None


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
        del row["train/steps_per_second"]
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


def test_the_model_file_of_a_checkpoint_loads_with_init_from_file(tmp_path):
    loop = make_loop(str(tmp_path))
    loop.run(5)
    model = tl.Serial(tl.Embedding(V, 16), tl.Dropout(0.3), tl.Dense(V))
    weights, _ = model.init_from_file(str(tmp_path / "checkpoints" / "step_00000005" / "model.weights"))
    jax.tree.map(np.testing.assert_array_equal, weights, loop.model.weights)
    with pytest.raises(checkpoints.CheckpointError, match="step_00000099.*checkpoint.json: missing"):
        loop.load_checkpoint(filename="step_00000099")
