"""Self-supervised triplane pre-training by volumetric rendering (2506.12251, SPEC 1.5).

Rays of the real cameras (`geometry.unproject_jax`, f-theta or pinhole, then the camera-to-rig
transform) are sampled at log-spaced depths; each point is mapped into the contracted grid, the three
planes are sampled bilinearly at its (x, y), (x, z), (y, z) cell coordinates, the three features are
multiplied element-wise and a small MLP gives colour and density; the ray colour is the usual
alpha-composited sum plus a learned background for the transmittance left. The loss is
0.5 * L1 + 0.5 * DSSIM (structural dissimilarity, (1 - SSIM) / 2): the paper's LPIPS term needs
downloaded network weights, SSIM does not.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax import geometry
from alpamayo_jax.models import layers, vision_tokens
from alpamayo_jax.models.triplane import Cameras, Planes, TriplaneConfig, TriplaneTokenizer, bilinear_sample


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """Ray sampling and render head (plain data)."""

    hidden: int = 64
    num_samples: int = 48
    near: float = 1.0
    far: float = 180.0
    l1_weight: float = 0.5
    dssim_weight: float = 0.5


def pixel_grid(size_v2: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Pixel centres of an `out_hw` grid covering each camera's image: `[V, h * w, 2]` (u, v) pixels."""
    h, w = out_hw
    fy, fx = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    grid = jnp.asarray(np.stack(np.meshgrid(fx, fy, indexing="xy"), -1).reshape(-1, 2), jnp.float32)
    return grid[None] * size_v2[:, None, :]


def camera_rays(
    uv_vn2: jax.Array,
    bw_poly_vk: jax.Array,
    principal_point_v2: jax.Array,
    t_rig_cam_v44: jax.Array,
    model: str,
) -> tuple[jax.Array, jax.Array]:
    """Pixels `[V, N, 2]` -> ray origins and unit directions in the rig frame, each `[V, N, 3]`."""
    rays_cam = geometry.unproject_jax(uv_vn2, bw_poly_vk[:, None], principal_point_v2[:, None], model)
    dirs = jnp.einsum("vij,vnj->vni", t_rig_cam_v44[:, :3, :3], rays_cam)
    origins = jnp.broadcast_to(t_rig_cam_v44[:, None, :3, 3], dirs.shape)
    return origins, dirs


def depth_samples(rcfg: RenderConfig) -> np.ndarray:
    """Log-spaced sample depths `[S]` between near and far (dense near the cameras)."""
    return np.geomspace(rcfg.near, rcfg.far, rcfg.num_samples).astype(np.float32)


