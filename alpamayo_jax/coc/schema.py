"""Structured CoC records (SPEC 3): dataclasses, their JSON schema and their validation.

A labeller produces a `CocLabel` (decisions + critical components); a `CocRecord` adds the clip, the
keyframe, the scenario, the composed trace and who labelled it. `json_schema()` is the single source of
`data/coc_schema.json`; a test keeps the file, the schema and the dataclasses in step.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from alpamayo_jax.coc.vocab import (
    AXES,
    COMPONENT_CATEGORIES,
    LATERAL_DECISIONS,
    LONGITUDINAL_DECISIONS,
    SCENARIOS,
    UNCERTAINTY_LEVELS,
)

AttributeValue = str | int | float | bool


class SchemaError(ValueError):
    """A label or record that does not have the schema's shape or closed-set values."""


class LabelValidationError(ValueError):
    """A well-formed label that breaks a CoC rule; `errors` lists every broken rule."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclasses.dataclass(frozen=True)
class Component:
    """A critical component: what it is, its attributes, how sure, whether seen, what it causes."""

    category: str
    type: str
    attributes: Mapping[str, AttributeValue]
    uncertainty: str
    observed: bool
    supports: tuple[str, ...]
    object_id: str | None


@dataclasses.dataclass(frozen=True)
class CocLabel:
    """At most one decision per axis (None: no change) and the components that cause them."""

    longitudinal: str | None
    lateral: str | None
    components: tuple[Component, ...]

    def decision(self, axis: str) -> str | None:
        return self.longitudinal if axis == "longitudinal" else self.lateral


@dataclasses.dataclass(frozen=True)
class CocRecord:
    """A labelled keyframe: the label's fields plus where it comes from and the composed trace."""

    clip_id: str
    keyframe_us: int
    scenario: str | None
    longitudinal: str | None
    lateral: str | None
    components: tuple[Component, ...]
    trace: str
    labeller: str

    @property
    def label(self) -> CocLabel:
        return CocLabel(self.longitudinal, self.lateral, self.components)


def _nullable_enum(values: tuple[str, ...]) -> dict:
    return {"enum": [*values, None]}


def json_schema() -> dict:
    """JSON schema (draft 2020-12) of components, labels and records."""
    component = {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in dataclasses.fields(Component)],
        "properties": {
            "category": {"enum": list(COMPONENT_CATEGORIES)},
            "type": {"type": "string", "minLength": 1},
            "attributes": {
                "type": "object",
                "additionalProperties": {"type": ["string", "number", "boolean"]},
            },
            "uncertainty": {"enum": list(UNCERTAINTY_LEVELS)},
            "observed": {"type": "boolean"},
            "supports": {"type": "array", "items": {"enum": list(AXES)}, "uniqueItems": True, "minItems": 1},
            "object_id": {"type": ["string", "null"]},
        },
    }
    decisions = {
        "longitudinal": _nullable_enum(LONGITUDINAL_DECISIONS),
        "lateral": _nullable_enum(LATERAL_DECISIONS),
        "components": {"type": "array", "items": {"$ref": "#/$defs/component"}},
    }
    label = {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in dataclasses.fields(CocLabel)],
        "properties": decisions,
    }
    record = {
        "type": "object",
        "additionalProperties": False,
        "required": [f.name for f in dataclasses.fields(CocRecord)],
        "properties": {
            "clip_id": {"type": "string", "minLength": 1},
            "keyframe_us": {"type": "integer"},
            "scenario": _nullable_enum(SCENARIOS),
            **decisions,
            "trace": {"type": "string", "minLength": 1},
            "labeller": {"type": "string", "minLength": 1},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "alpamayo_jax/coc_schema.json",
        "title": "Chain-of-Causation record",
        "$defs": {"component": component, "label": label, "record": record},
        "$ref": "#/$defs/record",
    }


def label_json_schema() -> dict:
    """Schema of a labeller's reply (a `CocLabel`), self-contained for `response_format`."""
    full = json_schema()
    return {**full["$defs"]["label"], "$defs": {"component": full["$defs"]["component"]}}


def _require(d: Any, keys: list[str], where: str) -> None:
    if not isinstance(d, Mapping):
        raise SchemaError(f"{where}: expected an object, got {type(d).__name__}")
    missing = [k for k in keys if k not in d]
    extra = sorted(set(d) - set(keys))
    if missing:
        raise SchemaError(f"{where}: missing field(s) {missing}")
    if extra:
        raise SchemaError(f"{where}: unknown field(s) {extra}")


def _enum(value: Any, allowed: tuple[str, ...], where: str, nullable: bool = False) -> Any:
    if value is None and nullable:
        return None
    if value not in allowed:
        raise SchemaError(f"{where}: {value!r} is not one of {list(allowed)}")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SchemaError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def component_from_dict(d: Any, where: str = "component") -> Component:
    _require(d, [f.name for f in dataclasses.fields(Component)], where)
    attributes = d["attributes"]
    if not isinstance(attributes, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str | int | float | bool) for k, v in attributes.items()
    ):
        raise SchemaError(f"{where}.attributes: expected an object of string, number or boolean values")
    supports = d["supports"]
    if not isinstance(supports, list) or not supports or len(set(supports)) != len(supports):
        raise SchemaError(f"{where}.supports: expected a non-empty list of distinct axes, got {supports!r}")
    if not isinstance(d["observed"], bool):
        raise SchemaError(f"{where}.observed: expected a boolean, got {d['observed']!r}")
    object_id = d["object_id"]
    if object_id is not None and not isinstance(object_id, str):
        raise SchemaError(f"{where}.object_id: expected a string or null, got {object_id!r}")
    return Component(
        category=_enum(d["category"], COMPONENT_CATEGORIES, f"{where}.category"),
        type=_string(d["type"], f"{where}.type"),
        attributes=dict(attributes),
        uncertainty=_enum(d["uncertainty"], UNCERTAINTY_LEVELS, f"{where}.uncertainty"),
        observed=d["observed"],
        supports=tuple(_enum(a, AXES, f"{where}.supports") for a in supports),
        object_id=object_id,
    )


