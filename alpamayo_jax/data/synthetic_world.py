"""Road geometry, scene objects and the rule-based ego planner of the synthetic driving world.

Everything lives on the route's Frenet frame (arc length s along the ego's route reference line, lateral
offset d, left positive); the route's reference line is the centre of the ego's starting lane and passes
through the anchor origin at s = 0 with heading 0. Objects carry scripted Frenet tracks at 100 Hz; the
ego reacts causally through an IDM-like longitudinal controller (speed envelope from curves, bumps and
zones; lead obstacles; stop targets at red lights, stop signs and crossing pedestrians) with comfort
acceleration and jerk limits, and a lateral plan of smooth quintic offset transitions in s, triggered by
rules (nudge, lane change, gap found). `simulate` returns 100 Hz kinematics and a log of which rule
bound the acceleration, from which the scenario derives its ground-truth decision times.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

DT = 0.01  # planner / egomotion step, s
DURATION_S = 20.0
NUM_STEPS = int(round(DURATION_S / DT)) + 1
LANE_WIDTH = 3.5
EGO_DIMS = {
    "length": 4.9,
    "width": 2.1,
    "height": 1.6,
    "rear_axle_to_bbox_center": 1.35,
    "wheelbase": 2.9,
    "track_width": 1.7,
}
EGO_FRONT = EGO_DIMS["rear_axle_to_bbox_center"] + EGO_DIMS["length"] / 2  # rear axle to front bumper
A_MAX = 1.8  # comfort acceleration, m/s^2
B_COMFORT = 3.5  # comfort deceleration bound, m/s^2
B_EMERGENCY = 8.0
JERK_COMFORT = 3.5  # m/s^3 (SPEC 2.1 longitudinal jerk < 4.13)
JERK_EMERGENCY = 25.0
A_LAT_CURVE = 2.0  # lateral acceleration used to pick curve speeds
B_ENVELOPE = 1.5  # deceleration used to approach lower speed limits ahead
IDM_T, IDM_S0, IDM_B = 1.5, 2.5, 2.0


@dataclasses.dataclass(frozen=True)
class Route:
    """Reference line sampled every `ds` metres: s [N], xy [N, 2], heading [N], kappa [N]."""

    s: np.ndarray
    xy: np.ndarray
    heading: np.ndarray
    kappa: np.ndarray


def build_route(
    segments: list[tuple[float, float]], transition_m: float = 10.0, s_start: float = -80.0
) -> Route:
    """Integrates a curvature profile: `segments` of (length m, curvature 1/m), with linear curvature
    ramps of `transition_m` between them (clothoids), starting `s_start` metres behind the origin."""
    ds = 0.25
    total = sum(length for length, _ in segments)
    s = np.arange(s_start, total + ds, ds)
    knots_s, knots_k = [s_start], [segments[0][1]]
    acc = 0.0
    for (length, k), (_, k_next) in zip(segments, segments[1:] + [segments[-1]], strict=True):
        acc += length
        knots_s += [acc - transition_m / 2, acc + transition_m / 2]
        knots_k += [k, k_next]
    kappa = np.interp(s, knots_s, knots_k)
    heading = np.concatenate([[0.0], np.cumsum(0.5 * (kappa[1:] + kappa[:-1]) * ds)])
    heading -= np.interp(0.0, s, heading)
    dxy = np.stack([np.cos(heading), np.sin(heading)], 1)
    xy = np.concatenate([[[0.0, 0.0]], np.cumsum(0.5 * (dxy[1:] + dxy[:-1]) * ds, axis=0)])
    xy -= np.array([np.interp(0.0, s, xy[:, 0]), np.interp(0.0, s, xy[:, 1])])
    return Route(s, xy, heading, kappa)


def route_at(route: Route, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reference point xy [..., 2], heading [...] and curvature [...] at arc lengths s [...]."""
    s = np.asarray(s, np.float64)
    xy = np.stack([np.interp(s, route.s, route.xy[:, 0]), np.interp(s, route.s, route.xy[:, 1])], -1)
    return xy, np.interp(s, route.s, route.heading), np.interp(s, route.s, route.kappa)


