"""Fast multi-camera rasteriser for the synthetic world.

The cameras are fixed to the ego, so each camera's per-pixel ground-plane intersection (rig frame) is
computed once; per frame the ground pixels are moved to the world by the ego pose and shaded by a
lookup into a bird's-eye texture of the road (asphalt, lane lines, stop lines, crosswalks, bumps, work
zone) drawn once per clip. Boxes (vehicles, pedestrians, cones, poles, light housings and lit lamps) are
projected with the camera model and their front faces filled far-to-near.
"""

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

from alpamayo_jax import geometry
from alpamayo_jax.data import synthetic_world as world

# name: (yaw deg left-positive, horizontal fov deg, pitch deg down, position in the rig frame)
RIG_LAYOUT = {
    "camera_cross_left_120fov": (60.0, 120.0, 5.0, (2.2, 0.9, 1.4)),
    "camera_front_wide_120fov": (0.0, 120.0, 4.0, (1.8, 0.0, 1.5)),
    "camera_cross_right_120fov": (-60.0, 120.0, 5.0, (2.2, -0.9, 1.4)),
    "camera_rear_left_70fov": (150.0, 70.0, 5.0, (1.0, 0.9, 1.5)),
    "camera_rear_tele_30fov": (180.0, 30.0, 2.0, (-0.8, 0.0, 1.5)),
    "camera_rear_right_70fov": (-150.0, 70.0, 5.0, (1.0, -0.9, 1.5)),
    "camera_front_tele_30fov": (0.0, 30.0, 1.0, (1.8, 0.0, 1.55)),
}
MAX_GROUND_M = 140.0
SKY_TOP, SKY_HORIZON = np.array([90, 140, 215]), np.array([190, 210, 230])
HAZE = np.array([150, 160, 150])
# Cuboid faces as corner indices (corners: x in {-, +} length, y in {-, +} width, z in {0, h}).
FACES = ((0, 1, 3, 2), (4, 6, 7, 5), (0, 2, 6, 4), (1, 5, 7, 3), (0, 4, 5, 1), (2, 3, 7, 6))
FACE_SHADE = (0.55, 1.0, 0.75, 0.75, 0.85, 0.85)  # bottom, top, back, front, right, left


@dataclasses.dataclass(frozen=True)
class CameraSpec:
    """Calibration of one synthetic camera (optical frame pose in the rig frame)."""

    name: str
    width: int
    height: int
    model: str
    fw_poly: np.ndarray
    bw_poly: np.ndarray
    principal_point: np.ndarray
    rotation_33: np.ndarray
    translation_3: np.ndarray


def make_camera(name: str, width: int, height: int, model: str = geometry.FTHETA) -> CameraSpec:
    """A calibrated camera of the rig: f-theta with mild distortion, or pinhole, by field of view."""
    if name not in RIG_LAYOUT:
        raise ValueError(f"Unknown camera {name!r}; expected one of {tuple(RIG_LAYOUT)}.")
    yaw, hfov, pitch, pos = RIG_LAYOUT[name]
    half = np.deg2rad(hfov) / 2
    pp = np.array([width / 2.0, height / 2.0])
    if model == geometry.PINHOLE:
        f = (width / 2) / np.tan(half)
        fw = np.array([0.0, f, 0.0, 0.0, 0.0])
        bw = fw.copy()
    else:
        f = (width / 2) / (half - 0.03 * half**3)
        fw = np.array([0.0, f, 0.0, -0.03 * f, 0.0])
        corner = np.hypot(width, height) / 2
        theta = np.linspace(0, 1.6, 2000)
        max_theta = float(theta[np.searchsorted(geometry.polyval(fw, theta), corner)]) * 1.05
        bw = geometry.fit_backward_poly(fw, max_theta)
    rot = geometry.camera_rotation(np.deg2rad(yaw), np.deg2rad(pitch))
    return CameraSpec(name, width, height, model, fw, bw, pp, rot, np.asarray(pos, np.float64))


