"""PhysicalAI-AV reader over a local copy of the dataset layout (SPEC section 4).

Builds on the `physical-ai-av` devkit: its `Features` table resolves file names, its egomotion
interpolator (SLERP rotations, cubic-spline positions, no extrapolation) gives poses at any time, and
its `SeekVideoReader` decodes the last frame at or before each timestamp. The devkit's dataset class
is tied to the Hugging Face cache, so the local paths are resolved here.

A sample at keyframe t0 (microseconds on the clip timeline) holds, all in the t0 ego frame (x forward,
y left, z up): 16 history poses (t0-1.5 s ... t0), 64 future poses (t0+0.1 ... t0+6.4 s), and for each
camera `num_frames` images at t0-(num_frames-1)*0.1 s ... t0.
"""

import io
import json
import os
import pathlib
import zipfile
from collections.abc import Sequence

import av
import numpy as np
import pandas as pd
from physical_ai_av import dataset as devkit_dataset
from physical_ai_av import egomotion as devkit_egomotion
from physical_ai_av import video as devkit_video
from PIL import Image

from alpamayo_jax import geometry
from alpamayo_jax.data import pai_layout as layout

NUM_HISTORY = 16
NUM_FUTURE = 64
STEP_US = 100_000


class PaiReadError(ValueError):
    """A clip or feature that cannot be read; the message names the clip and the feature."""


def _error(clip_id: str, feature: str, what: str) -> PaiReadError:
    return PaiReadError(f"clip {clip_id}, feature {feature}: {what}")


