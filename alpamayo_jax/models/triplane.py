"""Triplane multi-camera tokenizer (2506.12251, SPEC 1.5): cameras -> 3D grid -> three planes -> tokens.

A small ViT gives a feature map per camera. A 3D grid of queries (learned tri-perspective plane
queries, TPVFormer's factorisation: cell (x, y, z) reads Q_xy[x, y] + Q_xz[x, z] + Q_yz[y, z], plus a
learned map of sinusoidal codes of each cell's metric centre) over a non-uniform, piecewise-linear
contracted grid (fine near the ego, coarse far) gathers image features TPVFormer-style: each cell's
centre is projected into every camera with the calibrated f-theta or pinhole model
(`geometry.project_jax`), learned offsets and weights around that point pick bilinear samples of the
feature map, cameras that do not see the point are masked out and the rest averaged. The volume is
averaged along each axis into P_xy, P_xz, P_yz without being stored: the lifting runs in slabs of
`lift_chunk` x-cells under `nn.scan`. Each plane is average-pooled into patches (p_x, p_y, p_z), a
call-time (static) choice, and one dense layer maps each patch to the LLM width. Front-only rigs drop
the rear halves of P_xy and P_xz (`half_planes`): only x >= 0 is lifted.

Tokens per timestep = (Sx/px)(Sy/py) + (Sx/px)(Sz/pz) + (Sy/py)(Sz/pz) (Sx halved for half planes).
Deviations from a literal reading of the paper: the queries are factorised into three planes (3.5M
values at full size) instead of a Sx*Sy*Sz*C table (85M), and patches are pooled before the
projection so that the patch size can change at inference time with the same weights. Parameters
besides the ViT: 4.8M into the 8B LLM width (SPEC: 6.3M in AR1; one lifting layer here, where
TPVFormer stacks several: four more would add 1.4M).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from alpamayo_jax import geometry
from alpamayo_jax.models import layers
from alpamayo_jax.models.encoder import EncoderConfig, ViT
from alpamayo_jax.models.vlm import REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class GridAxis:
    """A piecewise-linear axis: cell edge `edge_cells[i]` lies at `edge_m[i]` metres (both increasing)."""

    edge_cells: tuple[int, ...]
    edge_m: tuple[float, ...]

    @property
    def cells(self) -> int:
        return self.edge_cells[-1]

    def centres(self) -> np.ndarray:
        """Metric cell centres `[cells]`."""
        return np.interp(np.arange(self.cells) + 0.5, self.edge_cells, self.edge_m)

    def to_cell(self, x: jax.Array) -> jax.Array:
        """Metric coordinates -> continuous cell coordinates (edges at integers; clamped to the grid)."""
        return jnp.interp(x, jnp.asarray(self.edge_m, jnp.float32), jnp.asarray(self.edge_cells, jnp.float32))

    def inside(self, x: jax.Array) -> jax.Array:
        return (x >= self.edge_m[0]) & (x <= self.edge_m[-1])


# SPEC 1.5: 96 cells over about +-180 m, the inner 36 cells on each side of the ego covering 80 m;
# z: 48 cells over -3..45 m, 36 of them over the first 12 m above the road.
DEFAULT_XY_AXIS = GridAxis((0, 12, 48, 84, 96), (-180.0, -80.0, 0.0, 80.0, 180.0))
DEFAULT_Z_AXIS = GridAxis((0, 36, 48), (-3.0, 9.0, 45.0))


@dataclasses.dataclass(frozen=True)
class TriplaneConfig:
    """Shape and numerics of the triplane tokenizer (plain data)."""

    image_hw: tuple[int, int]
    patch_size: int  # ViT patch
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp_dim: int
    width: int  # grid / plane channels
    x_axis: GridAxis
    y_axis: GridAxis
    z_axis: GridAxis
    out_width: int  # LLM width
    lift_heads: int = 8
    lift_points: int = 4
    lift_mlp_dim: int = 768
    offset_scale: float = 2.0  # learned offsets in feature-map cells
    num_pos_freqs: int = 8
    lift_chunk: int = 4  # x cells per lifting slab
    half_planes: bool = False
    camera_model: str = geometry.FTHETA
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str | None = None

    def vit(self) -> EncoderConfig:
        return EncoderConfig(
            self.vit_width,
            self.vit_depth,
            self.vit_heads,
            self.vit_mlp_dim,
            self.dtype,
            self.param_dtype,
            self.remat,
            self.attention_impl,
        )

    @property
    def feature_hw(self) -> tuple[int, int]:
        return self.image_hw[0] // self.patch_size, self.image_hw[1] // self.patch_size

    @property
    def lifted_x_cells(self) -> np.ndarray:
        """Indices of the x cells that are lifted (the front half for half planes)."""
        sx = self.x_axis.cells
        return np.arange(sx // 2, sx) if self.half_planes else np.arange(sx)


VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_hw=(28, 56),
        patch_size=7,
        vit_width=32,
        vit_depth=1,
        vit_heads=2,
        vit_mlp_dim=64,
        width=16,
        x_axis=GridAxis((0, 4, 8, 12, 16), (-60.0, -20.0, 0.0, 20.0, 60.0)),
        y_axis=GridAxis((0, 4, 8, 12, 16), (-60.0, -20.0, 0.0, 20.0, 60.0)),
        z_axis=GridAxis((0, 6, 8), (-3.0, 3.0, 12.0)),
        out_width=24,
        lift_heads=2,
        lift_points=2,
        lift_mlp_dim=32,
        num_pos_freqs=4,
        lift_chunk=4,
    ),
    # SPEC 1.5 at the release image size (448x280): DINOv2-S-like backbone, 96x96x48 grid of width 192,
    # into the Qwen3-VL-8B width.
    "default": dict(
        image_hw=(280, 448),
        patch_size=14,
        vit_width=384,
        vit_depth=12,
        vit_heads=6,
        vit_mlp_dim=1536,
        width=192,
        x_axis=DEFAULT_XY_AXIS,
        y_axis=DEFAULT_XY_AXIS,
        z_axis=DEFAULT_Z_AXIS,
        out_width=4096,
    ),
}


def triplane_config(variant: str, **overrides: Any) -> TriplaneConfig:
    """A preset from VARIANTS with overrides (e.g. half_planes=True, camera_model='pinhole')."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown triplane variant {variant!r}; known: {sorted(VARIANTS)}")
    cfg = TriplaneConfig(**{**VARIANTS[variant], **overrides})
    if cfg.camera_model not in geometry.CAMERA_MODELS:
        raise ValueError(f"triplane camera_model {cfg.camera_model!r} not in {geometry.CAMERA_MODELS}")
    if len(cfg.lifted_x_cells) % cfg.lift_chunk:
        raise ValueError(
            f"triplane lift_chunk {cfg.lift_chunk} must divide {len(cfg.lifted_x_cells)} x cells"
        )
    return cfg


