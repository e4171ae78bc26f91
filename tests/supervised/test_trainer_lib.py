"""trainer_lib.train: Trax's gin parameters, resuming, best-metric checkpoints, fine-tuning."""

import json
import os

import gin
import jax
import numpy as np
import pytest

from trax_sl import data, optimizers
from trax_sl import layers as tl
from trax_sl.supervised import checkpoints, trainer_lib

V = 8
MODES = []


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


@pytest.fixture(autouse=True)
def clean_gin():
    gin.clear_config()
    yield
    gin.clear_config()


@gin.configurable(module="test_trainer_lib")
def TinyCopyLM(mode="train"):  # noqa: N802
    MODES.append(mode)
    return tl.Serial(tl.Embedding(V, 16), tl.Dense(V))


def copy_inputs():
    return data.sequence_copy_inputs(
        vocab_size=V, batch_size=8, train_length=6, eval_min_length=2, eval_max_length=6, pad_to_multiple=16
    )


TRAX_STYLE_BINDINGS = """
train.model = @test_trainer_lib.TinyCopyLM
train.inputs = @trax_sl.data.sequence_copy_inputs
train.optimizer = @trax_sl.optimizers.Adam
train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
train.steps = 20
train.eval_frequency = 10
train.eval_steps = 2
train.random_seed = 0
multifactor.factors = 'constant'
multifactor.constant = 0.05
Adam.weight_decay_rate = 0.0
sequence_copy_inputs.vocab_size = 8
sequence_copy_inputs.batch_size = 8
sequence_copy_inputs.train_length = 6
sequence_copy_inputs.eval_min_length = 2
sequence_copy_inputs.eval_max_length = 6
sequence_copy_inputs.pad_to_multiple = 16
"""


def test_train_from_trax_style_gin_bindings_then_resume(tmp_path):
    MODES.clear()
    gin.parse_config(TRAX_STYLE_BINDINGS)
    loop = trainer_lib.train(output_dir=str(tmp_path))
    assert MODES == ["train", "eval"]
    assert loop.step == 20
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 10, 20]
    expected = {"loss", "accuracy", "sequence_accuracy", "neg_log_perplexity", "weights_per_batch_per_core"}
    assert {key.split("/")[1] for key in rows[-1] if key.startswith("eval/")} == expected
    assert rows[-1]["eval/neg_log_perplexity"] == -rows[-1]["eval/loss"]
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"] / 4
    assert rows[-1]["train/learning_rate"] == pytest.approx(0.05)
    assert "train.steps = 20" in (tmp_path / "config.gin").read_text()

    again = trainer_lib.train(output_dir=str(tmp_path))  # Already done: restores step 20, trains nothing.
    assert again.step == 20
    jax.tree.map(np.testing.assert_array_equal, again.model.weights, loop.model.weights)
    longer = trainer_lib.train(output_dir=str(tmp_path), steps=30)
    assert longer.step == 30
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        1,
        10,
        20,
        30,
    ]


def test_the_step_a_run_stops_at_is_saved_and_a_finished_run_says_so(tmp_path, capsys):
    """Issue 14: 13 steps with checkpoints every 10 used to end with step 10 saved, and a rerun was silent."""
    gin.parse_config(TRAX_STYLE_BINDINGS)
    loop = trainer_lib.train(output_dir=str(tmp_path), steps=13)
    saved = sorted(name for name in os.listdir(tmp_path / "checkpoints") if name.startswith("step_"))
    assert saved[-1] == "step_00000013"
    capsys.readouterr()
    again = trainer_lib.train(output_dir=str(tmp_path), steps=13)
    out = capsys.readouterr().out
    assert f"Restored step 13 from {tmp_path}" in out
    assert "Stop training, already reached the total training steps 13" in out
    assert again.step == 13
    jax.tree.map(np.testing.assert_array_equal, again.model.weights, loop.model.weights)


def test_a_gin_typo_names_the_parameter():
    with pytest.raises(ValueError, match="Configurable 'train' doesn't have a parameter named 'stepz'"):
        gin.parse_config("train.stepz = 3")


