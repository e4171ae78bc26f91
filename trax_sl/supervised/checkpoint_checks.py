"""What a checkpoint must pass before its arrays are read, and after.

Before: the metadata's format, checksum and field types (`checked_content`);
then that it is a checkpoint of this run's model and optimizers
(`check_description`, a `CheckpointMismatchError` naming both sides); then
that the array files declare exactly the expected shapes, dtypes and chunk
shapes (`check_declared_arrays`), so reading allocates no more than the
model's own size. After: every array read against the fingerprint saved with
it (`check_fingerprints`), so damaged data never loads as other values.
Every failure is one line.
"""

from __future__ import annotations

import hashlib
import json

import jax
import jax.numpy as jnp
import numpy as np

FORMAT = "trax_sl.checkpoint/2"
ITEMS = ("model", "trainer")  # The array items of a checkpoint (besides its metadata).

_CONTENT_TYPES = {
    "step": int,
    "permanent": bool,
    "model": str,
    "optimizers": list,
    "arrays": dict,
    "fingerprints": dict,
    "metadata": dict,
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, or not fitting the model."""


class CheckpointMismatchError(CheckpointError):
    """An intact checkpoint of another model or optimizer than the run's (no fallback helps)."""


def one_line(error: BaseException, limit: int = 400) -> str:
    """`Type: message` on one line, without TensorStore's spec dumps.

    A message longer than `limit` keeps its start and its end (where the
    cause, such as `No space left on device`, is).
    """
    text = " ".join(line.strip() for line in str(error).strip().splitlines())
    for noise in (" [tensorstore_spec=", " See full TensorStore details"):
        text = text.split(noise)[0]
    text = f"{type(error).__name__}: {text}"
    if len(text) <= limit:
        return text
    return text[: limit // 3] + " ... " + text[-(limit - limit // 3 - 5) :]


def path_name(path) -> str:
    """A tree path as `[0][1]['mu']`, whatever the containers (tuple, namedtuple, dict)."""
    parts = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", key)))
        parts.append(f"[{name!r}]" if isinstance(name, str) else f"[{name}]")
    return "".join(parts)


def array_table(tree) -> dict[str, str]:
    """{tree path: 'float32[4, 3]'} of a tree of arrays or ShapeDtypeStructs."""
    return {
        path_name(path): f"{np.dtype(leaf.dtype).name}{list(np.shape(leaf))}"
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@jax.jit
def _fingerprint_leaves(leaves):
    """A uint32 per array: the sum of a 32-bit mix (MurmurHash3's finaliser) of each word and its index.

    Computed where the arrays are (sharded arrays included). The mix is a
    bijection, so changing any one word (any of its bits) always changes the
    sum; other corruption changes it with probability about 1 - 2**-32.
    """

    def mix(x):
        x = x ^ (x >> 16)
        x = x * jnp.uint32(0x85EBCA6B)
        x = x ^ (x >> 13)
        x = x * jnp.uint32(0xC2B2AE35)
        return x ^ (x >> 16)

    def fingerprint(x):
        x = jnp.ravel(x)
        if x.dtype == jnp.bool_:
            x = x.astype(jnp.uint8)
        if x.dtype.itemsize == 8:
            words = jax.lax.bitcast_convert_type(x, jnp.uint32).ravel()
        else:
            words = jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}")).astype(
                jnp.uint32
            )
        index = jnp.arange(words.size, dtype=jnp.uint32)
        return jnp.sum(mix(words + index * jnp.uint32(0x9E3779B9)), dtype=jnp.uint32)

    return [fingerprint(leaf) for leaf in leaves]


def fingerprints(tree) -> dict[str, int]:
    """{tree path: fingerprint} of a tree of arrays (see `_fingerprint_leaves`)."""
    paths_and_leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    values = jax.device_get(_fingerprint_leaves([leaf for _, leaf in paths_and_leaves]))
    return {path_name(path): int(value) for (path, _), value in zip(paths_and_leaves, values)}


def checksum(content) -> str:
    """SHA-256 of `content` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def checked_content(meta, where: str) -> dict:
    """The metadata's content, after checking its format, checksum and field types."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{where}: expected metadata format {FORMAT}, got {found!r}")
    content = meta.get("content")
    if not isinstance(content, dict) or meta.get("sha256") != checksum(content):
        raise CheckpointError(f"{where}: metadata checksum mismatch: the checkpoint is corrupt")
    for key, kind in _CONTENT_TYPES.items():
        value = content.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{where}: metadata field {key!r} should be {kind.__name__}, got {type(value).__name__}"
            )
    for key in ("arrays", "fingerprints"):
        if not all(isinstance(content[key].get(item), dict) for item in ITEMS):
            raise CheckpointError(
                f"{where}: metadata field {key!r} should map 'model' and 'trainer' to tables"
            )
    return content


