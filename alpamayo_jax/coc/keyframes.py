"""Keyframes at meta-action transitions and the window rules of SPEC 3.

Auto-label keyframes sit about 0.5 s before a meta-action transition whose new span lasts at least
10 ticks and starts between ticks 20 and 135 of a 20 s clip at 10 Hz, so that every sample has its
2 s history and 6 s future. Transitions of the two axes close in time share one keyframe.
"""

import dataclasses

from alpamayo_jax.coc.meta_actions import MetaActions

US_PER_S = 1_000_000


@dataclasses.dataclass(frozen=True)
class KeyframeConfig:
    """Window constraints; ticks are counted from the first egomotion sample of the clip."""

    dt: float = 0.1
    min_span_ticks: int = 10
    first_change_tick: int = 20
    last_change_tick: int = 135
    reactive_lead_s: float = 0.5
    # Earliest keyframe: the model's sample needs 16 history poses at 10 Hz before t0 (SPEC 4).
    min_keyframe_s: float = 1.6
    # Transitions on the two axes closer than this share one keyframe.
    merge_ticks: int = 10


@dataclasses.dataclass(frozen=True)
class Transition:
    """A meta-action change on one axis at `tick`, from `before` to `after`."""

    axis: str
    tick: int
    before: str
    after: str


@dataclasses.dataclass(frozen=True)
class Keyframe:
    """A decision moment: keyframe tick and time, the behaviour change it precedes, the transitions."""

    tick: int
    t_us: int
    change_tick: int
    change_us: int
    transitions: tuple[Transition, ...]

    def transition(self, axis: str) -> Transition | None:
        return next((t for t in self.transitions if t.axis == axis), None)


def find_transitions(meta: MetaActions, config: KeyframeConfig = KeyframeConfig()) -> list[Transition]:
    """Transitions into spans of at least `min_span_ticks` starting inside the allowed tick range."""
    out = []
    for axis in ("longitudinal", "lateral"):
        segs = meta.axis_segments(axis)
        for prev, seg in zip(segs[:-1], segs[1:], strict=True):
            in_range = config.first_change_tick <= seg.start <= config.last_change_tick
            if in_range and seg.length >= config.min_span_ticks:
                out.append(Transition(axis, seg.start, prev.label, seg.label))
    return sorted(out, key=lambda t: (t.tick, t.axis))


def tick_to_us(tick: float, t0_us: int, dt: float) -> int:
    return t0_us + round(tick * dt * US_PER_S)


def find_keyframes(
    meta: MetaActions, t0_us: int = 0, config: KeyframeConfig = KeyframeConfig()
) -> list[Keyframe]:
    """Reactive keyframes `reactive_lead_s` before each (group of) transition(s).

    `t0_us` is the timestamp of tick 0 on the clip timeline.
    """
    groups: list[list[Transition]] = []
    for tr in find_transitions(meta, config):
        same_group = groups and tr.tick - groups[-1][0].tick < config.merge_ticks
        if same_group and tr.axis not in {g.axis for g in groups[-1]}:
            groups[-1].append(tr)
        else:
            groups.append([tr])
    lead = round(config.reactive_lead_s / config.dt)
    earliest = round(config.min_keyframe_s / config.dt)
    keyframes = []
    for group in groups:
        change = group[0].tick
        tick = max(change - lead, earliest)
        keyframes.append(
            Keyframe(
                tick=tick,
                t_us=tick_to_us(tick, t0_us, config.dt),
                change_tick=change,
                change_us=tick_to_us(change, t0_us, config.dt),
                transitions=tuple(group),
            )
        )
    return keyframes


def reactive_keyframe_us(
    change_us: int,
    *,
    lead_us: int = 500_000,
    light_change_us: int | None = None,
    blinker_onset_us: int | None = None,
    leave_centre_us: int | None = None,
) -> int:
    """Reactive keyframe for a behaviour change at `change_us` (SPEC 3).

    Traffic light: the later of `change_us - lead_us` and the light change. Cut-in: the earlier of the
    contender's blinker onset and its leaving the lane centre, when either is known.
    """
    cut_in_cues = [t for t in (blinker_onset_us, leave_centre_us) if t is not None]
    if cut_in_cues:
        return min(cut_in_cues)
    base = change_us - lead_us
    if light_change_us is not None:
        return max(base, light_change_us)
    return base


def proactive_keyframe_range(
    change_us: int,
    *,
    first_visible_us: int | None = None,
    earliest_us: int = 3_000_000,
    latest_us: int = 500_000,
) -> tuple[int, int]:
    """Keyframe range [lo, hi] for a proactive decision: from when its cause is visible (at most
    `earliest_us` before the change) until `latest_us` before the change."""
    hi = change_us - latest_us
    lo = change_us - earliest_us
    if first_visible_us is not None:
        lo = max(lo, first_visible_us)
    return min(lo, hi), hi


def window_ok(
    t_us: int, clip_start_us: int, clip_end_us: int, history_us: int = 2_000_000, future_us: int = 6_000_000
) -> bool:
    """Whether a sample at `t_us` has its full history and future inside the clip."""
    return t_us - history_us >= clip_start_us and t_us + future_us <= clip_end_us
