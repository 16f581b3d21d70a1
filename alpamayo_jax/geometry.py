"""Camera models and coordinate frames (PhysicalAI-AV conventions, SPEC section 4).

Frames:
- camera (optical): x right, y down, z forward;
- rig / ego: rear-axle centre on the ground, x forward, y left, z up;
- anchor: the clip's world frame (the egomotion parquet's frame, the rig pose at clip start).

Camera models, both given as polynomial coefficients in the dataset's calibration columns:
- f-theta: the angle theta between a ray and the optical axis maps to the pixel radius
  rho = sum_i fw_poly[i] theta^i around the principal point; the backward polynomial gives
  theta = sum_i bw_poly[i] rho^i.
- pinhole: focal length f = fw_poly[1] (as the devkit reads it), u = cx + f x / z.

Every function takes an array namespace `xp` (NumPy or jax.numpy) so that the NumPy and the jit-able
JAX versions are the same code; `*_np` / `*_jax` names are the public entry points.
Quaternions are (qx, qy, qz, qw), as in the calibration and egomotion parquets and in SciPy.
"""

from typing import Any

import jax.numpy as jnp
import numpy as np

FTHETA = "ftheta"
PINHOLE = "pinhole"
CAMERA_MODELS = (FTHETA, PINHOLE)

Array = Any


def polyval(coeffs_k: Array, x: Array, xp: Any = np) -> Array:
    """Evaluates sum_i coeffs[..., i] x^i by Horner's rule; coeffs broadcast against x[..., None]."""
    coeffs_k = xp.asarray(coeffs_k)
    out = xp.zeros_like(x) + coeffs_k[..., -1]
    for i in range(coeffs_k.shape[-1] - 2, -1, -1):
        out = out * x + coeffs_k[..., i]
    return out


def _check_model(model: str) -> None:
    if model not in CAMERA_MODELS:
        raise ValueError(f"Unknown camera model {model!r}; expected one of {CAMERA_MODELS}.")


def project(
    xyz_n3: Array, fw_poly_k: Array, principal_point_2: Array, model: str = FTHETA, xp: Any = np
) -> Array:
    """Projects camera-frame points [..., 3] to pixels [..., 2].

    `fw_poly_k` [..., K] and `principal_point_2` [..., 2] broadcast against the point batch (e.g. one
    camera per leading index: points [V, N, 3] with polys [V, 1, K]). Points behind a pinhole camera
    (z <= 0) give non-finite or mirrored pixels; check `z > 0` where that matters.
    """
    _check_model(model)
    fw_poly_k = xp.asarray(fw_poly_k)
    principal_point_2 = xp.asarray(principal_point_2)
    x, y, z = xyz_n3[..., 0], xyz_n3[..., 1], xyz_n3[..., 2]
    if model == PINHOLE:
        f = fw_poly_k[..., 1]
        return principal_point_2 + (f / z)[..., None] * xyz_n3[..., :2]
    r_xy = xp.sqrt(x * x + y * y)
    theta = xp.arctan2(r_xy, z)
    rho = polyval(fw_poly_k, theta, xp)
    safe_r = xp.where(r_xy > 0, r_xy, 1.0)
    scale = xp.where(r_xy > 0, rho / safe_r, 0.0)
    return principal_point_2 + scale[..., None] * xyz_n3[..., :2]


def unproject(
    uv_n2: Array, bw_poly_k: Array, principal_point_2: Array, model: str = FTHETA, xp: Any = np
) -> Array:
    """Pixels [..., 2] to unit rays [..., 3] in the camera frame.

    For the pinhole model pass the forward coefficients (focal length at index 1) as `bw_poly_k`.
    """
    _check_model(model)
    poly_k = xp.asarray(bw_poly_k)
    p = uv_n2 - xp.asarray(principal_point_2)
    if model == PINHOLE:
        f = poly_k[..., 1]
        ray = xp.concatenate([p / f[..., None], xp.ones_like(p[..., :1])], axis=-1)
        return ray / xp.linalg.norm(ray, axis=-1, keepdims=True)
    r = xp.sqrt(xp.sum(p * p, axis=-1))
    theta = polyval(poly_k, r, xp)
    safe_r = xp.where(r > 0, r, 1.0)
    s = xp.where(r > 0, xp.sin(theta) / safe_r, 0.0)
    return xp.concatenate([s[..., None] * p, xp.cos(theta)[..., None]], axis=-1)


