"""Closed vocabularies of the CoC data (SPEC 3 and 3.1), shared with the synthetic world."""

LONGITUDINAL_DECISIONS: tuple[str, ...] = (
    "set_speed_tracking",
    "lead_obstacle_following",
    "speed_adaptation",
    "gap_searching",
    "acceleration_for_passing",
    "yield",
    "stop_for_static_constraints",
)

LATERAL_DECISIONS: tuple[str, ...] = (
    "lane_keeping",
    "merge_split",
    "out_of_lane_nudge_left",
    "out_of_lane_nudge_right",
    "in_lane_nudge_left",
    "in_lane_nudge_right",
    "lane_change_left",
    "lane_change_right",
    "pull_over",
    "turn_left",
    "turn_right",
    "lateral_maneuver_abort",
)

COMPONENT_CATEGORIES: tuple[str, ...] = (
    "critical_object",
    "traffic_light",
    "yield_stop_control",
    "road_event",
    "lane",
    "routing_intent",
    "odd_constraint",
)

UNCERTAINTY_LEVELS: tuple[str, ...] = ("low", "high")

AXES: tuple[str, ...] = ("longitudinal", "lateral")

REACTIVE_SCENARIOS: tuple[str, ...] = (
    "slow_for_lead",
    "stop_for_lead",
    "stop_for_light_or_sign",
    "resume_at_light_or_sign",
    "lane_change",
    "yield_to_vru",
    "vehicle_cut_in",
    "speed_bump",
    "nudge",
    "bypass_construction",
    "risky_driving",
)

PROACTIVE_SCENARIOS: tuple[str, ...] = (
    "curvy_road",
    "lane_change_preparation",
    "nudge_preparation",
    "passing_intersection",
    "no_yield_to_vru",
)

SCENARIOS: tuple[str, ...] = REACTIVE_SCENARIOS + PROACTIVE_SCENARIOS

LONGITUDINAL_META_ACTIONS: tuple[str, ...] = (
    "gentle_accelerate",
    "strong_accelerate",
    "gentle_decelerate",
    "strong_decelerate",
    "maintain_speed",
    "stop",
    "reverse",
)

LATERAL_META_ACTIONS: tuple[str, ...] = (
    "steer_left",
    "steer_right",
    "sharp_steer_left",
    "sharp_steer_right",
    "reverse_left",
    "reverse_right",
    "go_straight",
)

DECISIONS_BY_AXIS: dict[str, tuple[str, ...]] = {
    "longitudinal": LONGITUDINAL_DECISIONS,
    "lateral": LATERAL_DECISIONS,
}