def tokens_per_timestep(cfg: TriplaneConfig, patch: tuple[int, int, int]) -> int:
    """(Sx/px)(Sy/py) + (Sx/px)(Sz/pz) + (Sy/py)(Sz/pz), with Sx halved for half planes."""
    sx, sy, sz = len(cfg.lifted_x_cells), cfg.y_axis.cells, cfg.z_axis.cells
    px, py, pz = patch
    for name, size, p in (("x", sx, px), ("y", sy, py), ("z", sz, pz)):
        if size % p:
            raise ValueError(f"triplane patch p_{name}={p} does not divide the {size} {name} cells")
    return (sx // px) * (sy // py) + (sx // px) * (sz // pz) + (sy // py) * (sz // pz)


@flax.struct.dataclass
class Cameras:
    """Calibrated cameras of a batch of rigs (the clips' calibration, SPEC 4).

    fw_poly_bvk / bw_poly_bvk: forward (theta -> pixel radius) and backward polynomials (for the pinhole
    model both hold the focal length at index 1); principal_point_bv2 and size_bv2 (width, height) in
    calibration pixels; t_rig_cam_bv44 maps camera (optical) points to the rig frame.
    """

    fw_poly_bvk: jax.Array
    bw_poly_bvk: jax.Array
    principal_point_bv2: jax.Array
    size_bv2: jax.Array
    t_rig_cam_bv44: jax.Array


@flax.struct.dataclass
class Planes:
    """The three feature planes: xy `[B, Sx, Sy, C]`, xz `[B, Sx, Sz, C]`, yz `[B, Sy, Sz, C]`."""

    xy: jax.Array
    xz: jax.Array
    yz: jax.Array


def project_to_cameras(
    xyz_n3: jax.Array,
    fw_poly_vk: jax.Array,
    principal_point_v2: jax.Array,
    size_v2: jax.Array,
    t_rig_cam_v44: jax.Array,
    model: str,
) -> tuple[jax.Array, jax.Array]:
    """Rig points `[N, 3]` -> normalised image coordinates `[V, N, 2]` (u/width, v/height) and visibility.

    A point is visible when it lies in front of the camera and inside the image.
    """
    cam_vn3 = geometry.rig_to_camera(xyz_n3[None], t_rig_cam_v44, jnp)
    uv = geometry.project_jax(cam_vn3, fw_poly_vk[:, None], principal_point_v2[:, None], model)
    uv = uv / size_v2[:, None]
    in_front = cam_vn3[..., 2] > 1e-3
    inside = jnp.all((uv >= 0.0) & (uv <= 1.0), axis=-1)
    return jnp.where(in_front[..., None], uv, -1.0), in_front & inside


def bilinear_sample(feat_hwc: jax.Array, xy_n2: jax.Array) -> jax.Array:
    """Samples `[H, W, C]` at normalised (x, y) in [0, 1] `[N, 2]` (pixel-centre convention, zero outside)."""
    h, w, c = feat_hwc.shape
    px = xy_n2[:, 0] * w - 0.5
    py = xy_n2[:, 1] * h - 0.5
    x0, y0 = jnp.floor(px), jnp.floor(py)
    flat = feat_hwc.reshape(h * w, c)
    out = jnp.zeros((xy_n2.shape[0], c), feat_hwc.dtype)
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        xi, yi = x0 + dx, y0 + dy
        weight = (1.0 - jnp.abs(px - xi)) * (1.0 - jnp.abs(py - yi))
        ok = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).astype(jnp.int32)
        out = out + jnp.where(ok, weight, 0.0)[:, None].astype(feat_hwc.dtype) * jnp.take(flat, idx, axis=0)
    return out


