"""Chat messages (OpenAI multimodal format) that ask a VLM for a structured CoC label (SPEC 3).

The model sees the 2 s history as camera frames at 2 Hz (for the critical components), and the ego
history, the 6 s future trajectory and its meta-actions (to resolve the decision). It answers with one
JSON object matching `schema.label_json_schema()`.
"""

import base64
import io
import json
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from alpamayo_jax.coc.schema import label_json_schema
from alpamayo_jax.coc.vocab import COMPONENT_CATEGORIES, LATERAL_DECISIONS, LONGITUDINAL_DECISIONS

if TYPE_CHECKING:
    from alpamayo_jax.coc.labeller import LabelRequest

US_PER_S = 1_000_000
# Ticks between listed trajectory points: 10 Hz poses shown at 2 Hz.
TABLE_STRIDE = 5

CATEGORY_HINTS = {
    "critical_object": "type, position relative to ego, motion",
    "traffic_light": "state, arrow, visibility, wait line",
    "yield_stop_control": "sign type, all-way or two-way, line location",
    "road_event": "curvature, grade, bump, narrowing, roundabout, ramp",
    "lane": "lane count, line type, shoulder or bike lane, width",
    "routing_intent": "where the route goes next",
    "odd_constraint": "weather, construction, emergency vehicle, school bus, rail",
}


def system_prompt() -> str:
    categories = "\n".join(f"- {c}: {CATEGORY_HINTS[c]}" for c in COMPONENT_CATEGORIES)
    return f"""You label driving decisions for a Chain-of-Causation dataset.
Given camera frames from the 2 s before a keyframe and the ego vehicle's past and future motion, return
the ego's first driving decision after the keyframe and the critical components that cause it.

Decisions (at most one per axis; null if the ego does not change its behaviour on that axis):
- longitudinal: {", ".join(LONGITUDINAL_DECISIONS)}
- lateral: {", ".join(LATERAL_DECISIONS)}
Resolve the decision from the future trajectory and meta-actions.

Critical components, by category (with the attributes worth stating):
{categories}
Rules: use only evidence visible in the frames (the 2 s history), never the future; keep only direct,
proximate causes, most important first; every decision needs at least one observed component; every
component must support a taken decision ("supports": ["longitudinal"] and/or ["lateral"]); mark
uncertainty "high" when the evidence is unclear; give object_id only when one is shown to you, else null.

Reply with one JSON object and nothing else, following this JSON schema:
{json.dumps(label_json_schema())}"""


def encode_image(image_hw3: np.ndarray, fmt: str = "JPEG") -> str:
    """A data URL for a uint8 `[H, W, 3]` image."""
    buf = io.BytesIO()
    Image.fromarray(image_hw3).save(buf, format=fmt)
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def _runs(labels: tuple[str, ...], dt: float = 0.1) -> str:
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append(f"{start * dt:.1f}-{i * dt:.1f} s {labels[start]}")
            start = i
    return "; ".join(out)


def _table(xy: np.ndarray, yaw: np.ndarray, speed: np.ndarray, t_s: np.ndarray) -> str:
    rows = [
        f"t={t:+.1f} s x={p[0]:.1f} m y={p[1]:.1f} m yaw={np.degrees(h):.0f} deg v={v:.1f} m/s"
        for t, p, h, v in zip(t_s, xy, yaw, speed, strict=True)
    ]
    return "\n".join(rows)


def build_messages(request: "LabelRequest", image_format: str = "JPEG") -> list[dict]:
    """System + user messages for one keyframe."""
    content: list[dict] = [
        {
            "type": "text",
            "text": f"Clip {request.clip_id}, keyframe t=0 at {request.keyframe_us} us. "
            "Camera frames at 2 Hz from the 2 s history:",
        }
    ]
    for i, t_us in enumerate(request.frame_us):
        for cam in sorted(request.frames):
            dt_s = (int(t_us) - request.keyframe_us) / US_PER_S
            content.append({"type": "text", "text": f"{cam} at t={dt_s:+.1f} s"})
            url = encode_image(request.frames[cam][i], image_format)
            content.append({"type": "image_url", "image_url": {"url": url}})
    h = request.history_yaw.shape[0]
    hist_idx = np.arange(h - 1, -1, -TABLE_STRIDE)[::-1]
    fut_idx = np.arange(TABLE_STRIDE - 1, request.future_yaw.shape[0], TABLE_STRIDE)
    history = _table(
        request.history_xy[hist_idx],
        request.history_yaw[hist_idx],
        request.history_speed[hist_idx],
        (hist_idx - (h - 1)) * 0.1,
    )
    future = _table(
        request.future_xy[fut_idx],
        request.future_yaw[fut_idx],
        request.future_speed[fut_idx],
        (fut_idx + 1) * 0.1,
    )
    content.append(
        {
            "type": "text",
            "text": "Ego history (keyframe ego frame, x forward, y left):\n"
            f"{history}\nEgo future (6 s):\n{future}\n"
            f"Future longitudinal meta-actions: {_runs(request.meta_longitudinal)}\n"
            f"Future lateral meta-actions: {_runs(request.meta_lateral)}\n"
            "Return the JSON label.",
        }
    )
    return [{"role": "system", "content": system_prompt()}, {"role": "user", "content": content}]


def retry_messages(reply: str, error: str) -> list[dict]:
    """The rejected reply and the validation error, appended before the next attempt."""
    return [
        {"role": "assistant", "content": reply},
        {
            "role": "user",
            "content": f"Your reply was rejected: {error}\nReply again with one corrected JSON object only.",
        },
    ]
