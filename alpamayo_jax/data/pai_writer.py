"""Writes clips in the PhysicalAI-AV layout (SPEC section 4), so one reader serves real and made data.

Used by the synthetic world and by the reader tests. Every file is written under a temporary name and
renamed into place; chunk zips hold one member per clip and feature, as in the release, with fixed member
dates so that equal inputs give byte-identical files.
"""

import dataclasses
import io
import json
import os
import pathlib
import zipfile
from collections.abc import Callable, Iterable, Sequence

import av
import numpy as np
import pandas as pd

from alpamayo_jax import geometry
from alpamayo_jax.data import pai_layout as layout


@dataclasses.dataclass(frozen=True)
class CameraClip:
    """One camera of one clip: encoded video, frame times and calibration.

    `fw_poly` / `bw_poly` [5]: f-theta polynomials (for a pinhole camera fw_poly = [0, f, 0, 0, 0]);
    `rotation_33` / `translation_3`: the camera (optical frame) pose in the rig frame.
    """

    name: str
    video_mp4: bytes
    timestamps_us: np.ndarray
    width: int
    height: int
    principal_point: tuple[float, float]
    fw_poly: np.ndarray
    bw_poly: np.ndarray
    rotation_33: np.ndarray
    translation_3: np.ndarray
    model: str = geometry.FTHETA


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """Everything written for one clip. `obstacles` uses `layout.OBSTACLE_COLUMNS`; `reasoning_events`
    is a list of {"event_start_timestamp": int us, "cot": str}."""

    clip_id: str
    egomotion: pd.DataFrame
    cameras: Sequence[CameraClip]
    vehicle_dimensions: dict[str, float]
    obstacles: pd.DataFrame | None = None
    reasoning_events: Sequence[dict] | None = None
    split: str = "train"


