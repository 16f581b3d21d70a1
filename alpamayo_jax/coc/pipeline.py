"""The CoC auto-labelling run: clips -> meta-actions -> keyframes -> scenario -> labeller -> outputs.

Clips come from a `ClipSource` (the dataset reader, the synthetic world or a test fake). Each clip's
outcome (records, rejections and skipped keyframes with their reasons) is appended to the records
JSONL before the next one is counted done, so a run resumes where it stopped.
"""

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from alpamayo_jax.coc import outputs
from alpamayo_jax.coc.keyframes import Keyframe, KeyframeConfig, find_keyframes
from alpamayo_jax.coc.labeller import Labeller, LabelRequest, LabelResult
from alpamayo_jax.coc.meta_actions import MetaActions, detect
from alpamayo_jax.coc.scenarios import ObstacleTrack, select_scenario
from alpamayo_jax.coc.schema import to_dict
from alpamayo_jax.coc.vocab import AXES, SCENARIOS


@dataclasses.dataclass(frozen=True)
class Egomotion:
    """Ego states of one clip at 10 Hz: times `t_us [T]`, `xy [T, 2]` (m), `yaw [T]` (rad), signed
    speed along the heading `[T]` (m/s), longitudinal acceleration `[T]` (m/s^2)."""

    t_us: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    speed: np.ndarray
    accel: np.ndarray


class ClipSource(Protocol):
    def list_clips(self) -> list[str]: ...

    def egomotion(self, clip_id: str) -> Egomotion: ...

    def frames(self, clip_id: str, t_us: np.ndarray) -> dict[str, np.ndarray]:
        """camera name -> uint8 `[n, H, W, 3]`: per time, the last frame at or before it."""
        ...

    def obstacles(self, clip_id: str) -> list[ObstacleTrack]: ...

    def ground_truth(self, clip_id: str) -> Mapping[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    keyframes: KeyframeConfig = KeyframeConfig()
    history_ticks: int = 16
    future_ticks: int = 60
    # Camera frames before the keyframe (s): 2 Hz over the 2 s history.
    frame_offsets_s: tuple[float, ...] = (1.5, 1.0, 0.5, 0.0)
    # At most this many labelled keyframes per scenario (None: no cap).
    per_scenario: int | None = None
    # Rewrite the parquet and summary after this many clips.
    checkpoint_every: int = 50


class ScenarioQuota:
    """Thread-safe count of keyframes taken per scenario, capped at `per_scenario`."""

    def __init__(self, per_scenario: int | None, taken: Counter):
        self.per_scenario = per_scenario
        self.taken = Counter(taken)
        self._lock = threading.Lock()

    def take(self, scenario: str) -> bool:
        with self._lock:
            if self.per_scenario is not None and self.taken[scenario] >= self.per_scenario:
                return False
            self.taken[scenario] += 1
            return True


def _to_ego_frame(xy: np.ndarray, yaw: np.ndarray, origin: int) -> tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(yaw[origin]), np.sin(yaw[origin])
    d = xy - xy[origin]
    local = np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1]], axis=-1)
    return local, np.unwrap(yaw) - np.unwrap(yaw)[origin]


def build_request(
    source: ClipSource,
    clip_id: str,
    ego: Egomotion,
    meta: MetaActions,
    keyframe: Keyframe,
    scenario: str | None,
    ground_truth: Mapping[str, Any] | None,
    config: PipelineConfig,
) -> LabelRequest:
    k = keyframe.tick
    h0 = max(0, k - config.history_ticks + 1)
    f1 = k + 1 + config.future_ticks
    xy, yaw = _to_ego_frame(ego.xy, ego.yaw, k)
    frame_us = np.array([keyframe.t_us - round(s * 1e6) for s in config.frame_offsets_s], dtype=np.int64)
    return LabelRequest(
        clip_id=clip_id,
        keyframe_us=keyframe.t_us,
        frames=source.frames(clip_id, frame_us),
        frame_us=frame_us,
        history_xy=xy[h0 : k + 1],
        history_yaw=yaw[h0 : k + 1],
        history_speed=ego.speed[h0 : k + 1],
        future_xy=xy[k + 1 : f1],
        future_yaw=yaw[k + 1 : f1],
        future_speed=ego.speed[k + 1 : f1],
        meta_longitudinal=tuple(meta.longitudinal[k + 1 : f1].tolist()),
        meta_lateral=tuple(meta.lateral[k + 1 : f1].tolist()),
        scenario=scenario,
        ground_truth=ground_truth,
    )


