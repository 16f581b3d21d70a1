"""Procedural driving clips with known causes, written in the PhysicalAI-AV layout.

One clip = 20 s at 10 Hz video (4 cameras by default) and 100 Hz egomotion of an ego driven by the
rule-based planner of `synthetic_world`, in one of the 16 CoC scenarios (`coc.vocab.SCENARIOS`). Each
scenario builds its scene so that the ego's decision happens between 4 s and 14 s into the clip, and
records the ground truth: decision ids per axis, the causal objects (with category and first visible
time) and the behaviour-change time. Everything is a pure function of (seed, clip index).
"""

import dataclasses
import json
import pathlib
import uuid
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from alpamayo_jax import geometry
from alpamayo_jax.coc import vocab as scenarios
from alpamayo_jax.data import pai_layout as layout
from alpamayo_jax.data import pai_writer
from alpamayo_jax.data import synthetic_render as render
from alpamayo_jax.data import synthetic_world as world

W = world.LANE_WIDTH
GT_DIR = "synthetic_gt"
FRAME_STEP = 10  # 100 Hz planner steps per 10 Hz video frame
EVENT_WINDOW_S = (4.0, 14.0)
CAR_DIMS = (4.6, 1.9, 1.5)
LABEL_CLASS = {"car": "automobile", "truck": "heavy_truck", "pedestrian": "person", "cone": "traffic_cone"}
LABEL_CLASS |= {"barrier": "barrier", "stop_sign": "stop_sign"}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Clip rendering options."""

    width: int = 576
    height: int = 320
    cameras: tuple[str, ...] = layout.DEFAULT_CAMERAS
    camera_model: str = geometry.FTHETA


@dataclasses.dataclass(frozen=True)
class EventSpec:
    """How to find a decision's time in the planner log, and what it is.

    kind: "decel" (first step after `after_t` where `watch` binds with a braking command), "go" (first
    positive command after `after_t`), "trigger" (lateral trigger `watch` fired), "reach" (ego s >= value).
    """

    kind: str
    watch: str | float
    after_t: float
    longitudinal: str | None
    lateral: str | None
    causes: tuple[dict, ...]
    description: str


def _const(n: int, value: float) -> np.ndarray:
    return np.full(n, float(value))


def _speed_track(s0: float, v0: float, changes: Sequence[tuple[float, float, float]] = ()) -> np.ndarray:
    """Arc length [T] of a vehicle at speed v0 that, from each (t, accel, v_target), ramps to v_target."""
    t = np.arange(world.NUM_STEPS) * world.DT
    v = np.full_like(t, float(v0))
    cur = float(v0)
    for i in range(1, len(t)):
        for t_c, acc, v_target in changes:
            if t[i] >= t_c:
                step = acc * world.DT
                cur = min(cur + abs(step), v_target) if v_target > cur else max(cur - abs(step), v_target)
        v[i] = cur
    return s0 + np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * world.DT)])


def _lateral_track(d0: float, t_start: float, duration: float, d1: float) -> np.ndarray:
    t = np.arange(world.NUM_STEPS) * world.DT
    return d0 + (d1 - d0) * world.quintic((t - t_start) / duration)


def _car(obj_id: str, s: np.ndarray, d: np.ndarray, rng: np.random.Generator, kind: str = "car", **kw):
    palette = [(200, 30, 30), (30, 60, 170), (220, 220, 225), (40, 40, 45), (160, 160, 165), (20, 120, 60)]
    dims = CAR_DIMS if kind == "car" else (8.0, 2.5, 3.2)
    color = palette[int(rng.integers(len(palette)))]
    yaw = kw.pop("yaw_rel", np.zeros_like(s))
    return world.SceneObject(obj_id, kind, dims, color, s, d, yaw, **kw)


def _pedestrian(obj_id: str, s: np.ndarray, d: np.ndarray, yaw_rel: float) -> world.SceneObject:
    return world.SceneObject(
        obj_id, "pedestrian", (0.5, 0.6, 1.75), (230, 120, 40), s, d, _const(len(s), yaw_rel), is_vru=True
    )


def _straight_road(lane_offsets=(0.0,), oncoming=True, **kw) -> world.Road:
    return world.Road(world.build_route([(700.0, 0.0)]), tuple(lane_offsets), oncoming, **kw)


def _cause(obj_id: str, category: str, type_: str, **attributes) -> dict:
    return {"object_id": obj_id, "category": category, "type": type_, "attributes": attributes}


def _parked_background(scene: world.Scene, rng: np.random.Generator, s_max: float) -> None:
    """Parked cars off the carriageway on the right shoulder (never in the ego corridor)."""
    for i in range(int(rng.integers(0, 4))):
        s = float(rng.uniform(20.0, s_max))
        d = scene.road.right_edge - 1.4
        n = world.NUM_STEPS
        scene.objects.append(_car(f"parked_bg_{i}", _const(n, s), _const(n, d), rng, blocks_path=False))


def _light_position(road: world.Road, s: float, d: float) -> tuple[float, float, float]:
    xy, _ = world.frenet_to_world(road.route, np.array([s]), np.array([d]))
    return (float(xy[0, 0]), float(xy[0, 1]), 5.2)


def _crossing_at(road_route: world.Route, s_int: float) -> dict:
    xy, heading = world.frenet_to_world(road_route, np.array([s_int]), np.array([W / 2]))
    return {"center": xy[0].tolist(), "heading": float(heading[0] + np.pi / 2), "half_width": W}


def build_scene(name: str, rng: np.random.Generator) -> tuple[world.Scene, list[EventSpec]]:
    """The scene and event specifications of scenario `name` (random parameters from `rng`)."""
    if name not in scenarios.SCENARIOS:
        raise ValueError(f"Unknown scenario {name!r}; expected one of {scenarios.SCENARIOS}.")
    te = float(rng.uniform(5.0, 11.0))
    v = float(rng.uniform(10.0, 14.0))
    n = world.NUM_STEPS
    front = world.EGO_FRONT
    if name in ("slow_for_lead", "stop_for_lead"):
        road = _straight_road()
        gap0 = world.IDM_S0 + world.IDM_T * v + 8.0
        stop = name == "stop_for_lead"
        target = 0.0 if stop else 0.45 * v
        s_lead = _speed_track(front + gap0 + CAR_DIMS[0] / 2, v, [(te - 0.6, 2.5 if stop else 2.0, target)])
        lead = _car("lead_vehicle", s_lead, _const(n, 0.0), rng)
        scene = world.Scene(road, v, v, [lead])
        motion = "braking to a stop" if stop else "slowing down"
        cause = _cause("lead_vehicle", "critical_object", "car", position="ahead in ego lane", motion=motion)
        desc = f"{'Stop behind' if stop else 'Slow down to follow'} the lead vehicle that is {motion} ahead."
        events = [
            EventSpec("decel", "lead_vehicle", te - 0.6, "lead_obstacle_following", None, (cause,), desc)
        ]
    elif name == "stop_for_light_or_sign" and rng.uniform() < 0.6:
        t_y = te - 0.3
        s_line = v * t_y + v * v / 4.0 + 1.5 * v + 8.0 + front
        road = _straight_road(stop_line_s=s_line)
        road.crossing = _crossing_at(road.route, s_line + 1.0 + W)
        light = world.TrafficLight(
            "traffic_light_0",
            s_line,
            _light_position(road, s_line + 2 * W + 2.0, 0.0),
            ((0.0, "green"), (t_y, "yellow"), (t_y + 3.0, "red")),
        )
        scene = world.Scene(road, v, v, [], lights=[light])
        cause = _cause("traffic_light_0", "traffic_light", "traffic_light", state="yellow turning red")
        desc = "Stop at the stop line because the traffic light ahead turned yellow, then red."
        events = [
            EventSpec("decel", "traffic_light_0", t_y, "stop_for_static_constraints", None, (cause,), desc)
        ]
    elif name == "stop_for_light_or_sign":
        s_line = v * te + 55.0 + front
        road = _straight_road(stop_line_s=s_line)
        road.crossing = _crossing_at(road.route, s_line + 1.0 + W)
        sign = world.StopSign(
            "stop_sign_0", s_line, _light_position(road, s_line - 0.5, road.right_edge - 0.7)
        )
        scene = world.Scene(road, v, v, [], signs=[sign])
        cause = _cause("stop_sign_0", "yield_stop_control", "stop_sign", control="two-way stop")
        desc = "Stop at the stop line for the stop sign at the intersection ahead."
        events = [EventSpec("decel", "stop_sign_0", 0.0, "stop_for_static_constraints", None, (cause,), desc)]
    elif name == "resume_at_light_or_sign" and rng.uniform() < 0.6:
        s_line = front + 1.0
        road = _straight_road(stop_line_s=s_line)
        road.crossing = _crossing_at(road.route, s_line + 1.0 + W)
        light = world.TrafficLight(
            "traffic_light_0",
            s_line,
            _light_position(road, s_line + 2 * W + 2.0, 0.0),
            ((0.0, "red"), (te, "green")),
        )
        scene = world.Scene(road, v, 0.0, [], lights=[light])
        cause = _cause("traffic_light_0", "traffic_light", "traffic_light", state="red turning green")
        desc = "Start moving again because the traffic light turned green."
        events = [EventSpec("go", "traffic_light_0", te, "set_speed_tracking", None, (cause,), desc)]
    elif name == "resume_at_light_or_sign":
        wait = float(rng.uniform(2.0, 3.0))
        s_line = v * max(te - wait - 4.5, 0.5) + 45.0 + front
        road = _straight_road(stop_line_s=s_line)
        road.crossing = _crossing_at(road.route, s_line + 1.0 + W)
        sign = world.StopSign(
            "stop_sign_0", s_line, _light_position(road, s_line - 0.5, road.right_edge - 0.7), wait
        )
        scene = world.Scene(road, v, v, [], signs=[sign])
        cause = _cause("stop_sign_0", "yield_stop_control", "stop_sign", control="two-way stop", stopped=True)
        desc = "Proceed through the intersection after the full stop at the stop sign."
        events = [EventSpec("go", "stop_sign_0", 2.0, "set_speed_tracking", None, (cause,), desc)]
    elif name == "lane_change":
        left = rng.uniform() < 0.5
        offsets = (0.0, W) if left else (-W, 0.0)
        road = _straight_road(offsets, oncoming=False)
        v_lead = 0.5 * v
        g0 = 3.5 * v + 10.0 + (v - v_lead) * te + front + CAR_DIMS[0] / 2
        lead = _car("slow_lead_vehicle", _speed_track(g0, v_lead), _const(n, 0.0), rng)
        target = W if left else -W

        def clear_to_change(t, s, v_ego, lead=lead, target=target, v=v):
            k = min(int(round(t / world.DT)), n - 1)
            return lead.s[k] - CAR_DIMS[0] / 2 - (s + front) <= 3.5 * v + 10.0

        trig = world.LateralTrigger("lane_change", target, 4.5, clear_to_change)
        scene = world.Scene(road, v, v, [lead], triggers=[trig])
        side = "left" if left else "right"
        causes = (
            _cause(
                "slow_lead_vehicle", "critical_object", "car", position="ahead in ego lane", motion="slow"
            ),
            _cause(f"lane_{side}", "lane", "lane", side=side, occupancy="free"),
        )
        desc = f"Change lanes to the {side} to pass the slow vehicle ahead; the {side} lane is free."
        events = [EventSpec("trigger", "lane_change", 0.0, None, f"lane_change_{side}", causes, desc)]
    elif name == "yield_to_vru":
        t_w = te - 0.5
        road0 = _straight_road()
        s_p = v * t_w + 60.0 + front
        road = _straight_road(crosswalk_s=s_p)
        walked = 1.4 * np.clip(np.arange(n) * world.DT - t_w, 0.0, None)
        d_ped = np.minimum(road0.right_edge - 1.5 + walked, road0.left_edge + 1.5)
        ped = _pedestrian("pedestrian_0", _const(n, s_p), d_ped, np.pi / 2)
        scene = world.Scene(road, v, v, [ped])
        cause = _cause(
            "pedestrian_0", "critical_object", "pedestrian", motion="crossing from the right", at="crosswalk"
        )
        desc = "Yield to the pedestrian crossing the road at the crosswalk ahead."
        events = [EventSpec("decel", "pedestrian_0", t_w, "yield", None, (cause,), desc)]
    elif name in ("vehicle_cut_in", "risky_driving"):
        risky = name == "risky_driving"
        road = _straight_road((0.0, W), oncoming=False)
        t_c = te - 0.5
        v_c = (0.9 if risky else 0.85) * v
        gap = 6.0 if risky else 28.0
        changes = [(t_c + 1.0, 4.0, 0.3 * v)] if risky else []
        s_c = _speed_track(front + CAR_DIMS[0] / 2 + gap + (v - v_c) * t_c, v_c, changes)
        cutter = _car("cut_in_vehicle", s_c, _lateral_track(W, t_c, 1.2 if risky else 3.0, 0.0), rng)
        scene = world.Scene(road, v, v, [cutter])
        motion = "cutting in abruptly and braking" if risky else "cutting in from the left lane"
        cause = _cause("cut_in_vehicle", "critical_object", "car", position="left lane ahead", motion=motion)
        desc = (
            "Brake hard for the vehicle that cuts in closely from the left and brakes."
            if risky
            else "Slow down to keep a safe gap to the vehicle cutting in from the left lane."
        )
        events = [EventSpec("decel", "cut_in_vehicle", t_c, "lead_obstacle_following", None, (cause,), desc)]
    elif name == "speed_bump":
        s_b = v * te + (v * v - 2.8**2) / (2 * world.B_ENVELOPE) + 3.0 + front
        road = _straight_road(bumps_s=(s_b,))
        scene = world.Scene(road, v, v, [])
        cause = _cause("bump_0", "road_event", "speed_bump", distance_m=round(s_b - v * te, 1))
        desc = "Slow down for the speed bump ahead."
        events = [EventSpec("decel", "bump_0", 0.0, "speed_adaptation", None, (cause,), desc)]
    elif name in ("nudge", "nudge_preparation"):
        prep = name == "nudge_preparation"
        right = (not prep) and rng.uniform() < 0.3
        big = prep or rng.uniform() < 0.5
        intrusion = 1.0 if big else 0.25
        offset = 1.9 if big else 0.55
        if right:
            road = _straight_road((-W, 0.0), oncoming=False)
            d_obj = W / 2 + CAR_DIMS[1] / 2 - intrusion
        else:
            road = _straight_road()
            d_obj = -W / 2 - CAR_DIMS[1] / 2 + intrusion
        s_obj = v * te + (62.0 if prep else 4 * v + 30.0) + front + CAR_DIMS[0] / 2
        parked = _car("parked_vehicle", _const(n, s_obj), _const(n, d_obj), rng)
        objects = [parked]
        oncoming = None
        if prep:
            v_onc = 10.0
            s_onc = _speed_track(s_obj - 10.0 + v_onc * (te + 4.0), -v_onc)
            oncoming = _car(
                "oncoming_vehicle", s_onc, _const(n, W), rng, yaw_rel=_const(n, np.pi), blocks_path=False
            )
            objects.append(oncoming)

        def can_nudge(t, s, v_ego, s_obj=s_obj, oncoming=oncoming, v=v):
            if s_obj - CAR_DIMS[0] / 2 - (s + front) > 4 * v + 30.0:
                return False
            if oncoming is None:
                return True
            k = min(int(round(t / world.DT)), n - 1)
            return not (s - 10.0 <= oncoming.s[k] <= s_obj + 120.0)

        def passed(t, s, v_ego, s_obj=s_obj):
            return s > s_obj + CAR_DIMS[0] / 2 + 3.0

        side = "right" if right else "left"
        sign = -1.0 if right else 1.0
        trig = world.LateralTrigger("nudge", sign * offset, 3.0, can_nudge)
        back = world.LateralTrigger("nudge_return", 0.0, 3.0, passed)
        scene = world.Scene(road, v, v, objects, triggers=[trig, back])
        kind = "out_of_lane" if big else "in_lane"
        attrs = {"position": f"ahead, {'left' if right else 'right'} edge", "intrusion_m": intrusion}
        parked_cause = _cause("parked_vehicle", "critical_object", "car", motion="parked", **attrs)
        desc = f"Nudge {side} to pass the parked car on the {'left' if right else 'right'}."
        events = []
        if prep:
            onc_cause = _cause(
                "oncoming_vehicle", "critical_object", "car", position="oncoming lane", motion="approaching"
            )
            events.append(
                EventSpec(
                    "decel",
                    "parked_vehicle",
                    0.0,
                    "yield",
                    None,
                    (onc_cause, parked_cause),
                    "Slow down behind the parked car and let the oncoming vehicle pass before going around.",
                )
            )
        events.append(EventSpec("trigger", "nudge", 0.0, None, f"{kind}_nudge_{side}", (parked_cause,), desc))
    elif name == "bypass_construction":
        s_c = v * te + 3 * v + 25.0 + front
        road = _straight_road(construction=(s_c, s_c + 40.0))
        objects = []
        for i, s in enumerate(np.arange(s_c, s_c + 40.0, 3.0)):
            d = float(np.interp(s - s_c, [0.0, 10.0], [road.right_edge + 0.2, 0.2]))
            objects.append(
                world.SceneObject(
                    f"cone_{i}",
                    "cone",
                    (0.4, 0.4, 0.7),
                    (250, 110, 10),
                    _const(n, s),
                    _const(n, d),
                    _const(n, 0.0),
                )
            )
        objects.append(
            world.SceneObject(
                "barrier_0",
                "barrier",
                (6.0, 0.5, 1.0),
                (240, 240, 240),
                _const(n, s_c + 20.0),
                _const(n, -0.9),
                _const(n, 0.0),
            )
        )

        def approach(t, s, v_ego, s_c=s_c, v=v):
            return s_c - (s + front) <= 3 * v + 25.0

        def cleared(t, s, v_ego, s_c=s_c):
            return s > s_c + 45.0

        trig = world.LateralTrigger("bypass", 2.1, 3.0, approach)
        back = world.LateralTrigger("bypass_return", 0.0, 3.0, cleared)
        scene = world.Scene(road, v, v, objects, triggers=[trig, back])
        causes = (
            _cause(
                "construction_zone",
                "odd_constraint",
                "construction_zone",
                length_m=40.0,
                lane_closed="right part",
            ),
            _cause("cone_0", "critical_object", "traffic_cone", position="ahead in ego lane"),
        )
        desc = "Slow down and move left into the oncoming lane to bypass the construction zone in the lane."
        events = [
            EventSpec("trigger", "bypass", 0.0, "speed_adaptation", "out_of_lane_nudge_left", causes, desc)
        ]
    elif name == "curvy_road":
        v = float(rng.uniform(14.0, 17.0))
        radius = float(rng.uniform(45.0, 80.0))
        direction = 1.0 if rng.uniform() < 0.5 else -1.0
        v_c = np.sqrt(world.A_LAT_CURVE * radius)
        lead_in = v * te + (v * v - v_c * v_c) / (2 * world.B_ENVELOPE) + 15.0
        arc = radius * np.pi / 2
        route = world.build_route(
            [(lead_in, 0.0), (arc, direction / radius), (400.0, 0.0)], transition_m=30.0
        )
        road = world.Road(route, (0.0,), True)
        scene = world.Scene(road, v, v, [])
        side = "left" if direction > 0 else "right"
        cause = _cause("curve_0", "road_event", "curve", direction=side, radius_m=round(radius, 1))
        desc = f"Slow down for the sharp {side} curve ahead."
        events = [EventSpec("decel", "curve", 0.0, "speed_adaptation", None, (cause,), desc)]
    elif name == "lane_change_preparation":
        road = _straight_road((0.0, W), oncoming=False)
        adj = _car(
            "adjacent_vehicle", _speed_track(front + float(rng.uniform(-2.0, 3.0)), v), _const(n, W), rng
        )

        def gap_found(t, s, v_ego, adj=adj, te=te, v=v):
            k = min(int(round(t / world.DT)), n - 1)
            return t > te and adj.s[k] - CAR_DIMS[0] / 2 - (s + front) >= 6.0 + 0.6 * v

        trig = world.LateralTrigger("lane_change", W, 4.5, gap_found)
        scene = world.Scene(road, v, v, [adj], triggers=[trig])
        scene.gap_search = {
            "object_id": "adjacent_vehicle",
            "from_t": te - 0.3,
            "until_trigger": "lane_change",
        }
        causes = (
            _cause("route", "routing_intent", "route", intent="left lane needed for a turn ahead"),
            _cause(
                "adjacent_vehicle",
                "critical_object",
                "car",
                position="left lane alongside",
                motion="same speed",
            ),
        )
        events = [
            EventSpec(
                "decel",
                "gap_search",
                te - 0.3,
                "gap_searching",
                None,
                causes,
                "Slow down to open a gap behind the car in the left lane, to move left for the route.",
            ),
            EventSpec(
                "trigger",
                "lane_change",
                0.0,
                None,
                "lane_change_left",
                causes,
                "Change to the left lane behind the car there, as the route requires.",
            ),
        ]
    elif name == "passing_intersection":
        variant = ("straight", "left", "right")[int(rng.integers(3))]
        if variant == "straight":
            s_line = v * te + 30.0 + front
            road = _straight_road(stop_line_s=s_line)
            road.crossing = _crossing_at(road.route, s_line + 1.0 + W)
            light = world.TrafficLight(
                "traffic_light_0", s_line, _light_position(road, s_line + 2 * W + 2.0, 0.0), ((0.0, "green"),)
            )
            scene = world.Scene(road, v, v, [], lights=[light])
            cause = _cause("traffic_light_0", "traffic_light", "traffic_light", state="green")
            desc = "Keep the speed and drive straight through the intersection on the green light."
            events = [
                EventSpec("reach", s_line - 30.0 - front, 0.0, "set_speed_tracking", None, (cause,), desc)
            ]
        else:
            v = float(rng.uniform(9.0, 11.0))
            radius = 12.0
            direction = 1.0 if variant == "left" else -1.0
            v_c = np.sqrt(world.A_LAT_CURVE * radius)
            lead_in = v * te + (v * v - v_c * v_c) / (2 * world.B_ENVELOPE) + 4.0
            route = world.build_route(
                [(lead_in, 0.0), (radius * np.pi / 2, direction / radius), (300.0, 0.0)], transition_m=6.0
            )
            end = route.xy[-1]
            x_c = end[0] - direction * W / 2
            road = world.Road(route, (0.0,), True)
            road.crossing = {"center": [float(x_c), W / 2], "heading": np.pi / 2, "half_width": W}
            s_line = x_c - W - 1.0
            road.stop_line_s = s_line
            light = world.TrafficLight(
                "traffic_light_0", s_line, (float(x_c + W + 2.0), 0.0, 5.2), ((0.0, "green"),)
            )
            scene = world.Scene(road, v, v, [], lights=[light])
            causes = (
                _cause("route", "routing_intent", "route", intent=f"turn {variant} at the intersection"),
                _cause("traffic_light_0", "traffic_light", "traffic_light", state="green"),
            )
            desc = (
                f"Slow down and turn {variant} at the intersection on the green light, following the route."
            )
            events = [EventSpec("decel", "curve", 0.0, "speed_adaptation", f"turn_{variant}", causes, desc)]
    else:  # no_yield_to_vru
        road = _straight_road()
        walking = rng.uniform() < 0.5
        v_p = 1.3 if walking else 0.0
        s_p0 = v * te + 35.0 + front - v_p * te
        ped = _pedestrian(
            "pedestrian_0",
            _speed_track(s_p0, v_p),
            _const(n, road.right_edge - 2.0),
            0.0 if walking else np.pi / 2,
        )
        scene = world.Scene(road, v, v, [ped])
        motion = "walking along the sidewalk" if walking else "standing on the sidewalk"
        cause = _cause("pedestrian_0", "critical_object", "pedestrian", motion=motion, crossing=False)
        desc = f"Keep the speed: the pedestrian {motion} on the right is not crossing."
        events = [EventSpec("reach", v * te, 0.0, "set_speed_tracking", None, (cause,), desc)]
    _parked_background(scene, rng, 300.0)
    return scene, events


def _event_time(spec: EventSpec, scene: world.Scene, log: world.EgoLog) -> float | None:
    after = log.t >= spec.after_t - 1e-9
    if spec.kind == "decel":
        hit = after & np.array([b == spec.watch for b in log.binding]) & (log.a_cmd < -0.3)
    elif spec.kind == "go":
        hit = after & (log.a_cmd > 0.2) & (log.v < 0.5)
    elif spec.kind == "trigger":
        trig = next(t for t in scene.triggers if t.id == spec.watch)
        return trig.fired_t
    else:
        hit = after & (log.s >= float(spec.watch))
    idx = np.flatnonzero(hit)
    return float(log.t[idx[0]]) if idx.size else None


def _simulate_scenario(name: str, rng: np.random.Generator) -> tuple[world.Scene, world.EgoLog, list, float]:
    """Samples scenes until the first decision falls in the event window (2 s of history before it)."""
    for _ in range(30):
        scene, specs = build_scene(name, rng)
        log = world.simulate(scene)
        times = [_event_time(spec, scene, log) for spec in specs]
        if all(t is not None for t in times) and EVENT_WINDOW_S[0] <= times[0] <= EVENT_WINDOW_S[1]:
            return scene, log, list(zip(specs, times, strict=True)), float(times[0])
    raise RuntimeError(f"Scenario {name}: no sample put the decision within {EVENT_WINDOW_S} s in 30 tries.")


def _world_point(scene: world.Scene, obj_id: str, k: int) -> np.ndarray | None:
    """World xyz of a cause at step k (objects, lights, signs, bumps, zones); None when not placed."""
    for obj in scene.objects:
        if obj.id == obj_id:
            xy, _ = world.frenet_to_world(scene.road.route, obj.s[k : k + 1], obj.d[k : k + 1])
            return np.array([xy[0, 0], xy[0, 1], obj.dims[2] / 2])
    for item in [*scene.lights, *scene.signs]:
        if item.id == obj_id:
            return np.asarray(item.position)
    s_of = {f"bump_{i}": b for i, b in enumerate(scene.road.bumps_s)}
    if scene.road.construction is not None:
        s_of["construction_zone"] = scene.road.construction[0]
    if obj_id in s_of:
        xy, _ = world.frenet_to_world(scene.road.route, np.array([s_of[obj_id]]), np.array([0.0]))
        return np.array([xy[0, 0], xy[0, 1], 0.0])
    return None


def _first_visible_us(
    scene: world.Scene, obj_id: str, ego: dict, cams: list[render.CameraSpec], max_dist: float = 100.0
) -> int | None:
    """First 10 Hz frame time at which the cause's centre is inside some camera image within range."""
    if obj_id.startswith(("lane_", "curve_")):
        return 0
    for k in range(0, world.NUM_STEPS - 1, FRAME_STEP):
        p = _world_point(scene, obj_id, k)
        if p is None:
            return None
        t_anchor_ego = geometry.pose_matrix(
            geometry.yaw_to_rotmat(ego["yaw"][k]), np.append(ego["xy"][k], 0.0)
        )
        p_rig = geometry.anchor_to_ego(p[None], t_anchor_ego)
        if np.linalg.norm(p_rig[0, :2]) > max_dist:
            continue
        for cam in cams:
            p_cam = (p_rig[0] - cam.translation_3) @ cam.rotation_33
            if p_cam[2] < 0.5:
                continue
            uv = geometry.project_np(p_cam[None], cam.fw_poly, cam.principal_point, cam.model)[0]
            if 0 <= uv[0] < cam.width and 0 <= uv[1] < cam.height:
                return int(k * world.DT * 1e6)
    return None


