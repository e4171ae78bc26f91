"""Safe files for arrays and layer weights: zipped .npy and JSON, never pickle.

Writes are atomic (a temporary file in the same directory, fsync, rename), so
a crash mid-write never leaves a half-written file under the final name.
Arrays are read with `allow_pickle=False`: loading a file runs no code.
Also the plain forms of weight trees and outputs that Trax's base API
offers beside files: `flatten_weights_and_state` and its inverse, `to_list`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib

import jax
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes

FORMAT = "trax_sl.layer/1"
_HEADER = "header.json"


def atomic_write(file_path: str, write_fn) -> None:
    """Calls write_fn(binary_file) on a temp file, then renames it into place."""
    file_path = os.fspath(file_path)
    directory = os.path.dirname(os.path.abspath(file_path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600 files; saved weights are ordinary files.
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, file_path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _storable(array: np.ndarray) -> np.ndarray:
    """The .npy format knows numpy's own dtypes only: store others (bfloat16, ...) as raw bits."""
    if array.dtype.kind == "V" or array.dtype.type.__module__.startswith("ml_dtypes"):
        return array.view(np.dtype(f"uint{8 * array.dtype.itemsize}"))
    return array


def _write_zip(f, arrays: dict[str, np.ndarray], header: dict, compresslevel: int | None):
    compression = zipfile.ZIP_STORED if not compresslevel else zipfile.ZIP_DEFLATED
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    header = dict(header, dtypes={name: a.dtype.name for name, a in arrays.items()})
    with zipfile.ZipFile(f, "w", compression=compression, compresslevel=compresslevel or None) as z:
        z.writestr(_HEADER, json.dumps(header, indent=1))
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, _storable(array), allow_pickle=False)
            z.writestr(name + ".npy", buffer.getvalue())


def _open_zip(file_path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file_path, "r")
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{file_path} is not a trax_sl weights file (or it is corrupt): {e}") from e


