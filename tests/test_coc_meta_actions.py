import numpy as np
import pytest
from coc_fixtures import away_from, phases, rollout

from alpamayo_jax.coc import meta_actions
from alpamayo_jax.coc.vocab import LATERAL_META_ACTIONS, LONGITUDINAL_META_ACTIONS


def _agreement(pred: np.ndarray, want: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean(pred[mask] == want[mask]))


LONGITUDINAL_CASES = {
    # name: (initial speed, [(ticks, accel, curvature, expected label)])
    "accelerations": (
        8.0,
        [
            (30, 0.0, 0.0, "maintain_speed"),
            (40, 0.8, 0.0, "gentle_accelerate"),
            (30, 0.0, 0.0, "maintain_speed"),
            (25, 2.5, 0.0, "strong_accelerate"),
            (30, 0.0, 0.0, "maintain_speed"),
        ],
    ),
    "decelerations": (
        16.0,
        [
            (30, 0.0, 0.0, "maintain_speed"),
            (40, -0.7, 0.0, "gentle_decelerate"),
            (30, 0.0, 0.0, "maintain_speed"),
            (25, -3.0, 0.0, "strong_decelerate"),
            (30, 0.0, 0.0, "maintain_speed"),
        ],
    ),
    "stop_and_go": (
        6.0,
        [
            (30, -2.0, 0.0, "strong_decelerate"),
            (40, 0.0, 0.0, "stop"),
            (40, 1.0, 0.0, "gentle_accelerate"),
        ],
    ),
    "reverse": (
        0.0,
        [
            (30, 0.0, 0.0, "stop"),
            (10, -2.0, 0.0, None),
            (60, 0.0, 0.0, "reverse"),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(LONGITUDINAL_CASES))
def test_longitudinal_labels_agree_away_from_transitions(case):
    v0, spec = LONGITUDINAL_CASES[case]
    (xy, yaw, v, a), starts = phases([(n, acc, k) for n, acc, k, _ in spec], v0)
    want = np.concatenate([np.full(n, lab if lab else "") for n, _, _, lab in spec])
    mask = away_from(starts, len(v)) & (want != "")
    out = meta_actions.detect(xy, yaw, v, a)
    assert out.longitudinal.shape == (len(v),)
    assert _agreement(out.longitudinal, want, mask) >= 0.9


LATERAL_CASES = {
    "steer": (
        10.0,
        [
            (30, 0.0, "go_straight"),
            (40, 0.01, "steer_left"),
            (30, 0.0, "go_straight"),
            (40, -0.01, "steer_right"),
            (30, 0.0, "go_straight"),
        ],
    ),
    "sharp": (
        5.0,
        [
            (30, 0.0, "go_straight"),
            (35, 0.12, "sharp_steer_left"),
            (30, 0.0, "go_straight"),
            (35, -0.12, "sharp_steer_right"),
            (30, 0.0, "go_straight"),
        ],
    ),
    "reverse": (
        -2.0,
        [
            (30, 0.0, "go_straight"),
            (50, 0.08, "reverse_left"),
            (30, 0.0, "go_straight"),
            (50, -0.08, "reverse_right"),
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(LATERAL_CASES))
def test_lateral_labels_agree_away_from_transitions(case):
    v0, spec = LATERAL_CASES[case]
    (xy, yaw, v, a), starts = phases([(n, 0.0, k) for n, k, _ in spec], v0)
    want = np.concatenate([np.full(n, lab) for n, _, lab in spec])
    mask = away_from(starts, len(v))
    out = meta_actions.detect(xy, yaw, v, a)
    assert _agreement(out.lateral, want, mask) >= 0.9


def test_every_label_is_produced_by_some_case():
    seen_lon, seen_lat = set(), set()
    for v0, spec in LONGITUDINAL_CASES.values():
        (xy, yaw, v, a), _ = phases([(n, acc, k) for n, acc, k, _ in spec], v0)
        seen_lon |= set(meta_actions.detect(xy, yaw, v, a).longitudinal)
    for v0, spec in LATERAL_CASES.values():
        (xy, yaw, v, a), _ = phases([(n, 0.0, k) for n, k, _ in spec], v0)
        seen_lat |= set(meta_actions.detect(xy, yaw, v, a).lateral)
    assert seen_lon == set(LONGITUDINAL_META_ACTIONS)
    assert seen_lat == set(LATERAL_META_ACTIONS)


def test_noisy_signals_keep_labels_and_segment_minimum_lengths():
    rng = np.random.default_rng(0)
    spec = [(40, 0.0, 0.0), (40, -2.0, 0.01), (40, 0.0, 0.0), (40, 1.0, -0.01), (40, 0.0, 0.0)]
    (xy, yaw, v, a), starts = phases(spec, 12.0)
    noisy = (
        xy + rng.normal(0, 0.02, xy.shape),
        yaw + rng.normal(0, 0.002, yaw.shape),
        v + rng.normal(0, 0.05, v.shape),
        a + rng.normal(0, 0.3, a.shape),
    )
    out = meta_actions.detect(*noisy)
    want_lon = np.repeat(
        ["maintain_speed", "strong_decelerate", "maintain_speed", "gentle_accelerate", "maintain_speed"], 40
    )
    want_lat = np.repeat(["go_straight", "steer_left", "go_straight", "steer_right", "go_straight"], 40)
    mask = away_from(starts, 200)
    assert _agreement(out.longitudinal, want_lon, mask) >= 0.9
    assert _agreement(out.lateral, want_lat, mask) >= 0.9
    for seg in out.segments:
        if seg.axis == "lateral":
            assert seg.length >= meta_actions.MIN_TICKS_LATERAL
        else:
            minimum = 12 if seg.label == "maintain_speed" else 8
            assert seg.length >= minimum


def test_segments_tile_each_axis_and_match_per_tick_labels():
    (xy, yaw, v, a), _ = phases([(40, 0.0, 0.0), (40, 1.0, 0.02), (40, 0.0, 0.0)], 5.0)
    out = meta_actions.detect(xy, yaw, v, a)
    for axis, per_tick in (("longitudinal", out.longitudinal), ("lateral", out.lateral)):
        segs = out.axis_segments(axis)
        assert segs[0].start == 0 and segs[-1].stop == 120
        assert all(x.stop == y.start for x, y in zip(segs[:-1], segs[1:], strict=True))
        assert all(x.label != y.label for x, y in zip(segs[:-1], segs[1:], strict=True))
        for seg in segs:
            assert set(per_tick[seg.start : seg.stop]) == {seg.label}


def test_short_acceleration_without_speed_change_is_maintain():
    # 0.5 s at 1 m/s^2 changes speed by 0.5 m/s < 0.8: not an acceleration.
    (xy, yaw, v, a), _ = phases([(40, 0.0, 0.0), (5, 1.0, 0.0), (40, 0.0, 0.0)], 10.0)
    out = meta_actions.detect(xy, yaw, v, a)
    assert set(out.longitudinal) == {"maintain_speed"}


def test_classification_rules_match_spec_thresholds():
    c = meta_actions.classify_longitudinal
    assert c(-0.2, 0.0, 0.0) == "reverse"
    assert c(0.1, 0.0, 0.0) == "stop"
    assert c(5.0, 1.4, 0.8) == "strong_accelerate"
    assert c(5.0, 1.4, 0.7) == "maintain_speed"
    assert c(5.0, 0.15, 0.8) == "gentle_accelerate"
    assert c(5.0, 0.14, 2.0) == "maintain_speed"
    assert c(5.0, -1.5, -0.8) == "strong_decelerate"
    assert c(5.0, -0.2, -1.0) == "gentle_decelerate"
    lat = meta_actions.classify_lateral
    assert lat(-1.0, 0.01, 0.3) == "reverse_left"
    assert lat(-1.0, -0.01, -0.3) == "reverse_right"
    assert lat(5.0, 0.06, 0.25) == "sharp_steer_left"
    assert lat(5.0, 0.06, 0.1) == "steer_left"
    assert lat(5.0, -0.002, -0.02) == "steer_right"
    assert lat(5.0, 0.001, 0.1) == "go_straight"


def test_bad_input_names_the_field():
    xy, yaw, v, a = rollout(np.zeros(20), np.zeros(20), 5.0)
    with pytest.raises(ValueError, match="xy"):
        meta_actions.detect(xy[:, :1], yaw, v, a)
    with pytest.raises(ValueError, match="accel"):
        meta_actions.detect(xy, yaw, v, a[:-1])
    bad = v.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="speed"):
        meta_actions.detect(xy, yaw, bad, a)