def _frame_boxes(scene: world.Scene, k: int, t: float) -> list[render.Box]:
    boxes = []
    for obj in scene.objects:
        xy, yaw = world.object_world_tracks(scene, obj)
        boxes.append(render.Box((xy[k, 0], xy[k, 1], 0.0), obj.dims, float(yaw[k]), obj.color))
    route = scene.road.route
    for light in scene.lights:
        x, y, z = light.position
        h = float(np.interp(light.stop_line_s, route.s, route.heading))
        pole_xy = np.array([x, y]) + (scene.road.right_edge - 0.8) * np.array([-np.sin(h), np.cos(h)])
        boxes.append(render.Box((pole_xy[0], pole_xy[1], 0.0), (0.25, 0.25, z + 0.6), h, (90, 90, 95)))
        arm_c = (pole_xy + np.array([x, y])) / 2
        arm_len = float(np.hypot(*(pole_xy - np.array([x, y]))))
        boxes.append(render.Box((arm_c[0], arm_c[1], z + 0.4), (0.15, arm_len, 0.15), h, (90, 90, 95)))
        boxes.append(render.Box((x, y, z - 0.6), (0.45, 0.5, 1.3), h, (35, 35, 35)))
        state = light.state_at(t)
        lamps = {
            "red": (z + 0.3, (255, 40, 30)),
            "yellow": (z - 0.05, (255, 200, 30)),
            "green": (z - 0.4, (40, 255, 90)),
        }
        for lamp_state, (lz, color) in lamps.items():
            lit = color if lamp_state == state else (55, 55, 55)
            lx, ly = x - 0.28 * np.cos(h), y - 0.28 * np.sin(h)
            boxes.append(render.Box((lx, ly, lz - 0.15), (0.1, 0.3, 0.3), h, lit))
    for sign in scene.signs:
        x, y, z = sign.position
        h = float(np.interp(sign.stop_line_s, route.s, route.heading))
        boxes.append(render.Box((x, y, 0.0), (0.1, 0.1, z), h, (150, 150, 150)))
        boxes.append(
            render.Box(
                (x - 0.1 * np.cos(h), y - 0.1 * np.sin(h), z - 0.4), (0.05, 0.8, 0.8), h, (210, 20, 25)
            )
        )
    return boxes


