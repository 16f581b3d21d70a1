"""CoC-action consistency (SPEC 2.1): do the meta-actions of a trajectory match the stated decision?

Per axis a decision expects the first meta-action that departs from the neutral one (maintain speed,
go straight; the neutral one if none departs) to be in a set, and forbids others anywhere on the horizon
(a decision of None forbids only abrupt manoeuvres). The reward is 1 when both axes are consistent,
0 otherwise, and 0 for text stating no decision at all.
"""

from collections.abc import Sequence

import numpy as np

from alpamayo_jax.coc.meta_actions import detect
from alpamayo_jax.coc.parser import ParsedDecision, parse_decisions
from alpamayo_jax.coc.vocab import LATERAL_META_ACTIONS, LONGITUDINAL_META_ACTIONS

_DEC = frozenset({"gentle_decelerate", "strong_decelerate"})
_ACC = frozenset({"gentle_accelerate", "strong_accelerate"})
_LEFT = frozenset({"steer_left", "sharp_steer_left"})
_RIGHT = frozenset({"steer_right", "sharp_steer_right"})
_REVERSE = frozenset({"reverse_left", "reverse_right"})

# decision -> (expected: at least one present, forbidden: none present)
LONGITUDINAL_RULES: dict[str | None, tuple[frozenset[str], frozenset[str]]] = {
    None: (
        frozenset(LONGITUDINAL_META_ACTIONS),
        frozenset({"strong_accelerate", "strong_decelerate", "reverse"}),
    ),
    "set_speed_tracking": (_ACC | {"maintain_speed", "gentle_decelerate"}, frozenset({"stop", "reverse"})),
    "lead_obstacle_following": (_DEC | _ACC | {"maintain_speed", "stop"}, frozenset({"reverse"})),
    "speed_adaptation": (_DEC | {"maintain_speed", "gentle_accelerate"}, frozenset({"reverse"})),
    "gap_searching": (_DEC | _ACC | {"maintain_speed"}, frozenset({"reverse"})),
    "acceleration_for_passing": (_ACC, frozenset({"stop", "reverse", "strong_decelerate"})),
    "yield": (_DEC | {"stop"}, frozenset({"strong_accelerate", "reverse"})),
    "stop_for_static_constraints": (_DEC | {"stop"}, frozenset({"strong_accelerate", "reverse"})),
}
LATERAL_RULES: dict[str | None, tuple[frozenset[str], frozenset[str]]] = {
    None: (frozenset(LATERAL_META_ACTIONS), frozenset({"sharp_steer_left", "sharp_steer_right"}) | _REVERSE),
    "lane_keeping": (frozenset({"go_straight", "steer_left", "steer_right"}), _REVERSE),
    "merge_split": (frozenset({"go_straight", "steer_left", "steer_right"}), _REVERSE),
    "out_of_lane_nudge_left": (_LEFT, _REVERSE),
    "out_of_lane_nudge_right": (_RIGHT, _REVERSE),
    "in_lane_nudge_left": (_LEFT, _REVERSE | {"sharp_steer_right"}),
    "in_lane_nudge_right": (_RIGHT, _REVERSE | {"sharp_steer_left"}),
    "lane_change_left": (_LEFT, _REVERSE),
    "lane_change_right": (_RIGHT, _REVERSE),
    "pull_over": (_LEFT | _RIGHT, _REVERSE),
    "turn_left": (_LEFT, _REVERSE | {"sharp_steer_right"}),
    "turn_right": (_RIGHT, _REVERSE | {"sharp_steer_left"}),
    "lateral_maneuver_abort": (_LEFT | _RIGHT, _REVERSE),
}


NEUTRAL = frozenset({"maintain_speed", "go_straight"})


def axis_consistent(rules: dict, decision: str | None, labels: Sequence[str]) -> bool:
    if len(labels) == 0:
        raise ValueError("axis_consistent: no meta-action labels")
    expected, forbidden = rules[decision]
    first = next((lab for lab in labels if lab not in NEUTRAL), labels[0])
    return first in expected and not set(labels) & forbidden


def consistent(parsed: ParsedDecision, longitudinal: Sequence[str], lateral: Sequence[str]) -> bool:
    """Whether per-tick meta-actions `[T]` of both axes agree with a parsed decision."""
    return (
        parsed.parseable
        and axis_consistent(LONGITUDINAL_RULES, parsed.longitudinal, longitudinal)
        and axis_consistent(LATERAL_RULES, parsed.lateral, lateral)
    )


def consistency_reward(
    text: str, xy: np.ndarray, yaw: np.ndarray, speed: np.ndarray, accel: np.ndarray, dt: float = 0.1
) -> float:
    """1.0 if the reasoning's decisions match the meta-actions of the trajectory (`[T, 2]`, `[T]` x3)."""
    parsed = parse_decisions(text)
    if not parsed.parseable:
        return 0.0
    meta = detect(xy, yaw, speed, accel, dt)
    return float(consistent(parsed, meta.longitudinal, meta.lateral))
