"""PhysicalAI-AV reader on clips written by the layout writer with a known (analytic) ego motion."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from alpamayo_jax import geometry as geo
from alpamayo_jax.data import pai, pai_writer
from alpamayo_jax.data import pai_layout as layout

KAPPA = 0.02  # 1/m
V0, ACC = 5.0, 0.5  # m/s, m/s^2
START_XY, START_YAW = np.array([100.0, -50.0]), 0.3
FRAME_OFFSET_US = 33_000
H, W = 64, 112
FW = np.array([0.0, 60.0, 0.0, -2.0, 0.0])
DIMS = dict(length=4.9, width=2.1, height=1.6, rear_axle_to_bbox_center=1.3, wheelbase=2.9, track_width=1.7)


def arc_length(t_s):
    return V0 * t_s + 0.5 * ACC * t_s**2


def relative_arc_pose(s0, s1):
    """Pose at arc length s1 in the frame of the pose at s0: (x, y, yaw)."""
    dpsi = KAPPA * (s1 - s0)
    return np.sin(dpsi) / KAPPA, (1 - np.cos(dpsi)) / KAPPA, dpsi


def anchor_poses(t_s):
    x, y, yaw = relative_arc_pose(0.0, arc_length(t_s))
    c, s = np.cos(START_YAW), np.sin(START_YAW)
    xyz = np.stack([START_XY[0] + c * x - s * y, START_XY[1] + s * x + c * y, np.zeros_like(x)], 1)
    return geo.yaw_to_rotmat(START_YAW + yaw), xyz


def make_camera(name, yaw, video=None, num_frames=200):
    frames = [np.full((H, W, 3), (5 * k) % 256, np.uint8) for k in range(num_frames)]
    return pai_writer.CameraClip(
        name=name,
        video_mp4=pai_writer.encode_video(frames) if video is None else video,
        timestamps_us=FRAME_OFFSET_US + 100_000 * np.arange(num_frames),
        width=W,
        height=H,
        principal_point=(W / 2, H / 2),
        fw_poly=FW,
        bw_poly=geo.fit_backward_poly(FW, 1.2),
        rotation_33=geo.camera_rotation(yaw, 0.05),
        translation_3=np.array([1.5, 0.0, 1.5]),
    )


def make_clip(clip_id, cameras, events=None, obstacles=None):
    t_us = np.arange(0, 20_000_001, 10_000)
    rot, xyz = anchor_poses(t_us / 1e6)
    v = V0 + ACC * t_us / 1e6
    heading = np.stack(
        [
            np.cos(START_YAW + KAPPA * arc_length(t_us / 1e6)),
            np.sin(START_YAW + KAPPA * arc_length(t_us / 1e6)),
            0 * v,
        ],
        1,
    )
    ego = pai_writer.egomotion_table(
        t_us, rot, xyz, v[:, None] * heading, ACC * heading, np.full_like(v, KAPPA)
    )
    return pai_writer.ClipRecord(clip_id, ego, cameras, DIMS, obstacles=obstacles, reasoning_events=events)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pai")
    cams = [make_camera("camera_front_wide_120fov", 0.0), make_camera("camera_cross_left_120fov", 1.0)]
    obstacles = pd.DataFrame(
        {c: [0.0, 1.0] for c in layout.OBSTACLE_COLUMNS}
        | {
            "timestamp_us": [0, 100_000],
            "track_id": ["a", "a"],
            "label_class": ["car", "car"],
            "reference_frame_timestamp_us": [0, 100_000],
        }
    )
    events = [{"event_start_timestamp": 4_600_000, "cot": "Stop for the red light ahead."}]
    clips = [
        make_clip("clip-good", cams, events, obstacles),
        make_clip(
            "clip-corrupt", [make_camera("camera_front_wide_120fov", 0.0, video=b"\x00not a video" * 50)]
        ),
        make_clip(
            "clip-short-video",
            [
                dataclasses.replace(
                    cams[0], video_mp4=pai_writer.encode_video([np.zeros((H, W, 3), np.uint8)] * 20)
                )
            ],
        ),
    ]
    index = pai_writer.write_dataset(root, clips, clips_per_chunk=2)
    assert index["chunk"].tolist() == [0, 0, 1]
    return root


CAMS2 = ("camera_cross_left_120fov", "camera_front_wide_120fov")


@pytest.mark.parametrize("t0_us", [5_100_000, 7_123_457])
def test_ego_history_and_future_match_analytic_motion(root, t0_us):
    sample = pai.load_sample(root, "clip-good", t0_us, cameras=CAMS2)
    t0 = t0_us / 1e6
    hist_t = t0 + 0.1 * np.arange(-15, 1)
    fut_t = t0 + 0.1 * np.arange(1, 65)
    for key, times in (("history", hist_t), ("future", fut_t)):
        x, y, yaw = relative_arc_pose(arc_length(t0), arc_length(times))
        xyz = sample[f"ego_{key}_xyz"]
        assert xyz.shape == (len(times), 3)
        np.testing.assert_allclose(xyz[:, 0], x, atol=1e-3)
        np.testing.assert_allclose(xyz[:, 1], y, atol=1e-3)
        np.testing.assert_allclose(xyz[:, 2], 0.0, atol=1e-3)
        np.testing.assert_allclose(geo.rotmat_to_yaw(sample[f"ego_{key}_rot"]), yaw, atol=1e-5)
    np.testing.assert_allclose(sample["ego_history_xyz"][-1], 0.0, atol=1e-9)
    np.testing.assert_allclose(sample["ego_history_rot"][-1], np.eye(3), atol=1e-9)
    assert sample["ego_future_timestamps_us"][-1] == t0_us + 6_400_000


def test_frames_are_last_at_or_before_each_timestamp(root):
    sample = pai.load_sample(root, "clip-good", 5_100_000, cameras=CAMS2)
    assert sample["images"].shape == (2, 4, H, W, 3) and sample["images"].dtype == np.uint8
    expected_k = np.array([47, 48, 49, 50])  # frames at k*0.1 s + 33 ms, requested 4.8 ... 5.1 s
    np.testing.assert_array_equal(
        sample["frame_timestamps_us"], np.tile(FRAME_OFFSET_US + 100_000 * expected_k, (2, 1))
    )
    np.testing.assert_allclose(
        sample["images"].mean(axis=(2, 3, 4)), np.tile(5.0 * expected_k, (2, 1)), atol=2.0
    )
    np.testing.assert_array_equal(sample["camera_ids"], [0, 1])
    np.testing.assert_array_equal(
        sample["requested_frame_timestamps_us"], [4_800_000, 4_900_000, 5_000_000, 5_100_000]
    )


def test_resize_calibration_events_and_obstacles(root):
    sample = pai.load_sample(
        root, "clip-good", 5_100_000, cameras=CAMS2, num_frames=2, image_size_hw=(32, 48)
    )
    assert sample["images"].shape == (2, 2, 32, 48, 3)
    np.testing.assert_allclose(sample["image_scale_xy"], [[48 / W, 32 / H]] * 2)
    np.testing.assert_allclose(sample["fw_poly"], [FW, FW])
    np.testing.assert_allclose(sample["t_rig_cam"][1, :3, :3], geo.camera_rotation(0.0, 0.05), atol=1e-12)
    np.testing.assert_allclose(sample["t_rig_cam"][0, :3, 3], [1.5, 0.0, 1.5])
    assert list(sample["camera_model"]) == ["ftheta", "ftheta"]
    assert sample["coc_events"] == [
        {"event_start_timestamp": 4_600_000, "cot": "Stop for the red light ahead."}
    ]
    ds = pai.PaiDataset(root)
    assert ds.obstacles("clip-good")["track_id"].tolist() == ["a", "a"]
    assert ds.obstacles("clip-corrupt") is None
    assert ds.reasoning_events("clip-corrupt") == []


def test_world_point_stays_fixed_through_all_frames(root):
    ds = pai.PaiDataset(root)
    t0_us = 6_000_000
    sample = ds.load_sample("clip-good", t0_us, cameras=CAMS2, num_frames=1)
    world = np.array([[130.0, -30.0, 1.0], [90.0, -55.0, 0.5]])
    t_anchor_hist = ds.poses_at("clip-good", sample["ego_history_timestamps_us"])
    in_t0 = geo.anchor_to_ego(world, sample["t_anchor_ego_t0"])
    t_cam = sample["t_rig_cam"][1]
    for i in range(16):
        in_ego_i = geo.anchor_to_ego(world, t_anchor_hist[i])
        in_cam_i = geo.rig_to_camera(in_ego_i, t_cam)
        back_in_ego_i = geo.camera_to_rig(in_cam_i, t_cam)
        t_t0_i = geo.pose_matrix(sample["ego_history_rot"][i], sample["ego_history_xyz"][i])
        np.testing.assert_allclose(geo.transform_points(t_t0_i, back_in_ego_i), in_t0, atol=1e-9)


@pytest.mark.parametrize(
    "clip_id, t0_us, cameras, match",
    [
        ("clip-good", 1_000_000, CAMS2, "clip-good, feature egomotion: .*outside"),
        ("clip-good", 14_000_000, CAMS2, "clip-good, feature egomotion: .*outside"),
        ("clip-missing", 5_000_000, CAMS2, "clip clip-missing: not in"),
        (
            "clip-good",
            5_000_000,
            ("camera_rear_tele_30fov",),
            "clip-good, feature camera_rear_tele_30fov: camera not present",
        ),
        ("clip-good", 5_000_000, ("camera_nose",), "clip-good, feature camera_nose: unknown camera"),
        (
            "clip-corrupt",
            5_000_000,
            ("camera_front_wide_120fov",),
            "clip-corrupt, feature camera_front_wide_120fov: unreadable video",
        ),
        (
            "clip-short-video",
            5_000_000,
            ("camera_front_wide_120fov",),
            "clip-short-video, feature camera_front_wide_120fov: video has 20 frames",
        ),
    ],
)
def test_bad_inputs_raise_clear_errors(root, clip_id, t0_us, cameras, match):
    with pytest.raises(pai.PaiReadError, match=match):
        pai.load_sample(root, clip_id, t0_us, cameras=cameras)


def test_missing_files_raise_clear_errors(tmp_path):
    with pytest.raises(pai.PaiReadError, match="missing clip_index.parquet"):
        pai.PaiDataset(tmp_path)
    pai_writer.write_dataset(
        tmp_path, [make_clip("clip-x", [make_camera("camera_front_wide_120fov", 0.0, num_frames=80)])]
    )
    (tmp_path / "labels/egomotion/egomotion.chunk_0000.zip").unlink()
    with pytest.raises(pai.PaiReadError, match="clip-x, feature egomotion: missing chunk file"):
        pai.load_sample(tmp_path, "clip-x", 5_000_000, cameras=("camera_front_wide_120fov",))


def test_writer_rejects_bad_records(tmp_path):
    clip = make_clip("clip-y", [make_camera("camera_front_wide_120fov", 0.0, num_frames=5)])
    bad = pai_writer.ClipRecord("clip-y", clip.egomotion.drop(columns=["qw"]), clip.cameras, DIMS)
    with pytest.raises(ValueError, match="clip-y: egomotion table lacks columns \\['qw'\\]"):
        pai_writer.write_dataset(tmp_path, [bad])
    with pytest.raises(ValueError, match="clip-y given twice"):
        pai_writer.write_dataset(tmp_path, [clip, clip])
