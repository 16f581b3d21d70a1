"""Scenario of a keyframe (one of the 16 of SPEC 3) and scenario-balanced clip selection.

With synthetic ground truth the scenario is the clip's, provided a ground-truth behaviour change lies
near the keyframe. Otherwise it is inferred from the meta-action transitions and the obstacle tracks
around the change: who is in the ego path, who enters it, which static objects flank it.
"""

import dataclasses
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from alpamayo_jax.coc.keyframes import Keyframe
from alpamayo_jax.coc.meta_actions import MetaActions
from alpamayo_jax.coc.vocab import SCENARIOS

VRU_WORDS = ("pedestrian", "person", "bicycl", "cyclist", "rider", "stroller", "wheelchair")
VEHICLE_WORDS = ("car", "automobile", "vehicle", "truck", "bus", "van", "trailer", "motorcycle")
CONSTRUCTION_WORDS = ("cone", "barrier", "barrel", "construction", "bollard", "delineator")

DECEL = ("gentle_decelerate", "strong_decelerate")
ACCEL = ("gentle_accelerate", "strong_accelerate")
STEER_LEFT = ("steer_left", "sharp_steer_left")
STEER_RIGHT = ("steer_right", "sharp_steer_right")
LANE_HALF_WIDTH_M = 1.8
LOOKAHEAD_M = 40.0
# Ground-truth behaviour changes this close to a keyframe's change belong to it.
GT_TOLERANCE_US = 1_500_000


@dataclasses.dataclass(frozen=True)
class ObstacleTrack:
    """One tracked object: times `[n]` (us), centre `xy [n, 2]` (m) in the ego rig frame at each time
    (x forward, y left) and its own speed `[n]` (m/s)."""

    track_id: str
    label_class: str
    t_us: np.ndarray
    xy: np.ndarray
    speed: np.ndarray

    def __post_init__(self) -> None:
        n = self.t_us.shape[0]
        if self.xy.shape != (n, 2) or self.speed.shape != (n,):
            raise ValueError(
                f"obstacle track {self.track_id}: t_us {self.t_us.shape}, xy {self.xy.shape} and "
                f"speed {self.speed.shape} disagree"
            )

    def at(self, t_us: int, max_gap_us: int = 300_000) -> tuple[np.ndarray, float] | None:
        """Nearest sample (xy, speed) within `max_gap_us` of `t_us`, else None."""
        if self.t_us.shape[0] == 0:
            return None
        i = int(np.argmin(np.abs(self.t_us - t_us)))
        if abs(int(self.t_us[i]) - t_us) > max_gap_us:
            return None
        return self.xy[i], float(self.speed[i])


@dataclasses.dataclass(frozen=True)
class ScenarioChoice:
    scenario: str | None
    reason: str


def _is(label_class: str, words: Sequence[str]) -> bool:
    name = label_class.lower()
    return any(w in name for w in words)


def _in_path(xy: np.ndarray, half_width: float = LANE_HALF_WIDTH_M) -> bool:
    return 0.0 < xy[0] < LOOKAHEAD_M and abs(xy[1]) < half_width


def _near(tracks: Sequence[ObstacleTrack], t_us: int, words: Sequence[str], half_width: float) -> list:
    out = []
    for tr in tracks:
        state = tr.at(t_us)
        if state is not None and _is(tr.label_class, words) and _in_path(state[0], half_width):
            out.append((tr, state))
    return out


def _cut_in(tracks: Sequence[ObstacleTrack], t_us: int, window_us: int = 3_000_000) -> bool:
    """A vehicle that was beside the ego lane and is in it at `t_us`."""
    for tr in tracks:
        if not _is(tr.label_class, VEHICLE_WORDS):
            continue
        now, before = tr.at(t_us), tr.at(t_us - window_us, max_gap_us=window_us)
        if now is None or before is None:
            continue
        if (
            _in_path(now[0])
            and abs(before[0][1]) > LANE_HALF_WIDTH_M + 0.2
            and 0 < before[0][0] < LOOKAHEAD_M
        ):
            return True
    return False


def _ground_truth_choice(keyframe: Keyframe, ground_truth: Mapping[str, Any]) -> ScenarioChoice:
    events = ground_truth.get("events", [])
    near = [e for e in events if abs(int(e["t_us"]) - keyframe.change_us) <= GT_TOLERANCE_US]
    if not near:
        return ScenarioChoice(None, "no ground-truth behaviour change near the keyframe")
    scenario = ground_truth.get("scenario")
    if scenario not in SCENARIOS:
        raise ValueError(f"ground truth of clip {ground_truth.get('clip_id')}: unknown scenario {scenario!r}")
    return ScenarioChoice(scenario, "ground truth")


def _next_label(meta: MetaActions, axis: str, tick: int, horizon: int) -> list[str]:
    """Labels of the segments on `axis` that start within `horizon` ticks after `tick`."""
    return [s.label for s in meta.axis_segments(axis) if tick <= s.start <= tick + horizon]


