"""TensorBoard event files without TensorFlow: Trax's `jaxboard.SummaryWriter`, written by hand.

An event file is a sequence of records, each framed as TFRecord does::

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little endian), whose data is a serialized `tensorflow.Event` protocol
buffer. The few fields used here are encoded directly:

    Event:        wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
                  summary = 5 (Summary), session_log = 6 (SessionLog)
    Summary:      value = 1 (repeated Value)
    Value:        tag = 1 (string), simple_value = 2 (float), tensor = 8 (TensorProto),
                  metadata = 9 (SummaryMetadata)
    SessionLog:   status = 1 (enum; START = 1)

Scalars are `simple_value`s, which TensorBoard's scalar dashboard reads;
text (the gin config, samples of a model) is a string tensor tagged for the
text plugin, which renders it as markdown.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import struct
import time

_CRC32C_POLYNOMIAL = 0x82F63B78  # Castagnoli, bit-reversed.


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLYNOMIAL if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) checksum of `data`, as TFRecord uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked checksum: the CRC rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """`data` framed as one TFRecord: length, its checksum, data, its checksum."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


# --- Protocol buffer wire format (only what Event needs) ---------------------------------------


def _varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement, as protobuf encodes negative numbers.
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _double_field(field: int, value: float) -> bytes:
    return _key(field, 1) + struct.pack("<d", value)


def _float_field(field: int, value: float) -> bytes:
    try:
        packed = struct.pack("<f", value)
    except OverflowError:  # Beyond float32: infinite, as a cast would make it.
        packed = struct.pack("<f", math.copysign(math.inf, value))
    return _key(field, 5) + packed


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


_file_numbers = itertools.count()  # Unique names for the writers of one process.
_DT_STRING = 7
_SESSION_START = 1


def scalar_value(tag: str, value: float) -> bytes:
    """A `Summary.Value` holding a scalar."""
    return _bytes_field(1, tag.encode()) + _float_field(2, float(value))


def text_value(tag: str, text: str) -> bytes:
    """A `Summary.Value` holding a string tensor for TensorBoard's text plugin."""
    tensor = _int_field(1, _DT_STRING) + _bytes_field(2, b"") + _bytes_field(8, text.encode())
    metadata = _bytes_field(1, _bytes_field(1, b"text"))  # plugin_data { plugin_name: "text" }
    return _bytes_field(1, tag.encode()) + _bytes_field(8, tensor) + _bytes_field(9, metadata)


def event(step: int, wall_time: float, *, file_version: str | None = None, values=(), session_start=False):
    """A serialized `Event` with the given fields (summary values already encoded)."""
    data = _double_field(1, wall_time) + _int_field(2, step)
    if file_version is not None:
        data += _bytes_field(3, file_version.encode())
    if values:
        data += _bytes_field(5, b"".join(_bytes_field(1, v) for v in values))
    if session_start:
        data += _bytes_field(6, _int_field(1, _SESSION_START))
    return data


class SummaryWriter:
    """Writes scalars and text to a TensorBoard event file in `log_dir` (Trax's jaxboard API).

    Each writer starts its own file (`events.out.tfevents.<time>.<host>.<pid>.<n>`),
    so a restarted run adds a file beside the old ones.
    """

    def __init__(self, log_dir: str):
        os.makedirs(log_dir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{next(_file_numbers)}"
        self._path = os.path.join(log_dir, name)
        self._file = open(self._path, "ab")  # noqa: SIM115 (closed by close())
        self._write(event(0, time.time(), file_version="brain.Event:2"))

    @property
    def path(self) -> str:
        """The event file written to."""
        return self._path

    def _write(self, data: bytes) -> None:
        self._file.write(frame_record(data))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Records the scalar `value` under `tag` at `step`."""
        self._write(event(step, time.time(), values=[scalar_value(tag, value)]))

    def text(self, tag: str, textdata: str, step: int = 0) -> None:
        """Records `textdata` (markdown) under `tag` at `step`."""
        self._write(event(step, time.time(), values=[text_value(tag, textdata)]))

    def session_start(self, step: int) -> None:
        """Marks a restart: TensorBoard drops the old events at `step` and after (written before the restart)."""
        self._write(event(step, time.time(), session_start=True))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def preformatted(text: str) -> str:
    """`text` as a markdown code block (each line indented), so the text dashboard shows it as it is."""
    return "\n".join("    " + line for line in text.splitlines())


def markdownify_operative_config_str(config: str) -> str:
    """The gin config as a markdown code block, for the text dashboard (Trax's name)."""
    return preformatted(config)
