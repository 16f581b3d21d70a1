import numpy as np
import pytest
from coc_fixtures import phases

from alpamayo_jax.coc import keyframes as kf
from alpamayo_jax.coc import meta_actions
from alpamayo_jax.coc.meta_actions import MetaActions, Segment
from alpamayo_jax.coc.scenarios import ObstacleTrack, balance_by_scenario, select_scenario


def _meta(lon: list[tuple[str, int]], lat: list[tuple[str, int]]) -> MetaActions:
    """MetaActions from (label, ticks) runs per axis."""
    segs, per_axis = [], {}
    for axis, runs in (("longitudinal", lon), ("lateral", lat)):
        start, labels = 0, []
        for label, n in runs:
            segs.append(Segment(axis, label, start, start + n))
            labels += [label] * n
            start += n
        per_axis[axis] = np.array(labels)
    return MetaActions(per_axis["longitudinal"], per_axis["lateral"], tuple(segs))


def test_keyframes_half_a_second_before_detected_transitions():
    (xy, yaw, v, a), _ = phases([(40, 0.0, 0.0), (30, -2.0, 0.0), (60, 0.0, 0.0), (70, 1.0, 0.0)], 6.0)
    meta = meta_actions.detect(xy, yaw, v, a)
    frames = kf.find_keyframes(meta, t0_us=1_000_000)
    changes = [f.change_tick for f in frames]
    assert [f.transitions[0].after for f in frames] == ["strong_decelerate", "stop", "gentle_accelerate"]
    # Pulling away counts as stopped until the speed passes 0.3 m/s (tick 133).
    np.testing.assert_allclose(changes, [40, 70, 133], atol=2)
    for f in frames:
        assert f.change_tick - f.tick == 5
        assert f.t_us == 1_000_000 + f.tick * 100_000
        assert f.change_us - f.t_us == 500_000


def test_transitions_outside_window_or_short_spans_are_skipped():
    meta = _meta(
        [("maintain_speed", 15), ("gentle_decelerate", 30), ("maintain_speed", 95), ("stop", 60)],
        [("go_straight", 60), ("steer_left", 9), ("go_straight", 131)],
    )
    trs = kf.find_transitions(meta)
    # tick 15 is before tick 20, tick 140 after tick 135; the 9-tick steer span is too short.
    assert [(t.axis, t.tick, t.after) for t in trs] == [
        ("longitudinal", 45, "maintain_speed"),
        ("lateral", 69, "go_straight"),
    ]


def test_transitions_of_both_axes_close_in_time_share_one_keyframe():
    meta = _meta(
        [("maintain_speed", 50), ("gentle_decelerate", 50), ("maintain_speed", 100)],
        [("go_straight", 56), ("steer_left", 30), ("go_straight", 114)],
    )
    frames = kf.find_keyframes(meta)
    assert len(frames) == 3
    first = frames[0]
    assert first.tick == 45 and first.change_tick == 50
    assert first.transition("longitudinal").after == "gentle_decelerate"
    assert first.transition("lateral").after == "steer_left"
    assert [f.change_tick for f in frames[1:]] == [86, 100]


def test_early_transition_keyframe_is_clamped_to_the_history_minimum():
    meta = _meta([("maintain_speed", 20), ("strong_accelerate", 180)], [("go_straight", 200)])
    (frame,) = kf.find_keyframes(meta)
    assert frame.change_tick == 20 and frame.tick == 16


def test_reactive_and_proactive_keyframe_rules():
    assert kf.reactive_keyframe_us(5_000_000) == 4_500_000
    assert kf.reactive_keyframe_us(5_000_000, light_change_us=4_800_000) == 4_800_000
    assert kf.reactive_keyframe_us(5_000_000, light_change_us=3_000_000) == 4_500_000
    assert (
        kf.reactive_keyframe_us(5_000_000, blinker_onset_us=3_200_000, leave_centre_us=3_900_000) == 3_200_000
    )
    assert kf.proactive_keyframe_range(8_000_000) == (5_000_000, 7_500_000)
    assert kf.proactive_keyframe_range(8_000_000, first_visible_us=6_000_000) == (6_000_000, 7_500_000)
    assert kf.proactive_keyframe_range(8_000_000, first_visible_us=7_900_000) == (7_500_000, 7_500_000)
    assert kf.window_ok(2_000_000, 0, 20_000_000)
    assert not kf.window_ok(1_900_000, 0, 20_000_000)
    assert not kf.window_ok(14_100_000, 0, 20_000_000)


def _track(track_id, label, xy_start, xy_end, speed, t_end_us=20_000_000):
    t = np.arange(0, t_end_us + 1, 100_000)
    w = (t / t_end_us)[:, None]
    xy = np.asarray(xy_start) * (1 - w) + np.asarray(xy_end) * w
    return ObstacleTrack(track_id, label, t, xy, np.full(t.shape, float(speed)))