def encode_video(frames_thw3: Iterable[np.ndarray], fps: int = 10, crf: int = 26, gop: int = 10) -> bytes:
    """Encodes uint8 RGB [H, W, 3] (or RGBX [H, W, 4]) frames to H.264 MP4 bytes (yuv420p, ultrafast,
    one thread)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = None
        for frame_hw3 in frames_thw3:
            if stream is None:
                stream = container.add_stream("libx264", rate=fps)
                stream.height, stream.width = frame_hw3.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.options = {"preset": "ultrafast", "crf": str(crf), "g": str(gop)}
                stream.codec_context.thread_count = 1
            fmt = "rgba" if frame_hw3.shape[-1] == 4 else "rgb24"
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame_hw3), format=fmt)
            for packet in stream.encode(frame):
                container.mux(packet)
        if stream is None:
            raise ValueError("encode_video: no frames given.")
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def egomotion_table(
    timestamps_us: np.ndarray,
    rotation_n33: np.ndarray,
    xyz_n3: np.ndarray,
    velocity_n3: np.ndarray,
    acceleration_n3: np.ndarray,
    curvature_n: np.ndarray,
) -> pd.DataFrame:
    """The egomotion parquet table: rig poses in the anchor frame, velocity and acceleration in the
    anchor frame (the devkit rotates them with the pose), curvature in 1/m."""
    quat = geometry.rotmat_to_quat(rotation_n33)
    cols = {"timestamp": np.asarray(timestamps_us, np.int64)}
    cols |= {k: quat[:, i] for i, k in enumerate(("qx", "qy", "qz", "qw"))}
    cols |= {k: xyz_n3[:, i] for i, k in enumerate(("x", "y", "z"))}
    cols |= {k: velocity_n3[:, i] for i, k in enumerate(("vx", "vy", "vz"))}
    cols |= {k: acceleration_n3[:, i] for i, k in enumerate(("ax", "ay", "az"))}
    cols["curvature"] = np.asarray(curvature_n, np.float64)
    return pd.DataFrame(cols)


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf)
    return buf.getvalue()


def _atomic_write(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_parquet(path: pathlib.Path, df: pd.DataFrame) -> None:
    """Writes a parquet file atomically."""
    _atomic_write(path, lambda tmp: df.to_parquet(tmp))


def write_json(path: pathlib.Path, obj: object) -> None:
    """Writes a JSON file atomically."""
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1)))


def _write_zip(path: pathlib.Path, members: dict[str, bytes]) -> None:
    def write(tmp: pathlib.Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)

    _atomic_write(path, write)


def _validate(clip: ClipRecord) -> None:
    missing = set(layout.EGOMOTION_COLUMNS) - set(clip.egomotion.columns)
    if missing:
        raise ValueError(f"Clip {clip.clip_id}: egomotion table lacks columns {sorted(missing)}.")
    if np.any(np.diff(clip.egomotion["timestamp"].to_numpy()) <= 0):
        raise ValueError(f"Clip {clip.clip_id}: egomotion timestamps are not strictly increasing.")
    for cam in clip.cameras:
        if cam.name not in layout.CAMERA_IDS:
            raise ValueError(f"Clip {clip.clip_id}: unknown camera {cam.name!r}.")
        if np.any(np.diff(cam.timestamps_us) <= 0):
            raise ValueError(
                f"Clip {clip.clip_id}, {cam.name}: frame timestamps are not strictly increasing."
            )
    if clip.obstacles is not None:
        missing = set(layout.OBSTACLE_COLUMNS) - set(clip.obstacles.columns)
        if missing:
            raise ValueError(f"Clip {clip.clip_id}: obstacle table lacks columns {sorted(missing)}.")
    missing = set(layout.VEHICLE_DIMENSIONS_COLUMNS) - set(clip.vehicle_dimensions)
    if missing:
        raise ValueError(f"Clip {clip.clip_id}: vehicle dimensions lack {sorted(missing)}.")


def _intrinsics_row(clip_id: str, cam: CameraClip) -> dict:
    row = {"clip_id": clip_id, "camera_name": cam.name, "width": cam.width, "height": cam.height}
    row |= {"cx": float(cam.principal_point[0]), "cy": float(cam.principal_point[1])}
    row |= {f"bw_poly_{i}": float(cam.bw_poly[i]) for i in range(5)}
    row |= {f"fw_poly_{i}": float(cam.fw_poly[i]) for i in range(5)}
    row[layout.CAMERA_MODEL_COLUMN] = cam.model
    return row


def _extrinsics_row(clip_id: str, cam: CameraClip) -> dict:
    q = geometry.rotmat_to_quat(cam.rotation_33)
    row = {"clip_id": clip_id, "sensor_name": cam.name}
    row |= {k: float(q[i]) for i, k in enumerate(("qx", "qy", "qz", "qw"))}
    row |= {k: float(cam.translation_3[i]) for i, k in enumerate(("x", "y", "z"))}
    return row


def _member(features: pd.DataFrame, feature: str, alias: str, clip_id: str) -> str:
    return json.loads(features.at[feature, "clip_files_in_zip"])[alias].format(clip_id=clip_id)


def _chunk_path(root: pathlib.Path, features: pd.DataFrame, feature: str, chunk: int) -> pathlib.Path:
    return root / features.at[feature, "chunk_path"].format(chunk_id=chunk)


def _write_chunk(root: pathlib.Path, chunk: int, clips: list[ClipRecord], features: pd.DataFrame) -> None:
    zips: dict[str, dict[str, bytes]] = {}
    intrinsics, extrinsics, dims = [], [], []
    for clip in clips:
        cid = clip.clip_id
        zips.setdefault(layout.EGOMOTION, {})[_member(features, layout.EGOMOTION, layout.EGOMOTION, cid)] = (
            _parquet_bytes(clip.egomotion[list(layout.EGOMOTION_COLUMNS)])
        )
        if clip.obstacles is not None:
            member = _member(features, layout.OBSTACLES, layout.OBSTACLES, cid)
            zips.setdefault(layout.OBSTACLES, {})[member] = _parquet_bytes(clip.obstacles)
        for cam in clip.cameras:
            members = zips.setdefault(cam.name, {})
            members[_member(features, cam.name, "video", cid)] = cam.video_mp4
            timestamps = pd.DataFrame({"timestamp": np.asarray(cam.timestamps_us, np.int64)})
            members[_member(features, cam.name, "frame_timestamps", cid)] = _parquet_bytes(timestamps)
            intrinsics.append(_intrinsics_row(cid, cam))
            extrinsics.append(_extrinsics_row(cid, cam))
        dims.append(
            {"clip_id": cid}
            | {k: float(clip.vehicle_dimensions[k]) for k in layout.VEHICLE_DIMENSIONS_COLUMNS}
        )
    for feature, members in zips.items():
        _write_zip(_chunk_path(root, features, feature, chunk), members)
    tables = {
        layout.INTRINSICS: pd.DataFrame(intrinsics).set_index(["clip_id", "camera_name"]),
        layout.EXTRINSICS: pd.DataFrame(extrinsics).set_index(["clip_id", "sensor_name"]),
        layout.VEHICLE_DIMENSIONS: pd.DataFrame(dims).set_index("clip_id"),
    }
    for feature, table in tables.items():
        write_parquet(_chunk_path(root, features, feature, chunk), table)


def _presence_row(clip: ClipRecord) -> dict:
    row = {name: False for name in layout.CAMERA_NAMES}
    row |= {cam.name: True for cam in clip.cameras}
    row |= {layout.EGOMOTION: True, layout.OBSTACLES: clip.obstacles is not None}
    row |= {layout.INTRINSICS: True, layout.EXTRINSICS: True, layout.VEHICLE_DIMENSIONS: True}
    return row


def write_dataset(
    root: str | os.PathLike,
    clips: Iterable[ClipRecord],
    clips_per_chunk: int = 100,
    on_clip: Callable[[ClipRecord], None] | None = None,
) -> pd.DataFrame:
    """Writes clips (consumed lazily, one chunk in memory at a time) as a dataset under `root`.

    Files of the same name are replaced. Returns the clip index (index clip_id: clip_is_valid, chunk,
    split). `on_clip` is called after each clip is taken in (e.g. to advance a progress bar).
    """
    root = pathlib.Path(root)
    features = layout.features_table().set_index("feature")
    index_rows, presence, reasoning = [], [], []
    pending: list[ClipRecord] = []
    seen: set[str] = set()

    for clip in clips:
        _validate(clip)
        if clip.clip_id in seen:
            raise ValueError(f"Clip {clip.clip_id} given twice.")
        seen.add(clip.clip_id)
        chunk = len(index_rows) // clips_per_chunk
        index_rows.append(
            {"clip_id": clip.clip_id, "clip_is_valid": True, "chunk": chunk, "split": clip.split}
        )
        presence.append({"clip_id": clip.clip_id} | _presence_row(clip))
        if clip.reasoning_events:
            reasoning.append({"clip_id": clip.clip_id, "events": [dict(e) for e in clip.reasoning_events]})
        pending.append(clip)
        if on_clip is not None:
            on_clip(clip)
        if len(pending) == clips_per_chunk:
            _write_chunk(root, chunk, pending, features)
            pending = []
    if pending:
        _write_chunk(root, index_rows[-1]["chunk"], pending, features)
    if not index_rows:
        raise ValueError(f"write_dataset({root}): no clips given.")
    clip_index = pd.DataFrame(index_rows).set_index("clip_id")
    write_parquet(root / layout.CLIP_INDEX_FILE, clip_index)
    write_parquet(root / layout.FEATURE_PRESENCE_FILE, pd.DataFrame(presence).set_index("clip_id"))
    _atomic_write(root / layout.FEATURES_FILE, lambda tmp: layout.features_table().to_csv(tmp, index=False))
    if reasoning:
        write_parquet(root / layout.REASONING_FILE, pd.DataFrame(reasoning).set_index("clip_id"))
    return clip_index