def _render_videos(scene, ego, cams, config, rng) -> list[bytes]:
    s_end = float(np.max([scene.road.route.s[-1], 0.0]))
    ground = render.draw_ground_map(scene.road, (-60.0, min(s_end, 700.0)), rng)
    rays = [render.precompute_rays(cam) for cam in cams]
    frames = [[] for _ in cams]
    for k in range(0, world.NUM_STEPS - 1, FRAME_STEP):
        boxes = _frame_boxes(scene, k, k * world.DT)
        corners = render.box_corners(boxes)
        for i, cam in enumerate(cams):
            frames[i].append(
                render.render_frame(cam, rays[i], ground, ego["xy"][k], float(ego["yaw"][k]), boxes, corners)
            )
    return [pai_writer.encode_video(f) for f in frames]


def _obstacle_table(scene: world.Scene, ego: dict) -> pd.DataFrame:
    rows = []
    for obj in scene.objects:
        xy, yaw = world.object_world_tracks(scene, obj)
        for k in range(0, world.NUM_STEPS - 1, FRAME_STEP):
            c, s = np.cos(ego["yaw"][k]), np.sin(ego["yaw"][k])
            dx, dy = xy[k] - ego["xy"][k]
            rel_yaw = yaw[k] - ego["yaw"][k]
            t_us = int(round(k * world.DT * 1e6))
            rows.append(
                {
                    "timestamp_us": t_us,
                    "track_id": obj.id,
                    "label_class": LABEL_CLASS[obj.type],
                    "center_x": c * dx + s * dy,
                    "center_y": -s * dx + c * dy,
                    "center_z": obj.dims[2] / 2,
                    "size_x": obj.dims[0],
                    "size_y": obj.dims[1],
                    "size_z": obj.dims[2],
                    "orientation_x": 0.0,
                    "orientation_y": 0.0,
                    "orientation_z": float(np.sin(rel_yaw / 2)),
                    "orientation_w": float(np.cos(rel_yaw / 2)),
                    "reference_frame_timestamp_us": t_us,
                }
            )
    return pd.DataFrame(rows, columns=list(layout.OBSTACLE_COLUMNS))