def deformable_sample(
    value_vhwgc: jax.Array,
    uv_vn2: jax.Array,
    visible_vn: jax.Array,
    offsets_ngp2: jax.Array,
    weights_ngp: jax.Array,
) -> jax.Array:
    """Deformable multi-camera sampling: `[N, G, c]` per query and head.

    Per camera, head g and point p the feature map is sampled at the projected reference point plus the
    offset (normalised units) and weighted; the cameras that see the reference point are averaged.
    """
    v, _, _, g, c = value_vhwgc.shape
    n, _, p, _ = offsets_ngp2.shape
    loc_vgnp2 = jnp.moveaxis(uv_vn2[:, :, None, None, :] + offsets_ngp2[None], 2, 1)
    sample = jax.vmap(jax.vmap(bilinear_sample, in_axes=(2, 0)), in_axes=(0, 0))
    feats = sample(value_vhwgc, loc_vgnp2.reshape(v, g, n * p, 2)).reshape(v, g, n, p, c)
    per_cam = jnp.einsum("vgnpc,ngp->vngc", feats, weights_ngp.astype(feats.dtype))
    vis = visible_vn.astype(feats.dtype)
    total = jnp.einsum("vngc,vn->ngc", per_cam, vis)
    return total / jnp.maximum(vis.sum(axis=0), 1.0)[:, None, None]


def sinusoidal_code(x_n3: jax.Array, num_freqs: int) -> jax.Array:
    """sin/cos of coordinates in [-1, 1] `[N, 3]` at frequencies pi * 2^k -> `[N, 6 * num_freqs + 3]`."""
    angles = x_n3[..., None] * (np.pi * 2.0 ** np.arange(num_freqs, dtype=np.float32))
    code = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1).reshape(*x_n3.shape[:-1], -1)
    return jnp.concatenate([x_n3, code], axis=-1)


def _normalise(x: jax.Array, axis: GridAxis) -> jax.Array:
    lo, hi = axis.edge_m[0], axis.edge_m[-1]
    return 2.0 * (x - lo) / (hi - lo) - 1.0


