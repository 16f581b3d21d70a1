import dataclasses
import json
from pathlib import Path

import pytest

from alpamayo_jax.coc import schema
from alpamayo_jax.coc.schema import CocLabel, CocRecord, Component, SchemaError
from alpamayo_jax.coc.vocab import COMPONENT_CATEGORIES, LATERAL_DECISIONS, LONGITUDINAL_DECISIONS, SCENARIOS

SCHEMA_FILE = Path(__file__).resolve().parents[1] / "data" / "coc_schema.json"


def test_schema_file_is_the_generated_schema():
    assert json.loads(SCHEMA_FILE.read_text()) == schema.json_schema()


@pytest.mark.parametrize("name, cls", [("component", Component), ("label", CocLabel), ("record", CocRecord)])
def test_schema_properties_match_dataclass_fields(name, cls):
    definition = json.loads(SCHEMA_FILE.read_text())["$defs"][name]
    fields = [f.name for f in dataclasses.fields(cls)]
    assert list(definition["properties"]) == fields
    assert definition["required"] == fields
    assert definition["additionalProperties"] is False


def test_schema_enums_match_vocabularies():
    defs = json.loads(SCHEMA_FILE.read_text())["$defs"]
    assert defs["label"]["properties"]["longitudinal"]["enum"] == [*LONGITUDINAL_DECISIONS, None]
    assert defs["label"]["properties"]["lateral"]["enum"] == [*LATERAL_DECISIONS, None]
    assert defs["record"]["properties"]["scenario"]["enum"] == [*SCENARIOS, None]
    assert defs["component"]["properties"]["category"]["enum"] == list(COMPONENT_CATEGORIES)
    assert defs["component"]["properties"]["uncertainty"]["enum"] == ["low", "high"]
    label_schema = schema.label_json_schema()
    assert label_schema["properties"]["components"]["items"] == {"$ref": "#/$defs/component"}
    assert label_schema["$defs"]["component"] == defs["component"]


def _comp(**over):
    base = dict(
        category="critical_object",
        type="car",
        attributes={"motion": "parked", "position": "on the right", "distance_m": 12.5},
        uncertainty="low",
        observed=True,
        supports=["lateral"],
        object_id="obj_3",
    )
    return {**base, **over}


def _label(**over):
    return {"longitudinal": None, "lateral": "in_lane_nudge_left", "components": [_comp()], **over}


def test_valid_label_round_trips_through_dicts():
    label = schema.label_from_dict(_label())
    assert label.components[0].supports == ("lateral",)
    assert schema.validate_label(label) == []
    record = CocRecord(
        "clip-1",
        4_500_000,
        "nudge",
        label.longitudinal,
        label.lateral,
        label.components,
        "Nudge left.",
        "oracle",
    )
    d = schema.to_dict(record)
    assert json.loads(json.dumps(d)) == d
    assert schema.record_from_dict(d) == record
    assert record.label == label


@pytest.mark.parametrize(
    "bad, match",
    [
        (_label(longitudinal="brake_hard"), r"label\.longitudinal: 'brake_hard'"),
        (_label(lateral="lane_change"), r"label\.lateral"),
        (_label(components=[_comp(category="pothole")]), r"components\[0\]\.category"),
        (_label(components=[_comp(uncertainty="medium")]), r"components\[0\]\.uncertainty"),
        (_label(components=[_comp(supports=[])]), r"components\[0\]\.supports"),
        (_label(components=[_comp(supports=["vertical"])]), r"components\[0\]\.supports"),
        (_label(components=[_comp(observed="yes")]), r"components\[0\]\.observed"),
        (_label(components=[_comp(attributes={"pose": [1, 2]})]), r"components\[0\]\.attributes"),
        (
            _label(components=[{k: v for k, v in _comp().items() if k != "type"}]),
            r"missing field\(s\) \['type'\]",
        ),
        ({**_label(), "trace": "x"}, r"unknown field\(s\) \['trace'\]"),
        (["not", "an", "object"], "expected an object"),
    ],
)
def test_malformed_labels_name_the_field(bad, match):
    with pytest.raises(SchemaError, match=match):
        schema.label_from_dict(bad)


def test_rule_violations_are_all_reported():
    car = schema.component_from_dict(_comp())
    unobserved = dataclasses.replace(car, observed=False, object_id="obj_4")
    label = CocLabel("yield", "in_lane_nudge_left", (car, car, unobserved))
    errors = schema.validate_label(label)
    assert any("duplicate" in e for e in errors)
    assert any("not observed within the 2 s history" in e for e in errors)
    assert any(e.startswith("UNOBSERVED: the longitudinal decision 'yield'") for e in errors)
    with pytest.raises(schema.LabelValidationError) as info:
        schema.check_label(label)
    assert info.value.errors == errors


def test_minimality_rejects_components_of_untaken_decisions():
    comp = schema.component_from_dict(_comp(supports=["lateral", "longitudinal"]))
    errors = schema.validate_label(CocLabel(None, "in_lane_nudge_left", (comp,)))
    assert errors == [
        "components[0] (critical_object/car): supports the longitudinal decision, which is None (minimality)"
    ]
    assert schema.validate_label(CocLabel(None, None, ())) == []


def test_causal_locality_against_ground_truth_visibility():
    label = schema.label_from_dict(_label())
    assert schema.validate_label(label, keyframe_us=5_000_000, first_visible_us={"obj_3": 3_000_000}) == []
    late = schema.validate_label(label, keyframe_us=5_000_000, first_visible_us={"obj_3": 5_500_000})
    assert len(late) == 1 and "after the keyframe" in late[0]
    unknown = schema.validate_label(label, keyframe_us=5_000_000, first_visible_us={"obj_9": 0})
    assert "not in the ground truth" in unknown[0]
    assert any(e.startswith("UNOBSERVED") for e in schema.validate_label(CocLabel("yield", None, ())))
