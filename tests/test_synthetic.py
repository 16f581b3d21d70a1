"""Synthetic world: determinism, comfort bounds, causal stops, layout round trip through the reader."""

import numpy as np
import pandas as pd
import pytest

from alpamayo_jax import geometry as geo
from alpamayo_jax.coc import vocab as scenarios
from alpamayo_jax.data import pai, synthetic
from alpamayo_jax.data import synthetic_render as render
from alpamayo_jax.data import synthetic_world as world

TINY = synthetic.SyntheticConfig(
    width=112, height=64, cameras=("camera_front_wide_120fov", "camera_front_tele_30fov")
)


def _kinematics_10hz(ego):
    """Longitudinal/lateral acceleration, jerk, yaw rate and yaw acceleration at 10 Hz."""
    k = slice(None, None, synthetic.FRAME_STEP)
    xy, yaw = ego["xy"][k], np.unwrap(ego["yaw"][k])
    dt = 0.1
    vel = np.gradient(xy, dt, axis=0)
    acc = np.gradient(vel, dt, axis=0)
    heading = np.stack([np.cos(yaw), np.sin(yaw)], 1)
    lon = np.sum(acc * heading, 1)
    lat = heading[:, 0] * acc[:, 1] - heading[:, 1] * acc[:, 0]
    yaw_rate = np.gradient(yaw, dt)
    out = {
        "lon_accel": lon,
        "lat_accel": lat,
        "jerk": np.linalg.norm(np.gradient(acc, dt, axis=0), axis=1),
        "lon_jerk": np.gradient(lon, dt),
        "yaw_rate": yaw_rate,
        "yaw_accel": np.gradient(yaw_rate, dt),
    }
    return {key: value[3:-3] for key, value in out.items()}  # drop finite-difference edge effects


@pytest.mark.parametrize("name", scenarios.SCENARIOS)
def test_scenarios_decide_in_window_with_valid_ids_and_comfort(name):
    scene, log, timed, t_first = synthetic._simulate_scenario(name, np.random.default_rng([7, 3]))
    assert synthetic.EVENT_WINDOW_S[0] <= t_first <= synthetic.EVENT_WINDOW_S[1]
    for spec, t in timed:
        assert t is not None
        assert spec.longitudinal in scenarios.LONGITUDINAL_DECISIONS + (None,)
        assert spec.lateral in scenarios.LATERAL_DECISIONS + (None,)
        assert spec.longitudinal or spec.lateral
        assert all(c["category"] in scenarios.COMPONENT_CATEGORIES for c in spec.causes)
    kin = _kinematics_10hz(world.ego_poses(scene, log))
    assert np.all(log.v >= 0.0)
    if name == "risky_driving":
        assert log.emergency and kin["lon_accel"].min() < -4.05
        return
    assert not log.emergency
    assert -4.05 <= kin["lon_accel"].min() and kin["lon_accel"].max() <= 2.40
    assert np.abs(kin["lat_accel"]).max() < 4.89
    assert np.abs(kin["jerk"]).max() < 8.37 and np.abs(kin["lon_jerk"]).max() < 4.13
    assert np.abs(kin["yaw_rate"]).max() < 0.95 and np.abs(kin["yaw_accel"]).max() < 1.93


def test_ego_stops_before_red_light_stop_line():
    for index in range(20):
        scene, specs = synthetic.build_scene("stop_for_light_or_sign", np.random.default_rng([11, index]))
        if scene.lights:
            break
    light = scene.lights[0]
    log = world.simulate(scene)
    front = log.s + world.EGO_FRONT
    red = np.array([light.state_at(t) == "red" for t in log.t])
    assert red.any() and np.all(front[red] <= light.stop_line_s)
    assert log.v[-1] < 0.5 and light.stop_line_s - front[-1] < 3.0
    t_event = synthetic._event_time(specs[0], scene, log)
    assert light.states[1][0] <= t_event < light.states[1][0] + 1.5  # reacts to the yellow


def test_resume_waits_for_green():
    for index in range(20):
        scene, specs = synthetic.build_scene("resume_at_light_or_sign", np.random.default_rng([12, index]))
        if scene.lights:
            break
    log = world.simulate(scene)
    t_green = scene.lights[0].states[1][0]
    assert np.ptp(log.s[log.t < t_green]) < 0.05
    assert log.v[-1] > 5.0
    assert t_green <= synthetic._event_time(specs[0], scene, log) < t_green + 0.1


