"""training.Loop, TrainTask and EvalTask: learning, masks and weights, compiling once, logs, devices."""

import json
import logging
import os
import typing

import jax
import numpy as np
import optax
import pytest

import trax_sl
from trax_sl import data, optimizers
from trax_sl import layers as tl
from trax_sl.supervised import callbacks, training

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


def copy_inputs(batch_size=8):
    # train_length 6 and pad_to_multiple 16: every batch is [batch_size, 16], one shape.
    return data.sequence_copy_inputs(
        vocab_size=V,
        batch_size=batch_size,
        train_length=6,
        eval_min_length=2,
        eval_max_length=6,
        pad_to_multiple=16,
    )


def tiny_model():
    return tl.Serial(tl.Embedding(V, 16), tl.Dense(V))


def make_loop(output_dir=None, n_steps_per_checkpoint=10, eval_tasks=True, **kwargs):
    inputs = copy_inputs()
    task = training.TrainTask(
        lambda position: inputs.train_stream(1, position=position),
        tl.WeightedCategoryCrossEntropy(),
        optimizers.Adam(0.05),
        loss_name="loss",
        n_steps_per_checkpoint=n_steps_per_checkpoint,
    )
    eval_task = training.EvalTask(
        lambda position: inputs.eval_stream(1, position=position),
        [tl.WeightedCategoryCrossEntropy(), tl.WeightedCategoryAccuracy()],
        metric_names=["loss", "accuracy"],
        n_eval_batches=2,
    )
    return training.Loop(
        tiny_model(),
        task,
        eval_tasks=eval_task if eval_tasks else None,
        output_dir=output_dir,
        random_seed=0,
        **kwargs,
    )


def test_loss_goes_down_and_accuracy_up(tmp_path):
    loop = make_loop(str(tmp_path))
    loop.run(30)
    assert loop.step == 30
    train_loss = loop.history.get("train", "metrics/loss")
    eval_loss = loop.history.get("eval", "metrics/loss")
    accuracy = loop.history.get("eval", "metrics/accuracy")
    assert [step for step, _ in eval_loss] == [1, 10, 20, 30]
    assert train_loss[-1][1] < train_loss[0][1] / 10
    assert eval_loss[-1][1] < eval_loss[0][1] / 10
    assert accuracy[0][1] < 0.7 and accuracy[-1][1] == 1.0
    # The model object holds the trained weights, and they are the loop's.
    assert loop.model.weights[0].shape == (V, 16)
    assert loop.eval_model.weights is loop.model.weights


def test_first_logged_loss_is_the_weighted_masked_loss_of_the_first_batch():
    loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, eval_at=lambda step: step == 1)
    initial = jax.tree.map(np.array, loop.model.weights)
    loop.run(1)
    x, y, weights = next(copy_inputs().train_stream(1))
    logits = np.asarray(tiny_model().pure_fn(x.values, initial, ((), ()), None)[0])
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    nll = -np.take_along_axis(log_probs, y.values[..., None], -1)[..., 0]
    counted = weights * y.mask  # Loss weights reach the loss, and so does the mask.
    expected = (nll * counted).sum() / counted.sum()
    np.testing.assert_allclose(loop.history.get("train", "metrics/loss")[0][1], expected, rtol=1e-5)


def garbage_in_padding(stream):
    """The same batches with random values and weights where the Sequence masks are False."""
    rng = np.random.default_rng(1)
    for x, y, weights in stream:
        noise = rng.integers(0, V, size=x.values.shape, dtype=np.int32)
        values = np.where(x.mask, x.values, noise)
        weights = np.where(x.mask, weights, rng.uniform(1, 5, size=weights.shape)).astype(np.float32)
        yield trax_sl.Sequence(values, x.mask), trax_sl.Sequence(values, y.mask), weights


def test_padding_never_counts():
    def trained(stream):
        task = training.TrainTask(stream, tl.WeightedCategoryCrossEntropy(), optimizers.Adam(0.05))
        loop = training.Loop(tiny_model(), task, random_seed=0, checkpoint_at=lambda step: False)
        loop.run(5)
        return loop.model.weights

    clean = trained(copy_inputs().train_stream(1))
    dirty = trained(garbage_in_padding(copy_inputs().train_stream(1)))
    jax.tree.map(np.testing.assert_array_equal, clean, dirty)


def count_compiles(caplog, name=None):
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling ")]
    return len([m for m in messages if name is None or m.startswith(f"Compiling jit({name})")])


def test_train_step_compiles_once_and_later_steps_compile_nothing(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    loop = make_loop(str(tmp_path), n_steps_per_checkpoint=5)
    with jax.log_compiles():
        loop.run(7)  # Steps 1 and 5 evaluate, log and checkpoint.
        loop.run(3)
        assert count_compiles(caplog, "loop_train_step") == 1
        assert count_compiles(caplog, "loop_eval_step") == 1
        caplog.clear()
        loop.run(10)  # Evals, logs and checkpoints again: all compiled already.
        assert count_compiles(caplog) == 0
    assert loop.step == 20


def test_metrics_jsonl_the_log_line_and_config_gin(tmp_path, capsys):
    loop = make_loop(str(tmp_path))
    loop.run(10)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 10]
    assert set(rows[1]) == {
        "step",
        "train/loss",
        "train/learning_rate",
        "train/steps_per_second",
        "eval/loss",
        "eval/accuracy",
    }
    assert rows[1]["train/learning_rate"] == pytest.approx(0.05)
    history = loop.history
    assert rows[1]["eval/accuracy"] == history.get("eval", "metrics/accuracy")[-1][1]
    assert rows[1]["train/loss"] == history.get("train", "metrics/loss")[-1][1]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Step 10:")]
    row = rows[1]
    expected = (
        f"Step 10: train loss {row['train/loss']:.4g} | eval loss {row['eval/loss']:.4g} "
        f"accuracy {row['eval/accuracy']:.4g}"
    )
    assert lines == [expected]
    assert (tmp_path / "config.gin").exists()
    assert len(os.listdir(tmp_path / "train")) == 1 and len(os.listdir(tmp_path / "eval")) == 1


