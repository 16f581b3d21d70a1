"""Labeller backend that reads the synthetic world's ground truth instead of asking a model.

The ground-truth event nearest the keyframe's behaviour change becomes the label: its decisions, and
its causes visible at or before the keyframe as components. The label then goes
through the same parsing and validation as a model's reply.
"""

import json
from collections.abc import Mapping
from typing import Any

from alpamayo_jax.coc.labeller import LabelRequest, LabelResult, ReplyError, accept, parse_reply, reject
from alpamayo_jax.coc.vocab import AXES


class OracleLabeller:
    """`Labeller` over synthetic ground truth. The behaviour change is expected `lead_us` after the
    keyframe; events further than `tolerance_us` from that are not this keyframe's."""

    name = "oracle"

    def __init__(self, lead_us: int = 500_000, tolerance_us: int = 1_500_000):
        self.lead_us = lead_us
        self.tolerance_us = tolerance_us

    def _event(self, request: LabelRequest, gt: Mapping[str, Any]) -> Mapping[str, Any] | None:
        target = request.keyframe_us + self.lead_us
        events = [e for e in gt.get("events", []) if abs(int(e["t_us"]) - target) <= self.tolerance_us]
        return min(events, key=lambda e: abs(int(e["t_us"]) - target), default=None)

    def reply(self, request: LabelRequest, event: Mapping[str, Any]) -> dict:
        """The event as a labeller reply (a `CocLabel` dict)."""
        taken = [axis for axis in AXES if event.get(axis) is not None]
        components = []
        for cause in event.get("causes", []):
            first = cause.get("first_visible_us")
            if first is None or int(first) > request.keyframe_us:
                continue  # not yet visible at the keyframe: causal locality forbids citing it
            components.append(
                {
                    "category": cause["category"],
                    "type": cause["type"],
                    "attributes": dict(cause.get("attributes", {})),
                    "uncertainty": cause.get("uncertainty", "low"),
                    "observed": True,
                    "supports": list(cause.get("supports", taken)),
                    "object_id": None if cause.get("object_id") is None else str(cause["object_id"]),
                }
            )
        return {
            "longitudinal": event.get("longitudinal"),
            "lateral": event.get("lateral"),
            "components": components,
        }

    def label(self, request: LabelRequest) -> LabelResult:
        gt = request.ground_truth
        if gt is None:
            return reject(request, "no_ground_truth", f"clip {request.clip_id} has no ground truth", 1)
        event = self._event(request, gt)
        if event is None:
            detail = f"no ground-truth event within {self.tolerance_us} us of the change after the keyframe"
            return reject(request, "no_ground_truth_event", detail, 1)
        try:
            label = parse_reply(json.dumps(self.reply(request, event)), request)
        except ReplyError as e:
            return reject(request, e.reason, str(e), 1)
        return accept(request, label, self.name, 1)