def _ground_truth(clip_id, seed, name, scene, ego, timed_specs, cams) -> dict:
    def us(t: float) -> int:
        return int(round(t * 1e6))

    events = []
    for spec, t in timed_specs:
        causes = [
            dict(c) | {"first_visible_us": _first_visible_us(scene, c["object_id"], ego, cams)}
            for c in spec.causes
        ]
        events.append(
            {
                "t_us": us(t),
                "longitudinal": spec.longitudinal,
                "lateral": spec.lateral,
                "causes": causes,
                "description": spec.description,
            }
        )
    objects = []
    for obj in scene.objects:
        xy, yaw = world.object_world_tracks(scene, obj)
        track = [
            [us(k * world.DT), float(xy[k, 0]), float(xy[k, 1]), float(yaw[k])]
            for k in range(0, world.NUM_STEPS, FRAME_STEP)
        ]
        objects.append({"id": obj.id, "type": obj.type, "dims": list(obj.dims), "track": track})
    for sign in scene.signs:
        x, y, _ = sign.position
        h = float(np.interp(sign.stop_line_s, scene.road.route.s, scene.road.route.heading))
        objects.append(
            {
                "id": sign.id,
                "type": "stop_sign",
                "dims": [0.05, 0.8, sign.position[2]],
                "track": [[0, x, y, h]],
            }
        )
    lights = [
        {
            "id": lt.id,
            "position": list(lt.position),
            "stop_line_s": lt.stop_line_s,
            "states": [[us(t), s] for t, s in lt.states],
        }
        for lt in scene.lights
    ]
    road = scene.road
    ref = road.route
    keep = slice(None, None, 8)
    road_gt = {
        "centerline": np.round(ref.xy[keep], 3).tolist(),
        "centerline_s": np.round(ref.s[keep], 3).tolist(),
        "lane_width": road.lane_width,
        "lane_offsets": list(road.lane_offsets),
        "num_lanes": len(road.lane_offsets),
        "oncoming_lane": road.oncoming,
        "crossing": road.crossing,
        "stop_line_s": road.stop_line_s,
        "crosswalk_s": road.crosswalk_s,
        "bumps_s": list(road.bumps_s),
        "construction_s": list(road.construction) if road.construction else None,
    }
    return {
        "clip_id": clip_id,
        "seed": seed,
        "scenario": name,
        "emergency": bool(ego["emergency"]),
        "events": events,
        "objects": objects,
        "traffic_lights": lights,
        "road": road_gt,
    }


