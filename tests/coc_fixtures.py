"""Constructed ego trajectories for the CoC tests: piecewise-constant acceleration and curvature."""

import numpy as np


def rollout(
    accel_t: np.ndarray, curvature_t: np.ndarray, v0: float, dt: float = 0.1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integrates a unicycle: returns xy `[T, 2]`, yaw `[T]`, speed `[T]`, accel `[T]`."""
    n = accel_t.shape[0]
    xy = np.zeros((n, 2))
    yaw = np.zeros(n)
    v = np.zeros(n)
    v[0] = v0
    for t in range(n - 1):
        v[t + 1] = v[t] + accel_t[t] * dt
        yaw[t + 1] = yaw[t] + curvature_t[t] * v[t] * dt
        xy[t + 1] = xy[t] + v[t] * dt * np.array([np.cos(yaw[t]), np.sin(yaw[t])])
    return xy, yaw, v, accel_t.astype(np.float64)


def phases(spec: list[tuple[int, float, float]], v0: float, dt: float = 0.1):
    """`spec` = [(ticks, accel, curvature)]; returns the rollout and the phase start ticks."""
    accel = np.concatenate([np.full(n, a) for n, a, _ in spec])
    curv = np.concatenate([np.full(n, k) for n, _, k in spec])
    starts = np.cumsum([0] + [n for n, _, _ in spec])[:-1]
    return rollout(accel, curv, v0, dt), starts


def away_from(starts: np.ndarray, n: int, margin: int = 5) -> np.ndarray:
    """Mask `[n]` of ticks further than `margin` from every phase boundary but the first."""
    mask = np.ones(n, dtype=bool)
    for s in starts[1:]:
        mask[max(0, s - margin) : s + margin] = False
    return mask


CAMERA = "camera_front_wide_120fov"

# kind -> (v0, [(ticks or None for the change start, accel, curvature)], decisions, cause)
CLIP_KINDS = {
    "slow_for_lead": (
        12.0,
        [(-1, 0.0, 0.0), (30, -1.0, 0.0)],
        ("lead_obstacle_following", None),
        ("critical_object", "car", {"motion": "decelerating", "position": "ahead in the ego lane"}),
    ),
    "stop_for_light_or_sign": (
        10.0,
        [(-1, 0.0, 0.0), (50, -2.0, 0.0)],
        ("stop_for_static_constraints", None),
        ("traffic_light", "traffic_light", {"state": "red"}),
    ),
    "yield_to_vru": (
        8.0,
        [(-1, 0.0, 0.0), (40, -2.0, 0.0)],
        ("yield", None),
        ("critical_object", "pedestrian", {"motion": "crossing", "position": "ahead"}),
    ),
    "lane_change": (
        15.0,
        [(-1, 0.0, 0.0), (20, 0.0, 0.004), (20, 0.0, -0.004)],
        (None, "lane_change_left"),
        ("routing_intent", "route", {"position": "exit on the left"}),
    ),
    "curvy_road": (
        10.0,
        [(-1, 0.0, 0.0), (40, 0.0, 0.02)],
        (None, "lane_keeping"),
        ("road_event", "curve", {"position": "ahead to the left"}),
    ),
}


def synthetic_clip(clip_id: str, kind: str, change_tick: int, n_ticks: int = 200):
    """A 20 s clip at 10 Hz: egomotion with one behaviour change at `change_tick` and its ground truth."""
    v0, spec, (lon, lat), (category, ctype, attrs) = CLIP_KINDS[kind]
    runs = [(change_tick if n == -1 else n, a, k) for n, a, k in spec]
    runs.append((n_ticks - sum(n for n, _, _ in runs), 0.0, 0.0))
    accel = np.concatenate([np.full(n, a) for n, a, _ in runs])
    curv = np.concatenate([np.full(n, k) for n, _, k in runs])
    xy, yaw, v, a = rollout(accel, curv, v0)
    stopped = v <= 0.0
    v = np.where(stopped, 0.0, v)
    a = np.where(stopped, 0.0, a)
    t_us = np.arange(n_ticks, dtype=np.int64) * 100_000
    cause = {
        "object_id": f"{clip_id}-obj0",
        "category": category,
        "type": ctype,
        "attributes": attrs,
        "first_visible_us": int(t_us[change_tick] - 3_000_000),
    }
    event = {
        "t_us": int(t_us[change_tick]),
        "longitudinal": lon,
        "lateral": lat,
        "causes": [cause],
        "description": kind,
    }
    gt = {
        "clip_id": clip_id,
        "seed": change_tick,
        "scenario": kind,
        "events": [event],
        "objects": [],
        "traffic_lights": [],
        "road": {},
    }
    return (t_us, xy, yaw, v, a), gt
