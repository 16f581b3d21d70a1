"""Camera models and frame transforms: formulas, round trips, NumPy/JAX agreement."""

import jax
import numpy as np
import pandas as pd
import pytest
from physical_ai_av.utils import camera_models as devkit_cm
from scipy.spatial.transform import Rotation

from alpamayo_jax import geometry as geo

FW_POLY = np.array([0.0, 520.0, -12.0, -25.0, 3.0])
PP = np.array([960.0, 540.0])
MAX_THETA = 1.2


def _points(rng, n=200):
    """Camera-frame points within MAX_THETA of the optical axis."""
    theta = rng.uniform(0.0, MAX_THETA, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    dist = rng.uniform(1.0, 50.0, n)
    return dist[:, None] * np.stack(
        [np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1
    )


def test_ftheta_matches_direct_formula_and_devkit():
    xyz = _points(np.random.default_rng(0))
    uv = geo.project_np(xyz, FW_POLY, PP)
    theta = np.arccos(xyz[:, 2] / np.linalg.norm(xyz, axis=1))
    rho = sum(c * theta**i for i, c in enumerate(FW_POLY))
    direct = PP + rho[:, None] * xyz[:, :2] / np.linalg.norm(xyz[:, :2], axis=1, keepdims=True)
    np.testing.assert_allclose(uv, direct, rtol=1e-10, atol=1e-8)
    bw = geo.fit_backward_poly(FW_POLY, MAX_THETA)
    row = pd.Series(
        {"width": 1920, "height": 1080, "cx": PP[0], "cy": PP[1]}
        | {f"fw_poly_{i}": FW_POLY[i] for i in range(5)}
        | {f"bw_poly_{i}": bw[i] for i in range(5)}
    )
    devkit = devkit_cm.FThetaCameraModel.from_camera_row(row)
    np.testing.assert_allclose(uv, devkit.ray2pixel(xyz), atol=1e-8)


def test_ftheta_round_trip_and_axis_point():
    xyz = _points(np.random.default_rng(1))
    bw = geo.fit_backward_poly(FW_POLY, MAX_THETA)
    rays = geo.unproject_np(geo.project_np(xyz, FW_POLY, PP), bw, PP)
    unit = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    assert np.max(np.linalg.norm(rays - unit, axis=1)) < 2e-3
    np.testing.assert_allclose(np.linalg.norm(rays, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(geo.project_np(np.array([[0.0, 0.0, 5.0]]), FW_POLY, PP), PP[None])
    np.testing.assert_allclose(geo.unproject_np(PP[None], bw, PP), [[0.0, 0.0, 1.0]])


def test_pinhole_round_trip_exact():
    xyz = _points(np.random.default_rng(2))
    poly = np.array([0.0, 800.0, 0.0, 0.0, 0.0])
    uv = geo.project_np(xyz, poly, PP, geo.PINHOLE)
    np.testing.assert_allclose(uv, PP + 800.0 * xyz[:, :2] / xyz[:, 2:], rtol=1e-12)
    rays = geo.unproject_np(uv, poly, PP, geo.PINHOLE)
    np.testing.assert_allclose(rays, xyz / np.linalg.norm(xyz, axis=1, keepdims=True), atol=1e-12)


@pytest.mark.parametrize("model", geo.CAMERA_MODELS)
def test_jax_matches_numpy_batched_over_cameras(model):
    xyz = np.stack([_points(np.random.default_rng(s), 50) for s in range(3)])  # [V, N, 3]
    polys = np.stack([FW_POLY * (1.0 + 0.1 * v) for v in range(3)])[:, None]  # [V, 1, K]
    pps = np.stack([PP + 10.0 * v for v in range(3)])[:, None]
    uv_np = geo.project_np(xyz, polys, pps, model)
    uv_jax = jax.jit(geo.project_jax, static_argnums=3)(xyz, polys, pps, model)
    np.testing.assert_allclose(np.asarray(uv_jax), uv_np, rtol=0, atol=1e-3)  # float32 vs float64
    bw = (
        np.stack([geo.fit_backward_poly(p[0], MAX_THETA) for p in polys])[:, None]
        if model == geo.FTHETA
        else polys
    )
    ray_np = geo.unproject_np(uv_np, bw, pps, model)
    ray_jax = jax.jit(geo.unproject_jax, static_argnums=3)(uv_np, bw, pps, model)
    np.testing.assert_allclose(np.asarray(ray_jax), ray_np, atol=1e-6)


def test_unknown_model_is_rejected():
    with pytest.raises(ValueError, match="fisheye"):
        geo.project_np(np.ones((1, 3)), FW_POLY, PP, "fisheye")


def test_quaternion_helpers_match_scipy():
    rot = Rotation.random(20, random_state=3)
    q = rot.as_quat()
    np.testing.assert_allclose(geo.quat_to_rotmat(q), rot.as_matrix(), atol=1e-12)
    q_back = geo.rotmat_to_quat(rot.as_matrix())
    np.testing.assert_allclose(np.abs(np.sum(q_back * q, axis=1)), 1.0, atol=1e-12)
    assert np.all(q_back[:, 3] >= 0)
    np.testing.assert_allclose(np.asarray(geo.quat_to_rotmat(q, jax.numpy)), rot.as_matrix(), atol=1e-6)
    np.testing.assert_allclose(geo.rotmat_to_yaw(geo.yaw_to_rotmat(np.array([0.3, -2.0]))), [0.3, -2.0])


def test_camera_rig_anchor_chain_keeps_world_point_fixed():
    rng = np.random.default_rng(4)
    t_rig_cam = geo.extrinsics_to_pose(
        geo.rotmat_to_quat(geo.camera_rotation(0.4, 0.1)), np.array([1.5, 0.2, 1.4])
    )
    world = rng.uniform(-20, 20, (10, 3))
    for yaw, trans in [(0.0, [0.0, 0.0, 0.0]), (0.7, [12.0, -3.0, 0.2]), (-2.5, [-40.0, 8.0, -0.1])]:
        t_anchor_ego = geo.pose_matrix(geo.yaw_to_rotmat(np.asarray(yaw)), np.asarray(trans))
        cam = geo.rig_to_camera(geo.anchor_to_ego(world, t_anchor_ego), t_rig_cam)
        back = geo.ego_to_anchor(geo.camera_to_rig(cam, t_rig_cam), t_anchor_ego)
        np.testing.assert_allclose(back, world, atol=1e-10)
    # A camera looking straight ahead sees a point 10 m in front of it on its optical axis.
    t_front = geo.pose_matrix(geo.camera_rotation(0.0), np.array([2.0, 0.0, 1.5]))
    np.testing.assert_allclose(
        geo.rig_to_camera(np.array([[12.0, 0.0, 1.5]]), t_front), [[0.0, 0.0, 10.0]], atol=1e-12
    )
    # A point to the rig's left appears at negative camera x (image left); a point above at negative y.
    left_up = geo.rig_to_camera(np.array([[12.0, 1.0, 2.5]]), t_front)[0]
    assert left_up[0] < 0 and left_up[1] < 0


def test_poses_in_frame_makes_reference_identity():
    poses = geo.pose_matrix(
        geo.yaw_to_rotmat(np.array([0.1, 0.5, 0.9])), np.array([[0.0, 0, 0], [5, 1, 0], [9, 4, 0]])
    )
    rel = geo.poses_in_frame(poses[1], poses)
    np.testing.assert_allclose(rel[1], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(geo.rotmat_to_yaw(rel[..., :3, :3]), [-0.4, 0.0, 0.4], atol=1e-12)
