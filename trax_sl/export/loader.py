"""Runs a model exported by `trax_sl.export.save`, with JAX and NumPy alone.

This one file imports only `jax`, `numpy` and the standard library: copy it
next to a deployment and `load` a `.export` file without installing trax_sl.
`trax_sl.export.load` is this module's `load`.

    model = loader.load("model.export")
    state = model.init_state(batch_size=4)
    for block in blocks:                      # [4, model.block_steps, ...] each
        outputs, state = model.step(block, state)
    whole = model.layer(x)                    # the layer-wise function, any batch and time

Calling convention. A stack item is an array, or a `(values, mask)` pair
where the model took a `trax_sl.Sequence` (values `[batch, time, ...]`, mask
`[batch, time]` bool); a model of several inputs or outputs takes and gives a
tuple of items (`model.input_signature` shows the form, `"b"` standing for
the batch size and `"t"` for the time steps). Outputs come back in the same
form. `state` is an opaque list of arrays: start it with `init_state`, pass
back what `step` returns. The batch size is free (symbolic in the exported
functions); a block always has `block_steps` time steps.

The file is a zip (never pickle): `header.json`, the serialized
`jax.export.Exported` functions `step`, `init_state` and (when it could be
exported) `layer`, and `.npy` arrays: `weights/`, the initial stream state
of one example `stream_state/`, and the model's trained state `state/` (used
by `layer`). An export file holds programs: load only files you trust.
"""

from __future__ import annotations

import fractions
import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

FORMAT_NAME = "trax_sl.export"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"
HEADER = "header.json"
_MAX_HEADER_BYTES = 16 << 20
_HEADER_FIELDS = (
    "platforms",
    "block_size",
    "block_steps",
    "input_latency",
    "output_latency",
    "output_ratio",
    "stream_capacity",
    "step",
    "init_state",
    "layer",
    "arrays",
)

__all__ = ["FORMAT", "ExportedModel", "load"]


