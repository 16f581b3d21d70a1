"""TF-free TensorBoard event files: CRC-32C, TFRecord framing and the Event protobuf bytes."""

import json
import struct

import pytest

from alpamayo_jax.train import metrics


def read_records(path):
    data = open(path, "rb").read()
    records, i = [], 0
    while i < len(data):
        (length,) = struct.unpack("<Q", data[i : i + 8])
        assert struct.unpack("<I", data[i + 8 : i + 12])[0] == metrics.masked_crc(data[i : i + 8])
        payload = data[i + 12 : i + 12 + length]
        assert struct.unpack("<I", data[i + 12 + length : i + 16 + length])[0] == metrics.masked_crc(payload)
        records.append(payload)
        i += 16 + length
    return records


def test_crc32c_known_vector():
    assert metrics.crc32c(b"123456789") == 0xE3069283
    assert metrics.crc32c(b"") == 0


def test_event_bytes_follow_the_protobuf_wire_format():
    ev = metrics.event_proto(1.5, 300, {"loss": 0.25})
    # wall_time (field 1, fixed64), step (field 2, varint 300: ac 02), summary (5) > value > tag, value
    value = b"\x0a\x04loss" + b"\x15" + struct.pack("<f", 0.25)
    assert ev == b"\x09" + struct.pack("<d", 1.5) + b"\x10\xac\x02" + b"\x2a\x0d" + b"\x0a\x0b" + value


def test_metric_writer_writes_jsonl_and_events(tmp_path):
    w = metrics.MetricWriter(str(tmp_path), enabled=True)
    w.write(1, {"loss": 2.0, "grad_norm": 0.5})
    w.write(2, {"loss": 1.0})
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 1, "loss": 2.0, "grad_norm": 0.5}, {"step": 2, "loss": 1.0}]
    records = read_records(w.events.path)
    assert len(records) == 3 and b"brain.Event:2" in records[0]
    assert records[2].endswith(b"\x0a\x04loss\x15" + struct.pack("<f", 1.0))
    off = metrics.MetricWriter(str(tmp_path / "other"), enabled=False)
    off.write(1, {"loss": 1.0})
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("n", [0, 1, 127, 128, 300, 2**40])
def test_varint_round_trip(n):
    raw, value, shift = metrics._varint(n), 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift += 7
    assert value == n and raw[-1] < 0x80
