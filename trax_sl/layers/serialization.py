"""Safe files for arrays and layer weights: zipped .npy and JSON, never pickle.

A file is a zip of `header.json` and one `.npy` per array. A layer file
(`save_layer`, format "trax_sl.layer/2") names arrays by weights/state tree
path; its header holds `input_signature`, `has_state`, `arrays` ({name:
{shape, dtype}}) and `dtypes` ({name: dtype}; dtypes numpy lacks, such as
bfloat16, are stored as unsigned integers of their width). An array file
(`np_to_file`, "trax_sl.arrays/2") holds arr_0, arr_1, ... under `count` and
`dtypes`. The header's `sha256` is the SHA-256 of its other fields as
`json.dumps(fields, sort_keys=True, separators=(",", ":"))`, so a corrupt
header fails instead of loading other values; files of the formats ".../1",
written before the checksum, load if their header is well formed.

Reading treats a file as hostile: every failure is one ValueError naming the
file, the array or field, what was expected and what was found. Header fields
are checked before use; an array's .npy header (at most 10,000 bytes) is
checked against the expected signature, or its zip entry's size, before any
data is read; data is read in bounded pieces into a buffer that grows with
the bytes actually inflated, then one more byte (trailing bytes fail, zipfile
checks the CRC). A claimed size or a zip bomb costs no more memory than the
arrays really read, and no code runs.

Writes are atomic (a temporary file in the same directory, fsync, rename), so
a crash mid-write never leaves a half-written file under the final name.
Also the plain forms of weight trees and outputs that Trax's base API offers
beside files: `flatten_weights_and_state` and its inverse, `to_list`.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import math
import os
import tempfile
import zipfile
import zlib

import jax
import numpy as np

from trax_sl import sequence as seq
from trax_sl import shapes

FORMAT = "trax_sl.layer/2"
ARRAYS_FORMAT = "trax_sl.arrays/2"
_UNCHECKED_FORMAT = {FORMAT: "trax_sl.layer/1", ARRAYS_FORMAT: "trax_sl.arrays/1"}
_HEADER = "header.json"
_MAX_HEADER_BYTES = 64 << 20
_MAX_NPY_HEADER = 10_000  # numpy's own bound (read_array_header_1_0's max_header_size).
_NPY_MAGIC = b"\x93NUMPY"  # Then the version, then the length of the header text.
_NPY_LENGTH_BYTES = {(1, 0): 2, (2, 0): 4}
_PIECE = 16 << 20
_SIGNATURE_FORMS = '{"shape": [n, ...], "dtype": name}, {"tuple": [...]}, {"sequence": [a, b]} or null'
# What zipfile and its decompressors raise on corrupt data (RuntimeError: encrypted or unknown method).
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, RuntimeError)


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


def _storable_dtype(dtype: np.dtype) -> np.dtype:
    """The .npy format knows numpy's own dtypes only: others (bfloat16, ...) are stored as raw bits."""
    if dtype.kind == "V" or dtype.type.__module__.startswith("ml_dtypes"):
        return np.dtype(f"uint{8 * dtype.itemsize}")
    return dtype


def _known_dtype(name) -> np.dtype | None:
    """The numeric dtype (numpy's, or ml_dtypes' such as bfloat16) named exactly `name`, else None."""
    if not isinstance(name, str) or not name.isidentifier():
        return None
    try:
        dtype = jax.numpy.dtype(name)
    except TypeError:
        return None
    numeric = dtype.kind in "biufc" or dtype.type.__module__.startswith("ml_dtypes")
    return dtype if numeric and dtype.name == name else None


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _write_zip(f, arrays: dict[str, np.ndarray], header: dict, compresslevel: int | None):
    compression = zipfile.ZIP_STORED if not compresslevel else zipfile.ZIP_DEFLATED
    arrays = {name: np.asarray(a) for name, a in arrays.items()}
    header = dict(header, dtypes={name: a.dtype.name for name, a in arrays.items()})
    with zipfile.ZipFile(f, "w", compression=compression, compresslevel=compresslevel or None) as z:
        z.writestr(_HEADER, json.dumps(dict(header, sha256=_digest(header)), indent=1))
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array.view(_storable_dtype(array.dtype)), allow_pickle=False)
            z.writestr(name + ".npy", buffer.getvalue())


