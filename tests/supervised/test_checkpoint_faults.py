"""Hostile and damaged checkpoints: each kind ends in a fallback with a warning or one CheckpointError.

Reading a checkpoint checks before it allocates (metadata checksum and schema,
then what the array files declare against the model) and checks after it
reads (each array's fingerprint), so no file can make the trainer allocate
more than the model's own size, crash with another exception, or load
different values silently. The killed-process, full-disk, two-trainer and
signal cases run through the trainer in tests/test_trainer_cli.py,
test_dir_lock.py and test_preemption.py.
"""

import hashlib
import json
import logging
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
import tensorstore as ts

import trax_sl
from trax_sl.supervised import checkpoints

from .test_checkpoints import checkpoint_of, restore_from, save_all

REPO = os.path.dirname(os.path.dirname(os.path.abspath(trax_sl.__file__)))


def item_store(checkpoint_dir, item):
    """The key-value store (OCDBT) holding an item's array files, to damage them as an attacker would."""
    return ts.KvStore.open({"driver": "ocdbt", "base": f"file://{checkpoint_dir / item}/"}).result()


def first_array_keys(store):
    """(metadata key, chunk key) of the first array in an item's store."""
    keys = sorted(key.decode() for key in store.list().result())
    zarray = next(key for key in keys if key.endswith("/.zarray"))
    chunk = next(key for key in keys if key.startswith(zarray[: -len(".zarray")]) and key != zarray)
    return zarray, chunk


def zstd_rle_frame(n_bytes: int, declare_size: bool) -> bytes:
    """A valid zstd frame of `n_bytes` zeros in 4-byte RLE blocks: 1 GiB from 32 KB (a decompression bomb)."""
    block = 1 << 17
    frame = bytearray(struct.pack("<I", 0xFD2FB528))
    frame += bytes([0xC0 if declare_size else 0x00, 0x38])  # Content size given or not; 128 KiB window.
    if declare_size:
        frame += struct.pack("<Q", n_bytes)
    left = n_bytes
    while left:
        size = min(block, left)
        left -= size
        frame += ((size << 3) | (1 << 1) | (left == 0)).to_bytes(3, "little") + b"\0"
    return bytes(frame)


def rewrite_meta(checkpoint_dir, change, fix_checksum=True):
    path = checkpoint_dir / "meta" / "metadata"
    meta = json.loads(path.read_text())
    change(meta["content"])
    if fix_checksum:  # As an attacker who knows the format would.
        text = json.dumps(meta["content"], sort_keys=True, separators=(",", ":"))
        meta["sha256"] = hashlib.sha256(text.encode()).hexdigest()
    path.write_text(json.dumps(meta))


def set_zarray(checkpoint_dir, **fields):
    store = item_store(checkpoint_dir, "model")
    key, _ = first_array_keys(store)
    metadata = json.loads(bytes(store.read(key).result().value))
    metadata.update(fields)
    store.write(key, json.dumps(metadata).encode()).result()


def replace_chunk(checkpoint_dir, data: bytes):
    store = item_store(checkpoint_dir, "model")
    _, key = first_array_keys(store)
    store.write(key, data).result()


def truncate_data_files(checkpoint_dir):
    for path in (checkpoint_dir / "model").rglob("d/*"):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


