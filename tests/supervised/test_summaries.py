"""TensorBoard event files written by hand, read back with protobuf's own parser."""

import os
import struct

import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from trax_sl.supervised import summaries
from trax_sl.supervised.history import History
from trax_sl.supervised.metrics_log import MetricsLogger, ProgressLine, Scalar, format_duration, format_line


def event_class():
    """tensorflow.Event, reduced to the fields the writer uses (same numbers and types)."""
    F = descriptor_pb2.FieldDescriptorProto  # noqa: N806
    file = descriptor_pb2.FileDescriptorProto(name="event_subset.proto", package="t", syntax="proto3")

    def message(name, *fields):
        m = file.message_type.add(name=name)
        for field_name, number, kind, type_name, repeated in fields:
            m.field.add(
                name=field_name,
                number=number,
                type=kind,
                type_name=type_name,
                label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL,
            )

    message("PluginData", ("plugin_name", 1, F.TYPE_STRING, None, False))
    message("SummaryMetadata", ("plugin_data", 1, F.TYPE_MESSAGE, ".t.PluginData", False))
    message(
        "TensorProto", ("dtype", 1, F.TYPE_INT32, None, False), ("string_val", 8, F.TYPE_BYTES, None, True)
    )
    message(
        "Value",
        ("tag", 1, F.TYPE_STRING, None, False),
        ("simple_value", 2, F.TYPE_FLOAT, None, False),
        ("tensor", 8, F.TYPE_MESSAGE, ".t.TensorProto", False),
        ("metadata", 9, F.TYPE_MESSAGE, ".t.SummaryMetadata", False),
    )
    message("Summary", ("value", 1, F.TYPE_MESSAGE, ".t.Value", True))
    message("SessionLog", ("status", 1, F.TYPE_INT32, None, False))
    message(
        "Event",
        ("wall_time", 1, F.TYPE_DOUBLE, None, False),
        ("step", 2, F.TYPE_INT64, None, False),
        ("file_version", 3, F.TYPE_STRING, None, False),
        ("summary", 5, F.TYPE_MESSAGE, ".t.Summary", False),
        ("session_log", 6, F.TYPE_MESSAGE, ".t.SessionLog", False),
    )
    for m in file.message_type:
        for field in m.field:
            if not field.type_name:
                field.ClearField("type_name")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))


Event = event_class()


def read_events(path):
    """Parses TFRecord framing, checking both checksums, and each record as an Event."""
    with open(path, "rb") as f:
        data = f.read()
    events, offset = [], 0
    while offset < len(data):
        header = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[offset + 8 : offset + 12])
        body = data[offset + 12 : offset + 12 + length]
        (body_crc,) = struct.unpack("<I", data[offset + 12 + length : offset + 16 + length])
        assert length_crc == summaries.masked_crc32c(header)
        assert body_crc == summaries.masked_crc32c(body)
        events.append(Event.FromString(body))
        offset += 16 + length
    return events


def test_crc32c_known_values():
    assert summaries.crc32c(b"123456789") == 0xE3069283  # The standard check value.
    assert summaries.crc32c(b"") == 0
    assert summaries.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros.


def test_events_parse_back(tmp_path):
    writer = summaries.SummaryWriter(str(tmp_path / "train"))
    writer.scalar("metrics/loss", 2.5, step=1)
    writer.scalar("metrics/loss", -0.125, step=300)
    writer.text("gin_config", "train.steps = 3", step=1)
    writer.session_start(2)
    writer.close()
    (name,) = os.listdir(tmp_path / "train")
    assert name.startswith("events.out.tfevents.")
    first, loss1, loss300, text, restart = read_events(tmp_path / "train" / name)
    assert first.file_version == "brain.Event:2"
    assert [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in (loss1, loss300)] == [
        (1, "metrics/loss", 2.5),
        (300, "metrics/loss", -0.125),
    ]
    value = text.summary.value[0]
    assert value.tag == "gin_config" and value.metadata.plugin_data.plugin_name == "text"
    assert value.tensor.dtype == 7 and list(value.tensor.string_val) == [b"train.steps = 3"]
    assert restart.step == 2 and restart.session_log.status == 1  # START
    assert 1.5e9 < loss1.wall_time < 1e10


def test_negative_and_large_steps_encode_as_int64():
    for step in (0, 127, 128, 2**40, -1):
        event = Event.FromString(summaries.event(step, 0.0))
        assert event.step == step