DECEL_META = _meta(
    [("maintain_speed", 60), ("gentle_decelerate", 40), ("maintain_speed", 100)], [("go_straight", 200)]
)
STOP_META = _meta([("maintain_speed", 60), ("strong_decelerate", 30), ("stop", 110)], [("go_straight", 200)])


@pytest.mark.parametrize(
    "meta, tracks, want",
    [
        (DECEL_META, [_track("a", "automobile", (20, 0), (20, 0), 8)], "slow_for_lead"),
        (STOP_META, [_track("a", "automobile", (20, 0), (8, 0), 0)], "stop_for_lead"),
        (STOP_META, [], "stop_for_light_or_sign"),
        (STOP_META, [_track("p", "pedestrian", (15, 3), (15, -3), 1.2)], "yield_to_vru"),
        (
            DECEL_META,
            [_track("c", "automobile", (15, 3.5), (15, -0.5), 9, t_end_us=10_000_000)],
            "vehicle_cut_in",
        ),
        (
            _meta(
                [
                    ("maintain_speed", 60),
                    ("gentle_decelerate", 20),
                    ("gentle_accelerate", 30),
                    ("maintain_speed", 90),
                ],
                [("go_straight", 200)],
            ),
            [],
            "speed_bump",
        ),
        (
            _meta([("stop", 60), ("gentle_accelerate", 60), ("maintain_speed", 80)], [("go_straight", 200)]),
            [],
            "resume_at_light_or_sign",
        ),
        (
            _meta(
                [("maintain_speed", 200)],
                [("go_straight", 60), ("steer_left", 25), ("steer_right", 25), ("go_straight", 90)],
            ),
            [],
            "lane_change",
        ),
        (
            _meta(
                [("maintain_speed", 200)],
                [("go_straight", 60), ("steer_left", 20), ("steer_right", 20), ("go_straight", 100)],
            ),
            [_track("p", "automobile", (30, 1.0), (-10, 1.0), 0)],
            "nudge",
        ),
        (
            _meta(
                [("maintain_speed", 200)],
                [("go_straight", 60), ("steer_left", 20), ("steer_right", 20), ("go_straight", 100)],
            ),
            [_track("k", "traffic_cone", (30, 0.5), (-10, 0.5), 0)],
            "bypass_construction",
        ),
        (
            _meta([("maintain_speed", 200)], [("go_straight", 60), ("steer_left", 60), ("go_straight", 80)]),
            [],
            "curvy_road",
        ),
        (
            _meta(
                [("gentle_decelerate", 60), ("maintain_speed", 140)],
                [("go_straight", 60), ("sharp_steer_right", 40), ("go_straight", 100)],
            ),
            [],
            "passing_intersection",
        ),
        (
            _meta([("gentle_decelerate", 60), ("gentle_accelerate", 140)], [("go_straight", 200)]),
            [_track("p", "pedestrian", (25, 3.5), (5, 3.5), 1.0)],
            "no_yield_to_vru",
        ),
        (
            _meta([("maintain_speed", 60), ("strong_accelerate", 140)], [("go_straight", 200)]),
            [],
            "risky_driving",
        ),
    ],
)
def test_scenario_inferred_from_meta_actions_and_obstacles(meta, tracks, want):
    frame = kf.find_keyframes(meta)[0]
    assert select_scenario(frame, meta, tracks).scenario == want


def test_scenario_from_ground_truth_needs_a_nearby_event():
    frame = kf.find_keyframes(DECEL_META)[0]
    gt = {"clip_id": "c1", "scenario": "speed_bump", "events": [{"t_us": 6_200_000}]}
    assert select_scenario(frame, DECEL_META, [], gt).scenario == "speed_bump"
    far = {"clip_id": "c1", "scenario": "speed_bump", "events": [{"t_us": 12_000_000}]}
    choice = select_scenario(frame, DECEL_META, [], far)
    assert choice.scenario is None and "no ground-truth" in choice.reason
    with pytest.raises(ValueError, match="c1"):
        select_scenario(frame, DECEL_META, [], {**gt, "scenario": "joyride"})


def test_balance_caps_each_scenario_and_reports_all_sixteen():
    cands = [(f"c{i}", "nudge") for i in range(5)] + [("d0", "lane_change"), ("d1", "lane_change")]
    kept, counts = balance_by_scenario(cands, per_scenario=2)
    assert kept == [("c0", "nudge"), ("c1", "nudge"), ("d0", "lane_change"), ("d1", "lane_change")]
    assert len(counts) == 16 and counts["nudge"] == 2 and counts["yield_to_vru"] == 0
    with pytest.raises(ValueError, match="joyride"):
        balance_by_scenario([("x", "joyride")], 1)
