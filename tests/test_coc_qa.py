import math

from alpamayo_jax.coc.qa import agreement
from alpamayo_jax.coc.schema import CocLabel, Component


def _c(category, kind, supports, object_id=None):
    return Component(category, kind, {}, "low", True, tuple(supports), object_id)


PED = _c("critical_object", "pedestrian", ["longitudinal"], "p1")
LIGHT = _c("traffic_light", "traffic_light", ["longitudinal"])
CAR = _c("critical_object", "car", ["lateral"], "c1")

REFERENCE = {
    ("a", 1): CocLabel("yield", None, (PED,)),
    ("b", 1): CocLabel("stop_for_static_constraints", "in_lane_nudge_left", (LIGHT, CAR)),
    ("c", 1): CocLabel(None, "in_lane_nudge_left", (CAR,)),
    ("d", 1): CocLabel("yield", None, (PED,)),
}


def test_identical_sets_agree_fully():
    report = agreement(REFERENCE, REFERENCE)
    assert report.overall == {"decision": 1.0, "causal_factors": 1.0, "cause_effect": 1.0}
    assert report.counts == {"decision": 4, "causal_factors": 4, "cause_effect": 4}
    assert report.missing == 0


def test_each_subtask_and_category_counts_its_own_errors():
    labelled = {
        # wrong decision, right cause
        ("a", 1): CocLabel("stop_for_static_constraints", None, (PED,)),
        # light missing (causal factor absent); car cited for the wrong axis (cause-effect invalid)
        ("b", 1): CocLabel(
            "stop_for_static_constraints",
            "in_lane_nudge_left",
            (_c("critical_object", "car", ["longitudinal"], "c1"),),
        ),
        # spurious extra component: factors present, cause-effect invalid
        ("c", 1): CocLabel(None, "in_lane_nudge_left", (CAR, _c("lane", "lane_line", ["lateral"]))),
    }
    report = agreement(labelled, REFERENCE)
    assert report.missing == 1
    assert report.overall["decision"] == 2 / 3
    assert report.overall["causal_factors"] == 2 / 3
    assert report.overall["cause_effect"] == 1 / 3
    assert report.per_category["traffic_light"] == {"causal_factors": 0.0}
    assert report.per_category["critical_object"] == {"causal_factors": 1.0, "cause_effect": 2 / 3}
    assert report.per_category["lane"] == {"cause_effect": 0.0}
    assert report.per_decision["longitudinal:yield"] == 0.0
    assert report.per_decision["lateral:in_lane_nudge_left"] == 1.0
    assert report.per_decision["longitudinal:None"] == 1.0


def test_components_match_by_object_id_before_type():
    ref = {1: CocLabel("yield", None, (_c("critical_object", "pedestrian", ["longitudinal"], "p1"),))}
    other_ped = {1: CocLabel("yield", None, (_c("critical_object", "pedestrian", ["longitudinal"], "p2"),))}
    no_id = {1: CocLabel("yield", None, (_c("critical_object", "pedestrian", ["longitudinal"]),))}
    assert agreement(other_ped, ref).overall["causal_factors"] == 0.0
    assert agreement(no_id, ref).overall["causal_factors"] == 1.0
    assert math.isnan(agreement({}, ref).overall["decision"])