def test_metrics_logger_writes_jsonl_tensorboard_and_history(tmp_path):
    lines = []
    history = History()
    logger = MetricsLogger(str(tmp_path), history, write_line=lines.append)
    scalars = [
        Scalar("train", None, "metrics", "loss", 2.0),
        Scalar("train", None, "training", "learning_rate", 0.5),
        Scalar("eval", None, "metrics", "accuracy", 0.25),
    ]
    logger.log(10, scalars)
    logger.log(20, [Scalar("eval", None, "metrics", "accuracy", 0.75)])
    logger.close()
    assert lines == ["Step 10: train/loss 2 | eval/accuracy 0.25", "Step 20: eval/accuracy 0.75"]
    rows = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert rows == [
        '{"step": 10, "train/loss": 2.0, "train/learning_rate": 0.5, "eval/accuracy": 0.25}',
        '{"step": 20, "eval/accuracy": 0.75}',
    ]
    assert history.get("eval", "metrics/accuracy") == [(10, 0.25), (20, 0.75)]
    assert history.get("train", "training/learning_rate") == [(10, 0.5)]
    (train_file,) = os.listdir(tmp_path / "train")
    events = read_events(tmp_path / "train" / train_file)[1:]
    assert [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value) for e in events] == [
        (10, "metrics/loss", 2.0),
        (10, "training/learning_rate", 0.5),
    ]

    # Resumed at step 10: later lines (and a line cut short) go; TensorBoard is told to drop later events.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3')
    resumed = MetricsLogger(str(tmp_path), History(), write_line=lines.append)
    resumed.resume_at(10)
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == rows[:1]
    resumed.log(11, [Scalar("eval", None, "metrics", "accuracy", 1.0)])
    resumed.close()
    newest = max(os.listdir(tmp_path / "eval"), key=lambda n: os.path.getmtime(tmp_path / "eval" / n))
    events = read_events(tmp_path / "eval" / newest)
    assert [(e.step, e.session_log.status) for e in events[1:]] == [(11, 1), (11, 0)]


def test_format_line_with_task_prefixes():
    scalars = [
        Scalar("train", "copy", "metrics", "loss", 1.23456),
        Scalar("train", None, "training", "steps_per_second", 99.0),
        Scalar("eval", "copy", "metrics", "loss", np.float32(0.5)),
    ]
    assert format_line(7, scalars) == "Step 7: train/copy/loss 1.235 | eval/copy/loss 0.5"
    assert [s.key for s in scalars] == ["train/copy/loss", "train/steps_per_second", "eval/copy/loss"]
    assert [s.tag for s in scalars] == ["metrics/loss", "training/steps_per_second", "metrics/loss"]


def test_format_line_ends_with_the_speed_and_mfu_where_logged():
    scalars = [
        Scalar("train", None, "metrics", "loss", 2.0),
        Scalar("train", None, "training", "tokens_per_second", 12_634.0),
        Scalar("train", None, "training", "mfu", 0.3471),
    ]
    assert format_line(9, scalars) == "Step 9: train/loss 2 | 12.6k tokens/s | MFU 34.7%"
    assert format_line(9, scalars[:2]) == "Step 9: train/loss 2 | 12.6k tokens/s"


def test_text_goes_to_the_log_as_it_is_and_to_the_text_dashboard_as_a_code_block(tmp_path):
    lines = []
    logger = MetricsLogger(str(tmp_path), History(), write_line=lines.append)
    sample = "def f(x):\n    return x  # *not* markdown"
    logger.text(300, "samples", sample)
    logger.close()
    assert lines == [sample]
    (train_file,) = os.listdir(tmp_path / "train")
    (event,) = read_events(tmp_path / "train" / train_file)[1:]
    value = event.summary.value[0]
    assert (event.step, value.tag, value.metadata.plugin_data.plugin_name) == (300, "samples", "text")
    assert list(value.tensor.string_val) == [b"    def f(x):\n        return x  # *not* markdown"]


def test_progress_line_speed_and_eta(monkeypatch):
    clock = iter([1000.0, 1010.0, 1030.0])  # Started at 1000 s; lines at 1010 s and 1030 s.
    monkeypatch.setattr("time.time", lambda: next(clock))
    progress = ProgressLine(100, 900)  # A run resumed at step 100, to stop at 900.
    loss = [Scalar("train", None, "metrics", "loss", 1.87349)]
    assert progress.line(110, loss) == "Step 110/900: train/loss 1.873 | 1 steps/s | ETA 13m10s"
    assert progress.line(150, []) == "Step 150/900: 2 steps/s | ETA 7m30s"
    assert [format_duration(s) for s in (0, 42.4, 365, 7620)] == ["0s", "42s", "6m05s", "2h07m"]


def test_history_round_trips_through_json_data():
    history = History()
    history.append("eval", "metrics/loss", 10, 1.5)
    history.append("eval", "metrics/loss", 20, 1.0)
    again = History.from_dict(history.to_dict())
    assert again.get("eval", "metrics/loss") == [(10, 1.5), (20, 1.0)]
    assert again.modes == ["eval"] and again.metrics_for_mode("eval") == ["metrics/loss"]
    assert again.get("train", "metrics/loss") == []


@pytest.mark.parametrize(
    ("value", "stored"), [(0.1, np.float32(0.1)), (float("nan"), np.nan), (1e39, np.inf), (-1e39, -np.inf)]
)
def test_scalar_values_are_float32(value, stored):
    event = Event.FromString(summaries.event(1, 0.0, values=[summaries.scalar_value("x", value)]))
    np.testing.assert_array_equal(event.summary.value[0].simple_value, stored)