def select_scenario(
    keyframe: Keyframe,
    meta: MetaActions,
    obstacles: Sequence[ObstacleTrack],
    ground_truth: Mapping[str, Any] | None = None,
) -> ScenarioChoice:
    """Scenario of the behaviour change after `keyframe`, or None with the reason it has none."""
    if ground_truth is not None:
        return _ground_truth_choice(keyframe, ground_truth)
    tc = keyframe.change_us
    lon, lat = keyframe.transition("longitudinal"), keyframe.transition("lateral")
    lon_after = lon.after if lon else None
    lat_after = lat.after if lat else None
    later_lat = _next_label(meta, "lateral", keyframe.change_tick + 1, 50)
    leads = _near(obstacles, tc, VEHICLE_WORDS, LANE_HALF_WIDTH_M)
    vrus = _near(obstacles, tc, VRU_WORDS, 4.0)
    works = _near(obstacles, tc, CONSTRUCTION_WORDS, 4.0)
    static_side = [
        (tr, st) for tr, st in _near(obstacles, tc, VEHICLE_WORDS + CONSTRUCTION_WORDS, 3.5) if st[1] < 0.5
    ]

    if lon_after in DECEL + ("stop",):
        if _cut_in(obstacles, tc):
            return ScenarioChoice("vehicle_cut_in", "decelerating for a vehicle entering the ego lane")
        if vrus:
            return ScenarioChoice("yield_to_vru", "decelerating with a vulnerable road user near the path")
        if leads:
            stops = lon_after == "stop" or "stop" in _next_label(
                meta, "longitudinal", keyframe.change_tick, 60
            )
            if stops:
                return ScenarioChoice("stop_for_lead", "stopping behind a lead vehicle")
            return ScenarioChoice("slow_for_lead", "slowing behind a lead vehicle")
        if any(lab in STEER_LEFT + STEER_RIGHT for lab in later_lat) and (static_side or works):
            return ScenarioChoice("nudge_preparation", "slowing before steering around a static object")
        if lon_after == "stop" or "stop" in _next_label(meta, "longitudinal", keyframe.change_tick, 60):
            return ScenarioChoice("stop_for_light_or_sign", "stopping with no lead vehicle")
        if any(lab in ACCEL for lab in _next_label(meta, "longitudinal", keyframe.change_tick + 1, 30)):
            return ScenarioChoice("speed_bump", "a short dip in speed with nothing ahead")
        if any(lab in STEER_LEFT + STEER_RIGHT for lab in later_lat):
            if any(lab.startswith("sharp") for lab in later_lat):
                return ScenarioChoice("passing_intersection", "slowing before a turn")
            return ScenarioChoice("curvy_road", "slowing before a curve")
        if lon_after == "strong_decelerate":
            return ScenarioChoice("risky_driving", "hard braking with no visible cause")
        return ScenarioChoice(None, "deceleration without an identifiable cause")
    if lon is not None and lon.before == "stop" and lon_after in ACCEL:
        if not leads:
            return ScenarioChoice("resume_at_light_or_sign", "pulling away from a stop with no lead vehicle")
        return ScenarioChoice(None, "pulling away behind a lead vehicle")
    if lat_after in STEER_LEFT + STEER_RIGHT:
        if works:
            return ScenarioChoice("bypass_construction", "steering around construction objects")
        if static_side:
            return ScenarioChoice("nudge", "steering around a static object")
        if lat_after.startswith("sharp"):
            return ScenarioChoice("passing_intersection", "a sharp turn")
        opposite = STEER_RIGHT if lat_after in STEER_LEFT else STEER_LEFT
        if later_lat and later_lat[0] in opposite:
            return ScenarioChoice("lane_change", "an S-shaped lateral manoeuvre")
        return ScenarioChoice("curvy_road", "a sustained steer")
    if lon_after in ACCEL + ("maintain_speed",) and vrus:
        return ScenarioChoice("no_yield_to_vru", "proceeding with a vulnerable road user near the path")
    if lon_after == "strong_accelerate":
        return ScenarioChoice("risky_driving", "hard acceleration with no visible cause")
    return ScenarioChoice(None, "no explicit decision")


def balance_by_scenario(
    candidates: Sequence[tuple[str, str]], per_scenario: int
) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """Keeps at most `per_scenario` (key, scenario) candidates per scenario, in input order.

    Returns the kept candidates and the count kept per scenario (all 16, zeros included).
    """
    if per_scenario < 1:
        raise ValueError(f"per_scenario must be >= 1, got {per_scenario}")
    unknown = {s for _, s in candidates} - set(SCENARIOS)
    if unknown:
        raise ValueError(f"unknown scenarios in candidates: {sorted(unknown)}")
    counts: Counter = Counter()
    kept = []
    for key, scenario in candidates:
        if counts[scenario] < per_scenario:
            counts[scenario] += 1
            kept.append((key, scenario))
    return kept, {s: counts[s] for s in SCENARIOS}
