import itertools

import pytest

from alpamayo_jax.coc.parser import parse_decisions
from alpamayo_jax.coc.schema import CocLabel, Component
from alpamayo_jax.coc.trace import compose_trace
from alpamayo_jax.coc.vocab import LATERAL_DECISIONS, LONGITUDINAL_DECISIONS

LONGITUDINAL_PARAPHRASES = {
    "set_speed_tracking": [
        "Keep to the set speed since the road ahead is clear.",
        "Maintain the current speed; nothing is ahead.",
        "Resume driving as the light turned green.",
        "Accelerate back to the speed limit now that the road is clear.",
        "Cruise at the posted speed.",
        "Without stopping, continue through the green light.",
    ],
    "lead_obstacle_following": [
        "Follow the lead vehicle.",
        "Slow down because the car ahead is braking.",
        "Decelerate to keep a safe distance from the truck in front.",
        "Come to a stop behind the stopped truck.",
        "The ego vehicle is slowing down because the car ahead is braking.",
        "Maintain a safe following distance to the preceding vehicle.",
    ],
    "speed_adaptation": [
        "Reduce speed for the speed bump ahead.",
        "Slow down for the sharp curve.",
        "Adapt speed to the narrowing road.",
        "Ease off the throttle before the roundabout.",
        "Decelerate because of the construction zone ahead.",
        "Brake gently for the pothole.",
    ],
    "gap_searching": [
        "Look for a gap in the left lane.",
        "Search for an opening in the adjacent traffic.",
        "Adjust speed to merge into the traffic flow.",
        "Slow down to find a gap for the zipper merge.",
        "Wait for a suitable gap before entering the highway.",
    ],
    "acceleration_for_passing": [
        "Accelerate to overtake the slow truck in the left lane.",
        "Speed up to pass the cyclist.",
        "Overtake the slower vehicle.",
        "Accelerate in order to pass the tractor quickly.",
    ],
    "yield": [
        "Yield to the pedestrian in the crosswalk.",
        "Slow down for the pedestrian crossing ahead.",
        "Give way to the cyclist.",
        "Wait for the pedestrian to finish crossing.",
        "Let the merging car go first.",
        "Stop to let the child cross.",
        "Brake hard because a child ran into the road.",
    ],
    "stop_for_static_constraints": [
        "Stop at the red light.",
        "Stop for the stop sign.",
        "Come to a stop at the stop line.",
        "Halt before the railroad crossing because the gate is down.",
        "Decelerate for the red traffic light ahead.",
        "Stop behind the school bus with its stop arm out.",
    ],
}

LATERAL_PARAPHRASES = {
    "lane_keeping": [
        "Stay in the current lane.",
        "Keep the lane and maintain speed.",
        "Follow the curve of the road.",
        "Continue straight through the intersection.",
        "Remain centered in the lane.",
    ],
    "merge_split": [
        "Merge onto the highway.",
        "Take the off-ramp.",
        "Merge as the lane ends ahead.",
        "Follow the exit ramp to the right.",
    ],
    "out_of_lane_nudge_left": [
        "Swerve left into the oncoming lane to avoid the double-parked van.",
        "Nudge left out of the lane to pass the parked car.",
        "Shift to the left across the center line around the cones.",
    ],
    "out_of_lane_nudge_right": [
        "Nudge right onto the shoulder to give the ambulance room.",
        "Move over to the right, crossing the lane line, to pass the stalled truck.",
        "Veer right out of the lane around the debris.",
    ],
    "in_lane_nudge_left": [
        "Nudge left to pass the parked car on the right.",
        "Shift slightly to the left within the lane.",
        "Go around the stalled car on the right.",
        "Bias left in the lane to give the cyclist more room.",
    ],
    "in_lane_nudge_right": [
        "Shift slightly to the right within the lane to give the cyclist more room.",
        "Nudge right to pass the parked car on the left.",
        "Edge right a little, staying within the lane.",
    ],
    "lane_change_left": [
        "Change lanes to the left.",
        "Move into the left lane because the right lane is closed.",
        "Perform a left lane change to overtake.",
        "Switch to the adjacent left lane.",
    ],
    "lane_change_right": [
        "Change lanes to the right to take the exit.",
        "Merge into the right lane.",
        "Lane change right to prepare for the turn.",
        "Move over to the right lane.",
    ],
    "pull_over": [
        "Pull over to the curb for the approaching ambulance.",
        "Pull onto the shoulder.",
        "Approach the curb to drop off the passenger.",
        "Pull over and stop.",
    ],
    "turn_left": [
        "Turn left at the intersection.",
        "Make a left turn.",
        "Execute a U-turn.",
        "Take a left at the light.",
    ],
    "turn_right": [
        "Make a right turn at the next intersection.",
        "Turn right onto Main Street.",
        "Take the right-hand turn.",
        "Turning right after the cyclist passes.",
    ],
    "lateral_maneuver_abort": [
        "Abort the lane change because a car is approaching quickly in the target lane.",
        "Return to the original lane as the gap closed.",
        "Cancel the planned merge.",
        "The lane change is aborted since a truck appeared.",
    ],
}


