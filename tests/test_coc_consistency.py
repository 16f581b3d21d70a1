import numpy as np
from coc_fixtures import phases

from alpamayo_jax.coc import consistency
from alpamayo_jax.coc.vocab import LATERAL_DECISIONS, LONGITUDINAL_DECISIONS


def test_rules_cover_every_decision():
    assert set(consistency.LONGITUDINAL_RULES) == {None, *LONGITUDINAL_DECISIONS}
    assert set(consistency.LATERAL_RULES) == {None, *LATERAL_DECISIONS}


def test_reward_matches_decision_to_trajectory():
    (xy, yaw, v, a), _ = phases([(10, 0.0, 0.0), (40, -2.0, 0.0), (14, 0.0, 0.0)], 8.0)
    v, a = np.maximum(v, 0.0), np.where(v <= 0, 0.0, a)
    assert consistency.consistency_reward("Stop at the red light.", xy, yaw, v, a) == 1.0
    assert consistency.consistency_reward("Yield to the pedestrian; keep the lane.", xy, yaw, v, a) == 1.0
    assert consistency.consistency_reward("Accelerate to pass the truck.", xy, yaw, v, a) == 0.0
    assert consistency.consistency_reward("Turn left at the intersection.", xy, yaw, v, a) == 0.0
    assert consistency.consistency_reward("The sky is blue.", xy, yaw, v, a) == 0.0


def test_lane_change_left_trajectory():
    (xy, yaw, v, a), _ = phases([(10, 0.0, 0.0), (20, 0.0, 0.004), (20, 0.0, -0.004), (14, 0.0, 0.0)], 15.0)
    assert consistency.consistency_reward("Change lanes to the left.", xy, yaw, v, a) == 1.0
    assert consistency.consistency_reward("Change lanes to the right.", xy, yaw, v, a) == 0.0
    assert (
        consistency.consistency_reward("No change in the driving decision is needed.", xy, yaw, v, a) == 1.0
    )
