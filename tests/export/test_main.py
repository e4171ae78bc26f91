"""python -m trax_sl.export: a trained run's checkpoint to an export file, and its one-line errors."""

import os
import subprocess
import sys

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trax_sl
import trax_sl.layers as tl
from trax_sl import export, models
from trax_sl import sequence as seq
from trax_sl.supervised import checkpoints, trainer_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))

CONFIG = """
import trax_sl.data
import trax_sl.models
import trax_sl.optimizers
import trax_sl.supervised.trainer_lib

sequence_copy_inputs.vocab_size = 8
sequence_copy_inputs.batch_size = 8
sequence_copy_inputs.train_length = 6
sequence_copy_inputs.eval_min_length = 2
sequence_copy_inputs.eval_max_length = 6
sequence_copy_inputs.pad_to_multiple = 16

TransformerLM.vocab_size = 8
TransformerLM.d_model = 16
TransformerLM.d_ff = 32
TransformerLM.n_layers = 1
TransformerLM.n_heads = 2
TransformerLM.max_len = 64

train.inputs = @trax_sl.data.sequence_copy_inputs
train.model = @trax_sl.models.TransformerLM
train.optimizer = @trax_sl.optimizers.Adam
train.steps = 3
train.eval_frequency = 3
train.eval_steps = 1
train.random_seed = 0
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(the gin file, the output_dir of a 3-step run of a tiny TransformerLM on the copy task)."""
    root = tmp_path_factory.mktemp("export_cli")
    config = root / "lm.gin"
    config.write_text(CONFIG)
    gin.clear_config()
    try:
        gin.parse_config_files_and_bindings([str(config)], [])
        trainer_lib.train(output_dir=str(root / "run"), progress_bar=False)
    finally:
        gin.clear_config()
    return config, root / "run"


def export_command(*args):
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-m", "trax_sl.export", *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_exports_a_trained_run(run, tmp_path):
    config, output_dir = run
    output = tmp_path / "lm.export"
    # The attention layers cannot take a symbolic time yet: the layer-wise function for 16 steps.
    result = export_command(
        f"--checkpoint_dir={output_dir}",
        f"--config_file={config}",
        f"--output={output}",
        "--layer_time_steps=16",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"Exported TransformerLM to {output}: blocks of 1 steps, a layer-wise function, for cpu, cuda"
    )
    streamed = export.load(output)
    # The copy task's batches are Sequences of tokens: a block is a (tokens, mask) pair.
    assert streamed.input_signature == {
        "sequence": {
            "values": {"shape": ["b", 1], "dtype": "int32"},
            "mask": {"shape": ["b", 1], "dtype": "bool"},
        }
    }

    model = models.TransformerLM(
        vocab_size=8, d_model=16, d_ff=32, n_layers=1, n_heads=2, max_len=64, mode="eval"
    )
    weights, state = checkpoints.load_model(str(output_dir), model)
    tokens = np.random.default_rng(0).integers(0, 8, (3, 16)).astype(np.int32)
    mask = np.arange(16)[None, :] < np.array([[16], [12], [9]])
    sequence = seq.Sequence(jnp.asarray(tokens), jnp.asarray(mask))
    predict_model, library_state = tl.start_stream(model, sequence[:, :1], weights, state)
    library_step = jax.jit(predict_model.pure_fn)
    stream_state = streamed.init_state(3)
    for t in range(16):
        (values, out_mask), stream_state = streamed.step(
            (tokens[:, t : t + 1], mask[:, t : t + 1]), stream_state
        )
        expected, library_state = library_step(sequence[:, t : t + 1], weights, library_state, None)
        np.testing.assert_array_equal(out_mask, expected.mask)
        np.testing.assert_allclose(values, expected.values, atol=1e-6)
    values, out_mask = streamed.layer((tokens, mask))
    expected, _ = jax.jit(model.pure_fn)(sequence, weights, state, None)
    np.testing.assert_array_equal(out_mask, expected.mask)
    np.testing.assert_allclose(values, expected.values, atol=1e-6)


def test_mistakes_are_one_line(run, tmp_path):
    config, output_dir = run
    missing = tmp_path / "nothere"
    result = export_command(
        f"--checkpoint_dir={missing}", f"--config_file={config}", f"--output={tmp_path / 'x'}"
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"trax_sl.export: error: CheckpointError: {missing}: no such checkpoint directory"
    )
    result = export_command(
        f"--checkpoint_dir={output_dir}",
        f"--config_file={config}",
        "--config=TransformerLM.d_model = 32",
        f"--output={tmp_path / 'x'}",
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("trax_sl.export: error: CheckpointMismatchError: ")
    assert "[0][1] is float32[8, 16] there, float32[8, 32] here" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()
