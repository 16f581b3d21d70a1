"""Atomic, resumable outputs of a labelling run.

Next to the public-shape parquet `OUT` (index clip_id, column events = list of {event_start_timestamp,
cot}, as PhysicalAI-AV `reasoning/ood_reasoning.parquet`) live `OUT.records.jsonl` (one line per clip:
every keyframe's full structured record or rejection) and `OUT.summary.json`. The JSONL is appended and
fsynced per clip, so a killed run resumes from it; the parquet and the summary are rewritten atomically.
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

EVENTS_TYPE = pa.list_(pa.struct([("event_start_timestamp", pa.int64()), ("cot", pa.string())]))


def sidecar_paths(out: Path) -> tuple[Path, Path]:
    """(records JSONL, summary JSON) for the parquet path `out`."""
    return out.with_name(out.name + ".records.jsonl"), out.with_name(out.name + ".summary.json")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_clip_lines(path: Path) -> list[dict]:
    """Clip lines of a records JSONL. A torn last line (a run killed mid-write) is cut off the file so
    that its clip is labelled again; a bad line elsewhere is an error naming its line number."""
    if not path.exists():
        return []
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                with open(path, "r+b") as f:
                    f.truncate(len(raw) - len(line))
                break
            raise ValueError(f"{path}: line {i + 1} is not valid JSON: {e}") from e
    for i, item in enumerate(out):
        if "clip_id" not in item or "results" not in item:
            raise ValueError(f"{path}: line {i + 1} lacks clip_id or results")
    return out


def append_clip_line(path: Path, line: dict) -> None:
    with open(path, "ab") as f:
        f.write((json.dumps(line, sort_keys=True) + "\n").encode())
        f.flush()
        os.fsync(f.fileno())


def events_table(clip_lines: Iterable[dict]) -> pa.Table:
    """Public-shape table of the accepted records: one row per clip with at least one."""
    ids, events = [], []
    for line in clip_lines:
        accepted = sorted(
            (r["record"] for r in line["results"] if r["record"] is not None), key=lambda r: r["keyframe_us"]
        )
        if accepted:
            ids.append(line["clip_id"])
            events.append([{"event_start_timestamp": r["keyframe_us"], "cot": r["trace"]} for r in accepted])
    index = pd.Index(ids, name="clip_id", dtype=object)
    df = pd.DataFrame({"events": pd.Series(events, index=index, dtype=object)})
    schema = pa.schema([("events", EVENTS_TYPE), ("clip_id", pa.string())])
    return pa.Table.from_pandas(df, schema=schema, preserve_index=True)


def write_events_parquet(path: Path, clip_lines: Iterable[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(events_table(clip_lines), tmp)
    os.replace(tmp, path)