def plane_coordinates(cfg: TriplaneConfig, xyz_n3: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Rig points `[N, 3]` -> cell coordinates (x, y, z) normalised to [0, 1] `[N, 3]`, inside-grid mask."""
    x_cells = cfg.lifted_x_cells
    x = (cfg.x_axis.to_cell(xyz_n3[:, 0]) - x_cells[0]) / len(x_cells)
    y = cfg.y_axis.to_cell(xyz_n3[:, 1]) / cfg.y_axis.cells
    z = cfg.z_axis.to_cell(xyz_n3[:, 2]) / cfg.z_axis.cells
    x_lo = np.interp(x_cells[0], cfg.x_axis.edge_cells, cfg.x_axis.edge_m)
    inside = (xyz_n3[:, 0] >= x_lo) & cfg.x_axis.inside(xyz_n3[:, 0])
    inside &= cfg.y_axis.inside(xyz_n3[:, 1]) & cfg.z_axis.inside(xyz_n3[:, 2])
    return jnp.stack([x, y, z], -1), inside


def sample_planes(planes_one: Planes, coords_n3: jax.Array) -> jax.Array:
    """Element-wise product of the three planes' bilinear samples `[N, C]` (one rig's planes)."""
    x, y, z = coords_n3[:, 0], coords_n3[:, 1], coords_n3[:, 2]
    f_xy = bilinear_sample(planes_one.xy, jnp.stack([y, x], -1))
    f_xz = bilinear_sample(planes_one.xz, jnp.stack([z, x], -1))
    f_yz = bilinear_sample(planes_one.yz, jnp.stack([z, y], -1))
    return f_xy * f_xz * f_yz


def composite(rgb_rs3: jax.Array, sigma_rs: jax.Array, t_s: jax.Array, background_3: jax.Array) -> jax.Array:
    """Alpha compositing along rays `[..., S]` -> colours `[..., 3]` (leftover transmittance: background)."""
    delta = jnp.concatenate([t_s[1:] - t_s[:-1], t_s[-1:] - t_s[-2:-1]])
    alpha = 1.0 - jnp.exp(-sigma_rs * delta)
    trans = jnp.cumprod(1.0 - alpha + 1e-10, axis=-1)
    trans = jnp.concatenate([jnp.ones_like(trans[..., :1]), trans[..., :-1]], axis=-1)
    weights = alpha * trans
    rest = 1.0 - weights.sum(axis=-1, keepdims=True)
    return jnp.einsum("...s,...sc->...c", weights, rgb_rs3) + rest * background_3


class RenderHead(nn.Module):
    """Planes + rays `[B, R, 3]` (origins, directions) -> rendered colours `[B, R, 3]` in [0, 1]."""

    cfg: TriplaneConfig
    rcfg: RenderConfig

    @nn.compact
    def __call__(self, planes: Planes, origins_br3: jax.Array, dirs_br3: jax.Array) -> jax.Array:
        cfg, rcfg = self.cfg, self.rcfg
        b, r, _ = origins_br3.shape
        t_s = jnp.asarray(depth_samples(rcfg))
        pts = origins_br3[:, :, None] + dirs_br3[:, :, None] * t_s[:, None]  # [B, R, S, 3]
        coords, inside = jax.vmap(lambda p: plane_coordinates(cfg, p))(pts.reshape(b, -1, 3))
        feat = jax.vmap(sample_planes)(planes, coords)
        dense = dict(param_dtype=layers.dtype_of(cfg.param_dtype), use_bias=True)
        h = nn.relu(layers.Dense(rcfg.hidden, ("embed", "mlp"), name="fc1", **dense)(feat))
        h = nn.relu(layers.Dense(rcfg.hidden, ("mlp_in", "mlp"), name="fc2", **dense)(h))
        out = layers.Dense(4, ("mlp", "rgb_sigma"), name="fc3", **dense)(h).reshape(b, r, -1, 4)
        rgb = jax.nn.sigmoid(out[..., :3])
        sigma = jax.nn.softplus(out[..., 3]) * inside.reshape(b, r, -1)
        background = self.param(
            "background", nn.with_logical_partitioning(nn.initializers.zeros, ("rgb",)), (3,), jnp.float32
        )
        return composite(rgb, sigma, t_s, jax.nn.sigmoid(background))


def view_rays(cfg: TriplaneConfig, cams: Cameras, out_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
    """Rays through an `out_hw` pixel grid of every camera: origins and directions `[B, V * h * w, 3]`."""

    def rays(size_v2, bw_vk, pp_v2, t_v44):
        return camera_rays(pixel_grid(size_v2, out_hw), bw_vk, pp_v2, t_v44, cfg.camera_model)

    origins, dirs = jax.vmap(rays)(
        cams.size_bv2, cams.bw_poly_bvk, cams.principal_point_bv2, cams.t_rig_cam_bv44
    )
    b = origins.shape[0]
    return origins.reshape(b, -1, 3), dirs.reshape(b, -1, 3)


class TriplaneRenderModel(nn.Module):
    """Pre-training model: images + cameras -> planes -> rendered views `[B, V, h, w, 3]` at `out_hw`."""

    cfg: TriplaneConfig
    rcfg: RenderConfig

    @nn.compact
    def __call__(self, images_bvhw3: jax.Array, cams: Cameras, out_hw: tuple[int, int]) -> jax.Array:
        b, v = images_bvhw3.shape[:2]
        planes = TriplaneTokenizer(self.cfg, name="triplane").planes(images_bvhw3, cams)
        rgb = RenderHead(self.cfg, self.rcfg, name="render")(planes, *view_rays(self.cfg, cams, out_hw))
        return rgb.reshape(b, v, *out_hw, 3)


def area_downsample(images_nhw3: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """Box-filter `[..., H, W, C]` to `out_hw` (H and W multiples of it): the rendering targets."""
    *lead, h, w, c = images_nhw3.shape
    oh, ow = out_hw
    if h % oh or w % ow:
        raise ValueError(f"render size {out_hw} does not divide the frames' {h}x{w}")
    return images_nhw3.reshape(*lead, oh, h // oh, ow, w // ow, c).mean(axis=(-4, -2))


class TriplanePretrain(nn.Module):
    """The trainer's pre-training model: a `Batch`'s frames and cameras -> the rendering losses.

    Each timestep's rig is lifted to planes and its own views are rendered back at `out_hw` (targets:
    the frames box-filtered to that size). Parameters: `triplane` (the ViT, value projection and
    lifting, named as in `Alpamayo`, so `init_from` restores them into a policy) and `render`.
    Returns `render` (the loss), `render_l1` and `render_dssim`.
    """

    cfg: TriplaneConfig
    rcfg: RenderConfig
    out_hw: tuple[int, int]

    @nn.compact
    def __call__(self, batch: Any, rng: jax.Array) -> dict[str, jax.Array]:
        del rng  # every pixel of the out_hw grid is rendered: nothing is sampled
        if batch.frames_btvhw3 is None or batch.cameras is None:
            raise ValueError("triplane pre-training needs frames_btvhw3 and cameras in the batch")
        frames, cams = vision_tokens.fold_timesteps(batch.frames_btvhw3, batch.cameras)
        images = vision_tokens.to_unit(frames)
        planes = TriplaneTokenizer(self.cfg, name="triplane").planes(images, cams)
        rgb = RenderHead(self.cfg, self.rcfg, name="render")(planes, *view_rays(self.cfg, cams, self.out_hw))
        pred = rgb.reshape(*images.shape[:2], *self.out_hw, 3)
        loss, metrics = render_loss(self.rcfg, pred, area_downsample(images, self.out_hw))
        return {"render": loss, "render_l1": metrics["l1"], "render_dssim": metrics["dssim"]}


def ssim(a_nhwc: jax.Array, b_nhwc: jax.Array, window: int = 3) -> jax.Array:
    """Mean structural similarity of images in [0, 1] over `window` x `window` box windows."""

    def pool(x):
        return (
            jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, window, window, 1), (1, 1, 1, 1), "VALID")
            / window**2
        )

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = pool(a_nhwc), pool(b_nhwc)
    var_a = pool(a_nhwc * a_nhwc) - mu_a**2
    var_b = pool(b_nhwc * b_nhwc) - mu_b**2
    cov = pool(a_nhwc * b_nhwc) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return jnp.mean(num / den)


def render_loss(rcfg: RenderConfig, pred_bvhw3: jax.Array, target_bvhw3: jax.Array) -> tuple[jax.Array, dict]:
    """l1_weight * L1 + dssim_weight * (1 - SSIM) / 2; returns (loss, metrics)."""
    pred = pred_bvhw3.reshape(-1, *pred_bvhw3.shape[-3:]).astype(jnp.float32)
    target = target_bvhw3.reshape(-1, *target_bvhw3.shape[-3:]).astype(jnp.float32)
    l1 = jnp.mean(jnp.abs(pred - target))
    dssim = (1.0 - ssim(pred, target)) / 2.0
    loss = rcfg.l1_weight * l1 + rcfg.dssim_weight * dssim
    return loss, {"l1": l1, "dssim": dssim, "loss": loss}
