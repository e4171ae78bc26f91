"""training.Loop, TrainTask and EvalTask: learning, masks and weights, compiling once, logs, devices."""

import io
import json
import logging
import os
import re
import sys
import typing

import gin
import jax
import numpy as np
import optax
import pytest

import trax_sl
from tests.supervised.test_summaries import read_events
from trax_sl import data, optimizers
from trax_sl import layers as tl
from trax_sl.supervised import callbacks, training
from trax_sl.supervised.metrics_log import format_count

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


def make_loop(output_dir=None, n_steps_per_checkpoint=10, eval_tasks=True, fixed_batches=True, **kwargs):
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
        fixed_batches=fixed_batches,
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
        "train/seconds_per_step",
        "train/tokens_per_second",
        "train/mfu",
        "train/input_wait_fraction",
        "eval/loss",
        "eval/accuracy",
    }
    assert rows[1]["train/learning_rate"] == pytest.approx(0.05)
    assert 0 < rows[1]["train/input_wait_fraction"] < 1  # The time the loop spent making batches.
    history = loop.history
    assert rows[1]["eval/accuracy"] == history.get("eval", "metrics/accuracy")[-1][1]
    assert rows[1]["train/loss"] == history.get("train", "metrics/loss")[-1][1]
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Step 10:")]
    row = rows[1]
    expected = (
        f"Step 10: train/loss {row['train/loss']:.4g} | eval/loss {row['eval/loss']:.4g} | "
        f"eval/accuracy {row['eval/accuracy']:.4g} | {format_count(row['train/tokens_per_second'])} tokens/s | "
        f"MFU {100 * row['train/mfu']:.1f}%"
    )
    assert lines == [expected]
    assert (tmp_path / "config.gin").exists()
    assert len(os.listdir(tmp_path / "train")) == 1 and len(os.listdir(tmp_path / "eval")) == 1


def tensorboard_scalars(run_dir):
    """{(step, tag): value} of the scalars in the one event file of a TensorBoard run."""
    (name,) = os.listdir(run_dir)
    return {
        (event.step, value.tag): value.simple_value
        for event in read_events(run_dir / name)
        for value in event.summary.value
        if not value.HasField("tensor")
    }


def test_a_metric_has_one_name_in_the_log_line_metrics_jsonl_and_tensorboard(tmp_path, capsys):
    """Issue 15: the log said `train loss`, metrics.jsonl `train/loss`, TensorBoard `metrics/loss`.

    The log line and metrics.jsonl use the key `<mode>/<name>`; TensorBoard keeps
    Trax's layout (the run `<mode>`, the tag `metrics/<name>` or `training/<name>`).
    """
    make_loop(str(tmp_path)).run(10)
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Step 10:")]
    *metrics, speed, mfu = line.removeprefix("Step 10: ").split(" | ")
    assert speed.endswith(" tokens/s") and mfu.startswith("MFU ")  # The run's speed ends the line.
    logged = dict(part.rsplit(" ", 1) for part in metrics)
    assert set(logged) == {"train/loss", "eval/loss", "eval/accuracy"}
    assert logged == {key: f"{row[key]:.4g}" for key in logged}
    in_tensorboard = {
        f"{run}/{tag.split('/', 1)[1]}": value
        for run in ("train", "eval")
        for (step, tag), value in tensorboard_scalars(tmp_path / run).items()
        if step == 10
    }
    del row["step"]
    assert set(in_tensorboard) == set(row)
    assert in_tensorboard == pytest.approx(row, rel=1e-6)  # float32 in event files.
    train = tensorboard_scalars(tmp_path / "train")
    assert {tag for _, tag in train} == {
        "metrics/loss",
        "training/learning_rate",
        "training/steps_per_second",
        "training/seconds_per_step",
        "training/tokens_per_second",
        "training/mfu",
        "training/input_wait_fraction",
    }


PROGRESS_LINE = re.compile(
    r"Step (\d+)/(\d+): train/loss (\S+) \| (\S+) steps/s \| ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$"
)


