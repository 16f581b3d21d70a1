"""The vision-tokenizer switch: which module fills the image slots of the LM sequence, and the host-side
layout of those slots (how many image tokens, in which runs, at which M-RoPE positions).

- `per_image` (default, the release model): the Qwen3-VL ViT; one run `[vision_start] h'w' tokens
  [vision_end]` per image, positions as the reference (t = run start, h = start + row, w = start +
  col); DeepStack features added to the first text layers.
- `triplane` (SPEC 1.5): one run per timestep of `tokens_per_timestep(cfg, patch)` tokens (xy, then
  xz, then yz plane patches). Each plane is positioned like an image of its patch grid: t = its start,
  h = start + row, w = start + col with (row, col) the (x, y), (x, z) and (y, z) patch cells; the next
  plane starts after max(rows, cols) as consecutive images do, and later timesteps follow at later
  positions. No DeepStack.
- `flex` (SPEC 1.5): one run of K = tokens_per_image x cameras x frames scene tokens with sequential
  (text-like) positions on all three streams: the scene tokens have no spatial order. No DeepStack.

The host-side layout is plain NumPy (used by `data.batch` and the transforms); the jittable helpers
order and fold the tokenizer inputs for the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax.models.triplane import Cameras, TriplaneConfig, tokens_per_timestep

TOKENIZERS = ("per_image", "triplane", "flex")


@dataclasses.dataclass(frozen=True)
class ImageRuns:
    """The image tokens of one sample.

    tokens: image tokens of each `[vision_start] ... [vision_end]` run, in sequence order; grid_thw:
    `[n, 3]` M-RoPE grid (1, rows * merge, cols * merge) of each block of image tokens in order, or
    None for sequential positions.
    """

    tokens: tuple[int, ...]
    grid_thw: np.ndarray | None


def plane_grids(cfg: TriplaneConfig, patch: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(rows, cols) of the xy, xz and yz patch grids (the order of the triplane tokens)."""
    tokens_per_timestep(cfg, patch)  # raises if a patch size does not divide its axis
    px, py, pz = patch
    sx, sy, sz = len(cfg.lifted_x_cells) // px, cfg.y_axis.cells // py, cfg.z_axis.cells // pz
    return [(sx, sy), (sx, sz), (sy, sz)]


def image_runs(cfg: Any, num_images: int, num_frames: int, grid_hw: tuple[int, int]) -> ImageRuns:
    """Runs of image tokens of a sample of `num_images` images (`num_frames` per camera) for the
    tokenizer of `cfg` (an `AlpamayoConfig`); `grid_hw` is the ViT patch grid of each image."""
    merge = cfg.vlm.vision.spatial_merge
    if num_images % num_frames:
        raise ValueError(f"{num_images} images do not split into {num_frames} frames per camera")
    if cfg.vision_tokenizer == "per_image":
        h, w = grid_hw
        return ImageRuns((h * w // merge**2,) * num_images, np.array([[1, h, w]] * num_images))
    if cfg.vision_tokenizer == "triplane":
        grids = plane_grids(cfg.triplane, cfg.triplane_patch) * num_frames
        n = tokens_per_timestep(cfg.triplane, cfg.triplane_patch)
        return ImageRuns((n,) * num_frames, np.array([[1, r * merge, c * merge] for r, c in grids]))
    f = cfg.flex
    if (num_images // num_frames, num_frames) != (f.num_cameras, f.num_frames):
        raise ValueError(
            f"flex is configured for {f.num_cameras} cameras x {f.num_frames} frames, the sample has "
            f"{num_images // num_frames} x {num_frames}"
        )
    return ImageRuns((f.num_scene_tokens,), None)


def sequential_slots(tokens_l: np.ndarray, image_token_id: int) -> np.ndarray:
    """`[L]` int32: the k-th image token reads feature row k; -1 on other tokens."""
    is_image = np.asarray(tokens_l) == image_token_id
    return np.where(is_image, np.cumsum(is_image) - 1, -1).astype(np.int32)


def camera_major_ids(num_images: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frame, camera) index `[n]` of each image stored camera-major, oldest frame first."""
    idx = np.arange(num_images)
    return (idx % num_frames).astype(np.int32), (idx // num_frames).astype(np.int32)


def to_unit(frames: jax.Array) -> jax.Array:
    """uint8 frames -> float32 in [0, 1] (the triplane tokenizer's and the render target's range)."""
    return frames.astype(jnp.float32) / 255.0


def fold_timesteps(frames_btvhw3: jax.Array, cams: Cameras) -> tuple[jax.Array, Cameras]:
    """Frames `[B, T, V, H, W, 3]` and cameras `[B, V, ...]` -> `[B*T, V, ...]` (one rig per timestep)."""
    b, t = frames_btvhw3.shape[:2]
    cams = jax.tree_util.tree_map(lambda x: jnp.repeat(x, t, axis=0), cams)
    return frames_btvhw3.reshape(b * t, *frames_btvhw3.shape[2:]), cams


def frame_camera_grid(
    feats_bnkd: jax.Array, frame_bn: jax.Array, camera_bn: jax.Array, num_frames: int, num_cameras: int
) -> jax.Array:
    """Per-image tokens `[B, n, k, D]` -> `[B, T, V, k, D]` by each image's frame and camera index
    (n = T x V, each (frame, camera) once)."""
    b, n = frame_bn.shape
    if n != num_frames * num_cameras:
        raise ValueError(f"flex needs {num_frames} x {num_cameras} images per sample, got {n}")
    order = jnp.argsort(frame_bn * num_cameras + camera_bn, axis=1)
    picked = jnp.take_along_axis(feats_bnkd, order[:, :, None, None], axis=1)
    return picked.reshape(b, num_frames, num_cameras, *feats_bnkd.shape[2:])
