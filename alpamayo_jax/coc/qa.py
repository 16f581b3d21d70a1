"""Label QA: agreement of a labelled set with a reference set on the three subtasks of SPEC 3.

Per keyframe (matched by key, e.g. (clip_id, keyframe_us)):
- decision: both axes' decisions equal;
- causal factors present: every reference component is found in the labelled set (same object id when
  both have one, else same category and type);
- cause-effect valid: every labelled component is a reference component supporting the same axes.
Rates are reported overall, per component category (subtasks 2 and 3, over components) and per
reference decision (subtask 1).
"""

import dataclasses
from collections import defaultdict
from collections.abc import Hashable, Mapping

from alpamayo_jax.coc.schema import CocLabel, Component
from alpamayo_jax.coc.vocab import AXES

SUBTASKS = ("decision", "causal_factors", "cause_effect")


@dataclasses.dataclass(frozen=True)
class QaReport:
    """Agreement rates in [0, 1] with their counts; `missing` = reference keys with no label."""

    overall: dict[str, float]
    counts: dict[str, int]
    per_category: dict[str, dict[str, float]]
    per_decision: dict[str, float]
    missing: int


def _same(a: Component, b: Component) -> bool:
    if a.object_id is not None and b.object_id is not None:
        return a.object_id == b.object_id
    return a.category == b.category and a.type == b.type


def _match(comp: Component, pool: tuple[Component, ...]) -> Component | None:
    return next((c for c in pool if _same(comp, c)), None)


def _rate(hits: list[bool]) -> float:
    return sum(hits) / len(hits) if hits else float("nan")


def agreement(labelled: Mapping[Hashable, CocLabel], reference: Mapping[Hashable, CocLabel]) -> QaReport:
    """Agreement of `labelled` with `reference` over the keys of `reference` that were labelled."""
    keys = [k for k in reference if k in labelled]
    tasks: dict[str, list[bool]] = {t: [] for t in SUBTASKS}
    by_cat: dict[str, dict[str, list[bool]]] = defaultdict(lambda: {t: [] for t in SUBTASKS[1:]})
    by_decision: dict[str, list[bool]] = defaultdict(list)
    for key in keys:
        lab, ref = labelled[key], reference[key]
        same_decision = all(lab.decision(a) == ref.decision(a) for a in AXES)
        tasks["decision"].append(same_decision)
        for axis in AXES:
            by_decision[f"{axis}:{ref.decision(axis)}"].append(lab.decision(axis) == ref.decision(axis))
        present = []
        for comp in ref.components:
            found = _match(comp, lab.components) is not None
            present.append(found)
            by_cat[comp.category]["causal_factors"].append(found)
        tasks["causal_factors"].append(all(present))
        valid = []
        for comp in lab.components:
            ref_comp = _match(comp, ref.components)
            ok = ref_comp is not None and set(ref_comp.supports) == set(comp.supports)
            valid.append(ok)
            by_cat[comp.category]["cause_effect"].append(ok)
        tasks["cause_effect"].append(all(valid))
    return QaReport(
        overall={t: _rate(v) for t, v in tasks.items()},
        counts={t: len(v) for t, v in tasks.items()},
        per_category={c: {t: _rate(v) for t, v in d.items() if v} for c, d in sorted(by_cat.items())},
        per_decision={d: _rate(v) for d, v in sorted(by_decision.items())},
        missing=len(reference) - len(keys),
    )