def test_progress_lines_every_log_every_steps_when_stdout_is_not_a_terminal(capsys):
    loop = make_loop(eval_at=lambda step: step % 10 == 0, log_every=5)
    loop.run(10)
    loop.run(5)
    lines = capsys.readouterr().out.splitlines()
    progress = [m.groups() for m in map(PROGRESS_LINE.match, lines) if m]
    assert [(step, last) for step, last, *_ in progress] == [("5", "10"), ("10", "10"), ("15", "15")]
    assert all(float(speed) > 0 for *_, speed, _ in progress)
    assert progress[1][4] == progress[2][4] == "0s"  # The ETA at a run's last step.
    # The loss is the mean since the last eval line (what the next one logs): at step 10 the eval line's.
    (eval_line,) = [line for line in lines if line.startswith("Step 10:")]
    assert eval_line.startswith(f"Step 10: train/loss {progress[1][2]} | eval/loss ")
    assert (
        lines.index(eval_line) == lines.index(next(line for line in lines if line.startswith("Step 10/"))) + 1
    )


def test_log_every_steps_are_counted_from_the_first_step_and_zero_turns_the_lines_off(capsys):
    loop = make_loop(eval_tasks=False, n_steps_per_checkpoint=None, log_every=4)
    loop.run(6)
    loop.run(6)
    make_loop(eval_tasks=False, n_steps_per_checkpoint=None, log_every=0).run(12)
    make_loop(eval_tasks=False, n_steps_per_checkpoint=30).run(6)  # By default a tenth of the period.
    lines = capsys.readouterr().out.splitlines()
    assert [m.group(1, 2) for m in map(PROGRESS_LINE.match, lines) if m] == [
        ("4", "6"),
        ("8", "12"),
        ("12", "12"),
        ("3", "6"),
        ("6", "6"),
    ]
    with pytest.raises(ValueError, match="log_every must be >= 0"):
        make_loop(log_every=-1)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def screen(output: str) -> list[str]:
    """The lines a terminal shows for `output` (a carriage return goes back to the start of the line)."""
    shown = []
    for line in output.split("\n"):
        row = ""
        for part in line.split("\r"):
            row = part + row[len(part) :]
        shown.append(row.rstrip())
    return shown


class SayHello(callbacks.TrainingStepCallback):
    def call_at(self, step):
        return step == 3

    def on_step_begin(self, step):
        pass

    def on_step_end(self, step):
        self._loop.log_text("greeting", "hello\n  world")


def test_on_a_terminal_the_bar_has_lines_of_its_own_and_text_is_printed_above_it(monkeypatch):
    """Issue 15: samples were printed onto the bar's line, and five metrics squeezed the bar to `|`."""
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    loop = make_loop(eval_at=lambda step: step == 4, progress_bar=True, log_every=1, callbacks=[SayHello])
    loop.run(5)
    shown = screen(terminal.getvalue())
    assert "hello" in shown and "  world" in shown  # Each on a line of its own.
    (metrics,) = [row for row in shown if row.startswith("Step 4:")]
    assert re.fullmatch(
        r"Step 4: train/loss \S+ \| eval/loss \S+ \| eval/accuracy \S+ \| \S+ tokens/s \| MFU \S+%", metrics
    )
    assert shown[-1] == ""
    assert re.fullmatch(r"100%\|[#█]+\| 5/5 \[.*step/s\]", shown[-2])  # No metrics beside the bar.
    assert not any(PROGRESS_LINE.match(row) for row in shown)  # The bar shows the progress.