def _open_zip(file_path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(file_path, "r")
    except (*_ZIP_ERRORS, ValueError) as e:
        raise ValueError(f"{file_path} is not a trax_sl weights file (or it is corrupt): {e}") from e


def _expect(ok: bool, field: str, expected: str, found) -> None:
    if not ok:
        found = repr(found)
        raise ValueError(f"header field {field}: expected {expected}, found {found[:60]}")


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(type(d) is int and d >= 0 for d in value)


def _check_dtypes(dtypes) -> None:
    _expect(isinstance(dtypes, dict), "dtypes", "an object {array name: dtype name}", dtypes)
    for name, dtype in dtypes.items():
        _expect(_known_dtype(dtype) is not None, f"dtypes[{name!r}]", "a numeric dtype name", dtype)


def _check_layer_header(header: dict) -> None:
    _expect(isinstance(header["has_state"], bool), "has_state", "true or false", header["has_state"])
    signature_from_json(header["input_signature"])
    _check_dtypes(header["dtypes"])
    arrays, dtypes = header["arrays"], header["dtypes"]
    _expect(isinstance(arrays, dict), "arrays", "an object {array name: {shape, dtype}}", arrays)
    _expect(arrays.keys() == dtypes.keys(), "arrays", "the names in dtypes", list(arrays))
    for name, entry in arrays.items():
        ok = isinstance(entry, dict) and entry.keys() == {"shape", "dtype"} and _is_shape(entry["shape"])
        _expect(ok and entry["dtype"] == dtypes[name], f"arrays[{name!r}]", "{shape, dtype}", entry)


def _check_arrays_header(header: dict) -> None:
    _check_dtypes(header["dtypes"])
    names, count = set(header["dtypes"]), header["count"]
    _expect(type(count) is int and count == len(names), "count", f"{len(names)}, the number of dtypes", count)
    _expect(names == {f"arr_{i}" for i in range(count)}, "dtypes", f"names arr_0...arr_{count - 1}", names)


_FIELDS = {  # Format -> (header fields besides "format" and "sha256", their check).
    FORMAT: ({"input_signature", "has_state", "arrays", "dtypes"}, _check_layer_header),
    ARRAYS_FORMAT: ({"count", "dtypes"}, _check_arrays_header),
}


def _verified_header(header, expected_format: str) -> dict:
    """The header's fields without its checksum, once checksum, format and fields are checked."""
    _expect(isinstance(header, dict), "(all)", "a JSON object", header)
    fields = {key: value for key, value in header.items() if key != "sha256"}
    checked = "sha256" in header
    if checked and header["sha256"] != _digest(fields):
        raise ValueError("header checksum mismatch: the file is corrupt")
    found = fields.get("format")
    if found != (expected_format if checked else _UNCHECKED_FORMAT[expected_format]):
        raise ValueError(
            f"expected format {expected_format}, or {_UNCHECKED_FORMAT[expected_format]} without a "
            f"checksum; got {found!r} {'with' if checked else 'without'} a checksum"
        )
    names, check = _FIELDS[expected_format]
    _expect(fields.keys() == names | {"format"}, "names", str(sorted(names | {"format"})), sorted(fields))
    check(fields)
    return fields


def _read_json_header(z: zipfile.ZipFile, file_path, expected_format: str) -> dict:
    try:
        with z.open(_HEADER) as f:
            raw = f.read(_MAX_HEADER_BYTES + 1)
    except (KeyError, *_ZIP_ERRORS, ValueError) as e:
        raise ValueError(f"{file_path}: missing or unreadable header: {e}") from e
    if len(raw) > _MAX_HEADER_BYTES:
        raise ValueError(f"{file_path}: header.json is larger than {_MAX_HEADER_BYTES} bytes")
    try:
        return _verified_header(json.loads(raw), expected_format)
    except RecursionError:
        raise ValueError(f"{file_path}: header.json is nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{file_path}: {e}") from e


def read_header(file_path) -> dict:
    """The checked header fields of a layer file (without the checksum)."""
    with _open_zip(file_path) as z:
        return _read_json_header(z, file_path, FORMAT)


def _read_npy_header(f, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) from the .npy header at f, reading nothing past it."""
    magic = f.read(len(_NPY_MAGIC) + 2)
    version = tuple(magic[-2:])
    if magic[:-2] != _NPY_MAGIC or version not in _NPY_LENGTH_BYTES:
        raise ValueError(f"array {name!r}: expected a .npy header (version 1.0 or 2.0), found {magic!r}")
    length_bytes = f.read(_NPY_LENGTH_BYTES[version])
    length = int.from_bytes(length_bytes, "little")  # numpy would read the whole header before its check.
    if length > _MAX_NPY_HEADER:
        raise ValueError(
            f"array {name!r}: expected a .npy header of at most {_MAX_NPY_HEADER} bytes, found {length}"
        )
    header = f.read(length)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        return read(io.BytesIO(length_bytes + header))
    except Exception as e:  # numpy's parser of this short text raises assorted types (IndexError, ...).
        raise ValueError(f"array {name!r}: invalid .npy header: {e}") from e


def _array_dtype(name: str, stored: np.dtype, recorded: str) -> np.dtype:
    """The dtype `recorded` in the header, if the .npy dtype is how it is stored."""
    dtype = _known_dtype(recorded)
    if dtype is None or _storable_dtype(dtype) != stored:
        raise ValueError(f"array {name!r} is recorded as {recorded} but holds {stored.str}")
    return dtype


def _check_expected(name: str, shape: tuple, dtype: np.dtype, fortran_order: bool, expected) -> None:
    want = np.dtype(expected.dtype)
    if tuple(shape) != tuple(expected.shape) or dtype != want:
        raise ValueError(
            f"{name} is {dtype.name}{list(shape)} in the file "
            f"but the layer expects {want.name}{list(expected.shape)}"
        )
    if fortran_order:
        raise ValueError(f"{name} is stored in Fortran order but the layer expects C order")


def _data_size(name: str, shape: tuple, stored: np.dtype, info: zipfile.ZipInfo) -> int:
    if any(d < 0 for d in shape):
        raise ValueError(f"array {name!r}: expected dimensions >= 0, found shape {list(shape)}")
    size = math.prod(shape) * stored.itemsize
    if size > info.file_size:
        raise ValueError(
            f"array {name!r} declares {size} bytes of data but its zip entry holds {info.file_size}"
        )
    return size


def _read_exactly(f, size: int, name: str) -> bytearray:
    """The rest of the entry, which must be `size` bytes, read in pieces into a growing buffer."""
    data = bytearray()
    while len(data) < size:
        piece = f.read(min(_PIECE, size - len(data)))
        if not piece:
            raise ValueError(f"array {name!r}: expected {size} bytes of data, found {len(data)}")
        data += piece
    if f.read(1):  # Also reaches the entry's end, where zipfile checks its CRC.
        raise ValueError(f"array {name!r}: expected {size} bytes of data, found trailing bytes")
    return data


def _read_array(z: zipfile.ZipFile, file_path, name: str, dtypes: dict, expected=None) -> np.ndarray:
    """Reads array `name`; with `expected` (shape and dtype) reads its data only if they match."""
    try:
        recorded, info = dtypes[name], z.getinfo(name + ".npy")
    except KeyError:
        raise ValueError(f"{file_path} has no array {name!r}") from None
    try:
        with z.open(info) as f:
            shape, fortran_order, stored = _read_npy_header(f, name)
            dtype = _array_dtype(name, stored, recorded)
            if expected is not None:
                _check_expected(name, shape, dtype, fortran_order, expected)
            data = _read_exactly(f, _data_size(name, shape, stored, info), name)
        return np.frombuffer(data, stored).view(dtype).reshape(shape, order="F" if fortran_order else "C")
    except ValueError as e:
        raise ValueError(f"{file_path}: {e}") from e
    except _ZIP_ERRORS as e:
        raise ValueError(f"{file_path}: cannot read array {name!r}: {e}") from e


def np_to_file(list_of_nparrays, file_path, compresslevel: int = 2) -> None:
    """Saves a list of numpy arrays to `file_path`, compressed and atomically."""
    arrays = {f"arr_{i}": a for i, a in enumerate(list_of_nparrays)}
    header = {"format": ARRAYS_FORMAT, "count": len(arrays)}
    atomic_write(file_path, lambda f: _write_zip(f, arrays, header, compresslevel))


def np_from_file(file_path, compresslevel: int = 2) -> list[np.ndarray]:
    """Loads the list of arrays saved by `np_to_file`."""
    del compresslevel  # The zip records its own compression.
    with _open_zip(file_path) as z:
        header = _read_json_header(z, file_path, ARRAYS_FORMAT)
        return [_read_array(z, file_path, f"arr_{i}", header["dtypes"]) for i in range(header["count"])]


def signature_to_json(signature):
    """A signature (ShapeDtypes in Sequences, tuples and lists) as JSON-ready dicts and lists."""
    if signature is None:
        return None
    if isinstance(signature, seq.Sequence):
        return {"sequence": [signature_to_json(signature.values), signature_to_json(signature.mask)]}
    if isinstance(signature, (tuple, list)):
        return {"tuple": [signature_to_json(s) for s in signature]}
    s = shapes.signature(signature)
    return {"shape": list(s.shape), "dtype": s.dtype.name}


def signature_from_json(data):
    """Inverse of `signature_to_json`; raises ValueError on anything it does not write."""
    try:
        return _signature_from_json(data, "input_signature")
    except RecursionError:
        raise ValueError("input_signature is nested too deeply") from None


def _signature_from_json(data, field: str):
    if data is None:
        return None
    keys = data.keys() if isinstance(data, dict) else None
    if keys == {"sequence"} and isinstance(data["sequence"], list) and len(data["sequence"]) == 2:
        values, mask = (_array_signature(d, f"{field}.sequence[{i}]") for i, d in enumerate(data["sequence"]))
        return seq.Sequence(values, mask)
    if keys == {"tuple"} and isinstance(data["tuple"], list):
        return tuple(_signature_from_json(d, f"{field}.tuple[{i}]") for i, d in enumerate(data["tuple"]))
    return _array_signature(data, field)


def _array_signature(data, field: str) -> shapes.ShapeDtype:
    ok = isinstance(data, dict) and data.keys() == {"shape", "dtype"} and _is_shape(data["shape"])
    _expect(ok and _known_dtype(data["dtype"]) is not None, field, _SIGNATURE_FORMS, data)
    return shapes.ShapeDtype(tuple(data["shape"]), _known_dtype(data["dtype"]))


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


def _load_tree(z, file_path, prefix: str, signature, dtypes: dict):
    paths_and_sigs, treedef = jax.tree_util.tree_flatten_with_path(signature)
    leaves = []
    for path, sig in paths_and_sigs:
        array = _read_array(z, file_path, prefix + jax.tree_util.keystr(path), dtypes, expected=sig)
        leaves.append(jax.numpy.asarray(array))
    return jax.tree.unflatten(treedef, leaves)


def load_layer(file_path, weights_signature, state_signature):
    """Reads weights (and state unless its signature is None) by tree path."""
    with _open_zip(file_path) as z:
        header = _read_json_header(z, file_path, FORMAT)
        weights = _load_tree(z, file_path, "weights", weights_signature, header["dtypes"])
        state = None
        if state_signature is not None:
            if not header["has_state"]:
                raise ValueError(f"{file_path} holds weights only; load it with weights_only=True")
            state = _load_tree(z, file_path, "state", state_signature, header["dtypes"])
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