def generate_clip(
    seed: int, index: int, config: SyntheticConfig = SyntheticConfig(), scenario: str | None = None
) -> tuple[pai_writer.ClipRecord, dict]:
    """Clip `index` of the dataset of `seed`: the layout record and its ground-truth sidecar."""
    rng = np.random.default_rng([seed, index])
    clip_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    name = (
        scenario if scenario is not None else scenarios.SCENARIOS[int(rng.integers(len(scenarios.SCENARIOS)))]
    )
    scene, log, timed_specs, _ = _simulate_scenario(name, rng)
    ego = world.ego_poses(scene, log) | {"emergency": log.emergency}
    cams = [render.make_camera(c, config.width, config.height, config.camera_model) for c in config.cameras]
    videos = _render_videos(scene, ego, cams, config, rng)
    t_us = np.round(log.t * 1e6).astype(np.int64)
    egomotion = pai_writer.egomotion_table(
        t_us,
        geometry.yaw_to_rotmat(ego["yaw"]),
        np.concatenate([ego["xy"], np.zeros((len(t_us), 1))], 1),
        ego["velocity"],
        ego["acceleration"],
        ego["curvature"],
    )
    frame_us = t_us[:-1:FRAME_STEP]
    cameras = [
        pai_writer.CameraClip(
            cam.name,
            video,
            frame_us,
            cam.width,
            cam.height,
            tuple(cam.principal_point),
            cam.fw_poly,
            cam.bw_poly,
            cam.rotation_33,
            cam.translation_3,
            cam.model,
        )  # fmt: skip
        for cam, video in zip(cams, videos, strict=True)
    ]
    gt = _ground_truth(clip_id, seed, name, scene, ego, timed_specs, cams)
    reasoning = [{"event_start_timestamp": e["t_us"], "cot": e["description"]} for e in gt["events"]]
    record = pai_writer.ClipRecord(
        clip_id, egomotion, cameras, world.EGO_DIMS, _obstacle_table(scene, ego), reasoning
    )
    return record, gt


