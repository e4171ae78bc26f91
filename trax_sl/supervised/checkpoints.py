"""Checkpoints of a training run on Orbax: asynchronous, atomic, checked before read, never pickle.

A run's checkpoints live in `output_dir/checkpoints/`, kept by an
`orbax.checkpoint.CheckpointManager`::

    step_00000100/        one checkpoint per saved step
        model/            the model's (weights, state): Orbax arrays named by tree path
        trainer/          the other arrays: per task the loss layer's weights and state
                          and the optimizer state, and the rng (as key data)
        meta/             JSON: {"format", "content", "sha256"}; the content holds the
                          step, the model's name, the optimizers' names, every array's
                          dtype and shape by path, the model's input signature and the
                          loop's metadata (data positions, history, ...)
    lowest_loss/          a named checkpoint (`Checkpoints(directory, name=...)`):
        step_00000800/    the same layout, one step kept; the new copy is committed
                          before the old one is deleted

Saving returns once the arrays are copied off the devices; the files are
written in a background thread (`async_save`), into a temporary directory that
Orbax renames into place when complete, so a crash never leaves a half-written
checkpoint under a step's name (temporary directories are removed when the
directory is next opened).

Reading checks before it allocates: the metadata's checksum and schema, then
its recorded arrays against the ones the model and optimizers expect (a
different model or optimizer is a `CheckpointMismatchError` naming both sides),
then the shapes, dtypes and chunk shapes that the array files declare, and
only then reads arrays into buffers of the expected sizes. Every failure is a
`CheckpointError` with one line; `restore_latest` falls back to older
checkpoints with a warning and moves the unusable ones aside.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from trax_sl.layers import serialization
from trax_sl.supervised import checkpoint_checks as checks
from trax_sl.supervised.checkpoint_checks import FORMAT, CheckpointError, CheckpointMismatchError

__all__ = [
    "FORMAT",
    "Checkpoint",
    "CheckpointError",
    "CheckpointMismatchError",
    "Checkpoints",
    "Description",
    "checkpoints_root",
    "load_model",
    "model_summary",
    "open_checkpoint",
    "step_checkpoints",
    "step_name",
]

CHECKPOINTS_DIR = "checkpoints"
UNUSABLE_DIR = "unusable"  # Under checkpoints/: where unusable checkpoints are moved.


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


@dataclasses.dataclass(frozen=True)
class Description:
    """What a checkpoint is of: checked on restore before any array is read.

    Attributes:
        model: The model's layer tree on one line (`model_summary`, for messages).
        optimizers: The optimizers' class names, one per training task.
        input_signature: The model's input signature, as JSON (`serialization.signature_to_json`).
    """

    model: str
    optimizers: tuple[str, ...]
    input_signature: Any = None


def model_summary(model, limit: int = 160) -> str:
    """A model's layer tree on one line (`Serial[Embedding_8_16 Dropout Dense_8]`), for messages."""
    text = " ".join(repr(model).split()).replace("[ ", "[").replace(" ]", "]")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def step_name(step: int) -> str:
    """The directory name of the checkpoint at `step`."""
    return f"step_{step:08d}"


def checkpoints_root(output_dir: str) -> str:
    """Where a run in output_dir keeps its Orbax checkpoints."""
    return os.path.join(output_dir, CHECKPOINTS_DIR)


class _KeepLatestAndPermanent:
    """Orbax preservation policy: the newest `n_to_keep` steps (all if None) and the permanent ones."""

    def __init__(self, n_to_keep: int | None):
        self.n_to_keep = n_to_keep
        self.permanent: set[int] = set()

    def should_preserve(self, checkpoints: Sequence, *, context) -> Sequence[bool]:
        del context
        steps = sorted(info.step for info in checkpoints)
        latest = set(steps if self.n_to_keep is None else steps[max(0, len(steps) - self.n_to_keep) :])
        return [info.step in latest or info.step in self.permanent for info in checkpoints]