def _result_dict(result: LabelResult, scenario: str) -> dict:
    return {
        "keyframe_us": result.keyframe_us,
        "scenario": scenario,
        "record": to_dict(result.record) if result.record is not None else None,
        "rejection": result.rejection,
        "detail": result.detail,
        "attempts": result.attempts,
    }


def label_clip(
    source: ClipSource, clip_id: str, labeller: Labeller, config: PipelineConfig, quota: ScenarioQuota
) -> dict:
    """One clip's line of the records JSONL: labelled keyframes and skipped ones with reasons."""
    ego = source.egomotion(clip_id)
    meta = detect(ego.xy, ego.yaw, ego.speed, ego.accel, dt=config.keyframes.dt)
    keyframes = find_keyframes(meta, t0_us=int(ego.t_us[0]), config=config.keyframes)
    ground_truth = source.ground_truth(clip_id)
    obstacles = source.obstacles(clip_id)
    results, skipped = [], []
    for kf in keyframes:
        if kf.tick + config.future_ticks >= ego.t_us.shape[0]:
            skipped.append(
                {"keyframe_us": kf.t_us, "reason": "window", "detail": "future runs past the clip end"}
            )
            continue
        choice = select_scenario(kf, meta, obstacles, ground_truth)
        if choice.scenario is None:
            skipped.append({"keyframe_us": kf.t_us, "reason": "no_scenario", "detail": choice.reason})
            continue
        if not quota.take(choice.scenario):
            skipped.append({"keyframe_us": kf.t_us, "reason": "scenario_quota", "detail": choice.scenario})
            continue
        request = build_request(source, clip_id, ego, meta, kf, choice.scenario, ground_truth, config)
        results.append(_result_dict(labeller.label(request), choice.scenario))
    return {"clip_id": clip_id, "keyframes": len(keyframes), "results": results, "skipped": skipped}


def summarise(clip_lines: Sequence[dict]) -> dict:
    """Run summary: clips, keyframes, accepted / rejected by reason, skipped by reason, balance."""
    results = [r for line in clip_lines for r in line["results"]]
    accepted = [r for r in results if r["record"] is not None]
    balance = Counter(r["scenario"] for r in accepted)
    return {
        "clips_seen": len(clip_lines),
        "clips_with_labels": sum(any(r["record"] for r in line["results"]) for line in clip_lines),
        "keyframes_found": sum(line["keyframes"] for line in clip_lines),
        "keyframes_labelled": len(results),
        "accepted": len(accepted),
        "rejected": len(results) - len(accepted),
        "rejected_by_reason": dict(Counter(r["rejection"] for r in results if r["record"] is None)),
        "skipped_by_reason": dict(Counter(s["reason"] for line in clip_lines for s in line["skipped"])),
        "scenario_balance": {s: balance[s] for s in SCENARIOS},
        "decisions": {axis: dict(Counter(str(r["record"][axis]) for r in accepted)) for axis in AXES},
    }


def _write_outputs(out: Path, clip_lines: list[dict]) -> dict:
    summary = summarise(clip_lines)
    outputs.write_events_parquet(out, clip_lines)
    outputs.atomic_write_json(outputs.sidecar_paths(out)[1], summary)
    return summary


def run_labelling(
    source: ClipSource,
    labeller: Labeller,
    out: Path,
    clips: Iterable[str] | None = None,
    workers: int = 1,
    config: PipelineConfig = PipelineConfig(),
    progress: bool = True,
) -> dict:
    """Labels the clips not yet in `out`'s records and rewrites the outputs; returns the summary."""
    out = Path(out)
    records_path, _ = outputs.sidecar_paths(out)
    lines = outputs.read_clip_lines(records_path)
    done = {line["clip_id"] for line in lines}
    available = source.list_clips()
    wanted = list(clips) if clips is not None else available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise ValueError(f"clips not in the source: {unknown[:10]}")
    todo = [c for c in dict.fromkeys(wanted) if c not in done]
    taken = Counter(r["scenario"] for line in lines for r in line["results"])
    quota = ScenarioQuota(config.per_scenario, taken)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(label_clip, source, c, labeller, config, quota): c for c in todo}
        for i, fut in enumerate(
            tqdm(as_completed(futures), total=len(futures), disable=not progress, unit="clip")
        ):
            try:
                line = fut.result()
            except Exception as e:
                for pending in futures:
                    pending.cancel()
                _write_outputs(out, lines)
                raise RuntimeError(f"labelling clip {futures[fut]} failed: {e}") from e
            outputs.append_clip_line(records_path, line)
            lines.append(line)
            if (i + 1) % config.checkpoint_every == 0:
                _write_outputs(out, lines)
    return _write_outputs(out, lines)