class PaiDataset:
    """Metadata of a local dataset copy plus per-clip feature readers (no state beyond the metadata)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = pathlib.Path(root)
        for name in (layout.CLIP_INDEX_FILE, layout.FEATURES_FILE):
            if not (self.root / name).is_file():
                raise PaiReadError(f"dataset {self.root}: missing {name}.")
        features_df = pd.read_csv(self.root / layout.FEATURES_FILE, index_col="feature")
        features_df["clip_files_in_zip"] = features_df["clip_files_in_zip"].map(
            json.loads, na_action="ignore"
        )
        self.features = devkit_dataset.Features(features_df)
        self.clip_index = pd.read_parquet(self.root / layout.CLIP_INDEX_FILE)
        presence_path = self.root / layout.FEATURE_PRESENCE_FILE
        self.feature_presence = pd.read_parquet(presence_path) if presence_path.is_file() else None

    def chunk(self, clip_id: str) -> int:
        """The chunk holding `clip_id`; errors for unknown or invalid clips."""
        if clip_id not in self.clip_index.index:
            raise PaiReadError(f"clip {clip_id}: not in {self.root / layout.CLIP_INDEX_FILE}.")
        row = self.clip_index.loc[clip_id]
        if "clip_is_valid" in row and not bool(row["clip_is_valid"]):
            raise PaiReadError(f"clip {clip_id}: marked invalid in {layout.CLIP_INDEX_FILE}.")
        return int(row["chunk"])

    def has_feature(self, clip_id: str, feature: str) -> bool:
        """Whether the feature exists for the clip (feature table, presence table, chunk file)."""
        self.chunk(clip_id)
        if feature not in self.features.ALL:
            return False
        if self.feature_presence is not None and feature in self.feature_presence.columns:
            if not bool(self.feature_presence.at[clip_id, feature]):
                return False
        return self._chunk_file(clip_id, feature).is_file()

    def _chunk_file(self, clip_id: str, feature: str) -> pathlib.Path:
        if feature not in self.features.ALL:
            raise _error(clip_id, feature, f"unknown feature (not in {layout.FEATURES_FILE}).")
        return self.root / self.features.get_chunk_feature_filename(self.chunk(clip_id), feature)

    def read_member(self, clip_id: str, feature: str, alias: str) -> bytes:
        """Bytes of one clip member (e.g. alias "video") of a zipped feature."""
        path = self._chunk_file(clip_id, feature)
        if not path.is_file():
            raise _error(clip_id, feature, f"missing chunk file {path}.")
        member = self.features.get_clip_files_in_zip(clip_id, feature)[alias]
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.read(member)
        except KeyError as e:
            raise _error(clip_id, feature, f"member {member} not in {path}.") from e
        except zipfile.BadZipFile as e:
            raise _error(clip_id, feature, f"corrupt zip {path}: {e}.") from e

    def read_table(self, clip_id: str, feature: str) -> pd.DataFrame:
        """The clip's rows of a per-chunk parquet feature (calibration)."""
        path = self._chunk_file(clip_id, feature)
        if not path.is_file():
            raise _error(clip_id, feature, f"missing chunk file {path}.")
        table = pd.read_parquet(path)
        if clip_id not in table.index.get_level_values(0):
            raise _error(clip_id, feature, f"no rows in {path}.")
        return table.loc[clip_id]

    def egomotion(self, clip_id: str) -> pd.DataFrame:
        """The raw egomotion table (about 100 Hz, rig poses in the anchor frame)."""
        data = self.read_member(clip_id, layout.EGOMOTION, layout.EGOMOTION)
        df = pd.read_parquet(io.BytesIO(data))
        missing = set(layout.EGOMOTION_COLUMNS) - set(df.columns)
        if missing:
            raise _error(clip_id, layout.EGOMOTION, f"missing columns {sorted(missing)}.")
        if len(df) < 4 or np.any(np.diff(df["timestamp"].to_numpy()) <= 0):
            raise _error(clip_id, layout.EGOMOTION, "fewer than 4 rows or non-increasing timestamps.")
        return df

    def poses_at(self, clip_id: str, timestamps_us: np.ndarray) -> np.ndarray:
        """Anchor-frame rig poses T_anchor_rig [N, 4, 4] at the given times (no extrapolation)."""
        df = self.egomotion(clip_id)
        ts = df["timestamp"].to_numpy(np.int64)
        timestamps_us = np.asarray(timestamps_us, np.int64)
        if timestamps_us.min() < ts[0] or timestamps_us.max() > ts[-1]:
            raise _error(
                clip_id,
                layout.EGOMOTION,
                f"requested times [{timestamps_us.min()}, {timestamps_us.max()}] us fall outside the "
                f"egomotion range [{ts[0]}, {ts[-1]}] us (t0 too close to the clip's start or end).",
            )
        interpolator = devkit_egomotion.EgomotionState.from_egomotion_df(df).create_interpolator(ts)
        return interpolator(timestamps_us).pose.as_matrix()

    def video_reader(self, clip_id: str, camera: str) -> devkit_video.SeekVideoReader:
        """A seeking reader over the camera's MP4 with its frame timestamps."""
        data = self.read_member(clip_id, camera, "video")
        stamps = pd.read_parquet(io.BytesIO(self.read_member(clip_id, camera, "frame_timestamps")))
        timestamps = stamps["timestamp"].to_numpy(np.int64)
        try:
            reader = devkit_video.SeekVideoReader(io.BytesIO(data), timestamps)
        except (av.error.FFmpegError, ValueError, StopIteration) as e:
            raise _error(clip_id, camera, f"unreadable video: {e}") from e
        num_frames = reader.stream.frames
        if num_frames and num_frames != len(timestamps):
            raise _error(clip_id, camera, f"video has {num_frames} frames but {len(timestamps)} timestamps.")
        return reader

    def decode_frames(
        self, clip_id: str, camera: str, timestamps_us: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The last frame at or before each time: images [N, H, W, 3] uint8 and their timestamps [N]."""
        reader = self.video_reader(clip_id, camera)
        try:
            first, last = reader.timestamps[0], reader.timestamps[-1]
            if timestamps_us.min() < first or timestamps_us.max() > last:
                raise _error(
                    clip_id,
                    camera,
                    f"requested frames [{timestamps_us.min()}, {timestamps_us.max()}] us outside the video's "
                    f"[{first}, {last}] us.",
                )
            return reader.decode_images_from_timestamps(np.asarray(timestamps_us, np.int64))
        except (av.error.FFmpegError, ValueError) as e:
            if isinstance(e, PaiReadError):
                raise
            raise _error(clip_id, camera, f"corrupt video: {e}") from e
        finally:
            reader.close()

    def calibration(self, clip_id: str, cameras: Sequence[str]) -> dict[str, np.ndarray]:
        """Intrinsics and extrinsics (T_rig_cam) of the cameras, stacked in the given order."""
        intr = self.read_table(clip_id, layout.INTRINSICS)
        extr = self.read_table(clip_id, layout.EXTRINSICS)
        for cam in cameras:
            if cam not in intr.index:
                raise _error(clip_id, layout.INTRINSICS, f"no row for camera {cam}.")
            if cam not in extr.index:
                raise _error(clip_id, layout.EXTRINSICS, f"no row for camera {cam}.")
        rows = intr.loc[list(cameras)]
        models = (
            rows[layout.CAMERA_MODEL_COLUMN].tolist()
            if layout.CAMERA_MODEL_COLUMN in rows
            else [geometry.FTHETA] * len(cameras)
        )
        e = extr.loc[list(cameras)]
        return {
            "fw_poly": rows[[f"fw_poly_{i}" for i in range(5)]].to_numpy(np.float64),
            "bw_poly": rows[[f"bw_poly_{i}" for i in range(5)]].to_numpy(np.float64),
            "principal_point": rows[["cx", "cy"]].to_numpy(np.float64),
            "image_size_wh": rows[["width", "height"]].to_numpy(np.int64),
            "camera_model": np.asarray(models),
            "t_rig_cam": geometry.extrinsics_to_pose(
                e[["qx", "qy", "qz", "qw"]].to_numpy(np.float64), e[["x", "y", "z"]].to_numpy(np.float64)
            ),
        }

    def obstacles(self, clip_id: str) -> pd.DataFrame | None:
        """Obstacle cuboids (rig frame at their timestamp), or None when the clip has none."""
        if not self.has_feature(clip_id, layout.OBSTACLES):
            return None
        return pd.read_parquet(io.BytesIO(self.read_member(clip_id, layout.OBSTACLES, layout.OBSTACLES)))

    def reasoning_events(self, clip_id: str) -> list[dict]:
        """CoC events of the clip from `reasoning/ood_reasoning.parquet` ([] when absent)."""
        path = self.root / layout.REASONING_FILE
        if not path.is_file():
            return []
        table = pd.read_parquet(path)
        if clip_id not in table.index:
            return []
        return [
            {"event_start_timestamp": int(e["event_start_timestamp"]), "cot": str(e["cot"])}
            for e in table.at[clip_id, "events"]
        ]

    def load_sample(
        self,
        clip_id: str,
        t0_us: int,
        cameras: Sequence[str] = layout.DEFAULT_CAMERAS,
        num_frames: int = 4,
        image_size_hw: tuple[int, int] | None = None,
    ) -> dict[str, np.ndarray | list]:
        """One sample at keyframe `t0_us` (see the module docstring for the contents and frames)."""
        t0_us = int(t0_us)
        for cam in cameras:
            if cam not in layout.CAMERA_IDS:
                raise _error(clip_id, cam, f"unknown camera; expected one of {layout.CAMERA_NAMES}.")
            if not self.has_feature(clip_id, cam):
                raise _error(clip_id, cam, "camera not present for this clip.")
        hist_us = t0_us + STEP_US * np.arange(-(NUM_HISTORY - 1), 1)
        fut_us = t0_us + STEP_US * np.arange(1, NUM_FUTURE + 1)
        poses = self.poses_at(clip_id, np.concatenate([[t0_us], hist_us, fut_us]))
        rel = geometry.poses_in_frame(poses[0], poses[1:])
        hist, fut = rel[:NUM_HISTORY], rel[NUM_HISTORY:]
        frame_req_us = t0_us + STEP_US * np.arange(-(num_frames - 1), 1)
        images, frame_us = [], []
        for cam in cameras:
            imgs, stamps = self.decode_frames(clip_id, cam, frame_req_us)
            if image_size_hw is not None:
                imgs = resize_images(imgs, image_size_hw)
            images.append(imgs)
            frame_us.append(stamps)
        calib = self.calibration(clip_id, cameras)
        out_hw = np.array([im.shape[1:3] for im in images])
        image_scale_xy = out_hw[:, ::-1] / calib["image_size_wh"]
        return {
            "clip_id": clip_id,
            "t0_us": np.int64(t0_us),
            "images": np.stack(images),
            "camera_ids": np.array([layout.CAMERA_IDS[c] for c in cameras], np.int32),
            "camera_names": list(cameras),
            "frame_timestamps_us": np.stack(frame_us).astype(np.int64),
            "requested_frame_timestamps_us": frame_req_us.astype(np.int64),
            "ego_history_xyz": hist[:, :3, 3],
            "ego_history_rot": hist[:, :3, :3],
            "ego_future_xyz": fut[:, :3, 3],
            "ego_future_rot": fut[:, :3, :3],
            "ego_history_timestamps_us": hist_us.astype(np.int64),
            "ego_future_timestamps_us": fut_us.astype(np.int64),
            "t_anchor_ego_t0": poses[0],
            "image_scale_xy": image_scale_xy,
            **calib,
            "coc_events": self.reasoning_events(clip_id),
        }


def resize_images(images_nhw3: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of uint8 images [N, H, W, 3] to [N, h, w, 3]."""
    h, w = size_hw
    if images_nhw3.shape[1:3] == (h, w):
        return images_nhw3
    return np.stack([np.asarray(Image.fromarray(im).resize((w, h), Image.BILINEAR)) for im in images_nhw3])


def load_sample(
    root: str | os.PathLike,
    clip_id: str,
    t0_us: int,
    cameras: Sequence[str] = layout.DEFAULT_CAMERAS,
    num_frames: int = 4,
    image_size_hw: tuple[int, int] | None = None,
) -> dict[str, np.ndarray | list]:
    """One sample of `clip_id` at keyframe `t0_us` from the dataset at `root` (see `PaiDataset`).

    Keys: images [V, F, H, W, 3] uint8, camera_ids [V], frame_timestamps_us [V, F], ego_history_xyz
    [16, 3], ego_history_rot [16, 3, 3], ego_future_xyz [64, 3], ego_future_rot [64, 3, 3] (t0 ego
    frame), the matching timestamps, intrinsics (fw_poly, bw_poly [V, 5], principal_point [V, 2],
    image_size_wh [V, 2] at native resolution; image_scale_xy [V, 2] maps native to returned pixels),
    t_rig_cam [V, 4, 4], t_anchor_ego_t0 [4, 4], and coc_events.
    """
    return PaiDataset(root).load_sample(clip_id, t0_us, cameras, num_frames, image_size_hw)