class Checkpoints:
    """The checkpoints in one directory: `output_dir/checkpoints`, or a named one under it.

    Args:
        directory: Where the step directories are.
        n_to_keep: Keep the newest `n_to_keep` non-permanent checkpoints (None: all).
        async_save: Write files in a background thread (`save` returns once
            the arrays are off the devices).
        create: Create `directory` (and remove temporary leftovers of
            interrupted saves); False to read another run's checkpoints.
    """

    def __init__(
        self, directory: str, n_to_keep: int | None = None, async_save: bool = True, create: bool = True
    ):
        self.directory = os.fspath(directory)
        if not create and not os.path.isdir(self.directory):
            raise CheckpointError(f"{self.directory}: no such checkpoint directory")
        self._policy = _KeepLatestAndPermanent(n_to_keep)
        options = ocp.CheckpointManagerOptions(
            step_prefix="step",
            step_format_fixed_length=8,
            create=create,
            cleanup_tmp_directories=create,
            enable_async_checkpointing=async_save,
            preservation_policy=self._policy,
        )
        handlers = {
            "model": ocp.StandardCheckpointHandler(),
            "trainer": ocp.StandardCheckpointHandler(),
            "meta": ocp.JsonCheckpointHandler(),
        }
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        for step in self.steps():
            if self._is_permanent(step):
                self._policy.permanent.add(step)

    def steps(self) -> list[int]:
        """The steps checkpointed here, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, checkpoint: Checkpoint, description: Description, permanent: bool = False) -> str:
        """Starts saving `checkpoint`; returns its path (complete after `wait`).

        Every process of a multi-process run calls it (each writes its shards).
        A checkpoint of the same step already here is replaced.
        """
        step = int(checkpoint.step)
        self.wait()  # A failed earlier write is reported as that, not as this save's failure.
        if step in self._manager.all_steps():
            self._manager.delete(step)
        content = {
            "step": step,
            "permanent": bool(permanent),
            "model": description.model,
            "optimizers": list(description.optimizers),
            "input_signature": description.input_signature,
            "arrays": {
                "model": checks.array_table((checkpoint.model_weights, checkpoint.model_state)),
                "trainer": checks.array_table(checkpoint.trainer),
            },
            "fingerprints": {
                "model": checks.fingerprints((checkpoint.model_weights, checkpoint.model_state)),
                "trainer": checks.fingerprints(checkpoint.trainer),
            },
            "metadata": checkpoint.metadata,
        }
        # A copy made now: the background write must not see the loop's lists change.
        content = json.loads(json.dumps(content))
        meta = {"format": FORMAT, "content": content, "sha256": checks.checksum(content)}
        if permanent:
            self._policy.permanent.add(step)
        args = ocp.args.Composite(
            model=ocp.args.StandardSave((checkpoint.model_weights, checkpoint.model_state)),
            trainer=ocp.args.StandardSave(checkpoint.trainer),
            meta=ocp.args.JsonSave(meta),
        )
        try:
            self._manager.save(step, args=args, force=True)
        except Exception as e:  # a failed save (disk full, ...) is one line.
            raise CheckpointError(f"{self.path(step)}: could not save: {checks.one_line(e)}") from e
        return self.path(step)

    def wait(self) -> None:
        """Waits until the files of every started save are written.

        Raises:
            CheckpointError: If a background save failed (e.g. the disk is full).
        """
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"{self.directory}: a checkpoint could not be written: {checks.one_line(e)}"
            ) from e

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's threads."""
        try:
            self.wait()
        finally:
            self._manager.close()

    def path(self, step: int) -> str:
        return os.path.join(self.directory, step_name(step))

    def read_meta(self, step: int) -> dict:
        """The checked content of a checkpoint's metadata (see the module docstring)."""
        where = self.path(step)
        try:
            meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as e:  # whatever the file holds, it is one line.
            raise CheckpointError(f"{where}: unreadable metadata: {checks.one_line(e)}") from e
        return checks.checked_content(meta, where)

    def restore(self, step: int, expected: Checkpoint, description: Description) -> Checkpoint:
        """Reads the checkpoint of `step` into arrays shaped, typed and placed like `expected`'s.

        Args:
            step: The step to read.
            expected: Arrays (or ShapeDtypeStructs with shardings) of the trees to read.
            description: The run's model and optimizers.

        Raises:
            CheckpointMismatchError: If it is an intact checkpoint of another model or optimizer.
            CheckpointError: If it is unusable (missing, corrupt, truncated).
        """
        where = self.path(step)
        content = self.read_meta(step)
        model_target = (expected.model_weights, expected.model_state)
        targets = {"model": model_target, "trainer": expected.trainer}
        checks.check_description(content, description, targets, where)
        weights, state = self._read_item(step, "model", model_target, content)
        trainer = self._read_item(step, "trainer", expected.trainer, content)
        if content["step"] != step:
            raise CheckpointError(f"{where}: its metadata says step {content['step']}")
        return Checkpoint(step, weights, state, trainer, content["metadata"])

    def restore_model(self, step: int, model) -> tuple[Any, Any]:
        """The (weights, state) of `model` (a `tl.Layer`) saved in the checkpoint of `step`.

        Raises:
            CheckpointMismatchError: If the checkpoint holds another model.
            CheckpointError: If it is unusable.
        """
        where = self.path(step)
        content = self.read_meta(step)
        try:
            signature = serialization.signature_from_json(content.get("input_signature"))
        except (ValueError, TypeError, KeyError) as e:
            raise CheckpointError(f"{where}: unreadable input signature: {e}") from e
        if signature is None:
            raise CheckpointError(f"{where}: records no input signature for the model")
        target = model.weights_and_state_signature(signature)
        problems = checks.table_differences(content["arrays"]["model"], checks.array_table(target))
        if problems:
            raise CheckpointMismatchError(
                f"{where} holds model {content['model']!r}, which does not fit {model_summary(model)!r}: "
                + "; ".join(problems)
            )
        return self._read_item(step, "model", target, content)

    def _read_item(self, step: int, item: str, target, content: dict):
        """Reads item `item` of a step into arrays like `target`'s.

        What its files declare is checked before reading, and what was read
        against the fingerprints in the (checked) metadata `content`.
        """
        where = f"{self.path(step)}/{item}"
        try:
            stored = self._manager.item_metadata(step)[item]
        except Exception as e:  # Whatever the files hold, it is one line.
            raise CheckpointError(f"{where}: unreadable array metadata: {checks.one_line(e)}") from e
        checks.check_declared_arrays(stored, target, where)
        args = ocp.args.Composite(**{item: ocp.args.StandardRestore(_abstract(target))})
        try:
            restored = self._manager.restore(step, args=args)[item]
        except Exception as e:
            raise CheckpointError(f"{where}: unreadable arrays: {checks.one_line(e)}") from e
        checks.check_fingerprints(restored, content["fingerprints"][item], where)
        return restored

    def restore_latest(self, restore_fn: Callable[[int], Checkpoint]) -> Checkpoint | None:
        """Restores the newest usable checkpoint, falling back to older ones.

        Each unusable checkpoint is skipped with a warning that says why, and
        moved to `checkpoints/unusable/` once an older one is restored (so a
        later save of its step does not meet it). A `CheckpointMismatchError` is
        raised at once: older checkpoints of the same run do not fit either.

        Args:
            restore_fn: Reads the checkpoint of a step (raising CheckpointError if unusable).

        Returns:
            The checkpoint, or None if there is none.

        Raises:
            CheckpointError: If there are checkpoints but none is usable.
        """
        problems = []
        for step in reversed(self.steps()):
            try:
                checkpoint = restore_fn(step)
            except CheckpointMismatchError:
                raise
            except CheckpointError as e:
                problems.append((step, str(e)))
                logging.warning("Checkpoint %s is unusable, trying an older one: %s", self.path(step), e)
                continue
            if jax.process_index() == 0:
                for bad_step, _ in problems:
                    self._set_aside(bad_step)
            return checkpoint
        if problems:
            raise CheckpointError(
                f"No usable checkpoint in {self.directory}; move it away to start afresh. Problems: "
                + " | ".join(problem for _, problem in problems)
            )
        return None

    def _set_aside(self, step: int) -> None:
        target = os.path.join(
            self.directory, UNUSABLE_DIR, f"{step_name(step)}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.rename(self.path(step), target)
        logging.warning("Moved the unusable checkpoint %s to %s", self.path(step), target)
        self._manager.reload()

    def _is_permanent(self, step: int) -> bool:
        try:
            return bool(self.read_meta(step)["permanent"])
        except CheckpointError:
            return False


def open_checkpoint(path: str) -> tuple[Checkpoints, int]:
    """(Checkpoints, step) of the checkpoint at `path`.

    `path` is a step's directory (`.../checkpoints/step_00000100`), a named
    checkpoint's (`.../checkpoints/lowest_loss`: its step) or an output_dir
    or its `checkpoints/` (the newest step). Close the Checkpoints after use.
    """
    path = os.path.normpath(os.fspath(path))
    parent, base = os.path.split(path)
    if re.fullmatch(r"step_\d+", base):
        return Checkpoints(parent, create=False), int(base[len("step_") :])
    if os.path.isdir(os.path.join(path, CHECKPOINTS_DIR)):
        path = os.path.join(path, CHECKPOINTS_DIR)
    found = Checkpoints(path, create=False)
    if not found.steps():
        found.close()
        raise CheckpointError(f"{path}: holds no checkpoint")
    return found, found.steps()[-1]


def step_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the complete step checkpoints of the run in `output_dir`, oldest first."""
    root = checkpoints_root(output_dir)
    if not os.path.isdir(root):
        return []
    found = Checkpoints(root, create=False)
    try:
        return [(step, found.path(step)) for step in found.steps()]
    finally:
        found.close()


def load_model(path: str, model) -> tuple[Any, Any]:
    """The (weights, state) of `model` saved in the checkpoint at `path` (see `open_checkpoint`)."""
    found, step = open_checkpoint(path)
    try:
        return found.restore_model(step, model)
    finally:
        found.close()


def _abstract(tree):
    """ShapeDtypeStructs placed like `tree`'s arrays; on one local device where `tree` says nowhere.

    A target placement is what lets a checkpoint saved on other devices (or
    another number of them) be read here.
    """
    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def struct(x):
        sharding = getattr(x, "sharding", None) or default
        return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

    return jax.tree.map(struct, tree)
