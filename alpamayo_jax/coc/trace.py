"""Composes the natural-language CoC trace from a structured label (SPEC 3).

One imperative clause per taken decision, with a small fixed verb set, naming the components that
support it; "No change ..." when both decisions are None. Example:
"Nudge left within the lane to pass the parked car on the right."
"""

from alpamayo_jax.coc.schema import CocLabel, Component

NO_CHANGE = "No change in the driving decision is needed."

LONGITUDINAL_PHRASES: dict[str, str] = {
    "set_speed_tracking": "keep to the set speed given {cause}",
    "lead_obstacle_following": "follow {cause}",
    "speed_adaptation": "adapt speed for {cause}",
    "gap_searching": "search for a gap next to {cause}",
    "acceleration_for_passing": "accelerate to pass {cause}",
    "yield": "yield to {cause}",
    "stop_for_static_constraints": "stop at the line for {cause}",
}

LATERAL_PHRASES: dict[str, str] = {
    "lane_keeping": "keep the lane along {cause}",
    "merge_split": "merge at {cause}",
    "out_of_lane_nudge_left": "nudge left out of the lane to pass {cause}",
    "out_of_lane_nudge_right": "nudge right out of the lane to pass {cause}",
    "in_lane_nudge_left": "nudge left within the lane to pass {cause}",
    "in_lane_nudge_right": "nudge right within the lane to pass {cause}",
    "lane_change_left": "change lanes to the left because of {cause}",
    "lane_change_right": "change lanes to the right because of {cause}",
    "pull_over": "pull over to the curb because of {cause}",
    "turn_left": "turn left at {cause}",
    "turn_right": "turn right at {cause}",
    "lateral_maneuver_abort": "abort the lateral maneuver because of {cause}",
}

# Attributes worth a word in the trace: qualifiers before the type, placement after it.
QUALIFIER_KEYS = ("state", "color", "motion", "status", "arrow")
PLACEMENT_KEYS = ("position", "relative_position", "location")


def describe_component(component: Component) -> str:
    """Noun phrase for a component, e.g. 'the decelerating car ahead in the ego lane'."""
    attrs = component.attributes
    qualifiers = [str(attrs[k]) for k in QUALIFIER_KEYS if k in attrs and isinstance(attrs[k], str)]
    placement = [str(attrs[k]) for k in PLACEMENT_KEYS if k in attrs and isinstance(attrs[k], str)]
    words = " ".join([*qualifiers, component.type.replace("_", " "), *placement])
    phrase = f"the {words}"
    return f"what appears to be {phrase}" if component.uncertainty == "high" else phrase


def _join(phrases: list[str]) -> str:
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def compose_trace(label: CocLabel) -> str:
    """The trace of a label whose decisions are in the closed sets (see `schema.check_label`)."""
    clauses = []
    for axis, phrases in (("longitudinal", LONGITUDINAL_PHRASES), ("lateral", LATERAL_PHRASES)):
        decision = label.decision(axis)
        if decision is None:
            continue
        causes = [describe_component(c) for c in label.components if axis in c.supports]
        if not causes:
            raise ValueError(f"compose_trace: the {axis} decision {decision!r} has no supporting component")
        clauses.append(phrases[decision].format(cause=_join(causes)))
    if not clauses:
        return NO_CHANGE
    text = "; ".join(clauses)
    return text[0].upper() + text[1:] + "."
