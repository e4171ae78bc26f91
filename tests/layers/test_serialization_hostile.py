"""Hostile and corrupt weight files: every failure is one ValueError, and memory stays near the model's size.

Covers trax_sl.layers.serialization's reading of `save_to_file` / `np_to_file`
files against a 10^12-element .npy header, zip bombs, malformed header fields,
truncated or padded data, Fortran order, and random bit flips (the header's
sha256 and zip's CRC-32 must catch them all).
"""

import hashlib
import io
import json
import random
import subprocess
import sys
import textwrap
import time
import zipfile
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trax_sl import layers as tl
from trax_sl.layers import serialization
from trax_sl.shapes import ShapeDtype

SIG = ShapeDtype((2, 3))
W0 = "weights[0][0]"  # float32[3, 4], the first array of _model().
MIB = 1 << 20


class _Counter(tl.Layer):
    """Weightless; counts its calls in an int32 state."""

    def init_weights_and_state(self, input_signature, rng):
        return (), jnp.zeros((), jnp.int32)

    def forward(self, x, weights, state, rng):
        return x, state + 1


def _model():
    return tl.Serial(tl.Dense(4), _Counter(), tl.Dense(2, use_bfloat16=True))


def _load(path):
    """(weights, state) as init_from_file reads them, the user's path into the format."""
    return _model().init_from_file(path)


def _same(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.dtype == y.dtype and x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb)
    )


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """(path, (weights, state)) of a saved model: float32 and bfloat16 weights, an int32 state."""
    model = _model()
    model.init(SIG, rng=jax.random.PRNGKey(3))
    path = tmp_path_factory.mktemp("good") / "model.weights"
    model.save_to_file(path, input_signature=SIG)
    return path, (model.weights, model.state)


def _members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _write_zip(path, members: dict[str, bytes]):
    """A zip of `members`, with correct CRCs: only the checks of the format itself can catch a change."""
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _header_bytes(fields: dict, signed: bool = True) -> bytes:
    """header.json of `fields`, with the checksum the format defines (signed) or without (format /1)."""
    if not signed:
        return json.dumps(fields, indent=1).encode()
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return json.dumps(dict(fields, sha256=hashlib.sha256(canonical).hexdigest()), indent=1).encode()


def _fields(path, signed: bool = True) -> dict:
    """The header fields of `path`, without checksum; with signed=False, as format /1 wrote them."""
    header = json.loads(_members(path)["header.json"])
    header.pop("sha256", None)
    return header if signed else dict(header, format=header["format"].replace("/2", "/1"))


def _with_header(path, dst, fields: dict, signed: bool = True):
    return _write_zip(dst, dict(_members(path), **{"header.json": _header_bytes(fields, signed)}))


def _npy(shape, descr="<f4", fortran_order=False) -> bytes:
    """A .npy (version 1.0) header alone: whatever data it declares is up to the caller."""
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": fortran_order, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def _with_member(path, dst, name, data: bytes):
    return _write_zip(dst, dict(_members(path), **{name: data}))


# --- Format and compatibility ---------------------------------------------------------------------------------------


def test_header_carries_the_sha256_of_its_canonical_json(good):
    path, saved = good
    header = json.loads(_members(path)["header.json"])
    assert header["format"] == "trax_sl.layer/2"
    fields = {k: v for k, v in header.items() if k != "sha256"}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    assert header["sha256"] == hashlib.sha256(canonical).hexdigest()
    assert serialization.read_header(path) == fields
    assert _same(_load(path), saved)


def test_files_written_before_the_checksum_still_load(good, tmp_path):
    path, saved = good
    old = _with_header(path, tmp_path / "old.weights", _fields(path, signed=False), signed=False)
    assert json.loads(_members(old)["header.json"])["format"] == "trax_sl.layer/1"
    assert _same(_load(old), saved)

    arrays = [np.arange(6.0).reshape(2, 3), np.array([1, 2], np.int8)]
    serialization.np_to_file(arrays, tmp_path / "a.npz")
    old_fields = _fields(tmp_path / "a.npz", signed=False)
    old_arrays = _with_header(tmp_path / "a.npz", tmp_path / "old.npz", old_fields, signed=False)
    for got, want in zip(serialization.np_from_file(old_arrays), arrays, strict=True):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_a_new_format_header_without_its_checksum_is_refused(good, tmp_path):
    path, _ = good
    bad = _with_header(path, tmp_path / "bad.weights", _fields(path), signed=False)
    with pytest.raises(ValueError, match=r"bad\.weights: expected format .* got 'trax_sl.layer/2' without"):
        _load(bad)