def test_checkpoint_lowest_and_fine_tuning_from_a_checkpoint(tmp_path):
    loop = trainer_lib.train(
        output_dir=str(tmp_path / "first"),
        model=TinyCopyLM,
        inputs=copy_inputs,
        optimizer=lambda: optimizers.Adam(0.05),
        lr_schedule_fn=lambda: None,
        steps=12,
        eval_frequency=4,
        eval_steps=1,
        metrics={"loss": tl.WeightedCategoryCrossEntropy()},
        checkpoint_lowest="loss",
        random_seed=0,
    )
    losses = loop.history.get("eval", "metrics/loss")
    best_step = min(losses, key=lambda pair: pair[1])[0]
    lowest = tmp_path / "first" / "checkpoints" / "lowest_loss"
    # Replaced at each new low, one copy kept: the step of the lowest loss.
    assert os.listdir(lowest) == [f"step_{best_step:08d}"]

    # A zero learning rate keeps the weights it starts from: those of the checkpoint.
    tuned = trainer_lib.train(
        output_dir=str(tmp_path / "tuned"),
        model=TinyCopyLM,
        inputs=copy_inputs,
        optimizer=lambda: optimizers.SGD(0.0),
        lr_schedule_fn=lambda: None,
        steps=2,
        eval_frequency=None,
        init_checkpoint=str(lowest),
    )
    start, _ = checkpoints.load_model(str(lowest), TinyCopyLM())
    jax.tree.map(np.testing.assert_array_equal, tuned.model.weights, start)
    # eval_frequency None: no periodic checkpoints, only the step the run stops at (issue 14).
    assert os.listdir(tmp_path / "tuned" / "checkpoints") == ["step_00000002"]


def test_what_trax_sl_does_not_provide_is_refused_clearly(tmp_path):
    kwargs = {"model": TinyCopyLM, "inputs": copy_inputs, "steps": 1}
    with pytest.raises(ValueError, match="use_loop=False asks for Trax's old Trainer"):
        trainer_lib.train(str(tmp_path), use_loop=False, **kwargs)
    with pytest.raises(ValueError, match="give mesh_shape or Trax's n_weights_shards, not both"):
        trainer_lib.train(str(tmp_path), n_weights_shards=2, mesh_shape={"fsdp": 8}, **kwargs)
    with pytest.raises(ValueError, match="only one of"):
        trainer_lib.train(
            str(tmp_path), permanent_checkpoint_frequency=2, permanent_checkpoints_at=[2], **kwargs
        )


def test_gin_names_of_trax_are_registered():
    # The names Trax configs use, with `trax.` renamed `trax_sl.`.
    gin.parse_config(
        """
        train.optimizer = @trax_sl.optimizers.Adafactor
        train.lr_schedule_fn = @trax_sl.supervised.lr_schedules.multifactor
        train.loss_fn = @trax_sl.layers.WeightedCategoryCrossEntropy()
        train.inputs = @trax_sl.data.addition_inputs
        train.additional_eval_streams = [@trax_sl.supervised.trainer_lib.named_stream()]
        num_devices.value = 1
        TrainTask.n_steps_per_checkpoint = 5
        trax_sl.supervised.training.EvalTask.n_eval_batches = 3
        trax_sl.supervised.trainer_lib.train.steps = 7
        """
    )
    optimizer = gin.query_parameter("train.optimizer").configurable
    assert (optimizer.module, optimizer.name) == ("trax_sl.optimizers", "Adafactor")
    schedule = gin.query_parameter("train.lr_schedule_fn").configurable
    assert (schedule.module, schedule.name) == ("trax_sl.supervised.lr_schedules", "multifactor")
    assert gin.query_parameter("train.steps") == 7


def test_trax_n_weights_shards_is_fsdp_and_the_start_log_says_what_each_device_holds(tmp_path, capsys):
    gin.parse_config(TRAX_STYLE_BINDINGS)
    loop = trainer_lib.train(output_dir=str(tmp_path), steps=1, n_weights_shards=4)
    assert dict(loop.mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}
    out = capsys.readouterr().out
    assert "Per device: weights " in out and "(mesh data=2 fsdp=4 tensor=1, 8 devices)" in out
