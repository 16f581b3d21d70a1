"""A calibrated synthetic camera rig and cheap procedural views through it (fake batches, benchmarks).

The triplane tokenizer lifts image features through the cameras' calibration, and its rendering
pre-training reconstructs the views from rays of the same cameras, so fake frames must agree with
their calibration: each view is a ground checkerboard (random square size, phase and colours per
sample, sliding back as the ego drives forward frame by frame) under a sky gradient, ray-traced
through the synthetic rig's real f-theta or pinhole models.
"""

from __future__ import annotations

import numpy as np

from alpamayo_jax import geometry
from alpamayo_jax.data import pai_layout, synthetic_render
from alpamayo_jax.models.triplane import Cameras

# The release model's cameras first, then the rest of the rig.
RIG_ORDER = pai_layout.DEFAULT_CAMERAS + tuple(
    n for n in pai_layout.CAMERA_NAMES if n not in pai_layout.DEFAULT_CAMERAS
)
FRAME_DT_S = 0.1


def rig_specs(
    num_cameras: int, image_hw: tuple[int, int], model: str = geometry.FTHETA
) -> list[synthetic_render.CameraSpec]:
    """The first `num_cameras` of `RIG_ORDER`, calibrated at `image_hw` (height, width)."""
    if not 0 < num_cameras <= len(RIG_ORDER):
        raise ValueError(f"the synthetic rig has 1 to {len(RIG_ORDER)} cameras, asked for {num_cameras}")
    h, w = image_hw
    return [synthetic_render.make_camera(n, w, h, model) for n in RIG_ORDER[:num_cameras]]


def cameras_of(specs: list[synthetic_render.CameraSpec]) -> Cameras:
    """The rig as (NumPy, float32) `Cameras` of one sample: `[V, ...]` leaves."""
    return Cameras(
        fw_poly_bvk=np.stack([s.fw_poly for s in specs]).astype(np.float32),
        bw_poly_bvk=np.stack([s.bw_poly for s in specs]).astype(np.float32),
        principal_point_bv2=np.stack([s.principal_point for s in specs]).astype(np.float32),
        size_bv2=np.array([[s.width, s.height] for s in specs], np.float32),
        t_rig_cam_bv44=np.stack([geometry.pose_matrix(s.rotation_33, s.translation_3) for s in specs]).astype(
            np.float32
        ),
    )


def procedural_views(
    rng: np.random.Generator, specs: list[synthetic_render.CameraSpec], num_frames: int
) -> np.ndarray:
    """uint8 frames `[T, V, H, W, 3]` of one random scene, oldest frame first."""
    square = rng.uniform(2.0, 8.0)
    phase = rng.uniform(0.0, 2 * square, 2)
    dark, light = rng.uniform(0.1, 0.45, 3), rng.uniform(0.55, 0.95, 3)
    speed = rng.uniform(0.0, 15.0)
    rays = []
    for s in specs:
        v, u = np.mgrid[0 : s.height, 0 : s.width]
        uv = np.stack([u + 0.5, v + 0.5], -1).reshape(-1, 2)
        rays.append(geometry.unproject_np(uv, s.bw_poly, s.principal_point, s.model) @ s.rotation_33.T)
    frames = np.zeros((num_frames, len(specs), specs[0].height, specs[0].width, 3), np.float64)
    for t in range(num_frames):
        shift = np.array([speed * FRAME_DT_S * (num_frames - 1 - t), 0.0])  # ego behind t0 by this
        for i, (s, r) in enumerate(zip(specs, rays, strict=True)):
            down = r[:, 2] < -1e-3
            depth = np.where(down, -s.translation_3[2] / np.minimum(r[:, 2], -1e-3), 0.0)
            hit = s.translation_3[:2] + depth[:, None] * r[:, :2] - shift + phase
            checker = (np.floor(hit[:, 0] / square) + np.floor(hit[:, 1] / square)) % 2
            ground = np.where(checker[:, None] > 0, light, dark)
            sky = np.stack([0.4 + 0.3 * r[:, 2], 0.6 + 0.2 * r[:, 2], np.full(len(r), 0.9)], -1)
            rgb = np.where((down & (depth < 120.0))[:, None], ground, sky)
            frames[t, i] = rgb.reshape(s.height, s.width, 3)
    return np.clip(np.round(frames * 255.0), 0, 255).astype(np.uint8)