def test_a_changed_header_value_fails_the_checksum(good, tmp_path):
    path, _ = good
    header = json.loads(_members(path)["header.json"])
    # Still valid, and the weights would load the same: only the checksum sees the change.
    header["input_signature"]["shape"] = [5, 3]
    bad = _with_member(path, tmp_path / "bad.weights", "header.json", json.dumps(header).encode())
    with pytest.raises(ValueError, match=r"bad\.weights: header checksum mismatch: the file is corrupt"):
        _load(bad)


def test_arrays_in_fortran_order_round_trip_through_np_to_file(tmp_path):
    array = np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4))
    serialization.np_to_file([array], tmp_path / "f.npz")
    (loaded,) = serialization.np_from_file(tmp_path / "f.npz")
    np.testing.assert_array_equal(loaded, array)


# --- Header fields of the wrong type --------------------------------------------------------------------------------


def _set(field, value):
    return lambda fields: dict(fields, **{field: value})


def _set_entry(field, value):
    return lambda fields: dict(fields, **{field: dict(fields[field], **{W0: value})})


HOSTILE_FIELDS = {
    "dtypes is a list": (_set("dtypes", []), r"dtypes: expected an object"),
    "dtypes is a number": (_set("dtypes", 3), r"dtypes: expected an object"),
    "a dtype is a number": (
        _set_entry("dtypes", 5),
        r"dtypes\['weights\[0\]\[0\]'\]: expected a numeric dtype",
    ),
    "unknown dtype": (_set_entry("dtypes", "float99"), r"dtypes\['weights\[0\]\[0\]'\]: .*found 'float99'"),
    "object dtype": (_set_entry("dtypes", "object"), r"dtypes\['weights\[0\]\[0\]'\]: .*found 'object'"),
    "dtype alias": (_set_entry("dtypes", "f4"), r"dtypes\['weights\[0\]\[0\]'\]: .*found 'f4'"),
    "arrays is a list": (_set("arrays", []), r"arrays: expected an object"),
    "arrays is a number": (_set("arrays", 7), r"arrays: expected an object"),
    "an array entry is a list": (_set_entry("arrays", [3, 4]), r"arrays\['weights\[0\]\[0\]'\]: expected"),
    "negative array shape": (
        _set_entry("arrays", {"shape": [-3, 4], "dtype": "float32"}),
        r"arrays\['weights\[0\]\[0\]'\]",
    ),
    "has_state is a string": (_set("has_state", "yes"), r"has_state: expected true or false, found 'yes'"),
    "has_state is a number": (_set("has_state", 1), r"has_state: expected true or false, found 1"),
    "input_signature is a list": (_set("input_signature", []), r"input_signature: expected .* found \[\]"),
    "shape is a string": (_set("input_signature", {"shape": "3", "dtype": "float32"}), r"input_signature: "),
    "negative dimension": (
        _set("input_signature", {"shape": [-2, 3], "dtype": "float32"}),
        r"input_signature",
    ),
    "boolean dimension": (
        _set("input_signature", {"shape": [True, 3], "dtype": "float32"}),
        r"input_signature",
    ),
    "tuple is a number": (_set("input_signature", {"tuple": 5}), r"input_signature: "),
    "sequence of one": (
        _set("input_signature", {"sequence": [{"shape": [2, 3], "dtype": "float32"}]}),
        r"input_signature: ",
    ),
    "unknown signature dtype": (
        _set("input_signature", {"tuple": [{"shape": [2, 3], "dtype": "float99"}]}),
        r"input_signature.tuple\[0\]: .*float99",
    ),
    "format is a number": (_set("format", 5), r"expected format trax_sl.layer/2.* got 5"),
    "an extra field": (_set("extra", 1), r"names: expected \['arrays', 'dtypes', 'format', .*'extra'"),
    "a missing field": (lambda f: {k: v for k, v in f.items() if k != "dtypes"}, r"names: expected"),
}


