"""Lazy reading of (single or sharded) safetensors checkpoints, one tensor at a time.

The format is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
offsets), then raw little-endian data. Tensors are memory-mapped, so converting an 8B checkpoint
never holds more than one tensor in memory. bfloat16 maps to `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import ml_dtypes
import numpy as np

DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


def _read_header(path: str) -> dict[str, TensorInfo]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
    data_start = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        if meta["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        begin, end = meta["data_offsets"]
        out[name] = TensorInfo(
            path, meta["dtype"], tuple(meta["shape"]), data_start + begin, data_start + end
        )
    return out


class SafetensorsCheckpoint:
    """Name -> tensor access over `model.safetensors` or `model.safetensors.index.json` in a folder."""

    def __init__(self, directory: str):
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        elif os.path.exists(single):
            files = ["model.safetensors"]
        else:
            raise FileNotFoundError(
                f"{directory}: neither model.safetensors nor model.safetensors.index.json"
            )
        self.tensors: dict[str, TensorInfo] = {}
        for name in files:
            path = os.path.join(directory, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{directory}: shard {name} listed in the index is missing")
            self.tensors.update(_read_header(path))

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(DTYPES[self.tensors[name].dtype])

    def get(self, name: str) -> np.ndarray:
        """A read-only memory map of one tensor."""
        info = self.tensors[name]
        dtype = np.dtype(DTYPES[info.dtype])
        count = int(np.prod(info.shape)) if info.shape else 1
        if info.end - info.begin != count * dtype.itemsize:
            raise ValueError(f"{info.file}: tensor {name} byte range does not match its shape {info.shape}")
        if count == 0:
            return np.zeros(info.shape, dtype)
        return np.memmap(info.file, dtype=dtype, mode="r", offset=info.begin, shape=info.shape)
