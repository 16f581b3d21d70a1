"""Per-tick longitudinal and lateral meta-actions of one ego trajectory (SPEC 3.1).

Each axis is cut into segments where a banded signal crosses a threshold, every segment is classified
from its mean kinematics (first matching rule), and segments shorter than their minimum length are
merged into a neighbour until all are long enough. Per-tick labels are the labels of the segments.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

# Segmentation thresholds (m/s, m/s^2, rad/m) of NVIDIA's open auto-labeler.
LON_SPEED_CUTS: tuple[float, ...] = (-0.3, 0.3)
LON_ACCEL_CUTS: tuple[float, ...] = (-1.25, -0.1, 0.1, 1.25)
LAT_SPEED_CUTS: tuple[float, ...] = (-0.1,)
LAT_TURN_RATE_CUTS: tuple[float, ...] = (-0.05, -0.001, 0.001, 0.05)
MIN_TICKS_LONGITUDINAL = 8
MIN_TICKS_MAINTAIN = 12
MIN_TICKS_LATERAL = 10
# Signal smoothing before banding (ticks) and the speed below which the heading cannot change (m/s):
# both keep finite-difference noise from creating spurious threshold crossings.
SMOOTH_TICKS = 5
MIN_TURN_SPEED = 0.3


@dataclasses.dataclass(frozen=True)
class Segment:
    """A run of ticks [start, stop) on one axis carrying one meta-action label."""

    axis: str
    label: str
    start: int
    stop: int

    @property
    def length(self) -> int:
        return self.stop - self.start


class MetaActions(NamedTuple):
    """Per-tick labels `[T]` (str arrays) of both axes and their segments, in time order per axis."""

    longitudinal: np.ndarray
    lateral: np.ndarray
    segments: tuple[Segment, ...]

    def axis_segments(self, axis: str) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.axis == axis)


def _check_inputs(xy: np.ndarray, yaw: np.ndarray, speed: np.ndarray, accel: np.ndarray, dt: float) -> None:
    if dt <= 0:
        raise ValueError(f"meta_actions: dt must be positive, got {dt}")
    if yaw.ndim != 1 or yaw.shape[0] < 2:
        raise ValueError(f"meta_actions: yaw must be 1-D with at least 2 ticks, got shape {yaw.shape}")
    n = yaw.shape[0]
    if xy.shape != (n, 2):
        raise ValueError(f"meta_actions: xy must have shape ({n}, 2), got {xy.shape}")
    for name, arr in (("speed", speed), ("accel", accel)):
        if arr.shape != (n,):
            raise ValueError(f"meta_actions: {name} must have shape ({n},), got {arr.shape}")
    for name, arr in (("xy", xy), ("yaw", yaw), ("speed", speed), ("accel", accel)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"meta_actions: {name} contains non-finite values")


def _smooth(x_t: np.ndarray, ticks: int) -> np.ndarray:
    """Centred moving average with edge padding, same length as the input."""
    if ticks <= 1 or x_t.shape[0] < ticks:
        return x_t
    half = ticks // 2
    padded = np.pad(x_t, (half, ticks - 1 - half), mode="edge")
    return np.convolve(padded, np.ones(ticks) / ticks, mode="valid")


def _runs(codes_t: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [start, stop) of equal codes."""
    change = np.flatnonzero(codes_t[1:] != codes_t[:-1]) + 1
    edges = [0, *change.tolist(), codes_t.shape[0]]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _segment_axis(
    codes_t: np.ndarray, classify: Callable[[int, int], str], min_ticks: Callable[[str], int]
) -> list[tuple[int, int, str]]:
    """Runs of band codes, classified, then short segments merged into their longer neighbour."""
    segs = [(s, e, classify(s, e)) for s, e in _runs(codes_t)]

    def fuse_equal(items: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
        out = [items[0]]
        for s, e, lab in items[1:]:
            if lab == out[-1][2]:
                out[-1] = (out[-1][0], e, lab)
            else:
                out.append((s, e, lab))
        return out

    segs = fuse_equal(segs)
    while len(segs) > 1:
        short = [i for i, (s, e, lab) in enumerate(segs) if e - s < min_ticks(lab)]
        if not short:
            break
        i = min(short, key=lambda k: segs[k][1] - segs[k][0])
        if i == 0:
            j = 1
        elif i == len(segs) - 1:
            j = i - 1
        else:
            before, after = segs[i - 1], segs[i + 1]
            j = i - 1 if before[1] - before[0] >= after[1] - after[0] else i + 1
        lo, hi = min(i, j), max(i, j)
        start, stop = segs[lo][0], segs[hi][1]
        segs[lo : hi + 1] = [(start, stop, classify(start, stop))]
        segs = fuse_equal(segs)
    return segs


def classify_longitudinal(mean_speed: float, mean_accel: float, dv: float) -> str:
    """First matching rule of SPEC 3.1 for one longitudinal segment."""
    if mean_speed <= -0.12:
        return "reverse"
    if mean_speed <= 0.12:
        return "stop"
    if mean_accel >= 1.4 and dv >= 0.8:
        return "strong_accelerate"
    if 0.15 <= mean_accel <= 1.4 and dv >= 0.8:
        return "gentle_accelerate"
    if mean_accel <= -1.4 and dv <= -0.8:
        return "strong_decelerate"
    if -1.4 <= mean_accel <= -0.15 and dv <= -0.8:
        return "gentle_decelerate"
    return "maintain_speed"


def classify_lateral(mean_speed: float, turn_rate: float, dheading: float) -> str:
    """First matching rule of SPEC 3.1 for one lateral segment; turn rate in rad/m, left positive."""
    side = "left" if turn_rate > 0 else "right"
    if mean_speed <= -0.1 and abs(turn_rate) >= 0.002 and abs(dheading) >= 0.2:
        return f"reverse_{side}"
    if abs(turn_rate) >= 0.05 and abs(dheading) >= 0.2:
        return f"sharp_steer_{side}"
    if abs(turn_rate) >= 0.0015 and abs(dheading) >= 0.015:
        return f"steer_{side}"
    return "go_straight"


def detect(
    xy: np.ndarray, yaw: np.ndarray, speed: np.ndarray, accel: np.ndarray, dt: float = 0.1
) -> MetaActions:
    """Meta-actions of one trajectory sampled every `dt` seconds.

    Args:
      xy: `[T, 2]` positions (m) in any fixed frame.
      yaw: `[T]` heading (rad), left positive.
      speed: `[T]` signed speed along the heading (m/s), negative when reversing.
      accel: `[T]` longitudinal acceleration (m/s^2).
    """
    xy_t2, yaw_t, v_t, a_t = (np.asarray(x, dtype=np.float64) for x in (xy, yaw, speed, accel))
    _check_inputs(xy_t2, yaw_t, v_t, a_t, dt)
    n = yaw_t.shape[0]
    heading_t = np.unwrap(yaw_t)
    step_t = np.linalg.norm(np.diff(xy_t2, axis=0), axis=1)
    arc_t = np.concatenate([[0.0], np.cumsum(step_t)])
    yaw_rate_t = np.gradient(heading_t, dt)
    moving_t = np.abs(v_t) >= MIN_TURN_SPEED
    turn_t = np.where(moving_t, yaw_rate_t / np.where(moving_t, v_t, 1.0), 0.0)

    lon_codes = np.digitize(v_t, LON_SPEED_CUTS) * 10 + np.digitize(
        _smooth(a_t, SMOOTH_TICKS), LON_ACCEL_CUTS
    )
    lat_codes = np.digitize(v_t, LAT_SPEED_CUTS) * 10 + np.digitize(
        _smooth(turn_t, SMOOTH_TICKS), LAT_TURN_RATE_CUTS
    )

    def end(stop: int) -> int:
        return min(stop, n - 1)

    def lon_class(s: int, e: int) -> str:
        return classify_longitudinal(
            float(v_t[s:e].mean()), float(a_t[s:e].mean()), float(v_t[end(e)] - v_t[s])
        )

    def lat_class(s: int, e: int) -> str:
        mean_v = float(v_t[s:e].mean())
        dheading = float(heading_t[end(e)] - heading_t[s])
        arc = float(arc_t[end(e)] - arc_t[s]) * (1.0 if mean_v >= 0 else -1.0)
        turn_rate = dheading / arc if abs(arc) > 1e-6 else 0.0
        return classify_lateral(mean_v, turn_rate, dheading)

    def lon_min(label: str) -> int:
        return MIN_TICKS_MAINTAIN if label == "maintain_speed" else MIN_TICKS_LONGITUDINAL

    lon = _segment_axis(lon_codes, lon_class, lon_min)
    lat = _segment_axis(lat_codes, lat_class, lambda _: MIN_TICKS_LATERAL)
    segments = tuple(Segment("longitudinal", lab, s, e) for s, e, lab in lon) + tuple(
        Segment("lateral", lab, s, e) for s, e, lab in lat
    )
    return MetaActions(_per_tick(lon, n), _per_tick(lat, n), segments)


def _per_tick(segs: list[tuple[int, int, str]], n: int) -> np.ndarray:
    labels = np.empty(n, dtype=object)
    for s, e, lab in segs:
        labels[s:e] = lab
    return labels.astype(str)