@pytest.mark.parametrize("signed", [True, False], ids=["checksummed", "format1"])
@pytest.mark.parametrize("case", HOSTILE_FIELDS)
def test_a_header_field_of_the_wrong_type_raises_one_clear_value_error(good, tmp_path, case, signed):
    path, _ = good
    change, match = HOSTILE_FIELDS[case]
    bad = _with_header(path, tmp_path / "bad.weights", change(_fields(path, signed)), signed)
    with pytest.raises(ValueError, match=match) as info:
        _load(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: ") and "\n" not in message


@pytest.mark.parametrize(
    "text, match",
    [
        (b"[]", r"\(all\): expected a JSON object, found \[\]"),
        (b"{not json", r"Expecting property name"),
        (b"\xff\xfe\x00", r"bad.weights: "),
        (b'{"tuple": [' * 100_000, r"nested too deeply"),
    ],
)
def test_a_header_that_is_no_json_object_raises_value_error(good, tmp_path, text, match):
    bad = _with_member(good[0], tmp_path / "bad.weights", "header.json", text)
    with pytest.raises(ValueError, match=match):
        _load(bad)


def test_a_missing_or_oversized_header_raises_value_error(good, tmp_path, monkeypatch):
    members = _members(good[0])
    header = members.pop("header.json")
    with pytest.raises(ValueError, match=r"missing or unreadable header"):
        _load(_write_zip(tmp_path / "none.weights", members))
    monkeypatch.setattr(serialization, "_MAX_HEADER_BYTES", len(header) - 1)
    with pytest.raises(ValueError, match=r"header.json is larger than"):
        _load(good[0])


@pytest.mark.parametrize(
    "count, match",
    [("1", r"count: expected 1, the number"), (True, r"count: expected 1"), (10**12, r"count: expected 1")],
)
def test_an_arrays_file_with_a_wrong_count_raises_at_once(tmp_path, count, match):
    serialization.np_to_file([np.zeros(3)], tmp_path / "a.npz")
    fields = dict(_fields(tmp_path / "a.npz"), count=count)
    bad = _with_header(tmp_path / "a.npz", tmp_path / "bad.npz", fields)
    with pytest.raises(ValueError, match=match):
        serialization.np_from_file(bad)


@pytest.mark.parametrize(
    "data",
    [
        [],
        "float32",
        {"shape": [2], "dtype": "float32", "extra": 1},
        {"shape": [2.0], "dtype": "float32"},
        {"shape": [2], "dtype": "void"},
        {"sequence": [None, None]},
        {"sequence": [{"shape": [2, 3], "dtype": "float32"}, {"shape": [5], "dtype": "bool"}]},
        {"tuple": [{"tuple": [3]}]},
    ],
)
def test_signature_from_json_rejects_malformed_data(data):
    with pytest.raises(ValueError):
        serialization.signature_from_json(data)


def test_signature_from_json_rejects_deep_nesting_and_reads_what_it_writes():
    deep = {"shape": [1], "dtype": "float32"}
    for _ in range(5000):
        deep = {"tuple": [deep]}
    with pytest.raises(ValueError, match="nested too deeply"):
        serialization.signature_from_json(deep)
    sig = (ShapeDtype((2, 3), jnp.bfloat16), None, (ShapeDtype((), np.int32),))
    assert (
        serialization.signature_from_json(json.loads(json.dumps(serialization.signature_to_json(sig)))) == sig
    )


# --- .npy headers and data ------------------------------------------------------------------------------------------


NPY_CASES = {
    "10^12 elements": (
        _npy((10**12,)),
        r"weights\[0\]\[0\] is float32\[1000000000000\] in the file but the layer",
    ),
    "other dtype": (
        _npy((3, 4), "<f8") + bytes(96),
        r"'weights\[0\]\[0\]' is recorded as float32 but holds <f8",
    ),
    "big-endian": (_npy((3, 4), ">f4") + bytes(48), r"recorded as float32 but holds >f4"),
    "object dtype": (_npy((3, 4), "|O") + bytes(96), r"recorded as float32 but holds \|O"),
    "Fortran order": (
        _npy((3, 4), fortran_order=True) + bytes(48),
        r"weights\[0\]\[0\] is stored in Fortran order",
    ),
    "truncated data": (_npy((3, 4)) + bytes(40), r"expected 48 bytes of data, found 40"),
    "trailing bytes": (_npy((3, 4)) + bytes(49), r"expected 48 bytes of data, found trailing bytes"),
    "npy version 3": (
        _npy((3, 4)).replace(b"NUMPY\x01", b"NUMPY\x03", 1) + bytes(48),
        r"'weights\[0\]\[0\]': expected a .npy header \(version 1.0 or 2.0\), found b'\\x93NUMPY\\x03\\x00'",
    ),
    "no magic": (b"PK\x03\x04" + bytes(60), r"'weights\[0\]\[0\]': expected a .npy header .* found b'PK"),
    "huge npy header": (
        b"\x93NUMPY\x02\x00" + (2**32 - 1).to_bytes(4, "little") + bytes(100),
        r"expected a .npy header of at most 10000 bytes, found 4294967295",
    ),
    "empty descr": (
        _npy((3, 4)).replace(b"'<f4'", b"()   ") + bytes(48),
        r"'weights\[0\]\[0\]': invalid .npy header",
    ),
    "empty entry": (b"", r"'weights\[0\]\[0\]'"),
}


@pytest.mark.parametrize("case", NPY_CASES)
def test_a_hostile_npy_entry_raises_one_clear_value_error(good, tmp_path, case):
    data, match = NPY_CASES[case]
    bad = _with_member(good[0], tmp_path / "bad.weights", W0 + ".npy", data)
    with pytest.raises(ValueError, match=match) as info:
        _load(bad)
    assert str(info.value).startswith(f"{bad}: ")


def test_a_stored_input_signature_cannot_make_the_model_huge(good, tmp_path):
    # The file claims a 10^12-wide input, so the layer itself expects w [10^12, 4]; the .npy agrees.
    fields = dict(_fields(good[0]), input_signature={"shape": [2, 10**12], "dtype": "float32"})
    bad = _with_header(good[0], tmp_path / "bad.weights", fields)
    bad = _with_member(bad, bad, W0 + ".npy", _npy((10**12, 4)))
    with pytest.raises(
        ValueError, match=r"declares 16000000000000 bytes of data but its zip entry holds 128"
    ):
        _load(bad)


def test_np_from_file_rejects_data_larger_than_its_entry(tmp_path):
    serialization.np_to_file([np.zeros(3, np.float32)], tmp_path / "a.npz")
    bad = _with_member(tmp_path / "a.npz", tmp_path / "bad.npz", "arr_0.npy", _npy((10**12,)))
    with pytest.raises(
        ValueError, match=r"'arr_0' declares 4000000000000 bytes of data but its zip entry holds 128"
    ):
        serialization.np_from_file(bad)
    negative = _with_member(tmp_path / "a.npz", tmp_path / "neg.npz", "arr_0.npy", _npy((-1, 3)))
    with pytest.raises(ValueError, match=r"expected dimensions >= 0, found shape \[-1, 3\]"):
        serialization.np_from_file(negative)


def _forged(path, name, compression=zipfile.ZIP_STORED, **info):
    """Rewrites zip `path` recording `info` (file_size=..., CRC=...) for entry `name`: a lie in its directory."""
    members = _members(path)
    with zipfile.ZipFile(path, "w", compression) as z:
        for member, data in members.items():
            z.writestr(member, data)
        for key, value in info.items():
            setattr(z.getinfo(name), key, value)  # The directory is written on close.
    return path


def test_np_from_file_memory_follows_the_bytes_really_read_not_the_claim(tmp_path):
    serialization.np_to_file([np.zeros(3, np.float32)], tmp_path / "a.npz")
    bad = _with_member(tmp_path / "a.npz", tmp_path / "bad.npz", "arr_0.npy", _npy((10**12,)) + bytes(1000))
    _forged(bad, "arr_0.npy", file_size=5 * 10**12)
    with pytest.raises(ValueError, match=r"expected 4000000000000 bytes of data, found 1000"):
        serialization.np_from_file(bad)


@pytest.mark.parametrize(
    "info, match", [({"compress_type": 99}, r"compression method"), ({"flag_bits": 1}, r"encrypted")]
)
def test_an_unreadable_zip_entry_raises_value_error(good, tmp_path, info, match):
    bad = _forged(_write_zip(tmp_path / "bad.weights", _members(good[0])), W0 + ".npy", **info)
    with pytest.raises(ValueError, match=rf"cannot read array 'weights\[0\]\[0\]': .*{match}"):
        _load(bad)


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"]
)
def test_a_wrong_crc_raises_value_error_since_reading_reaches_the_entry_end(tmp_path, compression):
    path = tmp_path / "a.npz"
    serialization.np_to_file([np.arange(100_000.0)], path)
    crc = zlib.crc32(_members(path)["arr_0.npy"])
    _forged(path, "arr_0.npy", compression, CRC=crc ^ 1)
    with pytest.raises(ValueError, match=r"cannot read array 'arr_0': Bad CRC-32"):
        serialization.np_from_file(path)