def check_description(content: dict, description, targets: dict, where: str) -> None:
    """CheckpointMismatchError if the intact checkpoint is of another model or optimizer than the run's.

    Args:
        content: The checked metadata content.
        description: The run's `checkpoints.Description`.
        targets: {item: tree of the arrays the run expects} for items of ITEMS.
        where: The checkpoint's path, for messages.
    """
    saved_optimizers = tuple(map(str, content["optimizers"]))
    if saved_optimizers != tuple(description.optimizers):
        raise CheckpointMismatchError(
            f"{where} was saved with optimizer(s) {', '.join(saved_optimizers)}; "
            f"this run uses {', '.join(description.optimizers)}"
        )
    for item, target in targets.items():
        problems = table_differences(content["arrays"][item], array_table(target))
        if problems:
            if item == "model":
                sides = (
                    f"model {content['model']!r}, which does not fit this run's model {description.model!r}"
                )
            else:
                sides = "the optimizer and loss state, which do not fit this run's"
            raise CheckpointMismatchError(f"{where} holds {sides}: " + "; ".join(problems))


def table_differences(saved: dict, expected: dict, limit: int = 3) -> list[str]:
    """What differs between two `array_table`s, at most `limit` items and a count of the rest."""
    problems = [
        f"{path} is {saved[path]} there, {expected[path]} here"
        for path in expected
        if path in saved and saved[path] != expected[path]
    ]
    problems += [f"{path} ({expected[path]}) is missing there" for path in expected if path not in saved]
    problems += [f"{path} ({saved[path]}) is not in this run" for path in saved if path not in expected]
    if len(problems) > limit:
        problems = problems[:limit] + [f"and {len(problems) - limit} more"]
    return problems


def _is_array_metadata(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _declared(leaf) -> tuple[tuple[int, ...], np.dtype, tuple[int, ...]]:
    """(shape, dtype, chunk shape) an Orbax ArrayMetadata declares."""
    shape = tuple(int(d) for d in (leaf.shape or ()))
    storage = getattr(leaf, "storage", None)
    chunks = getattr(storage, "chunk_shape", None)
    return shape, np.dtype(leaf.dtype), tuple(int(c) for c in chunks) if chunks else shape


def check_declared_arrays(stored_tree, target, where: str) -> None:
    """CheckpointError unless the array files declare exactly the target's arrays.

    What the files declare (shape, dtype, chunk shape) is what reading would
    allocate, so nothing larger than the model's own arrays is ever read.
    """
    try:
        flat = jax.tree_util.tree_flatten_with_path(stored_tree, is_leaf=_is_array_metadata)[0]
        stored = {path_name(path): _declared(leaf) for path, leaf in flat}
    except Exception as e:  # Whatever the files declare, it is one line.
        raise CheckpointError(f"{where}: unreadable array metadata: {one_line(e)}") from e
    expected = {path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(target)[0]}
    if set(stored) != set(expected):
        missing = sorted(set(expected) - set(stored))[:3]
        extra = sorted(set(stored) - set(expected))[:3]
        raise CheckpointError(
            f"{where}: the array files do not match the metadata: missing {missing}, extra {extra}"
        )
    for path, want in expected.items():
        shape, dtype, chunks = stored[path]
        want_shape, want_dtype = tuple(np.shape(want)), np.dtype(want.dtype)
        if shape != want_shape or dtype != want_dtype:
            raise CheckpointError(
                f"{where}: array {path} is declared {dtype.name}{list(shape)} in the files but the metadata "
                f"and the model say {want_dtype.name}{list(want_shape)}"
            )
        if len(chunks) != len(shape) or any(c > max(s, 1) for c, s in zip(chunks, shape)):
            raise CheckpointError(
                f"{where}: array {path} declares chunks {list(chunks)} larger than its shape {list(shape)}"
            )


def check_fingerprints(restored, saved: dict, where: str) -> None:
    """CheckpointError unless every array read has the fingerprint saved with it."""
    for path, value in fingerprints(restored).items():
        if saved.get(path) != value:
            raise CheckpointError(f"{where}: array {path} fails its checksum: the checkpoint is corrupt")