class LiftSlab(nn.Module):
    """Lifts one slab of x cells and reduces it (scan form; parameters shared by all slabs).

    carry: running sum over x of the volume `[B, Sy, Sz, C]`; per slab: its x cell indices `[cx]`;
    broadcast: the value maps `[B, V, Hf, Wf, G, c]` and the cameras. Outputs the slab's xy and xz
    plane rows `[B, cx, Sy, C]`, `[B, cx, Sz, C]`.
    """

    cfg: TriplaneConfig

    @nn.compact
    def __call__(self, sum_yz, ix_c, value_bvhwgc, cams: Cameras):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        sy, sz, c, g, p = cfg.y_axis.cells, cfg.z_axis.cells, cfg.width, cfg.lift_heads, cfg.lift_points
        cx = ix_c.shape[0]
        x_m = jnp.asarray(cfg.x_axis.centres(), jnp.float32)[ix_c]
        y_m = jnp.asarray(cfg.y_axis.centres(), jnp.float32)
        z_m = jnp.asarray(cfg.z_axis.centres(), jnp.float32)
        xyz = jnp.stack(jnp.meshgrid(x_m, y_m, z_m, indexing="ij"), axis=-1).reshape(-1, 3)
        norm = jnp.stack(
            [
                _normalise(xyz[:, 0], cfg.x_axis),
                _normalise(xyz[:, 1], cfg.y_axis),
                _normalise(xyz[:, 2], cfg.z_axis),
            ],
            -1,
        )
        init = nn.initializers.normal(0.02)
        sx = cfg.x_axis.cells
        xy, xz, yz = (
            self.param(
                f"{a}{b}_query",
                nn.with_logical_partitioning(init, (f"grid_{a}", f"grid_{b}", "embed")),
                (n_a, n_b, c),
                pdtype,
            )
            for a, b, n_a, n_b in (("x", "y", sx, sy), ("x", "z", sx, sz), ("y", "z", sy, sz))
        )
        planes = (xy[ix_c][:, :, None] + xz[ix_c][:, None, :] + yz[None]).reshape(-1, c)
        q = layers.Dense(c, ("pos_code", "embed"), name="pos_proj", **dense)(
            sinusoidal_code(norm, cfg.num_pos_freqs)
        )
        q = q + planes.astype(dtype)
        offsets = layers.Dense((g, p, 2), ("embed", "heads", "points", "xy"), name="offsets", **dense)(q)
        fh, fw = cfg.feature_hw
        offsets = jnp.tanh(offsets.astype(jnp.float32)) * (
            cfg.offset_scale / jnp.asarray([fw, fh], jnp.float32)
        )
        weights = jax.nn.softmax(
            layers.Dense((g, p), ("embed", "heads", "points"), name="weights", **dense)(q).astype(
                jnp.float32
            ),
            -1,
        )

        def one_sample(value_vhwgc, fw_vk, pp_v2, size_v2, t_v44):
            uv, vis = project_to_cameras(xyz, fw_vk, pp_v2, size_v2, t_v44, cfg.camera_model)
            return deformable_sample(value_vhwgc, uv, vis, offsets, weights)

        sampled = jax.vmap(one_sample)(
            value_bvhwgc, cams.fw_poly_bvk, cams.principal_point_bv2, cams.size_bv2, cams.t_rig_cam_bv44
        )
        b = sampled.shape[0]
        h = layers.Dense(c, ("heads_channels", "embed"), name="out", **dense)(
            sampled.reshape(b, -1, g * sampled.shape[-1])
        )
        h = layers.LayerNorm(1e-6, dtype, pdtype, name="norm1")(h + q[None])
        m = nn.gelu(
            layers.Dense(cfg.lift_mlp_dim, ("embed", "mlp"), name="fc1", **dense)(h), approximate=True
        )
        h = layers.LayerNorm(1e-6, dtype, pdtype, name="norm2")(
            h + layers.Dense(c, ("mlp", "embed"), name="fc2", **dense)(m)
        )
        xy, xz, slab_yz = reduce_volume(h.reshape(b, cx, sy, sz, c).astype(jnp.float32))
        return sum_yz + slab_yz, (xy, xz)


