"""A `ClipSource` over a local PhysicalAI-AV layout (real or synthetic) for the CoC labelling run."""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alpamayo_jax import geometry
from alpamayo_jax.coc.pipeline import Egomotion
from alpamayo_jax.coc.scenarios import ObstacleTrack
from alpamayo_jax.data import pai_layout as layout
from alpamayo_jax.data import synthetic
from alpamayo_jax.data.pai import PaiDataset

TICK_US = 100_000


class PaiClipSource:
    """Egomotion at 10 Hz, frames, obstacle tracks and (synthetic clips) ground truth of each clip."""

    def __init__(self, root: str | pathlib.Path, cameras: Sequence[str] = layout.DEFAULT_CAMERAS):
        self.root = pathlib.Path(root)
        self.dataset = PaiDataset(self.root)
        self.cameras = tuple(cameras)

    def list_clips(self) -> list[str]:
        index = self.dataset.clip_index
        if "clip_is_valid" in index:
            index = index[index["clip_is_valid"].astype(bool)]
        return [str(c) for c in index.index]

    def egomotion(self, clip_id: str) -> Egomotion:
        """Rig poses resampled at 10 Hz over the whole clip; speed and acceleration along the heading
        from central differences of the positions (independent of the velocity columns' frame)."""
        raw = self.dataset.egomotion(clip_id)["timestamp"].to_numpy(np.int64)
        t_us = np.arange(raw[0], raw[-1] + 1, TICK_US, dtype=np.int64)
        poses = self.dataset.poses_at(clip_id, t_us)
        xy = poses[:, :2, 3]
        yaw = np.unwrap(geometry.rotmat_to_yaw(poses[:, :3, :3]))
        heading = np.stack([np.cos(yaw), np.sin(yaw)], -1)
        dt = TICK_US / 1e6
        speed = np.sum(np.gradient(xy, dt, axis=0) * heading, axis=-1)
        accel = np.gradient(speed, dt)
        return Egomotion(t_us=t_us, xy=xy, yaw=yaw, speed=speed, accel=accel)

    def frames(self, clip_id: str, t_us: np.ndarray) -> dict[str, np.ndarray]:
        return {
            cam: self.dataset.decode_frames(clip_id, cam, np.asarray(t_us, np.int64))[0]
            for cam in self.cameras
        }

    def obstacles(self, clip_id: str) -> list[ObstacleTrack]:
        """Tracks with centres in the ego rig frame at each time and their own speed (from anchor-frame
        positions, so the ego's motion is not counted)."""
        table = self.dataset.obstacles(clip_id)
        if table is None or table.empty:
            return []
        tracks = []
        for track_id, rows in table.sort_values("timestamp_us").groupby("track_id", sort=True):
            t = rows["timestamp_us"].to_numpy(np.int64)
            xy_rig = rows[["center_x", "center_y"]].to_numpy(np.float64)
            poses = self.dataset.poses_at(clip_id, np.clip(t, *self._ego_range(clip_id)))
            xyz_rig = np.concatenate([xy_rig, rows[["center_z"]].to_numpy(np.float64)], -1)
            xy_anchor = geometry.transform_points(poses, xyz_rig[:, None, :])[:, 0, :2]
            if len(t) > 1:
                speed = np.linalg.norm(np.gradient(xy_anchor, t / 1e6, axis=0), axis=-1)
            else:
                speed = np.zeros(1)
            tracks.append(ObstacleTrack(str(track_id), str(rows["label_class"].iloc[0]), t, xy_rig, speed))
        return tracks

    def _ego_range(self, clip_id: str) -> tuple[int, int]:
        ts = self.dataset.egomotion(clip_id)["timestamp"].to_numpy(np.int64)
        return int(ts[0]), int(ts[-1])

    def ground_truth(self, clip_id: str) -> Mapping[str, Any] | None:
        if not (self.root / synthetic.GT_DIR / f"{clip_id}.json").is_file():
            return None
        return synthetic.read_ground_truth(self.root, clip_id)
