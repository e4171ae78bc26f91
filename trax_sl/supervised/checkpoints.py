"""Checkpoints of a training run: atomic, restored by name, pruned, never pickle.

A checkpoint is a directory under `output_dir/checkpoints/`::

    step_00000100/
        model.weights     the model's weights and state, named by tree path
                          (`model.init_from_file(path)` reads it, like `save_to_file`'s files)
        trainer.weights   the rest of the arrays: per task the loss layer's weights
                          and state and the optimizer state (optax trees, named by
                          path), and the rng (as key data)
        checkpoint.json   the step, whether it is permanent, and the loop's metadata
                          (data positions, history, ...), as JSON

The files are zips of `.npy` arrays and a JSON header
(`trax_sl.layers.serialization`), read with `allow_pickle=False`. A
checkpoint is written in a temporary directory (every file fsynced) that is
then renamed into place, so a crash never leaves a half-written checkpoint
under a final name; leftovers of interrupted writes start with `.` and are
removed by `remove_leftovers`. Arrays are restored by name and checked
against the shapes the model expects, so a checkpoint that does not fit
fails loudly instead of loading weights into the wrong places.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

from absl import logging

from trax_sl.layers import serialization

CHECKPOINTS_DIR = "checkpoints"
MODEL_FILE = "model.weights"
TRAINER_FILE = "trainer.weights"
HEADER_FILE = "checkpoint.json"
FORMAT = "trax_sl.checkpoint/1"
_STEP_NAME = re.compile(r"^step_(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or not fitting the model."""


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint holds.

    Attributes:
        step: The number of training steps done.
        model_weights: The model's weights tree.
        model_state: The model's state tree.
        trainer: A tree of the other arrays (optimizer states, rng, ...).
        metadata: JSON-able data (data positions, history, ...).
    """

    step: int
    model_weights: Any
    model_state: Any
    trainer: Any
    metadata: dict


def step_name(step: int) -> str:
    """The directory name of the checkpoint at `step`."""
    return f"step_{step:08d}"


def checkpoints_root(output_dir: str) -> str:
    return os.path.join(output_dir, CHECKPOINTS_DIR)


def save(
    output_dir: str,
    name: str,
    checkpoint: Checkpoint,
    model_input_signature=None,
    permanent: bool = False,
) -> str:
    """Writes `checkpoint` atomically as `output_dir/checkpoints/<name>`; returns its path.

    An existing checkpoint of that name is replaced.

    Args:
        output_dir: The run's output directory.
        name: The checkpoint's directory name (`step_name(step)` for step checkpoints).
        checkpoint: What to save.
        model_input_signature: Stored with the model's weights, for `init_from_file`.
        permanent: Keep it when pruning old checkpoints.
    """
    root = checkpoints_root(output_dir)
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, name)
    tmp = tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a checkpoint is as readable as any dir.
        serialization.save_layer(
            os.path.join(tmp, MODEL_FILE),
            checkpoint.model_weights,
            checkpoint.model_state,
            model_input_signature,
        )
        serialization.save_layer(os.path.join(tmp, TRAINER_FILE), checkpoint.trainer, None, None)
        header = {
            "format": FORMAT,
            "step": int(checkpoint.step),
            "permanent": bool(permanent),
            "metadata": checkpoint.metadata,
        }
        data = json.dumps(header, indent=1).encode()
        # Written last: a directory without it is never taken for a checkpoint.
        serialization.atomic_write(os.path.join(tmp, HEADER_FILE), lambda f: f.write(data))
        if os.path.exists(final):
            old = os.path.join(root, f".old-{name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_header(path: str) -> dict:
    """The `checkpoint.json` of the checkpoint at `path`; CheckpointError if unreadable."""
    header_path = os.path.join(path, HEADER_FILE)
    try:
        with open(header_path, encoding="utf-8") as f:
            header = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{header_path}: missing or unreadable: {e}") from e
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise CheckpointError(f"{header_path}: expected format {FORMAT}, got {found!r}")
    return header


def restore(path: str, model_signature, trainer_signature) -> Checkpoint:
    """Reads the checkpoint at `path`, matching arrays to the given trees by name.

    Args:
        path: The checkpoint directory.
        model_signature: (weights, state) trees of shapes and dtypes the model expects.
        trainer_signature: The tree of shapes and dtypes of the other arrays.

    Raises:
        CheckpointError: If a file is missing, corrupt, or an array is missing
            or has another shape or dtype than expected.
    """
    header = read_header(path)
    try:
        weights, state = serialization.load_layer(os.path.join(path, MODEL_FILE), *model_signature)
        trainer, _ = serialization.load_layer(os.path.join(path, TRAINER_FILE), trainer_signature, None)
    except (ValueError, OSError) as e:
        raise CheckpointError(str(e)) from e
    return Checkpoint(int(header["step"]), weights, state, trainer, header.get("metadata", {}))


def step_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the step checkpoints in `output_dir`, oldest first."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_NAME.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def restore_latest(output_dir: str, restore_fn: Callable[[str], Checkpoint]) -> Checkpoint | None:
    """Restores the newest usable step checkpoint, falling back to older ones.

    Each unusable checkpoint is skipped with a warning that says why.

    Args:
        output_dir: The run's output directory.
        restore_fn: Reads the checkpoint at a path (raising CheckpointError if unusable).

    Returns:
        The checkpoint, or None if there is none.

    Raises:
        CheckpointError: If there are checkpoints but none is usable.
    """
    candidates = step_checkpoints(output_dir)
    problems = []
    for _, path in reversed(candidates):
        try:
            return restore_fn(path)
        except CheckpointError as e:
            problems.append(str(e))
            logging.warning("Checkpoint %s is unusable, trying an older one: %s", path, e)
    if problems:
        raise CheckpointError(
            f"No usable checkpoint in {checkpoints_root(output_dir)}; "
            f"move the directory away to start afresh. Problems: " + " | ".join(problems)
        )
    return None


def prune(output_dir: str, n_to_keep: int | None) -> None:
    """Deletes all but the newest `n_to_keep` non-permanent step checkpoints (None: keep all)."""
    if n_to_keep is None:
        return
    rolling = []
    for step, path in step_checkpoints(output_dir):
        try:
            permanent = read_header(path).get("permanent", False)
        except CheckpointError:
            permanent = False
        if not permanent:
            rolling.append(path)
    for path in rolling[: max(0, len(rolling) - n_to_keep)]:
        shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(output_dir: str) -> None:
    """Removes what interrupted writes left behind (`.tmp-*` and `.old-*` directories)."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):
        if name.startswith((".tmp-", ".old-")):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
