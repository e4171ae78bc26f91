"""Supervised training: Loop and tasks, trainer_lib.train, schedules, checkpoints, decoding."""

from trax_sl.supervised import (
    callbacks,
    checkpoints,
    decoding,
    history,
    lr_schedules,
    trainer_lib,
    training,
)
from trax_sl.supervised.trainer_lib import train
from trax_sl.supervised.training import EvalTask, Loop, TrainTask