def reduce_volume(vol_bxyzc: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Slab `[B, X, Y, Z, C]` -> rows of P_xy (mean over z), of P_xz (mean over y), P_yz summed over x."""
    return vol_bxyzc.mean(axis=3), vol_bxyzc.mean(axis=2), vol_bxyzc.sum(axis=1)


def pool_patches(plane_bhwc: jax.Array, pa: int, pb: int) -> jax.Array:
    """Average-pools `[B, A, Bp, C]` into `(A/pa)(Bp/pb)` patch vectors `[B, n, C]` (row-major)."""
    b, a, bp, c = plane_bhwc.shape
    return plane_bhwc.reshape(b, a // pa, pa, bp // pb, pb, c).mean(axis=(2, 4)).reshape(b, -1, c)


class TriplaneTokenizer(nn.Module):
    """Images of one timestep `[B, V, H, W, 3]` + cameras -> tokens `[B, n, out_width]` and the planes.

    `patch` (p_x, p_y, p_z) is static; n = `tokens_per_timestep(cfg, patch)`. Timesteps are folded into
    the batch by the caller. Returns `(tokens, {"planes": Planes})`.
    """

    cfg: TriplaneConfig

    def setup(self):
        cfg = self.cfg
        dtype, pdtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
        dense = dict(dtype=dtype, param_dtype=pdtype, use_bias=True)
        self.backbone = ViT(cfg.vit(), cfg.patch_size, cfg.feature_hw)
        self.value = layers.Dense(
            (cfg.lift_heads, cfg.width // cfg.lift_heads), ("vit_embed", "heads", "head_dim"), **dense
        )
        slab = LiftSlab
        if cfg.remat != "none":
            slab = nn.remat(LiftSlab, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
        self.lift = nn.scan(
            slab,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=(0, nn.broadcast, nn.broadcast),
            out_axes=1,
        )(cfg)
        self.plane_embed = self.param(
            "plane_embed",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("planes", "embed")),
            (3, cfg.width),
            pdtype,
        )
        self.proj = layers.Dense(cfg.out_width, ("embed", "embed_out"), **dense)

    def planes(self, images_bvhw3: jax.Array, cams: Cameras) -> Planes:
        """The three feature planes of a batch of rigs."""
        cfg = self.cfg
        b, v = images_bvhw3.shape[:2]
        if cams.fw_poly_bvk.shape[:2] != (b, v):
            raise ValueError(f"triplane cameras {cams.fw_poly_bvk.shape[:2]} do not match images {(b, v)}")
        feat = self.backbone(images_bvhw3.reshape(b * v, *images_bvhw3.shape[2:]))
        value = self.value(feat).reshape(b, v, *feat.shape[1:3], cfg.lift_heads, -1)
        ix = jnp.asarray(cfg.lifted_x_cells, jnp.int32).reshape(-1, cfg.lift_chunk)
        sum_yz = jnp.zeros((b, cfg.y_axis.cells, cfg.z_axis.cells, cfg.width), jnp.float32)
        sum_yz, (xy, xz) = self.lift(sum_yz, ix, value, cams)
        xy = xy.reshape(b, -1, *xy.shape[3:])
        xz = xz.reshape(b, -1, *xz.shape[3:])
        return Planes(xy=xy, xz=xz, yz=sum_yz / ix.size)

    def tokens(self, planes: Planes, patch: tuple[int, int, int]) -> jax.Array:
        """Pooled patches of the three planes -> `[B, n, out_width]` (xy, then xz, then yz tokens)."""
        tokens_per_timestep(self.cfg, patch)  # raises if a patch size does not divide its axis
        px, py, pz = patch
        pooled = [
            pool_patches(planes.xy, px, py) + self.plane_embed[0],
            pool_patches(planes.xz, px, pz) + self.plane_embed[1],
            pool_patches(planes.yz, py, pz) + self.plane_embed[2],
        ]
        return self.proj(jnp.concatenate(pooled, axis=1).astype(layers.dtype_of(self.cfg.dtype)))

    def __call__(
        self, images_bvhw3: jax.Array, cams: Cameras, patch: tuple[int, int, int] = (8, 8, 8)
    ) -> tuple[jax.Array, dict[str, Planes]]:
        planes = self.planes(images_bvhw3, cams)
        return self.tokens(planes, patch), {"planes": planes}