def load(path) -> ExportedModel:
    """Reads an export file; returns the model ready to `init_state`, `step` and `layer`.

    Raises:
        ValueError: The file is not a trax_sl export, was written in a newer
            format than this loader reads, or was exported for platforms that
            do not include the one JAX runs on here.
    """
    path = str(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: not a trax_sl export file ({e})") from e
    with archive:
        header = _read_header(archive, path)
        _check_platform(header, path)
        functions = {
            name: _read_function(archive, path, header, name)
            for name in ("step", "init_state", "layer")
            if header[name].get("file")
        }
        arrays = {
            group: [_read_array(archive, path, f"{group}/{i:05d}.npy", spec) for i, spec in enumerate(specs)]
            for group, specs in header["arrays"].items()
        }
    return ExportedModel(header, functions, arrays)


class ExportedModel:
    """An exported model: `init_state(batch_size)`, `step(block, state)` and `layer(x)`.

    Attributes:
        header: The file's header (a dict).
        block_size, block_steps: The model's block size and the time steps of
            each block `step` takes (a multiple of block_size).
        input_latency, output_latency, output_ratio, stream_capacity: The
            model's streaming properties (output_ratio a `fractions.Fraction`).
        input_signature, output_signature: The forms of a block and of the
            outputs of `step` (see the module docstring).
    """

    def __init__(self, header: dict, functions: dict, arrays: dict):
        self.header = header
        self.block_size = header["block_size"]
        self.block_steps = header["block_steps"]
        self.input_latency = header["input_latency"]
        self.output_latency = header["output_latency"]
        self.output_ratio = fractions.Fraction(header["output_ratio"])
        self.stream_capacity = header["stream_capacity"]
        self.input_signature = header["step"]["input_signature"]
        self.output_signature = header["step"]["output_signature"]
        self._weights = [jnp.asarray(w) for w in arrays["weights"]]
        self._stream_state = [jnp.asarray(s) for s in arrays["stream_state"]]
        self._state = [jnp.asarray(s) for s in arrays["state"]]
        self._step = jax.jit(functions["step"].call)
        self._init = jax.jit(functions["init_state"].call)
        self._layer = jax.jit(functions["layer"].call) if "layer" in functions else None

    def init_state(self, batch_size: int) -> list:
        """A fresh stream state for `batch_size` rows (trained state such as BatchNorm's kept)."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"init_state: batch_size must be an integer >= 1, got {batch_size!r}")
        return list(self._init(np.zeros((batch_size,), np.int32), self._stream_state))

    def step(self, block, state: list):
        """Runs one block: returns (outputs, the next state)."""
        self._check_state(state, "step")
        leaves = flatten(self.input_signature, block, "step: block")
        outputs, state = self._step(self._weights, list(state), leaves)
        return unflatten(self.output_signature, list(outputs)), list(state)

    def reset_rows(self, state: list, rows) -> list:
        """`state` with the streams of `rows` started afresh and the other rows untouched.

        `rows` is a bool mask `[batch]` or a list of row indices: a server
        frees those slots of its batch for new streams. Each array's batch
        axis (and how many entries a row takes there, e.g. one per attention
        head) is in the header; arrays without one (trained statistics) stay.
        """
        self._check_state(state, "reset_rows")
        axes = self.header["init_state"]["batch_axes"]
        batch = next(
            (int(state[i].shape[a["axis"]]) // a["per_row"] for i, a in enumerate(axes) if a is not None),
            None,
        )
        if batch is None:  # No per-row state at all: every stream starts the same.
            return list(state)
        mask = np.zeros((batch,), bool)
        mask[np.asarray(rows)] = True
        fresh = self.init_state(batch)
        out = []
        for current, new, axis in zip(state, fresh, axes):
            if axis is None:
                out.append(current)
                continue
            where = np.repeat(mask, axis["per_row"]).reshape((-1,) + (1,) * (current.ndim - axis["axis"] - 1))
            out.append(jnp.where(where, new, current))
        return out

    def _check_state(self, state, where: str) -> None:
        n_state = len(self._stream_state)
        if not isinstance(state, (list, tuple)) or len(state) != n_state:
            got = f"{len(state)} arrays" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(
                f"{where}: state must be the list of {n_state} arrays that init_state or step returned, got {got}"
            )

    def layer(self, x):
        """The layer-wise function: the whole input at once, outputs as the model gives them in eval mode."""
        if self._layer is None:
            raise ValueError(
                f"layer: this file holds no layer-wise function ({self.header['layer']['reason']})"
            )
        spec = self.header["layer"]
        leaves = flatten(spec["input_signature"], x, "layer: input")
        return unflatten(spec["output_signature"], list(self._layer(self._weights, self._state, leaves)))


# Signatures in the header are JSON trees: {"array": {"shape": [...], "dtype": name}} (a dimension is
# an int or the name of a symbolic size: "b", "t", ...), {"sequence": {"values": ..., "mask": ...}},
# {"tuple": [...]} and {"dict": [[key, ...], ...]}. Leaves go in that order, depth first.


def flatten(spec: dict, value, where: str) -> list:
    """The arrays of `value` in the order of `spec`, each checked against its rank and dtype."""
    ((kind, body),) = spec.items()
    if kind == "array":
        return [_checked_array(body, value, where)]
    if kind == "sequence":
        if not (isinstance(value, (tuple, list)) and len(value) == 2):
            raise ValueError(f"{where}: expected a (values, mask) pair, got {_describe(value)}")
        return [
            _checked_array(body["values"], value[0], where + " values"),
            _checked_array(body["mask"], value[1], where + " mask"),
        ]
    if kind == "tuple":
        if not (isinstance(value, (tuple, list)) and len(value) == len(body)):
            raise ValueError(f"{where}: expected a tuple of {len(body)} items, got {_describe(value)}")
        return [leaf for i, (s, v) in enumerate(zip(body, value)) for leaf in flatten(s, v, f"{where}[{i}]")]
    if kind == "dict":
        keys = [key for key, _ in body]
        if not (isinstance(value, dict) and sorted(value) == sorted(keys)):
            raise ValueError(f"{where}: expected a dict with keys {keys}, got {_describe(value)}")
        return [leaf for key, s in body for leaf in flatten(s, value[key], f"{where}[{key!r}]")]
    raise ValueError(f"{where}: unknown signature node {kind!r}")


def unflatten(spec: dict, leaves: list):
    """Rebuilds the value of `spec` from its arrays (consumed from the front of `leaves`)."""
    ((kind, body),) = spec.items()
    if kind == "array":
        return leaves.pop(0)
    if kind == "sequence":
        return (leaves.pop(0), leaves.pop(0))
    if kind == "tuple":
        return tuple(unflatten(s, leaves) for s in body)
    if kind == "dict":
        return {key: unflatten(s, leaves) for key, s in body}
    raise ValueError(f"unknown signature node {kind!r}")


def dtype_of(name: str) -> np.dtype:
    """The dtype named `name`, including those NumPy lacks that JAX has (bfloat16, ...)."""
    try:
        return np.dtype(name)
    except TypeError:
        found = getattr(jnp, name, None)
        if found is None:
            raise ValueError(f"unknown dtype {name!r}") from None
        return np.dtype(found)


def _checked_array(spec: dict, value, where: str):
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        value = np.asarray(value)
    expected = dtype_of(spec["dtype"])
    shape = tuple(value.shape)
    fixed = [(i, d) for i, d in enumerate(spec["shape"]) if isinstance(d, int)]
    if len(shape) != len(spec["shape"]) or any(shape[i] != d for i, d in fixed):
        raise ValueError(f"{where}: expected shape {_shape_text(spec['shape'])}, got {list(shape)}")
    if np.dtype(value.dtype) != expected:
        if not np.can_cast(value.dtype, expected, casting="same_kind"):
            raise ValueError(f"{where}: expected dtype {expected.name}, got {np.dtype(value.dtype).name}")
        value = jnp.asarray(value, expected)
    return value


def _shape_text(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _describe(value) -> str:
    if hasattr(value, "shape"):
        return f"an array of shape {list(value.shape)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return type(value).__name__


def _read_header(archive: zipfile.ZipFile, path: str) -> dict:
    try:
        info = archive.getinfo(HEADER)
    except KeyError:
        raise ValueError(f"{path}: not a trax_sl export file (no {HEADER})") from None
    if info.file_size > _MAX_HEADER_BYTES:
        raise ValueError(f"{path}: {HEADER} claims {info.file_size} bytes, more than {_MAX_HEADER_BYTES}")
    try:
        header = json.loads(archive.read(HEADER).decode("utf-8"))
    except (ValueError, UnicodeDecodeError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: unreadable {HEADER}: {e}") from e
    written = header.get("format") if isinstance(header, dict) else None
    name, _, version = str(written).partition("/")
    if name != FORMAT_NAME or not version.isdigit():
        raise ValueError(
            f"{path}: not a trax_sl export file (its header's format is {written!r}, expected {FORMAT!r})"
        )
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path}: written in format {written} (by trax_sl {header.get('trax_sl_version')}), newer than "
            f"this loader reads ({FORMAT}); use the loader.py of that trax_sl version or newer"
        )
    missing = [field for field in _HEADER_FIELDS if field not in header]
    if missing:
        raise ValueError(f"{path}: its {HEADER} lacks the fields {missing}")
    return header


def current_platform() -> str:
    """The platform JAX lowers for here, as `jax.export` names it: 'cpu', 'cuda', 'rocm' or 'tpu'."""
    backend = jax.default_backend()
    if backend != "gpu":
        return backend
    version = str(getattr(jax.devices()[0].client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


def _check_platform(header: dict, path: str) -> None:
    platforms = list(header.get("platforms") or [])
    here = current_platform()
    if here not in platforms:
        raise ValueError(
            f"{path}: exported for platforms {platforms}, but JAX runs on {here!r} here; export it again "
            f"with trax_sl.export.save(..., platforms=(..., {here!r})) or run it where JAX uses one of those"
        )


def _read_function(archive: zipfile.ZipFile, path: str, header: dict, name: str):
    member = header[name]["file"]
    try:
        return jax.export.deserialize(bytearray(archive.read(member)))
    except Exception as e:  # whatever jax.export raises on bytes it cannot read.
        raise ValueError(
            f"{path}: cannot read its {name} function {member} (exported with jax "
            f"{header.get('jax_version')}, this is jax {jax.__version__}): {type(e).__name__}: {e}"
        ) from e


def _read_array(archive: zipfile.ZipFile, path: str, member: str, spec: dict) -> np.ndarray:
    try:
        stored = np.load(io.BytesIO(archive.read(member)), allow_pickle=False)
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: cannot read array {member}: {e}") from e
    dtype = dtype_of(spec["dtype"])
    if stored.dtype != dtype:  # Dtypes NumPy lacks are stored as unsigned integers of their width.
        if stored.dtype.kind != "u" or stored.dtype.itemsize != dtype.itemsize:
            raise ValueError(f"{path}: array {member} has dtype {stored.dtype}, expected {dtype.name}")
        stored = stored.view(dtype)
    if list(stored.shape) != list(spec["shape"]):
        raise ValueError(f"{path}: array {member} has shape {list(stored.shape)}, expected {spec['shape']}")
    return stored