def _components(value: Any, where: str) -> tuple[Component, ...]:
    if not isinstance(value, list):
        raise SchemaError(f"{where}.components: expected a list, got {type(value).__name__}")
    return tuple(component_from_dict(c, f"{where}.components[{i}]") for i, c in enumerate(value))


def label_from_dict(d: Any, where: str = "label") -> CocLabel:
    """Parses a labeller reply; raises `SchemaError` naming the offending field."""
    _require(d, [f.name for f in dataclasses.fields(CocLabel)], where)
    return CocLabel(
        longitudinal=_enum(d["longitudinal"], LONGITUDINAL_DECISIONS, f"{where}.longitudinal", nullable=True),
        lateral=_enum(d["lateral"], LATERAL_DECISIONS, f"{where}.lateral", nullable=True),
        components=_components(d["components"], where),
    )


def record_from_dict(d: Any, where: str = "record") -> CocRecord:
    _require(d, [f.name for f in dataclasses.fields(CocRecord)], where)
    if not isinstance(d["keyframe_us"], int) or isinstance(d["keyframe_us"], bool):
        raise SchemaError(f"{where}.keyframe_us: expected an integer, got {d['keyframe_us']!r}")
    return CocRecord(
        clip_id=_string(d["clip_id"], f"{where}.clip_id"),
        keyframe_us=d["keyframe_us"],
        scenario=_enum(d["scenario"], SCENARIOS, f"{where}.scenario", nullable=True),
        longitudinal=_enum(d["longitudinal"], LONGITUDINAL_DECISIONS, f"{where}.longitudinal", nullable=True),
        lateral=_enum(d["lateral"], LATERAL_DECISIONS, f"{where}.lateral", nullable=True),
        components=_components(d["components"], where),
        trace=_string(d["trace"], f"{where}.trace"),
        labeller=_string(d["labeller"], f"{where}.labeller"),
    )


def to_dict(obj: Component | CocLabel | CocRecord) -> dict:
    """JSON-ready dict (tuples as lists) of a component, label or record."""
    out = dataclasses.asdict(obj)

    def listify(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: listify(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [listify(v) for v in x]
        return x

    return listify(out)


def validate_label(
    label: CocLabel,
    keyframe_us: int | None = None,
    first_visible_us: Mapping[str, int] | None = None,
) -> list[str]:
    """CoC rule violations of a label (empty when valid).

    Rules: closed-set decisions and fields; every decision grounded in at least one observed component
    (else UNOBSERVED); causal locality: components seen within the history, and, given the ground truth's
    `first_visible_us` per object id (synthetic clips), visible at or before `keyframe_us`; minimality:
    every component supports a taken decision, none is listed twice.
    """
    errors = []
    for axis, allowed in (("longitudinal", LONGITUDINAL_DECISIONS), ("lateral", LATERAL_DECISIONS)):
        value = label.decision(axis)
        if value is not None and value not in allowed:
            errors.append(f"{axis}: {value!r} is not in the closed decision set")
    seen = set()
    for i, comp in enumerate(label.components):
        where = f"components[{i}] ({comp.category}/{comp.type})"
        if comp.category not in COMPONENT_CATEGORIES:
            errors.append(f"{where}: unknown category {comp.category!r}")
        if comp.uncertainty not in UNCERTAINTY_LEVELS:
            errors.append(f"{where}: uncertainty must be low or high, got {comp.uncertainty!r}")
        key = (comp.category, comp.type, comp.object_id, tuple(sorted(comp.attributes.items())))
        if key in seen:
            errors.append(f"{where}: duplicate component")
        seen.add(key)
        if not comp.supports:
            errors.append(f"{where}: supports no decision (annotation economy)")
        for axis in comp.supports:
            if axis not in AXES:
                errors.append(f"{where}: unknown axis {axis!r} in supports")
            elif label.decision(axis) is None:
                errors.append(f"{where}: supports the {axis} decision, which is None (minimality)")
        if not comp.observed:
            errors.append(f"{where}: not observed within the 2 s history (causal locality)")
        if first_visible_us is not None and comp.object_id is not None:
            if comp.object_id not in first_visible_us:
                errors.append(f"{where}: object {comp.object_id!r} is not in the ground truth")
            elif keyframe_us is not None and first_visible_us[comp.object_id] > keyframe_us:
                first = first_visible_us[comp.object_id]
                errors.append(
                    f"{where}: object {comp.object_id!r} first visible at {first} us, "
                    f"after the keyframe {keyframe_us} us (causal locality)"
                )
    for axis in AXES:
        if label.decision(axis) is None:
            continue
        if not any(c.observed and axis in c.supports for c in label.components):
            errors.append(
                f"UNOBSERVED: the {axis} decision {label.decision(axis)!r} has no observed component"
            )
    return errors


def check_label(
    label: CocLabel, keyframe_us: int | None = None, first_visible_us: Mapping[str, int] | None = None
) -> CocLabel:
    """Returns `label` if valid, else raises `LabelValidationError` listing every violation."""
    errors = validate_label(label, keyframe_us, first_visible_us)
    if errors:
        raise LabelValidationError(errors)
    return label