def _read_array(z: zipfile.ZipFile, name: str, file_path, dtypes: dict) -> np.ndarray:
    try:
        with z.open(name + ".npy") as f:
            array = np.lib.format.read_array(f, allow_pickle=False)
    except KeyError:
        raise ValueError(f"{file_path} has no array {name!r}") from None
    except (ValueError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as e:
        raise ValueError(f"{file_path}: cannot read array {name!r} safely: {e}") from e
    stored = dtypes.get(name, array.dtype.name)
    if stored != array.dtype.name:
        dtype = jax.numpy.dtype(stored)
        if dtype.itemsize != array.dtype.itemsize or array.dtype.kind != "u":
            raise ValueError(
                f"{file_path}: array {name!r} is recorded as {stored} but holds {array.dtype.name}"
            )
        array = array.view(dtype)
    return array


def np_to_file(list_of_nparrays, file_path, compresslevel: int = 2) -> None:
    """Saves a list of numpy arrays to `file_path`, compressed and atomically."""
    arrays = {f"arr_{i}": a for i, a in enumerate(list_of_nparrays)}
    header = {"format": "trax_sl.arrays/1", "count": len(arrays)}
    atomic_write(file_path, lambda f: _write_zip(f, arrays, header, compresslevel))


def np_from_file(file_path, compresslevel: int = 2) -> list[np.ndarray]:
    """Loads the list of arrays saved by `np_to_file`."""
    del compresslevel  # The zip records its own compression.
    with _open_zip(file_path) as z:
        header = _read_json_header(z, file_path, "trax_sl.arrays/1")
        dtypes = header.get("dtypes", {})
        return [_read_array(z, f"arr_{i}", file_path, dtypes) for i in range(int(header["count"]))]


def signature_to_json(signature):
    if signature is None:
        return None
    if isinstance(signature, seq.Sequence):
        return {"sequence": [signature_to_json(signature.values), signature_to_json(signature.mask)]}
    if isinstance(signature, (tuple, list)):
        return {"tuple": [signature_to_json(s) for s in signature]}
    s = shapes.signature(signature)
    return {"shape": list(s.shape), "dtype": s.dtype.name}


def signature_from_json(data):
    if data is None:
        return None
    if "sequence" in data:
        values, mask = (signature_from_json(d) for d in data["sequence"])
        return seq.Sequence(values, mask)
    if "tuple" in data:
        return tuple(signature_from_json(d) for d in data["tuple"])
    return shapes.ShapeDtype(tuple(data["shape"]), np.dtype(data["dtype"]))


def _named_leaves(prefix: str, tree) -> dict[str, object]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def save_layer(file_path, weights, state, input_signature) -> None:
    """Writes weights (and state, unless None) named by their tree paths."""
    arrays = _named_leaves("weights", weights)
    if state is not None:
        arrays.update(_named_leaves("state", state))
    header = {
        "format": FORMAT,
        "input_signature": signature_to_json(input_signature),
        "has_state": state is not None,
        "arrays": {
            name: {"shape": list(np.shape(a)), "dtype": np.asarray(a).dtype.name}
            for name, a in arrays.items()
        },
    }
    atomic_write(file_path, lambda f: _write_zip(f, arrays, header, compresslevel=None))


def _read_json_header(z: zipfile.ZipFile, file_path, expected_format: str) -> dict:
    try:
        header = json.loads(z.read(_HEADER))
    except (KeyError, ValueError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        raise ValueError(f"{file_path}: missing or unreadable header: {e}") from e
    if not isinstance(header, dict) or header.get("format") != expected_format:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ValueError(f"{file_path}: expected format {expected_format}, got {found!r}")
    return header


def read_header(file_path) -> dict:
    with _open_zip(file_path) as z:
        return _read_json_header(z, file_path, FORMAT)


def _load_tree(z, file_path, prefix: str, signature, dtypes: dict):
    paths_and_sigs, treedef = jax.tree_util.tree_flatten_with_path(signature)
    leaves = []
    for path, sig in paths_and_sigs:
        name = prefix + jax.tree_util.keystr(path)
        array = _read_array(z, name, file_path, dtypes)
        if tuple(array.shape) != tuple(sig.shape) or array.dtype != np.dtype(sig.dtype):
            raise ValueError(
                f"{file_path}: {name} is {array.dtype.name}{list(array.shape)} in the file "
                f"but the layer expects {np.dtype(sig.dtype).name}{list(sig.shape)}"
            )
        leaves.append(jax.numpy.asarray(array))
    return jax.tree.unflatten(treedef, leaves)


def load_layer(file_path, weights_signature, state_signature):
    """Reads weights (and state unless its signature is None) by tree path."""
    header = read_header(file_path)
    with _open_zip(file_path) as z:
        dtypes = header.get("dtypes", {})
        weights = _load_tree(z, file_path, "weights", weights_signature, dtypes)
        state = None
        if state_signature is not None:
            if not header.get("has_state"):
                raise ValueError(f"{file_path} holds weights only; load it with weights_only=True")
            state = _load_tree(z, file_path, "state", state_signature, dtypes)
    return weights, state


def flatten_weights_and_state(weights, state):
    """Flat lists of weight and state arrays, without empty and shared entries."""
    return jax.tree.leaves(weights), jax.tree.leaves(state)


def unflatten_weights_and_state(
    flat_weights, flat_state, weights_and_state_signature, weights_only: bool = False
):
    """Inverse of flatten_weights_and_state, given the trees' signature."""
    weights_sig, state_sig = weights_and_state_signature
    weights = jax.tree.unflatten(jax.tree.structure(weights_sig), list(flat_weights))
    if weights_only:
        return weights, None
    state = jax.tree.unflatten(jax.tree.structure(state_sig), list(flat_state))
    return weights, state


def to_list(outputs):
    """Converts layer outputs to nested lists, for equality testing."""
    if isinstance(outputs, (tuple, list)):
        return [to_list(y) for y in outputs]
    if isinstance(outputs, seq.Sequence):
        return [to_list(outputs.values), to_list(outputs.mask)]
    return np.asarray(outputs).tolist()
