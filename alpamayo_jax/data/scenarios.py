"""Closed vocabularies of the Chain-of-Causation labels (SPEC section 3), shared with the labeller.

The ids are exact strings that the synthetic ground truth and the labelling pipeline agree on.
"""

LONGITUDINAL_DECISIONS = (
    "set_speed_tracking",
    "lead_obstacle_following",
    "speed_adaptation",
    "gap_searching",
    "acceleration_for_passing",
    "yield",
    "stop_for_static_constraints",
)
LATERAL_DECISIONS = (
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
COMPONENT_CATEGORIES = (
    "critical_object",
    "traffic_light",
    "yield_stop_control",
    "road_event",
    "lane",
    "routing_intent",
    "odd_constraint",
)
REACTIVE_SCENARIOS = (
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
PROACTIVE_SCENARIOS = (
    "curvy_road",
    "lane_change_preparation",
    "nudge_preparation",
    "passing_intersection",
    "no_yield_to_vru",
)
SCENARIOS = REACTIVE_SCENARIOS + PROACTIVE_SCENARIOS