# --- Zip bombs and claimed sizes: peak memory in a fresh process ----------------------------------------------------

_BOMB_MIB = 1024  # 1 GiB of zeros, about 1 MB deflated.


def _bomb(path, members: dict[str, bytes], name: str, prefix: bytes, zeros_mib: int):
    """A zip of `members` whose entry `name` is `prefix` then `zeros_mib` MiB of zeros, deflated."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for member, data in members.items():
            if member != name:
                z.writestr(member, data)
        with z.open(name, "w", force_zip64=True) as f:
            f.write(prefix)
            zeros = bytes(MIB)
            for _ in range(zeros_mib):
                f.write(zeros)
    return path


@pytest.fixture(scope="module")
def hostile_files(good, tmp_path_factory):
    """{case: (loader kind, path, what the ValueError must say)}; built once, the 1 GiB bombs in a few seconds."""
    root = tmp_path_factory.mktemp("hostile")
    layer = _members(good[0])
    serialization.np_to_file([np.zeros(3, np.float32)], root / "a.npz")
    arrays = _members(root / "a.npz")
    start = time.perf_counter()
    files = {
        "1 GiB bomb after a matching header": (
            "layer",
            _bomb(root / "trailing.weights", layer, W0 + ".npy", _npy((3, 4)), _BOMB_MIB),
            "expected 48 bytes of data, found trailing bytes",
        ),
        "1 GiB bomb under a 1 GiB header": (
            "layer",
            _bomb(root / "declared.weights", layer, W0 + ".npy", _npy((_BOMB_MIB * MIB // 4,)), _BOMB_MIB),
            "is float32[268435456] in the file but the layer expects float32[3, 4]",
        ),
    }
    build_s = time.perf_counter() - start
    files.update(
        {
            "64 MiB bomb in np_from_file": (
                "arrays",
                _bomb(root / "trailing.npz", arrays, "arr_0.npy", _npy((3,)), 64),
                "expected 12 bytes of data, found trailing bytes",
            ),
            "64 MiB bomb as .npy header": (
                "layer",
                _bomb(root / "header.weights", layer, W0 + ".npy", b"\x93NUMPY\x02\x00\xff\xff\xff\xff", 64),
                "expected a .npy header of at most 10000 bytes",
            ),
            "10^12 elements": (
                "layer",
                _with_member(good[0], root / "huge.weights", W0 + ".npy", _npy((10**12,))),
                "is float32[1000000000000] in the file",
            ),
            "10^12 elements in np_from_file": (
                "arrays",
                _with_member(root / "a.npz", root / "huge.npz", "arr_0.npy", _npy((10**12,))),
                "declares 4000000000000 bytes of data",
            ),
            "10^12 elements under a forged entry size": (
                "arrays",
                _forged(
                    _with_member(
                        root / "a.npz", root / "forged.npz", "arr_0.npy", _npy((10**12,)) + bytes(MIB)
                    ),
                    "arr_0.npy",
                    file_size=5 * 10**12,
                ),
                f"expected 4000000000000 bytes of data, found {MIB}",
            ),
        }
    )
    print(f"\nbuilt the two {_BOMB_MIB} MiB bombs in {build_s:.1f} s")
    return files


_MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from trax_sl.layers import serialization

    weights_sig, state_sig = (serialization.signature_from_json(s) for s in json.loads(sys.argv[1]))
    for kind, path in json.loads(sys.argv[2]):
        try:
            if kind == "layer":
                serialization.load_layer(path, weights_sig, state_sig)
            else:
                serialization.np_from_file(path)
            outcome = "loaded"
        except ValueError as e:
            outcome = "ValueError: " + str(e)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({"outcome": outcome, "peak_mib": peak_mib}), flush=True)
    """
)