def test_text_samples_print_above_the_bar_and_go_to_the_text_dashboard(tmp_path, monkeypatch):
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    # Samples "def aaaaaa": printable bytes, so that the terminal's lines can be read back.
    prefer_a = tl.Fn("PreferA", lambda x: x + 100.0 * jax.nn.one_hot(ord("a"), 256)[None, None])
    byte_lm = tl.Serial(tl.ShiftRight(), tl.Embedding(256, 16), tl.Dense(256), prefer_a)
    task = training.TrainTask(
        copy_inputs().train_stream(1), tl.WeightedCategoryCrossEntropy(), optimizers.Adam(0.01)
    )
    with gin.unlock_config():
        gin.parse_config(
            """
            trax_sl.supervised.callbacks.TextSamples.every = 2
            trax_sl.supervised.callbacks.TextSamples.n_samples = 1
            trax_sl.supervised.callbacks.TextSamples.length = 6
            trax_sl.supervised.callbacks.TextSamples.prompts = ("def ",)
            """
        )
    try:
        loop = training.Loop(
            byte_lm,
            task,
            output_dir=str(tmp_path),
            random_seed=0,
            checkpoint_at=lambda step: False,
            progress_bar=True,
            callbacks=[callbacks.TextSamples],
        )
        loop.run(3)
        loop.close()
    finally:
        gin.clear_config()
    shown = screen(terminal.getvalue())
    header = shown.index("Samples at step 2 (temperature 0.6):")
    assert shown[header + 1 : header + 3] == ["--- sample 0 ---", "def aaaaaa"]
    assert (tmp_path / "samples.txt").read_text() == "\n".join(shown[header : header + 3]) + "\n"
    (name,) = os.listdir(tmp_path / "train")
    texts = [
        (event.step, value.tensor.string_val[0].decode())
        for event in read_events(tmp_path / "train" / name)
        for value in event.summary.value
        if value.tag == "samples" and value.metadata.plugin_data.plugin_name == "text"
    ]
    assert texts == [(2, "\n".join("    " + row for row in shown[header : header + 3]))]


def test_each_evaluation_uses_the_same_batches_unless_asked_to_roll_on():
    """Issue 15: each eval read the next batches, so the eval curve followed the data's order."""
    for fixed in (True, False):
        loop = make_loop(fixed_batches=fixed)
        first, second = loop.run_evals(log=False), loop.run_evals(log=False)
        assert [s.key for s in first] == ["eval/loss", "eval/accuracy"]
        assert (first == second) == fixed, fixed  # The weights did not change.
        assert loop.eval_tasks[0].data_position == (2 if fixed else 4)


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


def test_rolling_evaluations_are_a_gin_binding_away():
    with gin.unlock_config():
        gin.bind_parameter("trax_sl.supervised.training.EvalTask.fixed_batches", False)
    try:
        task = training.EvalTask(copy_inputs().eval_stream(1), [tl.L2Loss()])
    finally:
        gin.clear_config()
    assert not task.fixed_batches
    assert training.EvalTask(copy_inputs().eval_stream(1), [tl.L2Loss()]).fixed_batches


def test_a_train_task_takes_an_optimizer_class_as_trax_memory_efficient_trainer_does():
    task = training.TrainTask(
        copy_inputs().train_stream(1), tl.WeightedCategoryCrossEntropy(), optimizers.SGD
    )
    assert (
        isinstance(task.optimizer, optimizers.SGD) and task.learning_rate(1) == optimizers.SGD().learning_rate
    )
    loop = training.Loop(tiny_model(), task, random_seed=0, checkpoint_at=lambda step: False)
    loop.run(2)
    assert loop.step == 2


def test_each_run_writes_its_own_event_files_and_a_restart_is_marked_once(tmp_path):
    # As Trax's training_test.test_summaries_are_written: a run closes its event files.
    loop = make_loop(str(tmp_path), eval_at=lambda step: step % 2 == 0)
    loop.run(4)
    assert [len(os.listdir(tmp_path / run)) for run in ("train", "eval")] == [1, 1]
    loop.run(2)
    assert [len(os.listdir(tmp_path / run)) for run in ("train", "eval")] == [2, 2]
    resumed = make_loop(str(tmp_path), eval_at=lambda step: step % 2 == 0)
    resumed.run(2)
    resumed.run(2)
    names = sorted(os.listdir(tmp_path / "train"))
    assert len(names) == 4
    restarts = [
        name
        for name in names
        for event in read_events(tmp_path / "train" / name)
        if event.HasField("session_log") and event.session_log.status == 1  # START
    ]
    # Each Loop's first file marks where its session starts (TensorBoard drops older events after it);
    # its later files do not, or they would drop the events of its own earlier runs.
    assert restarts == [names[0], names[2]]