def write_synthetic_dataset(
    out: str | pathlib.Path,
    num_clips: int,
    seed: int,
    config: SyntheticConfig = SyntheticConfig(),
    scenario: str | None = None,
    on_clip: Callable[[], None] | None = None,
) -> pd.DataFrame:
    """Generates `num_clips` clips into `out` in the PhysicalAI-AV layout, with ground-truth sidecars
    at `out/synthetic_gt/<clip_id>.json` and their list in `out/synthetic_gt/index.json`."""
    out = pathlib.Path(out)
    listing: list[dict] = []

    def clips() -> Iterator[pai_writer.ClipRecord]:
        for index in range(num_clips):
            record, gt = generate_clip(seed, index, config, scenario)
            pai_writer.write_json(out / GT_DIR / f"{record.clip_id}.json", gt)
            listing.append({"clip_id": record.clip_id, "scenario": gt["scenario"], "index": index})
            yield record

    def done(_: pai_writer.ClipRecord) -> None:
        if on_clip is not None:
            on_clip()

    index = pai_writer.write_dataset(out, clips(), on_clip=done)
    pai_writer.write_json(out / GT_DIR / "index.json", {"seed": seed, "clips": listing})
    return index


def read_ground_truth(root: str | pathlib.Path, clip_id: str) -> dict:
    """The ground-truth sidecar of a synthetic clip."""
    path = pathlib.Path(root) / GT_DIR / f"{clip_id}.json"
    if not path.is_file():
        raise FileNotFoundError(f"clip {clip_id}: no synthetic ground truth at {path}.")
    return json.loads(path.read_text())