@pytest.mark.parametrize(
    "text, want",
    [(t, d) for d, ts in LONGITUDINAL_PARAPHRASES.items() for t in ts],
)
def test_longitudinal_paraphrases(text, want):
    parsed = parse_decisions(text)
    assert parsed.longitudinal == want
    assert parsed.parseable


@pytest.mark.parametrize("text, want", [(t, d) for d, ts in LATERAL_PARAPHRASES.items() for t in ts])
def test_lateral_paraphrases(text, want):
    parsed = parse_decisions(text)
    assert parsed.lateral == want
    assert parsed.parseable


def test_every_decision_has_paraphrases():
    assert set(LONGITUDINAL_PARAPHRASES) == set(LONGITUDINAL_DECISIONS)
    assert set(LATERAL_PARAPHRASES) == set(LATERAL_DECISIONS)


@pytest.mark.parametrize(
    "text, lon, lat",
    [
        ("No need to stop, the light is green; keep the set speed.", "set_speed_tracking", None),
        ("There is no need to yield, since the pedestrian is waiting on the curb.", None, None),
        ("Stopping is not necessary as the crosswalk is empty.", None, None),
        ("Don't change lanes; stay in the current lane.", None, "lane_keeping"),
        ("Do not slow down for the green light; proceed.", "set_speed_tracking", None),
        ("Yield rather than stop, as the cyclist is still far.", "yield", None),
        ("The ego does not need to brake for the parked car, so nudge left.", None, "in_lane_nudge_left"),
        ("Instead of changing lanes to the left, follow the lead truck.", "lead_obstacle_following", None),
        ("Neither stop nor turn; keep going straight.", None, "lane_keeping"),
        ("No change in the driving decision is needed.", None, None),
    ],
)
def test_negations(text, lon, lat):
    parsed = parse_decisions(text)
    assert (parsed.longitudinal, parsed.lateral, parsed.parseable) == (lon, lat, True)


def test_other_agents_actions_and_nouns_are_not_decisions():
    parsed = parse_decisions("The lead car's brake lights are on and the truck is slowing; nudge right.")
    assert parsed.longitudinal is None
    parsed = parse_decisions("The road turns left ahead near the stop sign; keep the lane.")
    assert (parsed.longitudinal, parsed.lateral) == (None, "lane_keeping")


def test_text_without_any_decision_is_unparseable():
    for text in ("The weather is nice.", "", "asdf qwerty"):
        parsed = parse_decisions(text)
        assert parsed == type(parsed)(None, None, False)


def _component(category, kind, supports, **attrs):
    return Component(category, kind, attrs, "low", True, supports, None)


CAUSE_FOR_LONGITUDINAL = {
    "set_speed_tracking": _component("lane", "clear_road", ("longitudinal",), position="ahead"),
    "lead_obstacle_following": _component("critical_object", "car", ("longitudinal",), motion="slowing"),
    "speed_adaptation": _component("road_event", "speed_bump", ("longitudinal",), position="ahead"),
    "gap_searching": _component("critical_object", "truck", ("longitudinal",), position="in the left lane"),
    "acceleration_for_passing": _component("critical_object", "truck", ("longitudinal",), motion="slow"),
    "yield": _component("critical_object", "pedestrian", ("longitudinal",), motion="crossing"),
    "stop_for_static_constraints": _component(
        "traffic_light", "traffic_light", ("longitudinal",), state="red"
    ),
}
CAUSE_FOR_LATERAL = _component(
    "critical_object", "car", ("lateral",), motion="parked", position="on the right"
)


@pytest.mark.parametrize(
    "lon, lat", list(itertools.product([None, *LONGITUDINAL_DECISIONS], [None, *LATERAL_DECISIONS]))
)
def test_composed_traces_parse_back_to_their_decisions(lon, lat):
    comps = []
    if lon is not None:
        comps.append(CAUSE_FOR_LONGITUDINAL[lon])
    if lat is not None:
        comps.append(CAUSE_FOR_LATERAL)
    trace = compose_trace(CocLabel(lon, lat, tuple(comps)))
    parsed = parse_decisions(trace)
    assert (parsed.longitudinal, parsed.lateral, parsed.parseable) == (lon, lat, True), trace
