"""VQA pairs for stage 0: generated from synthetic ground truth, or read from JSONL files.

JSONL format (one example per line): {"id": str, "images": [path, ...] (relative to the file),
"conversation": [{"role": "user" | "assistant", "text": str}, ...]} with alternating turns starting
with the user; each (user, assistant) pair is one question and its answer.
"""

from __future__ import annotations

import json
import os
import pathlib

from alpamayo_jax.data.synthetic_world import DURATION_S

HORIZON_US = 6_400_000
NO_EVENT_ANSWER = "Keep driving as now; nothing ahead requires a change."


def light_state(gt: dict, t0_us: int) -> str | None:
    """State of the first traffic light at `t0_us` (None when the clip has no light)."""
    if not gt["traffic_lights"]:
        return None
    state = None
    for t_us, s in gt["traffic_lights"][0]["states"]:
        if state is None or t_us <= t0_us:
            state = s
    return state


def synthetic_pairs(gt: dict, t0_us: int) -> list[tuple[str, str]]:
    """Questions and answers about a synthetic clip at keyframe `t0_us`, from its ground truth."""
    if not 0 <= t0_us <= DURATION_S * 1e6:
        raise ValueError(f"clip {gt['clip_id']}: keyframe {t0_us} us is outside the clip")
    light = light_state(gt, t0_us)
    light_answer = "There is no traffic light." if light is None else f"The traffic light is {light}."
    pedestrians = sum(o["type"] == "pedestrian" for o in gt["objects"])
    vehicles = sum(o["type"] in ("car", "truck") for o in gt["objects"])
    upcoming = [e for e in gt["events"] if t0_us - 500_000 <= e["t_us"] <= t0_us + HORIZON_US]
    plan = upcoming[0]["description"] if upcoming else NO_EVENT_ANSWER
    lanes = gt["road"]["num_lanes"]
    return [
        ("What is the state of the traffic light?", light_answer),
        ("How many pedestrians are in the scene?", f"{pedestrians} pedestrian{'s' * (pedestrians != 1)}."),
        ("How many vehicles are in the scene?", f"{vehicles} vehicle{'s' * (vehicles != 1)}."),
        ("How many lanes go in the ego direction?", f"{lanes} lane{'s' * (lanes != 1)}."),
        ("What will the ego vehicle do next, and why?", plan),
    ]


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """A VQA JSONL file -> [{"id", "images": [absolute paths], "pairs": [(question, answer)]}]."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQA file {path} does not exist")
    out = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        for key in ("id", "images", "conversation"):
            if key not in row:
                raise ValueError(f"{where}: missing field {key!r}")
        turns = row["conversation"]
        roles = [t.get("role") for t in turns]
        if not turns or len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
            raise ValueError(f"{where}: conversation must alternate user/assistant turns, got {roles}")
        images = [path.parent / p for p in row["images"]]
        missing = [str(p) for p in images if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{where}: images not found: {missing}")
        pairs = [(turns[i]["text"], turns[i + 1]["text"]) for i in range(0, len(turns), 2)]
        out.append({"id": str(row["id"]), "images": [str(p) for p in images], "pairs": pairs})
    return out