def frenet_to_world(route: Route, s: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World xy [..., 2] and route heading [...] of Frenet points."""
    xy, heading, _ = route_at(route, s)
    normal = np.stack([-np.sin(heading), np.cos(heading)], -1)
    return xy + np.asarray(d)[..., None] * normal, heading


def quintic(u: np.ndarray) -> np.ndarray:
    """Smooth 0 -> 1 step with zero first and second derivatives at both ends."""
    u = np.clip(u, 0.0, 1.0)
    return u**3 * (10 - 15 * u + 6 * u**2)


def quintic_slope(u: np.ndarray) -> np.ndarray:
    """Derivative of `quintic` with respect to u."""
    u = np.clip(u, 0.0, 1.0)
    return 30 * u**2 * (1 - u) ** 2


@dataclasses.dataclass
class SceneObject:
    """A box with a scripted Frenet track at 100 Hz: s [T], d [T], yaw relative to the route [T]."""

    id: str
    type: str
    dims: tuple[float, float, float]
    color: tuple[int, int, int]
    s: np.ndarray
    d: np.ndarray
    yaw_rel: np.ndarray
    blocks_path: bool = True  # the planner treats it as an obstacle when it is in the ego corridor
    is_vru: bool = False

    @property
    def speed(self) -> np.ndarray:
        return np.gradient(self.s, DT)


@dataclasses.dataclass(frozen=True)
class TrafficLight:
    """A light controlling the stop line at `stop_line_s`; `states` are (t_s, state) changes."""

    id: str
    stop_line_s: float
    position: tuple[float, float, float]  # Frenet s, d and height of the lamp housing
    states: tuple[tuple[float, str], ...]

    def state_at(self, t: float) -> str:
        state = self.states[0][1]
        for t_change, s in self.states:
            if t >= t_change:
                state = s
        return state


@dataclasses.dataclass(frozen=True)
class StopSign:
    id: str
    stop_line_s: float
    position: tuple[float, float, float]
    wait_s: float = 2.0


@dataclasses.dataclass
class LateralTrigger:
    """When `condition(t, s, v)` first holds, shift the path offset to `d_to` over `duration_s`."""

    id: str
    d_to: float
    duration_s: float
    condition: Callable[[float, float, float], bool]
    fired_t: float | None = None
    s_start: float | None = None
    length: float | None = None
    d_from: float = 0.0


@dataclasses.dataclass
class Road:
    """Road layout around the route: same-direction lane centres (d), an oncoming lane or not,
    optional crossing road, markings and zones."""

    route: Route
    lane_offsets: tuple[float, ...]
    oncoming: bool
    crossing: dict | None = None  # {"center": [x, y], "heading": h, "half_width": m}
    stop_line_s: float | None = None
    crosswalk_s: float | None = None
    bumps_s: tuple[float, ...] = ()
    construction: tuple[float, float] | None = None  # s range of the work zone
    lane_width: float = LANE_WIDTH

    @property
    def right_edge(self) -> float:
        return min(self.lane_offsets) - self.lane_width / 2

    @property
    def left_edge(self) -> float:
        return max(self.lane_offsets) + self.lane_width / 2 + (self.lane_width if self.oncoming else 0.0)


@dataclasses.dataclass
class Scene:
    road: Road
    v_set: float
    v0: float
    objects: list[SceneObject]
    lights: list[TrafficLight] = dataclasses.field(default_factory=list)
    signs: list[StopSign] = dataclasses.field(default_factory=list)
    triggers: list[LateralTrigger] = dataclasses.field(default_factory=list)
    zone_speed: float = 7.0
    gap_search: dict | None = None  # {"object_id", "from_t", "until_trigger"}


def lateral_offset(triggers: list[LateralTrigger], s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Planned path offset d(s) and its slope dd/ds from the fired triggers (in firing order)."""
    s = np.asarray(s, np.float64)
    d = np.zeros_like(s)
    slope = np.zeros_like(s)
    for trig in triggers:
        if trig.fired_t is None:
            continue
        u = (s - trig.s_start) / trig.length
        after = s >= trig.s_start
        d = np.where(after, trig.d_from + (trig.d_to - trig.d_from) * quintic(u), d)
        slope = np.where(after, (trig.d_to - trig.d_from) * quintic_slope(u) / trig.length, slope)
    return d, slope


@dataclasses.dataclass
class EgoLog:
    """100 Hz planner output: t, s, v, a, a_cmd, binding cause id per step."""

    t: np.ndarray
    s: np.ndarray
    v: np.ndarray
    a: np.ndarray
    a_cmd: np.ndarray
    binding: list[str]
    emergency: bool


def _idm(v: float, gap: float, v_obj: float, s0: float = IDM_S0) -> float:
    s_star = s0 + max(0.0, v * IDM_T + v * (v - v_obj) / (2 * np.sqrt(A_MAX * IDM_B)))
    return A_MAX * (1.0 - (s_star / max(gap, 0.05)) ** 2)


def _speed_envelope(scene: Scene, s: float, t: float) -> tuple[float, str]:
    """Desired speed from the set speed and the lower limits ahead (curves, bumps, work zone)."""
    best, cause = scene.v_set, "set_speed"
    front = s + EGO_FRONT
    ahead = np.arange(s, s + 160.0, 2.0)
    _, _, kappa = route_at(scene.road.route, ahead)
    limits = np.sqrt(A_LAT_CURVE / np.maximum(np.abs(kappa), 1e-4))
    reach = np.sqrt(limits**2 + 2 * B_ENVELOPE * np.maximum(ahead - s, 0.0))
    if reach.min() < best:
        best, cause = float(reach.min()), "curve"
    zones = [(b - 3.0, b + 4.0, 2.8, f"bump_{i}") for i, b in enumerate(scene.road.bumps_s)]
    if scene.road.construction is not None:
        zones.append(
            (scene.road.construction[0] - 5.0, scene.road.construction[1], scene.zone_speed, "construction")
        )
    for start, end, v_lim, zone_id in zones:
        if front > end:
            continue
        reach_v = np.sqrt(v_lim**2 + 2 * B_ENVELOPE * max(start - front, 0.0))
        if reach_v < best:
            best, cause = float(reach_v), zone_id
    if scene.gap_search is not None and scene.gap_search.get("active", False):
        obj = next(o for o in scene.objects if o.id == scene.gap_search["object_id"])
        k = min(int(round(t / DT)), NUM_STEPS - 1)
        v_gap = max(float(obj.speed[k]) - 3.0, 2.0)
        if v_gap < best:
            best, cause = v_gap, "gap_search"
    return best, cause


def _in_corridor(obj: SceneObject, k: int, d_path: float) -> bool:
    margin = 0.3 if not obj.is_vru else 1.0
    return abs(obj.d[k] - d_path) < (obj.dims[1] + EGO_DIMS["width"]) / 2 + margin


def _pedestrian_conflict(obj: SceneObject, k: int, d_path: float) -> bool:
    """A crossing pedestrian is in the corridor or will enter it within 3 s."""
    if _in_corridor(obj, k, d_path):
        return True
    v_d = (obj.d[min(k + 1, NUM_STEPS - 1)] - obj.d[k]) / DT
    future = obj.d[k] + v_d * np.linspace(0.0, 3.0, 7)
    half = (obj.dims[1] + EGO_DIMS["width"]) / 2 + 1.0
    return bool(np.any(np.abs(future - d_path) < half)) and abs(v_d) > 0.2


def simulate(scene: Scene) -> EgoLog:
    """Runs the planner for the clip duration at 100 Hz."""
    n = NUM_STEPS
    t_arr = np.arange(n) * DT
    s_arr, v_arr, a_arr, cmd_arr = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    binding: list[str] = []
    s, v, a = 0.0, scene.v0, 0.0
    sign_stopped_since: dict[str, float] = {}
    signs_done: set[str] = set()
    emergency = False
    for k in range(n):
        t = t_arr[k]
        s_arr[k], v_arr[k], a_arr[k] = s, v, a
        for trig in scene.triggers:
            if trig.fired_t is None and trig.condition(t, s, v):
                d_now, _ = lateral_offset(scene.triggers, np.array([s]))
                trig.fired_t, trig.s_start, trig.d_from = t, s, float(d_now[0])
                trig.length = max(v, 3.0) * trig.duration_s
                if scene.gap_search is not None and trig.id == scene.gap_search.get("until_trigger"):
                    scene.gap_search["active"] = False
        if (
            scene.gap_search is not None
            and not scene.gap_search.get("started")
            and t >= scene.gap_search["from_t"]
        ):
            scene.gap_search["active"] = scene.gap_search["started"] = True
        v_des, cause = _speed_envelope(scene, s, t)
        candidates = [(float(np.clip(0.8 * (v_des - v), -B_COMFORT, A_MAX)), cause)]
        front = s + EGO_FRONT
        for obj in scene.objects:
            ahead = obj.s[k] - obj.dims[0] / 2 - front
            if not obj.blocks_path or ahead < -1.0 or ahead > 150.0:
                continue
            d_path, _ = lateral_offset(scene.triggers, np.array([obj.s[k]]))
            if obj.is_vru:
                if _pedestrian_conflict(obj, k, float(d_path[0])):
                    candidates.append((_idm(v, ahead - 1.5, 0.0, s0=1.0), obj.id))
            elif _in_corridor(obj, k, float(d_path[0])):
                candidates.append((_idm(v, ahead, float(obj.speed[k])), obj.id))
        for light in scene.lights:
            gap = light.stop_line_s - front
            state = light.state_at(t)
            can_stop = gap > v * v / (2 * 3.0) or v < 1.0
            if gap > -0.5 and (state == "red" or (state == "yellow" and can_stop)):
                candidates.append((_idm(v, gap, 0.0, s0=1.0), light.id))
        for sign in scene.signs:
            gap = sign.stop_line_s - front
            if sign.id in signs_done or gap < -0.5:
                continue
            if v < 0.05 and gap < 4.0:
                since = sign_stopped_since.setdefault(sign.id, t)
                if t - since >= sign.wait_s:
                    signs_done.add(sign.id)
                    continue
            candidates.append((_idm(v, gap, 0.0, s0=1.0), sign.id))
        a_cmd, bind = min(candidates, key=lambda c: c[0])
        required = a_cmd < -B_COMFORT
        if required:
            emergency = True
        a_cmd = max(a_cmd, -B_EMERGENCY if required else -B_COMFORT)
        jerk = JERK_EMERGENCY if required else JERK_COMFORT
        a = a + float(np.clip(a_cmd - a, -jerk * DT, jerk * DT))
        cmd_arr[k] = a_cmd
        binding.append(bind)
        v_next = v + a * DT
        if v_next <= 0.0:
            s += v * v / (2 * max(-a, 1e-6)) if a < 0 else 0.0
            v, a = 0.0, max(a, 0.0)
        else:
            s += v * DT + 0.5 * a * DT * DT
            v = v_next
    return EgoLog(t_arr, s_arr, v_arr, a_arr, cmd_arr, binding, emergency)


def _path_pose(
    scene: Scene, s: np.ndarray, d: np.ndarray, slope: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    xy, route_heading = frenet_to_world(scene.road.route, s, d)
    _, _, kappa_ref = route_at(scene.road.route, s)
    return xy, route_heading + np.arctan(slope / (1.0 - kappa_ref * d))


def ego_poses(scene: Scene, log: EgoLog) -> dict[str, np.ndarray]:
    """Anchor-frame ego kinematics at 100 Hz from the Frenet plan: xy [T, 2], yaw [T], velocity,
    acceleration [T, 3] (from the planner's speed and acceleration and the path curvature) and
    curvature [T]."""
    d, slope = lateral_offset(scene.triggers, log.s)
    xy, yaw = _path_pose(scene, log.s, d, slope)
    grid = np.arange(log.s.min() - 1.0, log.s.max() + 1.0, 0.05)
    d_g, slope_g = lateral_offset(scene.triggers, grid)
    xy_g, yaw_g = _path_pose(scene, grid, d_g, slope_g)
    arc_g = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(xy_g, axis=0), axis=1))])
    curvature = np.interp(log.s, grid, np.gradient(np.unwrap(yaw_g), arc_g))
    tangent = np.stack([np.cos(yaw), np.sin(yaw)], 1)
    normal = np.stack([-np.sin(yaw), np.cos(yaw)], 1)
    vel = log.v[:, None] * tangent
    acc = log.a[:, None] * tangent + (log.v**2 * curvature)[:, None] * normal
    zeros = np.zeros((len(yaw), 1))
    return {
        "xy": xy,
        "yaw": yaw,
        "velocity": np.concatenate([vel, zeros], 1),
        "acceleration": np.concatenate([acc, zeros], 1),
        "curvature": curvature,
        "d": d,
    }


def object_world_tracks(scene: Scene, obj: SceneObject) -> tuple[np.ndarray, np.ndarray]:
    """World xy [T, 2] and yaw [T] of an object."""
    xy, heading = frenet_to_world(scene.road.route, obj.s, obj.d)
    return xy, heading + obj.yaw_rel
