"""Metric writers of process 0: JSONL and TensorBoard event files, with no TensorFlow dependency.

TensorBoard reads TFRecord files of `Event` protos; both formats are small enough to write by hand
(length + masked CRC-32C framing; protobuf wire format for Event{wall_time, step, summary{value{tag,
simple_value}}}), which keeps TensorFlow (1.4 GB) and tensorboardX out of the requirements.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from typing import Any

_CRC_TABLE = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC_TABLE.append(_c)
_CRC_TABLE = tuple(_CRC_TABLE)


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as TFRecord framing uses."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def event_proto(
    wall_time: float, step: int, scalars: dict[str, float] | None = None, version: str = ""
) -> bytes:
    """A serialised `tensorflow.Event` with scalar summaries (or the file-version header)."""
    out = b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step)
    if version:
        out += _field(3, version.encode())
    if scalars:
        values = b"".join(
            _field(1, _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        out += _field(5, values)
    return out


class EventWriter:
    """Appends scalar summaries to `<logdir>/events.out.tfevents.<time>.<host>`."""

    def __init__(self, logdir: str):
        os.makedirs(logdir, exist_ok=True)
        self.path = os.path.join(logdir, f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}")
        with open(self.path, "ab") as f:
            f.write(tfrecord(event_proto(time.time(), 0, version="brain.Event:2")))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        with open(self.path, "ab") as f:
            f.write(tfrecord(event_proto(time.time(), step, scalars)))


class MetricWriter:
    """One JSON object per line in `metrics.jsonl` plus TensorBoard scalars in `tensorboard/`; both
    only on process 0 (the caller passes `enabled=jax.process_index() == 0`)."""

    def __init__(self, workdir: str, enabled: bool):
        self.enabled = enabled
        self.jsonl = os.path.join(workdir, "metrics.jsonl")
        self.events = EventWriter(os.path.join(workdir, "tensorboard")) if enabled else None

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        self.events.write(step, {k: float(v) for k, v in values.items() if k != "step"})