def test_two_tasks_take_turns_and_log_under_their_prefixes(tmp_path):
    inputs = copy_inputs()

    def task(prefix, loss):
        return training.TrainTask(
            inputs.train_stream(1), loss, optimizers.SGD(0.1), loss_name="loss", export_prefix=prefix
        )

    tasks = [
        task("ce", tl.WeightedCategoryCrossEntropy()),
        task("acc_ce", tl.CrossEntropyLossWithLogSoftmax()),
    ]
    loop = training.Loop(
        tiny_model(), tasks, output_dir=str(tmp_path), random_seed=0, eval_at=lambda s: s == 4
    )
    loop.run(4)
    assert [t.data_position for t in tasks] == [2, 2]
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert {"train/ce/loss", "train/acc_ce/loss"} <= set(row)
    assert os.path.isdir(tmp_path / "ce" / "train") and os.path.isdir(tmp_path / "acc_ce" / "train")


class RecordingCallback(callbacks.TrainingStepCallback):
    events: typing.ClassVar[list] = []

    def call_at(self, step):
        return step % 2 == 0

    def on_step_begin(self, step):
        self.events.append(("begin", step, self._loop.step))

    def on_step_end(self, step):
        self.events.append(("end", step, float(self._loop.model.weights[0][0, 0])))


def test_callbacks_run_around_the_steps_they_ask_for():
    RecordingCallback.events = []
    loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, callbacks=[RecordingCallback])
    loop.run(4)
    kinds_and_steps = [(kind, step) for kind, step, _ in RecordingCallback.events]
    assert kinds_and_steps == [("begin", 2), ("end", 2), ("begin", 4), ("end", 4)]
    assert RecordingCallback.events[0][2] == 2  # loop.step is the step being run.
    assert RecordingCallback.events[-1][2] == float(loop.model.weights[0][0, 0])


def test_an_optax_transformation_as_optimizer():
    task = training.TrainTask(
        copy_inputs().train_stream(1), tl.WeightedCategoryCrossEntropy(), optax.sgd(0.5)
    )
    loop = training.Loop(tiny_model(), task, random_seed=0, eval_at=lambda s: s in (1, 20))
    loop.run(20)
    losses = [value for _, value in loop.history.get("train", "metrics/WeightedCategoryCrossEntropy")]
    assert losses[1] < losses[0]
    with pytest.raises(ValueError, match="takes its schedule itself"):
        training.TrainTask(
            copy_inputs().train_stream(1), tl.L2Loss(), optax.sgd(0.5), lr_schedule=lambda s: 1.0
        )


def test_two_devices_give_the_one_device_result():
    def trained(n_devices):
        loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, n_devices=n_devices)
        loop.run(3)
        return loop.model.weights, loop.model.weights[0].sharding

    one, _ = trained(1)
    two, sharding = trained(2)
    assert sharding.mesh.devices.size == 2
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), one, two)


def test_given_weights_are_trained_from():
    model = tiny_model()
    batch = next(copy_inputs().train_stream(1))
    weights, _ = model.init(trax_sl.shapes.signature(batch[0]), rng=jax.random.PRNGKey(7))
    weights = jax.tree.map(np.array, weights)
    task = training.TrainTask(
        copy_inputs().train_stream(1), tl.WeightedCategoryCrossEntropy(), optimizers.SGD(0.0)
    )
    loop = training.Loop(model, task, random_seed=0, checkpoint_at=lambda step: False)
    loop.run(2)  # A zero learning rate leaves them as they were.
    jax.tree.map(np.testing.assert_array_equal, loop.model.weights, weights)


def test_bad_arguments_read_clearly():
    inputs = copy_inputs()
    with pytest.raises(
        ValueError, match="number of metrics \\(2\\) does not equal number of metric names \\(1\\)"
    ):
        training.EvalTask(inputs.eval_stream(1), [tl.L2Loss(), tl.L1Loss()], metric_names=["l2"])
    with pytest.raises(TypeError, match="optimizer must be a trax_sl optimizer"):
        training.TrainTask(inputs.train_stream(1), tl.L2Loss(), "adam")
    task = training.TrainTask(
        iter([]), tl.L2Loss(), optimizers.SGD(), sample_batch=next(inputs.train_stream(1))
    )
    with pytest.raises(ValueError, match="labeled_data ran out of batches after 0"):
        task.next_batch()
    two_items = ((x, y) for x, y, _ in inputs.train_stream(1))
    task = training.TrainTask(two_items, tl.WeightedCategoryCrossEntropy(), optimizers.SGD())
    with pytest.raises(ValueError, match="takes 3 inputs .* but batches have 2 items"):
        training.Loop(tiny_model(), task)
    with pytest.raises(ValueError, match="checkpoint metric 'acc' is not an eval metric"):
        make_loop(checkpoint_low_metric="acc")
