"""The trainer command line: runs `trainer_lib.train` from gin files (Trax's `trax.trainer`).

    python -m trax_sl.trainer --config_file=F.gin [--config_file=G.gin] \\
        [--config='train.steps=100' ...] --output_dir=D [--data_dir=...]

`--config` bindings apply after the files. A run started again with the same
`--output_dir` resumes from its newest checkpoint. Mistakes in the
configuration (an unknown configurable or parameter, a missing file or data
set, a required parameter left unset) end the program with one line naming
them and exit status 1.

Training uses every local device. For a run of several processes (hosts),
start the same command in each: `jax.distributed.initialize` connects them
when `--coordinator_address`, `--num_processes` or `--process_id` is given,
when the environment sets `JAX_COORDINATOR_ADDRESS`, or with `--distributed`
(which lets JAX detect Cloud TPU, SLURM or Open MPI by itself).
"""

from __future__ import annotations

import datetime
import logging as std_logging
import os
import sys

import gin
import jax
from absl import app, flags, logging

# Imported for their gin configurables, so that configs can name them.
from trax_sl import data, gin_types, layers, models, optimizers  # noqa: F401
from trax_sl.supervised import checkpoints, dir_lock, lr_schedules, preemption, trainer_lib  # noqa: F401

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Path to the directory to save logs and checkpoints.")
flags.DEFINE_multi_string("config_file", None, "Configuration file with parameters (.gin).")
flags.DEFINE_multi_string("config", None, "Configuration parameters (gin string).")
flags.DEFINE_string("model", None, "Which model to train (a name in trax_sl.models).")
flags.DEFINE_string("data_dir", None, "Path to the directory with data (for TFDS and python_chars_inputs).")
flags.DEFINE_integer(
    "log_level", logging.WARNING, "absl log verbosity: 1 debug, 0 info, -1 warning, -2 error."
)
flags.DEFINE_boolean("disable_jit", False, "Setting to true will disable jit.")
flags.DEFINE_boolean("progress_bar", None, "Show a progress bar (default: when stderr is a terminal).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
flags.DEFINE_boolean(
    "distributed",
    None,
    "Call jax.distributed.initialize() (it detects Cloud TPU, SLURM, Open MPI); by default only when "
    "--coordinator_address, --num_processes, --process_id or $JAX_COORDINATOR_ADDRESS is given.",
)


def _gin_parse_configs() -> None:
    """Parses the gin files and bindings of the flags (after `--data_dir` and `--model`)."""
    configs = list(FLAGS.config or [])
    if FLAGS.data_dir:
        configs.append(f"trax_sl.data.TFDS.data_dir = {FLAGS.data_dir!r}")
        configs.append(f"trax_sl.data.python_chars_inputs.data_dir = {FLAGS.data_dir!r}")
    if FLAGS.model:
        configs.append(f"train.model = @trax_sl.models.{FLAGS.model}")
    gin_types.parse_config(FLAGS.config_file or [], configs)


def _output_dir_or_default() -> str:
    """The --output_dir, or ~/trax_sl/<model>_<time> (as Trax's ~/trax/...)."""
    if FLAGS.output_dir:
        return os.path.expanduser(FLAGS.output_dir)
    try:
        model_name = gin.query_parameter("train.model").configurable.name
    except (ValueError, AttributeError):
        model_name = "model"
    timestamp = datetime.datetime.now().strftime("%Y%m%d_%H%M")
    output_dir = os.path.expanduser(os.path.join("~", "trax_sl", f"{model_name}_{timestamp}"))
    print(f"No --output_dir specified; using {output_dir}", flush=True)
    return output_dir


def _init_distributed() -> None:
    """Connects the processes of a multi-process run, if the flags or the environment say it is one."""
    given = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    distributed = FLAGS.distributed
    if distributed is None:
        distributed = any(x is not None for x in given) or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if distributed:
        # What is not given, jax takes from $JAX_COORDINATOR_ADDRESS or the cluster it detects.
        try:
            jax.distributed.initialize(
                coordinator_address=FLAGS.coordinator_address,
                num_processes=FLAGS.num_processes,
                process_id=FLAGS.process_id,
            )
        except (ValueError, TypeError) as e:
            raise gin_types.ConfigError(
                f"jax.distributed.initialize: {gin_types.one_line(e)} (give --coordinator_address, --num_processes "
                f"and --process_id, or run where JAX detects the cluster: Cloud TPU, SLURM, Open MPI)"
            ) from e


def _is_config_error(error: BaseException) -> bool:
    config_errors = (
        gin_types.ConfigError,
        OSError,
        checkpoints.CheckpointError,
        dir_lock.OutputDirInUse,
        gin_types.BindingTypeError,
    )
    if isinstance(error, config_errors):
        return True
    # gin's error for a gin.REQUIRED parameter left unset.
    return isinstance(error, RuntimeError) and "Required bindings" in str(error)


class _NoBackgroundTracebacks(std_logging.Filter):
    """Drops the tracebacks logged when a background checkpoint write fails.

    The failure reaches the loop as a CheckpointError, which the trainer
    reports in one line; Orbax's own log lines (without their tracebacks)
    stay, asyncio's about its failed tasks go.
    """

    def filter(self, record: std_logging.LogRecord) -> bool:
        if record.name == "asyncio" and "exception was never retrieved" in str(record.msg):
            return False  # The writer's tasks, garbage-collected at exit after the failure was reported.
        if record.exc_info and f"{os.sep}orbax{os.sep}" in record.pathname:
            record.exc_info = record.exc_text = None
        return True


def _quiet_closed_event_loops(unraisable) -> None:
    """sys.unraisablehook: Orbax's writer threads may call into an event loop it already closed."""
    if isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed":
        return
    sys.__unraisablehook__(unraisable)


def main(argv) -> None:
    """Trains as the flags say; configuration mistakes exit with status 1 and one line."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(FLAGS.log_level)
    logging.get_absl_handler().addFilter(_NoBackgroundTracebacks())
    sys.unraisablehook = _quiet_closed_event_loops
    try:
        _init_distributed()
        _gin_parse_configs()
        if FLAGS.disable_jit:
            jax.config.update("jax_disable_jit", True)
        kwargs = {} if FLAGS.progress_bar is None else {"progress_bar": FLAGS.progress_bar}
        trainer_lib.train(output_dir=_output_dir_or_default(), **kwargs)
    except preemption.Preempted as e:
        print(f"trax_sl.trainer: {e.summary}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except Exception as e:
        if not _is_config_error(e):
            raise
        kind = "" if isinstance(e, gin_types.ConfigError) else f"{type(e).__name__}: "
        print(f"trax_sl.trainer: error: {kind}{gin_types.one_line(e)}", file=sys.stderr)
        sys.exit(1)
    logging.info("Finished training.")


if __name__ == "__main__":
    app.run(main)
