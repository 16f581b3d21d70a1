"""The labeller interface: a request per keyframe in, an accepted record or a rejection reason out.

Every backend's reply goes through `parse_reply` (JSON -> schema -> CoC rules); a backend that talks to
a model retries with the validation error fed back (`label_with_retries`) and, after its last attempt,
returns a rejection: an invalid label is never written as if valid.
"""

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from alpamayo_jax.coc import prompt
from alpamayo_jax.coc.schema import (
    CocLabel,
    CocRecord,
    LabelValidationError,
    SchemaError,
    check_label,
    label_from_dict,
)
from alpamayo_jax.coc.trace import compose_trace
from alpamayo_jax.coc.vocab import LATERAL_META_ACTIONS, LONGITUDINAL_META_ACTIONS

REJECTION_REASONS: tuple[str, ...] = (
    "invalid_json",
    "schema",
    "rules",
    "timeout",
    "http_error",
    "bad_response",
    "no_ground_truth",
    "no_ground_truth_event",
)


@dataclasses.dataclass(frozen=True)
class LabelRequest:
    """What a labeller sees for one keyframe; poses in the keyframe's ego frame (x forward, y left).

    frames: camera name -> uint8 `[n, H, W, 3]` at 2 Hz over the 2 s history, times `frame_us [n]`.
    history_*: 10 Hz ego states up to and including the keyframe (`[h, 2]` xy, `[h]` yaw and speed).
    future_*: 10 Hz ego states after the keyframe, 6 s (`[f, 2]`, `[f]`, `[f]`).
    meta_*: future per-tick meta-actions `[f]` of both axes.
    """

    clip_id: str
    keyframe_us: int
    frames: Mapping[str, np.ndarray]
    frame_us: np.ndarray
    history_xy: np.ndarray
    history_yaw: np.ndarray
    history_speed: np.ndarray
    future_xy: np.ndarray
    future_yaw: np.ndarray
    future_speed: np.ndarray
    meta_longitudinal: tuple[str, ...]
    meta_lateral: tuple[str, ...]
    scenario: str | None = None
    ground_truth: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        where = f"label request {self.clip_id} @ {self.keyframe_us} us"
        n = self.frame_us.shape[0]
        for cam, img in self.frames.items():
            if img.dtype != np.uint8 or img.ndim != 4 or img.shape[0] != n or img.shape[-1] != 3:
                raise ValueError(
                    f"{where}: frames[{cam!r}] must be uint8 [{n}, H, W, 3], got {img.dtype} {img.shape}"
                )
        for part in ("history", "future"):
            xy, yaw, speed = (getattr(self, f"{part}_{k}") for k in ("xy", "yaw", "speed"))
            m = yaw.shape[0]
            if xy.shape != (m, 2) or speed.shape != (m,):
                raise ValueError(
                    f"{where}: {part} xy {xy.shape}, yaw {yaw.shape}, speed {speed.shape} disagree"
                )
        f = self.future_yaw.shape[0]
        if len(self.meta_longitudinal) != f or len(self.meta_lateral) != f:
            raise ValueError(f"{where}: meta-actions must have one label per future tick ({f})")
        bad = (set(self.meta_longitudinal) - set(LONGITUDINAL_META_ACTIONS)) | (
            set(self.meta_lateral) - set(LATERAL_META_ACTIONS)
        )
        if bad:
            raise ValueError(f"{where}: unknown meta-actions {sorted(bad)}")


@dataclasses.dataclass(frozen=True)
class LabelResult:
    """The accepted record, or None with a rejection reason (one of REJECTION_REASONS) and detail."""

    clip_id: str
    keyframe_us: int
    record: CocRecord | None
    rejection: str | None
    detail: str
    attempts: int

    @property
    def accepted(self) -> bool:
        return self.record is not None


class Labeller(Protocol):
    name: str

    def label(self, request: LabelRequest) -> LabelResult: ...


class ReplyError(ValueError):
    """A reply that cannot be accepted; `reason` is one of REJECTION_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TransportError(RuntimeError):
    """No usable reply from a backend (timeout, HTTP error, malformed envelope)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def ground_truth_visibility(ground_truth: Mapping[str, Any]) -> dict[str, int]:
    """object id -> first visible time (us) from a synthetic clip's ground truth."""
    out: dict[str, int] = {}
    for obj in ground_truth.get("objects", []):
        oid = obj.get("object_id", obj.get("id"))
        if oid is not None and obj.get("first_visible_us") is not None:
            out[str(oid)] = int(obj["first_visible_us"])
    for event in ground_truth.get("events", []):
        for cause in event.get("causes", []):
            if cause.get("object_id") is not None and cause.get("first_visible_us") is not None:
                out.setdefault(str(cause["object_id"]), int(cause["first_visible_us"]))
    return out


def _extract_json(text: str) -> Any:
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    body = fenced.group(1) if fenced else text
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ReplyError("invalid_json", f"reply is not valid JSON: {e}") from e


def parse_reply(text: str, request: LabelRequest) -> CocLabel:
    """A reply's label, checked against the schema and the CoC rules (with ground-truth visibility
    when the request carries ground truth); raises ReplyError."""
    data = _extract_json(text)
    try:
        label = label_from_dict(data)
    except SchemaError as e:
        raise ReplyError("schema", str(e)) from e
    visibility = ground_truth_visibility(request.ground_truth) if request.ground_truth is not None else None
    try:
        return check_label(label, request.keyframe_us, visibility)
    except LabelValidationError as e:
        raise ReplyError("rules", str(e)) from e


def make_record(request: LabelRequest, label: CocLabel, labeller: str) -> CocRecord:
    return CocRecord(
        clip_id=request.clip_id,
        keyframe_us=request.keyframe_us,
        scenario=request.scenario,
        longitudinal=label.longitudinal,
        lateral=label.lateral,
        components=label.components,
        trace=compose_trace(label),
        labeller=labeller,
    )


def accept(request: LabelRequest, label: CocLabel, labeller: str, attempts: int) -> LabelResult:
    record = make_record(request, label, labeller)
    return LabelResult(request.clip_id, request.keyframe_us, record, None, "", attempts)


def reject(request: LabelRequest, reason: str, detail: str, attempts: int) -> LabelResult:
    if reason not in REJECTION_REASONS:
        raise ValueError(f"unknown rejection reason {reason!r}")
    return LabelResult(request.clip_id, request.keyframe_us, None, reason, detail, attempts)


def label_with_retries(
    request: LabelRequest,
    complete: Callable[[list[dict]], str],
    labeller: str,
    max_attempts: int,
) -> LabelResult:
    """Asks `complete` (messages -> reply text) up to `max_attempts` times; after an unusable reply
    the next attempt sees that reply and the validation error."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    messages = prompt.build_messages(request)
    reason, detail = "bad_response", ""
    for attempt in range(1, max_attempts + 1):
        try:
            reply = complete(messages)
        except TransportError as e:
            reason, detail = e.reason, str(e)
            continue
        try:
            return accept(request, parse_reply(reply, request), labeller, attempt)
        except ReplyError as e:
            reason, detail = e.reason, str(e)
            messages = [*messages, *prompt.retry_messages(reply, str(e))]
    return reject(request, reason, detail, max_attempts)