def test_generation_is_deterministic():
    rec_a, gt_a = synthetic.generate_clip(5, 2, TINY, "nudge")
    rec_b, gt_b = synthetic.generate_clip(5, 2, TINY, "nudge")
    assert gt_a == gt_b and rec_a.clip_id == rec_b.clip_id
    pd.testing.assert_frame_equal(rec_a.egomotion, rec_b.egomotion)
    assert [c.video_mp4 for c in rec_a.cameras] == [c.video_mp4 for c in rec_b.cameras]
    _, gt_c = synthetic.generate_clip(6, 2, TINY, "nudge")
    assert gt_c["clip_id"] != gt_a["clip_id"]


@pytest.fixture(scope="module")
def light_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synthetic.write_synthetic_dataset(root, 2, 3, TINY, scenario="stop_for_light_or_sign")
    return root


def test_written_clips_read_back_consistently(light_root):
    ds = pai.PaiDataset(light_root)
    cams = TINY.cameras
    for clip_id in ds.clip_index.index:
        gt = synthetic.read_ground_truth(light_root, clip_id)
        assert gt["scenario"] == "stop_for_light_or_sign" and gt["clip_id"] == clip_id
        event = gt["events"][0]
        assert event["longitudinal"] == "stop_for_static_constraints"
        t0 = event["t_us"] // 100_000 * 100_000
        sample = ds.load_sample(clip_id, t0, cameras=cams)
        assert sample["images"].shape == (2, 4, 64, 112, 3)
        np.testing.assert_array_equal(sample["frame_timestamps_us"][0], t0 + 100_000 * np.arange(-3, 1))
        assert sample["coc_events"][0]["event_start_timestamp"] == event["t_us"]
        speeds = np.linalg.norm(np.diff(sample["ego_future_xyz"], axis=0), axis=1) / 0.1
        assert speeds[-1] < 0.3 * speeds[0]  # braking for the light after the decision
        # Obstacle labels (rig frame at their time) map back onto the ground-truth world tracks.
        obstacles = ds.obstacles(clip_id)
        tracks = {o["id"]: np.array(o["track"]) for o in gt["objects"]}
        for _, row in obstacles.iloc[::37].iterrows():
            pose = ds.poses_at(clip_id, np.array([row["timestamp_us"]]))[0]
            world_xy = geo.ego_to_anchor(np.array([[row["center_x"], row["center_y"], 0.0]]), pose)[0, :2]
            track = tracks[row["track_id"]]
            k = np.searchsorted(track[:, 0], row["timestamp_us"])
            np.testing.assert_allclose(world_xy, track[k, 1:3], atol=1e-3)


def test_light_colour_is_visible_when_stopped():
    for index in range(20):
        scene, _ = synthetic.build_scene("stop_for_light_or_sign", np.random.default_rng([11, index]))
        if scene.lights:
            break
    log = world.simulate(scene)
    ego = world.ego_poses(scene, log)
    cam = render.make_camera("camera_front_wide_120fov", 288, 160)
    rays = render.precompute_rays(cam)
    ground = render.draw_ground_map(scene.road, (-60.0, 500.0), np.random.default_rng(0))
    counts = {}
    for t, k in (("before", 100), ("red", world.NUM_STEPS - 1)):
        boxes = synthetic._frame_boxes(scene, k, k * world.DT)
        img = render.render_frame(
            cam, rays, ground, ego["xy"][k], float(ego["yaw"][k]), boxes, render.box_corners(boxes)
        )
        img = img[..., :3].astype(int)
        red = (img[..., 0] > 120) & (img[..., 1] < 60) & (img[..., 2] < 60)
        green = (img[..., 1] > 120) & (img[..., 0] < 60) & (img[..., 2] < 100)
        counts[t] = (red.sum(), green.sum())
    assert scene.lights[0].state_at(19.99) == "red"
    assert counts["red"][0] >= 4 and counts["red"][1] == 0
    assert counts["before"][0] == 0 and counts["before"][1] == 0  # 100 m away: beyond the drawn range