def project_np(xyz_n3: Array, fw_poly_k: Array, principal_point_2: Array, model: str = FTHETA) -> np.ndarray:
    """NumPy `project`."""
    return project(np.asarray(xyz_n3, np.float64), fw_poly_k, principal_point_2, model, np)


def unproject_np(uv_n2: Array, bw_poly_k: Array, principal_point_2: Array, model: str = FTHETA) -> np.ndarray:
    """NumPy `unproject`."""
    return unproject(np.asarray(uv_n2, np.float64), bw_poly_k, principal_point_2, model, np)


def project_jax(
    xyz_n3: Array, fw_poly_k: Array, principal_point_2: Array, model: str = FTHETA
) -> jnp.ndarray:
    """JAX `project` (jit with `model` static)."""
    return project(jnp.asarray(xyz_n3), fw_poly_k, principal_point_2, model, jnp)


def unproject_jax(
    uv_n2: Array, bw_poly_k: Array, principal_point_2: Array, model: str = FTHETA
) -> jnp.ndarray:
    """JAX `unproject` (jit with `model` static)."""
    return unproject(jnp.asarray(uv_n2), bw_poly_k, principal_point_2, model, jnp)


def fit_backward_poly(fw_poly_k: Array, max_theta: float, degree: int = 4) -> np.ndarray:
    """Least-squares backward polynomial rho -> theta for a forward one, over [0, max_theta].

    Used to build consistent f-theta calibrations (the dataset stores both directions).
    """
    theta = np.linspace(0.0, max_theta, 512)
    rho = polyval(np.asarray(fw_poly_k, np.float64), theta)
    if np.any(np.diff(rho) <= 0):
        raise ValueError(f"Forward f-theta polynomial {fw_poly_k} is not increasing on [0, {max_theta}].")
    vander = rho[:, None] ** np.arange(1, degree + 1)
    coeffs = np.linalg.lstsq(vander, theta, rcond=None)[0]
    return np.concatenate([[0.0], coeffs])


def quat_to_rotmat(q_n4: Array, xp: Any = np) -> Array:
    """(qx, qy, qz, qw) [..., 4] (normalised here) to rotation matrices [..., 3, 3]."""
    q = q_n4 / xp.linalg.norm(q_n4, axis=-1, keepdims=True)
    x, y, z, w = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def rotmat_to_quat(rot_n33: Array) -> np.ndarray:
    """Rotation matrices [..., 3, 3] to (qx, qy, qz, qw) [..., 4] with qw >= 0 (NumPy)."""
    rot = np.asarray(rot_n33, np.float64)
    m = rot.reshape(-1, 3, 3)
    tr = np.trace(m, axis1=1, axis2=2)
    diag = np.stack([m[:, 0, 0], m[:, 1, 1], m[:, 2, 2], tr], axis=1)
    k = np.argmax(diag, axis=1)
    q = np.empty((m.shape[0], 4))
    for i in range(m.shape[0]):
        r = m[i]
        if k[i] == 3:
            s = 2.0 * np.sqrt(1.0 + tr[i])
            q[i] = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, s / 4]
        else:
            a = k[i]
            b, c = (a + 1) % 3, (a + 2) % 3
            s = 2.0 * np.sqrt(1.0 + r[a, a] - r[b, b] - r[c, c])
            q[i, a] = s / 4
            q[i, b] = (r[b, a] + r[a, b]) / s
            q[i, c] = (r[c, a] + r[a, c]) / s
            q[i, 3] = (r[c, b] - r[b, c]) / s
    q *= np.where(q[:, 3:] < 0, -1.0, 1.0)
    return q.reshape(rot.shape[:-2] + (4,))


def yaw_to_rotmat(yaw: Array, xp: Any = np) -> Array:
    """Rotation about +z by `yaw` [...] to [..., 3, 3]."""
    c, s = xp.cos(yaw), xp.sin(yaw)
    zero, one = xp.zeros_like(c), xp.ones_like(c)
    rows = [[c, -s, zero], [s, c, zero], [zero, zero, one]]
    return xp.stack([xp.stack(r, axis=-1) for r in rows], axis=-2)