def _struct_tree(tree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def test_hostile_files_raise_value_error_with_peak_memory_near_a_normal_load(good, hostile_files):
    """One fresh process loads the good file (the baseline), then each hostile one; ru_maxrss after each."""
    path, (weights, state) = good
    signatures = [serialization.signature_to_json(_struct_tree(t)) for t in (weights, state)]
    loads = [("layer", str(path))] + [(kind, str(p)) for kind, p, _ in hostile_files.values()]
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(signatures), json.dumps(loads)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    baseline, *hostile = [json.loads(line) for line in result.stdout.splitlines()]
    assert baseline["outcome"] == "loaded"
    report = [f"baseline load: peak {baseline['peak_mib']:.0f} MiB"]
    for (case, (_, _, expected)), got in zip(hostile_files.items(), hostile, strict=True):
        assert got["outcome"].startswith("ValueError: ") and expected in got["outcome"], (case, got)
        report.append(f"{case}: peak {got['peak_mib']:.0f} MiB")
    print("\n" + "\n".join(report))
    assert hostile[-1]["peak_mib"] - baseline["peak_mib"] < 400, report  # ru_maxrss only grows.


# --- Random bit flips -----------------------------------------------------------------------------------------------

FLIPS = 200


def _flip(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit // 8] ^= 1 << (bit % 8)
    return bytes(flipped)


def _outcomes(load, files, saved) -> dict[str, int]:
    """How many of `files` load the saved arrays, raise ValueError, or (never) load other values."""
    counts = {"identical": 0, "ValueError": 0, "different": 0}
    for path in files:
        try:
            loaded = load(path)
        except ValueError:
            counts["ValueError"] += 1
            continue
        counts["identical" if _same(loaded, saved) else "different"] += 1
    return counts


@pytest.mark.parametrize("signed", [True, False], ids=["checksummed", "format1"])
def test_bit_flips_in_the_header_never_load_other_values(good, tmp_path, signed):
    path, saved = good
    members = _members(path)
    header = _header_bytes(_fields(path, signed), signed)
    rng = random.Random(1234)
    files = []
    for i in range(FLIPS):
        flipped = _flip(header, rng.randrange(8 * len(header)))
        files.append(_write_zip(tmp_path / f"{i}.weights", dict(members, **{"header.json": flipped})))
    counts = _outcomes(_load, files, saved)
    print(f"\nheader bit flips ({'checksummed' if signed else 'format /1'}): {counts}")
    assert counts["different"] == 0, counts
    if signed:
        assert counts["ValueError"] == FLIPS, counts  # The checksum (or JSON) catches every flip.


def _entry_region(path, name) -> tuple[int, int]:
    """(offset, size) of entry `name`'s stored bytes within the zip file."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    data = path.read_bytes()
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    return info.header_offset + 30 + name_length + extra_length, info.compress_size


def _flipped_copies(path, tmp_path, regions, seed):
    data = path.read_bytes()
    rng = random.Random(seed)
    bits = [8 * start + b for start, size in regions for b in range(8 * size)]
    files = []
    for i in range(FLIPS):
        files.append(tmp_path / f"{i}.bin")
        files[-1].write_bytes(_flip(data, rng.choice(bits)))
    return files


def test_bit_flips_in_stored_array_entries_fail_the_zip_crc(good, tmp_path):
    path, saved = good
    names = [n for n in _members(path) if n.endswith(".npy")]
    files = _flipped_copies(path, tmp_path, [_entry_region(path, n) for n in names], seed=5)
    weights_sig, state_sig = _struct_tree(saved[0]), _struct_tree(saved[1])
    counts = _outcomes(lambda p: serialization.load_layer(p, weights_sig, state_sig), files, saved)
    print(f"\nstored array bit flips: {counts}")
    assert counts == {"identical": 0, "ValueError": FLIPS, "different": 0}


def test_bit_flips_in_deflated_arrays_never_load_other_values(tmp_path):
    arrays = [np.arange(300.0).reshape(20, 15), np.arange(40, dtype=np.int8)]
    path = tmp_path / "a.npz"
    serialization.np_to_file(arrays, path)
    files = _flipped_copies(path, tmp_path, [_entry_region(path, f"arr_{i}.npy") for i in range(2)], seed=6)
    counts = _outcomes(serialization.np_from_file, files, arrays)
    print(f"\ndeflated array bit flips: {counts}")
    assert counts["different"] == 0 and counts["ValueError"] > 0.9 * FLIPS, counts


def test_bit_flips_anywhere_in_the_file_never_load_other_values(good, tmp_path):
    path, saved = good
    files = _flipped_copies(path, tmp_path, [(0, path.stat().st_size)], seed=7)
    weights_sig, state_sig = _struct_tree(saved[0]), _struct_tree(saved[1])
    counts = _outcomes(lambda p: serialization.load_layer(p, weights_sig, state_sig), files, saved)
    print(f"\nwhole-file bit flips: {counts}")
    assert counts["different"] == 0, counts