DAMAGES = {
    # What the array files declare, checked against the model before anything is read.
    "array declares 10^12 elements": (
        lambda d: set_zarray(d, shape=[10**12], chunks=[10**12]),
        r"declared float32\[1000000000000\] in the files",
    ),
    "array declares chunks larger than itself": (
        lambda d: set_zarray(d, chunks=[10**6, 10**6]),
        r"declares chunks \[1000000, 1000000\] larger than its shape \[2, 3\]",
    ),
    "array declares another dtype": (lambda d: set_zarray(d, dtype="<f8"), r"declared float64\[2, 3\]"),
    "array metadata is not JSON": (
        lambda d: item_store(d, "model").write(first_array_keys(item_store(d, "model"))[0], b"{").result(),
        "unreadable array metadata",
    ),
    # Array data: decompression is bounded by the declared (checked) size; fingerprints catch the rest.
    "zstd bomb, size declared": (
        lambda d: replace_chunk(d, zstd_rle_frame(1 << 30, True)),
        "unreadable arrays",
    ),
    "zstd bomb, size not declared": (
        lambda d: replace_chunk(d, zstd_rle_frame(1 << 30, False)),
        "unreadable arrays",
    ),
    "chunk of other values": (
        lambda d: replace_chunk(d, zstd_rle_frame(24, True)),  # Zeros where ones were: valid, wrong.
        r"array \[0\]\[0\]\[0\] fails its checksum",
    ),
    "data files truncated": (truncate_data_files, "model: unreadable array"),
    "array files deleted": (lambda d: shutil.rmtree(d / "model"), "model"),
    "tree metadata is garbage": (lambda d: (d / "model" / "_METADATA").write_text("]["), "model"),
    "manifest is garbage": (lambda d: (d / "model" / "manifest.ocdbt").write_bytes(b"\0" * 64), "model"),
    # The metadata: checksummed, then every field's type checked.
    "step is 'forty'": (
        lambda d: rewrite_meta(d, lambda c: c.update(step="forty")),
        "field 'step' should be int, got str",
    ),
    "a key is missing": (
        lambda d: rewrite_meta(d, lambda c: c.pop("arrays")),
        "field 'arrays' should be dict, got NoneType",
    ),
    "dtypes of the wrong type": (
        lambda d: rewrite_meta(d, lambda c: c["arrays"].update(model=[1, 2])),
        "field 'arrays' should map 'model' and 'trainer' to tables",
    ),
    "edited without its checksum": (
        lambda d: rewrite_meta(d, lambda c: c.update(step=2000), fix_checksum=False),
        "metadata checksum mismatch",
    ),
    "metadata is not JSON": (
        lambda d: (d / "meta" / "metadata").write_text("{not json"),
        "unreadable metadata",
    ),
    "metadata of another format": (
        lambda d: (d / "meta" / "metadata").write_text('{"format": "trax_sl.checkpoint/1"}'),
        "expected metadata format trax_sl.checkpoint/2",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_with_a_warning(tmp_path, caplog, kind):
    damage, message = DAMAGES[kind]
    save_all(tmp_path, [1, 2])
    damage(tmp_path / "step_00000002")
    with caplog.at_level(logging.WARNING):
        restored = restore_from(tmp_path)
    assert restored.step == 1
    jax.tree.map(np.testing.assert_array_equal, restored.model_weights, checkpoint_of(1).model_weights)
    warnings = [r.getMessage() for r in caplog.records if "is unusable" in r.getMessage()]
    assert len(warnings) == 1 and "step_00000002 is unusable" in warnings[0]
    assert "\n" not in warnings[0]
    assert re.search(message, warnings[0]), warnings[0]


def test_when_every_checkpoint_is_damaged_one_checkpoint_error_names_each(tmp_path):
    save_all(tmp_path, [1, 2])
    set_zarray(tmp_path / "step_00000002", shape=[10**12], chunks=[10**12])
    rewrite_meta(tmp_path / "step_00000001", lambda c: c.update(step="forty"))
    with pytest.raises(checkpoints.CheckpointError) as error:
        restore_from(tmp_path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"No usable checkpoint in {tmp_path}")
    assert "step_00000002/model: array [0][0][0] is declared float32[1000000000000]" in message
    assert "step_00000001: metadata field 'step' should be int" in message


def test_random_bit_flips_never_load_other_values(tmp_path):
    """100 single-bit flips anywhere in the newest checkpoint: each loads identical arrays or falls back."""
    save_all(tmp_path / "saved", [1, 2])
    newest = tmp_path / "saved" / "step_00000002"
    files = sorted(p for p in newest.rglob("*") if p.is_file() and p.stat().st_size)
    rng = random.Random(0)
    outcomes = {"identical": 0, "fell back": 0}
    for _ in range(100):
        shutil.copytree(tmp_path / "saved", tmp_path / "flipped")
        target = tmp_path / "flipped" / rng.choice(files).relative_to(tmp_path / "saved")
        data = bytearray(target.read_bytes())
        bit = rng.randrange(8 * len(data))
        data[bit // 8] ^= 1 << (bit % 8)
        target.write_bytes(bytes(data))
        restored = restore_from(tmp_path / "flipped")
        if restored.step == 2:
            for got, saved in (
                (restored.model_weights, checkpoint_of(2, 2.0).model_weights),
                (restored.trainer, checkpoint_of(2, 2.0).trainer),
            ):
                jax.tree.map(np.testing.assert_array_equal, got, saved)
            outcomes["identical"] += 1
        else:
            assert restored.step == 1
            outcomes["fell back"] += 1
        shutil.rmtree(tmp_path / "flipped")
    assert outcomes["fell back"] > 20, outcomes  # The flips did reach what matters.


PEAK_MEMORY = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, {repo!r})
    from tests.supervised.test_checkpoints import restore_from
    restored = restore_from({directory!r})
    print(restored.step, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """
)


def peak_memory_mb(directory):
    """(step restored, peak RSS in MB) of a fresh process that restores the newest usable checkpoint."""
    result = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY.format(repo=REPO, directory=str(directory))],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    step, megabytes = result.stdout.split()
    return int(step), int(megabytes)


def test_hostile_sizes_cost_no_more_memory_than_an_intact_checkpoint(tmp_path):
    """A declared 10^12-element array (3.6 TiB) and a 1 GiB zstd bomb: the reader stays at the model's size."""
    for name in ("intact", "huge_header", "bomb"):
        save_all(tmp_path / name, [1, 2])
    set_zarray(tmp_path / "huge_header" / "step_00000002", shape=[10**12], chunks=[10**12])
    replace_chunk(tmp_path / "bomb" / "step_00000002", zstd_rle_frame(1 << 30, True))
    step, intact = peak_memory_mb(tmp_path / "intact")
    assert step == 2
    for name in ("huge_header", "bomb"):
        step, peak = peak_memory_mb(tmp_path / name)
        assert step == 1  # Fell back.
        assert peak < intact + 64, (name, peak, intact)