def rotmat_to_yaw(rot_n33: Array, xp: Any = np) -> Array:
    """Heading of the x axis in the xy plane, [..., 3, 3] -> [...]."""
    return xp.arctan2(rot_n33[..., 1, 0], rot_n33[..., 0, 0])


def pose_matrix(rot_n33: Array, trans_n3: Array, xp: Any = np) -> Array:
    """Homogeneous transform [..., 4, 4] from a rotation [..., 3, 3] and a translation [..., 3]."""
    top = xp.concatenate([rot_n33, trans_n3[..., :, None]], axis=-1)
    bottom = xp.broadcast_to(xp.asarray([0.0, 0.0, 0.0, 1.0], dtype=top.dtype), top.shape[:-2] + (1, 4))
    return xp.concatenate([top, bottom], axis=-2)


def invert_pose(pose_n44: Array, xp: Any = np) -> Array:
    """Inverse of rigid transforms [..., 4, 4]."""
    rot_t = xp.swapaxes(pose_n44[..., :3, :3], -1, -2)
    trans = -xp.einsum("...ij,...j->...i", rot_t, pose_n44[..., :3, 3])
    return pose_matrix(rot_t, trans, xp)


def transform_points(pose_44: Array, xyz_n3: Array, xp: Any = np) -> Array:
    """Applies a rigid transform [..., 4, 4] to points [..., N, 3] (the pose maps source -> target)."""
    return xp.einsum("...ij,...nj->...ni", pose_44[..., :3, :3], xyz_n3) + pose_44[..., None, :3, 3]


def extrinsics_to_pose(q_4: Array, xyz_3: Array, xp: Any = np) -> Array:
    """Sensor-in-rig extrinsics (qx qy qz qw, x y z) to T_rig_sensor [..., 4, 4]: camera -> rig points."""
    return pose_matrix(quat_to_rotmat(xp.asarray(q_4), xp), xp.asarray(xyz_3), xp)


def camera_to_rig(xyz_cam_n3: Array, t_rig_cam_44: Array, xp: Any = np) -> Array:
    """Camera-frame points [..., N, 3] to the rig frame."""
    return transform_points(t_rig_cam_44, xyz_cam_n3, xp)


def rig_to_camera(xyz_rig_n3: Array, t_rig_cam_44: Array, xp: Any = np) -> Array:
    """Rig-frame points [..., N, 3] to the camera frame."""
    return transform_points(invert_pose(t_rig_cam_44, xp), xyz_rig_n3, xp)


def anchor_to_ego(xyz_anchor_n3: Array, t_anchor_ego_44: Array, xp: Any = np) -> Array:
    """Anchor (clip world) points [..., N, 3] to the ego frame whose pose in the anchor is given."""
    return transform_points(invert_pose(t_anchor_ego_44, xp), xyz_anchor_n3, xp)


def ego_to_anchor(xyz_ego_n3: Array, t_anchor_ego_44: Array, xp: Any = np) -> Array:
    """Ego-frame points [..., N, 3] to the anchor frame."""
    return transform_points(t_anchor_ego_44, xyz_ego_n3, xp)


def poses_in_frame(t_anchor_ref_44: Array, t_anchor_poses_n44: Array, xp: Any = np) -> Array:
    """Re-expresses anchor-frame poses [..., N, 4, 4] in the reference (e.g. t0 ego) frame."""
    return xp.einsum("ij,...njk->...nik", invert_pose(t_anchor_ref_44, xp), t_anchor_poses_n44)


# Rotation taking optical-frame axes (x right, y down, z forward) to rig axes (x forward, y left, z up)
# for a camera looking along the rig's +x: columns are the optical axes expressed in the rig frame.
OPTICAL_TO_FLU_33 = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_rotation(yaw: float, pitch: float = 0.0) -> np.ndarray:
    """R_rig_cam [3, 3] for a camera looking at `yaw` (left positive) and `pitch` (down positive)."""
    c, s = np.cos(pitch), np.sin(pitch)
    pitch_down = np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return yaw_to_rotmat(np.asarray(yaw, np.float64)) @ pitch_down @ OPTICAL_TO_FLU_33