@dataclasses.dataclass(frozen=True)
class CameraRays:
    """Per-camera precomputation: ground pixel flat indices [G], their rig-frame xy [G, 2] and the
    background (sky and far-ground haze) as packed RGBX uint32 pixels [H * W]."""

    ground_index: np.ndarray
    ground_xy: np.ndarray
    background: np.ndarray


def precompute_rays(cam: CameraSpec) -> CameraRays:
    """Intersects every pixel ray with the ground plane z = 0 of the rig frame."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    uv = np.stack([u + 0.5, v + 0.5], -1).reshape(-1, 2)
    rays = geometry.unproject_np(uv, cam.bw_poly, cam.principal_point, cam.model)
    dirs = rays @ cam.rotation_33.T
    dz = dirs[:, 2]
    t = np.where(dz < -1e-4, -cam.translation_3[2] / np.minimum(dz, -1e-4), np.inf)
    hit = cam.translation_3 + t[:, None] * dirs
    dist = np.hypot(hit[:, 0] - cam.translation_3[0], hit[:, 1] - cam.translation_3[1])
    ground = np.isfinite(t) & (dist < MAX_GROUND_M)
    elevation = np.clip(dz, 0.0, 1.0)[:, None]
    sky = SKY_HORIZON + (SKY_TOP - SKY_HORIZON) * np.sqrt(elevation)
    background = np.where((dz < 0)[:, None], HAZE, sky).astype(np.uint8)
    idx = np.flatnonzero(ground)
    return CameraRays(idx.astype(np.int64), hit[idx, :2].astype(np.float32), pack_rgbx(background))


def pack_rgbx(rgb_n3: np.ndarray) -> np.ndarray:
    """uint8 RGB [..., 3] to packed RGBX uint32 [...] (one gather per pixel instead of three)."""
    rgbx = np.concatenate([rgb_n3, np.full(rgb_n3.shape[:-1] + (1,), 255, np.uint8)], -1)
    return np.ascontiguousarray(rgbx).view(np.uint32)[..., 0]


@dataclasses.dataclass(frozen=True)
class GroundMap:
    """Bird's-eye texture of the ground (packed RGBX uint32 [H, W]) with its world origin (lower-left
    xy) and metres per pixel."""

    texture: np.ndarray
    origin: np.ndarray
    resolution: float


def _polyline(road: world.Road, d: float, s0: float, s1: float, step: float = 1.0) -> np.ndarray:
    s = np.arange(s0, s1 + step, step)
    xy, _ = world.frenet_to_world(road.route, s, np.full_like(s, d))
    return xy


def draw_ground_map(road: world.Road, s_range: tuple[float, float], rng: np.random.Generator) -> GroundMap:
    """Draws the road network once per clip (PIL polygons and lines in world coordinates)."""
    res = 0.12
    s0, s1 = s_range
    core = _polyline(road, 0.0, s0, s1, 2.0)
    lo, hi = core.min(0) - 45.0, core.max(0) + 45.0
    if road.crossing is not None:
        lo = np.minimum(lo, np.asarray(road.crossing["center"]) - 60.0)
        hi = np.maximum(hi, np.asarray(road.crossing["center"]) + 60.0)
    size = np.ceil((hi - lo) / res).astype(int)
    noise = rng.integers(-6, 7, (64, 64, 1))
    tile = np.clip(np.array([88, 118, 70]) + noise, 0, 255).astype(np.uint8)
    grass = np.tile(tile, (size[1] // 64 + 1, size[0] // 64 + 1, 1))[: size[1], : size[0]]
    img = Image.fromarray(np.ascontiguousarray(grass))
    draw = ImageDraw.Draw(img)

    def px(xy: np.ndarray) -> list[tuple[float, float]]:
        p = (np.asarray(xy) - lo) / res
        return [(float(a), float(size[1] - b)) for a, b in p]

    asphalt, white, yellow = (72, 72, 76), (235, 235, 235), (230, 190, 40)
    line_w = max(1, int(round(0.15 / res)))
    if road.crossing is not None:
        c, h, hw = np.asarray(road.crossing["center"]), road.crossing["heading"], road.crossing["half_width"]
        axis, normal = np.array([np.cos(h), np.sin(h)]), np.array([-np.sin(h), np.cos(h)])
        quad = [c - 150 * axis - hw * normal, c + 150 * axis - hw * normal]
        quad += [c + 150 * axis + hw * normal, c - 150 * axis + hw * normal]
        draw.polygon(px(np.array(quad)), fill=asphalt)
        for sign in (-1, 1):
            edge = [c - 150 * axis + sign * hw * normal, c + 150 * axis + sign * hw * normal]
            draw.line(px(np.array(edge)), fill=white, width=line_w)
        for a, b in ((-150, -hw - 1), (hw + 1, 150)):
            draw.line(px(np.array([c + a * axis, c + b * axis])), fill=yellow, width=line_w)
    left, right = _polyline(road, road.left_edge, s0, s1), _polyline(road, road.right_edge, s0, s1)
    draw.polygon(px(np.concatenate([right, left[::-1]])), fill=asphalt)
    draw.line(px(right), fill=white, width=line_w)
    draw.line(px(left), fill=white, width=line_w)
    offsets = sorted(road.lane_offsets)
    for a, b in zip(offsets, offsets[1:], strict=False):
        d = (a + b) / 2
        for start in np.arange(s0, s1, 9.0):
            draw.line(px(_polyline(road, d, start, start + 3.0, 1.0)), fill=white, width=line_w)
    if road.oncoming:
        d = max(offsets) + road.lane_width / 2
        for off in (-0.12, 0.12):
            draw.line(px(_polyline(road, d + off, s0, s1)), fill=yellow, width=line_w)
    if road.crossing is not None:
        c, h, hw = np.asarray(road.crossing["center"]), road.crossing["heading"], road.crossing["half_width"]
        axis, normal = np.array([np.cos(h), np.sin(h)]), np.array([-np.sin(h), np.cos(h)])
        box = [c - hw * axis - hw * normal, c + hw * axis - hw * normal, c + hw * axis + hw * normal]
        box += [c - hw * axis + hw * normal]
        draw.polygon(px(np.array(box)), fill=asphalt)
    ego_lane_right, ego_lane_left = min(offsets) - road.lane_width / 2, max(offsets) + road.lane_width / 2
    if road.stop_line_s is not None:
        s_line = road.stop_line_s
        quad = [(s_line, ego_lane_right), (s_line, ego_lane_left), (s_line + 0.5, ego_lane_left)]
        quad += [(s_line + 0.5, ego_lane_right)]
        draw.polygon(px(_frenet_points(road, quad)), fill=white)
    if road.crosswalk_s is not None:
        for d in np.arange(road.right_edge + 0.3, road.left_edge - 0.3, 1.0):
            quad = [(road.crosswalk_s - 2, d), (road.crosswalk_s + 2, d)]
            quad += [(road.crosswalk_s + 2, d + 0.5), (road.crosswalk_s - 2, d + 0.5)]
            draw.polygon(px(_frenet_points(road, quad)), fill=white)
    for b in road.bumps_s:
        quad = [(b - 0.4, road.right_edge), (b + 0.4, road.right_edge), (b + 0.4, road.left_edge)]
        quad += [(b - 0.4, road.left_edge)]
        draw.polygon(px(_frenet_points(road, quad)), fill=(200, 170, 40))
        for d in np.arange(road.right_edge, road.left_edge, 1.0):
            stripe = [(b - 0.4, d), (b + 0.4, d), (b + 0.4, d + 0.5), (b - 0.4, d + 0.5)]
            draw.polygon(px(_frenet_points(road, stripe)), fill=(30, 30, 30))
    if road.construction is not None:
        a, b = road.construction
        for d in (road.right_edge + 0.2, 0.3):
            draw.line(px(_polyline(road, d, a, b, 1.0)), fill=(240, 130, 20), width=line_w * 2)
    return GroundMap(pack_rgbx(np.asarray(img)), lo, res)


def _frenet_points(road: world.Road, sd: list[tuple[float, float]]) -> np.ndarray:
    arr = np.asarray(sd, np.float64)
    xy, _ = world.frenet_to_world(road.route, arr[:, 0], arr[:, 1])
    return xy


@dataclasses.dataclass(frozen=True)
class Box:
    """A cuboid to draw: centre of its bottom face (world xyz), dims (l, w, h), yaw, RGB colour."""

    center: tuple[float, float, float]
    dims: tuple[float, float, float]
    yaw: float
    color: tuple[int, int, int]


def box_corners(boxes: list[Box]) -> np.ndarray:
    """World corners [B, 8, 3] of boxes (bottom-face centre convention)."""
    signs = np.array([[sx, sy, sz] for sx in (-0.5, 0.5) for sy in (-0.5, 0.5) for sz in (0.0, 1.0)])
    out = np.empty((len(boxes), 8, 3))
    for i, b in enumerate(boxes):
        local = signs * np.asarray(b.dims)
        c, s = np.cos(b.yaw), np.sin(b.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        out[i] = local @ rot.T + np.asarray(b.center)
    return out


def render_frame(
    cam: CameraSpec,
    rays: CameraRays,
    ground: GroundMap,
    ego_xy: np.ndarray,
    ego_yaw: float,
    boxes: list[Box],
    corners_b83: np.ndarray,
) -> np.ndarray:
    """One frame of `cam` with the ego at (ego_xy, ego_yaw): RGBX uint8 [H, W, 4] (X = 255)."""
    c, s = np.float32(np.cos(ego_yaw)), np.float32(np.sin(ego_yaw))
    gx, gy = rays.ground_xy[:, 0], rays.ground_xy[:, 1]
    wx = (c * gx - s * gy + np.float32(ego_xy[0] - ground.origin[0])) / np.float32(ground.resolution)
    wy = (s * gx + c * gy + np.float32(ego_xy[1] - ground.origin[1])) / np.float32(ground.resolution)
    th, tw = ground.texture.shape[:2]
    ix = np.clip(wx.astype(np.int32), 0, tw - 1)
    iy = np.clip(th - 1 - wy.astype(np.int32), 0, th - 1)
    packed = rays.background.copy()
    packed[rays.ground_index] = ground.texture.ravel().take(iy * tw + ix)
    frame = packed.view(np.uint8).reshape(cam.height, cam.width, 4)
    if not boxes:
        return frame
    rot_ego = geometry.yaw_to_rotmat(np.asarray(ego_yaw))
    cam_world = rot_ego @ cam.translation_3 + np.array([ego_xy[0], ego_xy[1], 0.0])
    rot_world_cam = rot_ego @ cam.rotation_33
    pts_cam = (corners_b83.reshape(-1, 3) - cam_world) @ rot_world_cam
    uv = geometry.project_np(pts_cam, cam.fw_poly, cam.principal_point, cam.model).reshape(-1, 8, 2)
    z = pts_cam[:, 2].reshape(-1, 8)
    centres = corners_b83.mean(axis=1)
    order = np.argsort(-np.linalg.norm(centres - cam_world, axis=1))
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    margin = 2.0 * max(cam.width, cam.height)
    for i in order:
        if z[i].max() < 0.3 or np.linalg.norm(centres[i] - cam_world) > MAX_GROUND_M:
            continue
        box_c = centres[i]
        for face, shade in zip(FACES, FACE_SHADE, strict=True):
            if np.any(z[i, list(face)] < 0.3):
                continue
            corners = corners_b83[i, list(face)]
            face_c = corners.mean(0)
            if np.dot(face_c - box_c, cam_world - face_c) <= 0.0:
                continue
            poly = uv[i, list(face)]
            if np.any(np.abs(poly) > margin):
                continue
            color = tuple(int(min(255, ch * shade)) for ch in boxes[i].color) + (255,)
            draw.polygon([tuple(p) for p in poly.tolist()], fill=color)
    return np.asarray(img)
