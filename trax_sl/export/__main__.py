"""Exports a trained run: `python -m trax_sl.export --checkpoint_dir=D --config_file=F.gin --output=model.export`.

    python -m trax_sl.export --checkpoint_dir=D --config_file=F.gin [--config='...'] \\
        --output=model.export [--block_steps=N] [--platforms=cpu,cuda] [--layer_time_steps=symbolic]

The model is `train.model` of the gin configuration, built in 'eval' mode;
its weights and state are read from the checkpoint at `--checkpoint_dir` (a
run's output_dir, its `checkpoints/`, or one step's or named checkpoint's
directory: the newest step by default). A block is the model's input
signature recorded in the checkpoint with batch 1 and `--block_steps` time
steps (default: the model's block_size); the batch stays free in the file.
Mistakes (a missing file, a bad binding, a checkpoint of another model, a
model that does not stream) end the program with one line and exit status 1.
"""

from __future__ import annotations

import sys

import gin
import jax
from absl import app, flags, logging

# Imported for their gin configurables, so that configs can name them.
from trax_sl import data, gin_types, layers, models, optimizers, shapes  # noqa: F401
from trax_sl.export import saving
from trax_sl.layers import serialization
from trax_sl.supervised import checkpoints, lr_schedules, trainer_lib  # noqa: F401
from trax_sl.supervised.checkpoint_checks import one_line

FLAGS = flags.FLAGS

flags.DEFINE_string(
    "checkpoint_dir", None, "The run's output_dir, its checkpoints/, or one checkpoint's directory."
)
flags.DEFINE_multi_string("config_file", None, "The run's configuration (.gin).")
flags.DEFINE_multi_string("config", None, "More gin bindings, applied after the files.")
flags.DEFINE_string("output", None, "The export file to write.")
flags.DEFINE_integer("block_steps", None, "Time steps per block (a multiple of the model's block_size).")
flags.DEFINE_list(
    "platforms", list(saving.DEFAULT_PLATFORMS), "Platforms to lower for (cpu, cuda, rocm, tpu)."
)
flags.DEFINE_string(
    "layer_time_steps",
    "symbolic",
    "The layer-wise function's time length: 'symbolic' (any), an integer T, or 'none' (no layer-wise function).",
)


class ExportError(Exception):
    """A mistake in the command line or the run, reported in one line without a traceback."""


def _eval_model():
    try:
        reference = gin.query_parameter("train.model")
    except ValueError:
        reference = None
    if not isinstance(reference, gin.config.ConfigurableReference):
        raise ExportError("the configuration binds no model: set train.model = @<model> (as for training)")
    return reference.scoped_configurable_fn(mode="eval")


def _layer_time_steps(text: str):
    if text == "symbolic":
        return None
    if text == "none":
        return False
    if text.isdigit() and int(text) > 0:
        return int(text)
    raise ExportError(f"--layer_time_steps must be 'symbolic', 'none' or an integer >= 1, got {text!r}")


def block_signature(input_signature, steps: int):
    """The block of one row and `steps` time steps of a model whose input signature is `input_signature`."""

    def block(s):
        if s.ndim >= 2:
            return shapes.ShapeDtype((1, steps) + s.shape[2:], s.dtype)
        return shapes.ShapeDtype((1,) + s.shape[1:], s.dtype) if s.ndim else s

    return jax.tree.map(block, input_signature)


def export(output: str) -> dict:
    """Exports the configured model from the checkpoint of the flags to `output`; returns the header."""
    model = _eval_model()
    found, step = checkpoints.open_checkpoint(FLAGS.checkpoint_dir)
    try:
        content = found.read_meta(step)
        weights, state = found.restore_model(step, model)
    finally:
        found.close()
    signature = serialization.signature_from_json(content.get("input_signature"))
    steps = FLAGS.block_steps or model.block_size
    return saving.save(
        model,
        output,
        block_signature=block_signature(signature, steps),
        weights=weights,
        state=state,
        platforms=tuple(FLAGS.platforms),
        layer_time_steps=_layer_time_steps(FLAGS.layer_time_steps),
    )


def main(argv) -> None:
    """Exports as the flags say; mistakes exit with status 1 and one line."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
    try:
        for name in ("checkpoint_dir", "output"):
            if not getattr(FLAGS, name):
                raise ExportError(f"--{name} is required")
        gin_types.parse_config(FLAGS.config_file or [], FLAGS.config or [])
        header = export(FLAGS.output)
    except (ExportError, gin_types.ConfigError, ValueError, OSError, checkpoints.CheckpointError) as e:
        text = str(e) if isinstance(e, (ExportError, gin_types.ConfigError)) else one_line(e, limit=2000)
        print(f"trax_sl.export: error: {text}", file=sys.stderr)
        sys.exit(1)
    layer = "a layer-wise function" if header["layer"].get("file") else "no layer-wise function"
    print(
        f"Exported {header['model']} to {FLAGS.output}: blocks of {header['block_steps']} steps, "
        f"{layer}, for {', '.join(header['platforms'])}"
    )


if __name__ == "__main__":
    app.run(main)
