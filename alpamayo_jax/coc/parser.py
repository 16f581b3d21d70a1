"""Maps free-form reasoning text back to the closed decision sets (SPEC 3), one decision per axis.

Used by the CoC-action consistency reward (SPEC 2.1) and by evaluation. Per axis, the earliest
non-negated action phrase wins. Specific phrases ("yield to", "follow the car", "change lanes to the
left") map directly; generic ones ("slow down", "stop", "accelerate", "nudge") are resolved by the
nearest cue in the same clause, then the same sentence ("slow down for the pedestrian" -> yield).
Negations in the three or four words before a phrase ("no need to stop", "without stopping",
"does not yield") or right after it ("stopping is not necessary") discard it.
"""

import dataclasses
import re
from collections.abc import Callable

_F = re.IGNORECASE


@dataclasses.dataclass(frozen=True)
class ParsedDecision:
    """Decisions found per axis (None: none stated); `parseable` is False when the text states no
    decision at all, not even an explicit "no change" or a negated action."""

    longitudinal: str | None
    lateral: str | None
    parseable: bool


def _rx(pattern: str) -> re.Pattern:
    return re.compile(pattern, _F)


# --- cues that resolve generic phrases -------------------------------------------------------------
CUES: tuple[tuple[str, re.Pattern], ...] = (
    (
        "static",
        _rx(
            r"\b(?:red|amber|yellow|green)\s+(?:traffic\s+)?(?:light|signal|arrow)s?|\btraffic\s+(?:light|signal)s?"
            r"|\bsignals?\b|\b(?:stop|yield|give[- ]way)\s+(?:sign|line|bar)s?|\bhold\s+line|\bschool\s+bus"
            r"|\brail\w*|\btrains?\b|\blevel\s+crossing|\bboom\s+gate|\bgates?\b|\btoll\w*|\ball[- ]way"
            r"|\bfour[- ]way|\bline\b"
        ),
    ),
    (
        "vru",
        _rx(
            r"\bpedestrians?|\bwalkers?\b|\bjoggers?\b|\bcyclists?|\bbicycl\w*|\bbikes?\b(?!\s+lane)|\bscooters?"
            r"|\bchild\w*|\bkids?\b|\bperson\b|\bpeople\b|\bvrus?\b|\bwheelchair|\bstroller|\banimals?\b"
            r"|\bdeer\b|\bdogs?\b|\bright\s+of\s+way|\bcross(?:ing)?\s+traffic|\boncoming\b"
        ),
    ),
    (
        "pass",
        _rx(r"\bpass(?:es|ing)?\b|\bovertak\w*"),
    ),
    (
        "gap",
        _rx(r"\bgaps?\b|\bopenings?\b|\bmerg\w*|\bzipper"),
    ),
    (
        "lead",
        _rx(
            r"\blead(?:ing)?\b|\bpreceding\b|\bvehicles?\b|\bcars?\b|\btrucks?\b|\bbus(?:es)?\b|\bvans?\b"
            r"|\bsuvs?\b|\bmotorcycl\w*|\btrailers?\b|\bqueue\w*|\bcongest\w*|\btraffic\b(?!\s+(?:light|signal|sign|cone|rule|law))"
            r"|\bin\s+front\b"
        ),
    ),
    (
        "road",
        _rx(
            r"\bcurv\w*|\bbends?\b|\bbumps?\b|\bhumps?\b|\bspeed\s+table|\bpotholes?|\bnarrow\w*|\broundabouts?"
            r"|\bramps?\b|\bgrade\b|\bhills?\b|\bslopes?\b|\bincline|\bdownhill|\buphill|\bintersections?"
            r"|\bjunctions?|\bconstruction|\bwork\s+zone|\bcones?\b|\bspeed\s+limit|\bschool\s+zone|\brain\w*"
            r"|\bsnow\w*|\bfog\w*|\bwet\b|\bic[ey]\w*|\bvisibility|\bcrest"
        ),
    ),
)

GENERIC_LONGITUDINAL: dict[str, dict[str | None, str]] = {
    "decel": {
        "vru": "yield",
        "lead": "lead_obstacle_following",
        "static": "stop_for_static_constraints",
        "road": "speed_adaptation",
        "gap": "gap_searching",
        "pass": "speed_adaptation",
        None: "speed_adaptation",
    },
    "stop": {
        "vru": "yield",
        "lead": "lead_obstacle_following",
        "static": "stop_for_static_constraints",
        "road": "stop_for_static_constraints",
        "gap": "gap_searching",
        "pass": "stop_for_static_constraints",
        None: "stop_for_static_constraints",
    },
    "accel": {
        "pass": "acceleration_for_passing",
        "gap": "gap_searching",
        "lead": "lead_obstacle_following",
        "vru": "set_speed_tracking",
        "static": "set_speed_tracking",
        "road": "set_speed_tracking",
        None: "set_speed_tracking",
    },
}

# --- action phrases, in tie-break order (same start: the earlier rule wins) -----------------------
LONGITUDINAL_RULES: tuple[tuple[str, re.Pattern], ...] = (
    ("yield", _rx(r"\byield(?:s|ing|ed)?\b(?![- ]+(?:sign|line|control))")),
    ("yield", _rx(r"\bgiv(?:e|es|ing)\s+way\b(?![- ]+sign)")),
    ("yield", _rx(r"\blet(?:s|ting)?\s+(?:\w+\s+){0,4}?(?:pass|go|cross|proceed|through|merge|in|clear)\b")),
    (
        "yield",
        _rx(
            r"\bwait\w*\s+for\s+(?:the\s+|a\s+|an\s+)?(?:\w+\s+){0,2}?(?:pedestrian|cyclist|person|people|child"
            r"|vru|walker|bicycl|animal|oncoming|cross)\w*"
        ),
    ),
    (
        "stop_for_static_constraints",
        _rx(r"\bstop(?:s|ping)?\s+(?:at|before|behind|short\s+of)\s+(?:the\s+)?(?:\w+\s+)?line\b"),
    ),
    (
        "lead_obstacle_following",
        _rx(
            r"\bfollow(?:s|ing)?\b(?!\s+(?:the\s+|its\s+|our\s+)?(?:lane|road|curve|bend|route|path|navigation"
            r"|signs?|instructions|rules|speed|roadway|traffic\s+(?:rules|laws|signals?|lights?)))"
        ),
    ),
    (
        "lead_obstacle_following",
        _rx(
            r"\b(?:keep\w*|maintain\w*|hold\w*|leav\w*|allow\w*|increas\w*)\s+(?:a\s+|the\s+)?(?:safe\s+|sufficient"
            r"\s+|proper\s+|larger\s+|bigger\s+|comfortable\s+|enough\s+|more\s+)?(?:following\s+)?(?:distance"
            r"|gap|headway|space)\b"
        ),
    ),
    ("lead_obstacle_following", _rx(r"\bcar[- ]following\b|\bkeep\w*\s+up\s+with\b|\bstay\w*\s+behind\b")),
    (
        "gap_searching",
        _rx(
            r"\b(?:search|look|seek|find|identify|hunt|wait)\w*\s+(?:for\s+)?(?:a\s+|an\s+)?"
            r"(?:\w+\s+)?(?:gap|opening|slot)\b"
        ),
    ),
    ("gap_searching", _rx(r"\bgap[- ]search\w*|\bzipper\w*")),
    (
        "gap_searching",
        _rx(r"\b(?:adjust|match)\w*\s+(?:its\s+|the\s+|our\s+)?speed\s+to\s+(?:merge|fit|slot|enter)"),
    ),
    (
        "acceleration_for_passing",
        _rx(r"\b(?:accelerat\w*|speed\w*\s+up)\b[\w\s]{0,30}?\b(?:pass|overtak)\w*"),
    ),
    ("acceleration_for_passing", _rx(r"\bovertak\w*")),
    (
        "speed_adaptation",
        _rx(
            r"\b(?:adapt|adjust|reduc|lower|moderat|modulat|decreas|limit|manag|control)\w*\s+(?:its\s+|the\s+"
            r"|our\s+|vehicle\s+)?speed\b|\bspeed\s+adaptation\b"
        ),
    ),
    (
        "set_speed_tracking",
        _rx(
            r"\b(?:maintain|keep|hold|continu|track|resum|return|reach|cruis|stay|match|regain|restor)\w*\s+"
            r"(?:at\s+|to\s+)?(?:the\s+|its\s+|our\s+|a\s+)?(?:current\s+|constant\s+|steady\s+|same\s+|cruising"
            r"\s+|desired\s+|target\s+|set\s+|normal\s+|previous\s+|original\s+|posted\s+)*(?:speed\b|velocity"
            r"|pace)|\bcruis\w*|\bset[- ]speed\b"
        ),
    ),
    (
        "stop",
        _rx(
            r"(?<!bus\s)\bstop(?:s|ping)?\b(?![- ]+(?:sign|line|bar|light|lamp|control|and[- ]go))"
            r"|\bhalt(?:s|ing)?\b|\bcom(?:e|es|ing)\s+to\s+(?:a\s+)?(?:\w+\s+)?(?:stop|halt|standstill)\b"
            r"|\bwait(?:s|ing)?\b|\bhold\w*\s+(?:position|still)\b|\b(?:remain|stay)\w*\s+(?:stopped|stationary)\b"
        ),
    ),
    (
        "decel",
        _rx(
            r"\bslow(?:s|ing|ed)?(?:\s+down)?\b|\bdecelerat\w*|\bbrak(?:e|es|ing)\b(?![- ]+lights?)"
            r"|\beas(?:e|es|ing)\s+off\b|\bback\w*\s+off\b|\breduc\w*\s+speed\b"
        ),
    ),
    (
        "accel",
        _rx(
            r"\baccelerat\w*|\bspeed(?:s|ing)?\s+up\b|\bpick\w*\s+up\s+speed|\bgain\w*\s+speed|\bresum\w*"
            r"|\bproceed\w*|\bpull\w*\s+away|\bmov(?:e|es|ing)\s+off\b|\bstart\w*\s+moving|\bget\w*\s+going"
            r"|\bgo(?:es)?\s+(?:again|ahead)\b|\bcontinu\w*\s+(?:driving|forward|on|through)\b"
        ),
    ),
)

LATERAL_RULES: tuple[tuple[str, re.Pattern], ...] = (
    (
        "lateral_maneuver_abort",
        _rx(
            r"\b(?:abort|cancel|abandon|call\w*\s+off|give\s+up\s+on|discontinu|terminat)\w*\s+(?:the\s+|its\s+"
            r"|our\s+|a\s+|this\s+)?(?:planned\s+|ongoing\s+|attempted\s+|current\s+|initiated\s+)?"
            r"(?:lane[- ]change|lateral\s+maneuver|maneuver|merge|merging|nudge|overtak\w*|pass)"
        ),
    ),
    (
        "lateral_maneuver_abort",
        _rx(
            r"\b(?:lane[- ]change|maneuver|merge|nudge)[\w\s]{0,20}?\b(?:is\s+|was\s+|gets\s+|be\s+)?"
            r"(?:aborted|cancell?ed|abandoned|called\s+off)"
        ),
    ),
    (
        "lateral_maneuver_abort",
        _rx(
            r"\b(?:return\w*|go\w*|steer\w*|mov\w*|head\w*|pull\w*)\s+back\s+(?:in)?to\s+(?:the\s+|its\s+|our\s+)?"
            r"(?:original|previous|initial|own|former|starting)\s+lane|\breturn\w*\s+to\s+(?:the\s+|its\s+|our\s+)?"
            r"(?:original|previous|initial|own|former|starting)\s+lane"
        ),
    ),
    (
        "lane_change",
        _rx(
            r"\b(?:lane[- ]chang\w*|chang\w*\s+lanes?)\s+(?:to(?:wards?)?\s+)?(?:the\s+)?(?P<dir>left|right)"
            r"|\b(?P<dir2>left|right)(?:ward)?\s+lane[- ]change"
        ),
    ),
    (
        "lane_change",
        _rx(
            r"\b(?:chang\w*|switch\w*|mov\w*|shift\w*|merg\w*|cut\w*|go|goes|going|get\w*|pull\w*|head\w*)\s+"
            r"(?:over\s+)?(?:lanes?\s+)?(?:in)?to\s+(?:the\s+)?(?:adjacent\s+|next\s+|neighbou?ring\s+|faster\s+"
            r"|open\s+|free\s+)?(?P<dir>left|right)(?:-hand|most)?\s+lane"
        ),
    ),
    ("lane_change", _rx(r"\bchang\w*\s+(?:one\s+)?lanes?\b|\blane[- ]chang\w*")),
    (
        "merge_split",
        _rx(
            r"\bmerg\w*\b|\b(?:tak\w*|exit\w*|us\w*|follow\w*|enter\w*|keep\w*\s+to)\s+(?:the\s+|an\s+)?"
            r"(?:exit|off[- ]?ramp|on[- ]?ramp|ramp|fork|split|slip\s+road)\b"
        ),
    ),
    (
        "pull_over",
        _rx(
            r"\bpull\w*\s+(?:over|to\s+the\s+(?:side|curb|shoulder|roadside)|onto\s+the\s+shoulder|off\s+the\s+road)"
            r"|\b(?:approach|mov|head|steer)\w*\s+(?:to(?:wards?)?\s+)?(?:the\s+)?(?:curb|shoulder|roadside|side\s+of"
            r"\s+the\s+road)\b|\bpark\w*\s+(?:at|on|by|along)\s+the\s+(?:curb|side|shoulder)\b|\bcurb\s+approach"
        ),
    ),
    ("turn_left", _rx(r"\bu[- ]?turn\b")),
    (
        "turn",
        _rx(
            r"\b(?:turn(?:s|ing|ed)?|hang(?:s|ing)?|mak(?:e|es|ing)|tak(?:e|es|ing)|execut\w*|perform\w*|complet\w*)"
            r"\s+(?:a\s+|the\s+)?(?:sharp\s+|wide\s+|protected\s+|unprotected\s+|tight\s+)?(?:to\s+the\s+)?"
            r"(?P<dir>left|right)\b(?!\s+lane)(?:\s+turn)?|\b(?P<dir2>left|right)(?:-hand)?[- ]turn"
        ),
    ),
    (
        "nudge",
        _rx(
            r"\b(?:nudg\w*|shift\w*|bias\w*|edg(?:e|es|ing)|veer\w*|swerv\w*|offset\w*|mov(?:e|es|ing)\s+over"
            r"|steer\w*\s+(?:slightly|a\s+bit|a\s+little|away)|(?:go|goes|going|steer\w*|driv\w*|maneuver\w*|pass\w*)"
            r"\s+around|giv\w*\s+(?:\w+\s+){0,3}?(?:more\s+|extra\s+|enough\s+|a\s+wide\s+)?(?:room|space|clearance"
            r"|berth))\b(?:\s+(?:slightly|a\s+bit|a\s+little|gently|over))?(?:\s+(?:to(?:wards?)?\s+)?(?:the\s+)?"
            r"(?P<dir>left|right)\b)?"
        ),
    ),
    (
        "lane_keeping",
        _rx(
            r"\b(?:keep\w*|stay\w*|remain\w*|maintain\w*|hold\w*|continu\w*|track\w*)\s+(?:with)?in\s+(?:the\s+"
            r"|its\s+|our\s+|ego\s+|current\s+|same\s+|own\s+|present\s+)*lane\b|\b(?:keep\w*|stay\w*|remain\w*"
            r"|maintain\w*|hold\w*|continu\w*|track\w*)\s+(?:the\s+|its\s+|our\s+|ego\s+|current\s+|same\s+|own\s+"
            r"|present\s+)*lane\b(?![- ]*chang)|\blane[- ]keeping\b|\blane[- ]center\w*"
            r"|\bcenter\w*\s+in\s+(?:the|its|our)\s+lane|\b(?:follow\w*|negotiat\w*|track\w*)\s+(?:the\s+)?(?:lane|road|curve|bend|roadway)\b"
            r"|\b(?:go(?:es|ing)?|continu\w*|driv\w*|proceed\w*|head\w*|keep\w*)\s+(?:going\s+)?straight\b"
            r"|\bstraight\s+ahead\b"
        ),
    ),
)

NO_CHANGE = _rx(
    r"\bno\s+(?:change|action|adjustment|decision|reaction|maneuver)s?\b|\bnothing\s+to\s+(?:do|change)\b"
    r"|\bcontinu\w*\s+as\s+(?:before|is|planned)\b|\bno\s+(?:need|reason)\s+to\s+(?:change|react|act|adjust|do)\b"
)
OUT_OF_LANE = _rx(
    r"\bout\s+of\s+(?:the\s+|its\s+|our\s+)?lane|\binto\s+the\s+(?:adjacent|oncoming|opposite|opposing|neighbou?ring"
    r"|next|left|right|bike|shoulder|other)\s+lane|\bacross\s+the\s+(?:lane|center|dividing|double|yellow)"
    r"|\bcross\w*\s+(?:over\s+)?(?:the\s+|into\s+the\s+)?(?:lane\s+line|center\s*line|lane\s+marking|lane\s+boundary"
    r"|dividing\s+line|double\s+yellow|yellow\s+line|lane\s+edge)|\bover\s+the\s+(?:lane|center)\s*line"
    r"|\bencroach\w*|\bpartially\s+(?:in|into)\s+the|\bonto\s+the\s+shoulder|\binto\s+oncoming|\bstraddl\w*"
    r"|\bleav\w*\s+(?:the|its|our)\s+lane|\boutside\s+(?:the\s+|its\s+|our\s+)?lane"
)
IN_LANE = _rx(
    r"\bwithin\s+(?:the\s+|its\s+|our\s+|ego\s+)?lane|\bin[- ]lane\b|\binside\s+(?:the\s+|its\s+)?lane"
    r"|\bwithout\s+(?:leaving|crossing|changing)"
)
SIDE_OF_OBJECT = _rx(r"\b(?:on|to)\s+(?:the|its|our|your)\s+(?P<dir>left|right)\b")
ROAD_SUBJECT = _rx(r"\b(?:road|street|lane|curve|bend|highway|route|path|it|roadway)\s+$")

NEGATORS = frozenset(
    {"no", "not", "never", "without", "nor", "neither", "cannot", "avoid", "avoids", "avoiding"}
)
NEGATED_AFTER = _rx(
    r"^\W*(?:\w+\s+){0,2}?(?:is\s+|are\s+|was\s+)?(?:not\s+|un)(?:necessary|needed|required|warranted)"
)
ADJECTIVE_BEFORE = frozenset({"the", "a", "an", "its", "their", "his", "her", "this", "that"})
BE_FORMS = frozenset({"is", "are", "was", "were", "been", "being"})
EGO_SUBJECT = _rx(r"\b(?:ego|we|i|our\s+(?:car|vehicle))\b")


def _normalise(text: str) -> str:
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    for a, b in (
        ("manoeuvre", "maneuver"),
        ("centre", "center"),
        ("kerb", "curb"),
        ("neighbour", "neighbor"),
    ):
        text = text.replace(a, b)
    return re.sub(r"\s+", " ", text)


def _span(text: str, pos: int, seps: str) -> tuple[int, int]:
    """Bounds of the clause or sentence (delimited by any char of `seps`) containing `pos`."""
    lo = max(text.rfind(c, 0, pos) for c in seps) + 1
    his = [i for i in (text.find(c, pos) for c in seps) if i >= 0]
    return lo, min(his) if his else len(text)


def _clause(text: str, pos: int) -> tuple[int, int]:
    lo, hi = _span(text, pos, ".;!?,:")
    for word in (" then ", " but ", " while ", " whereas "):
        i = text.rfind(word, lo, pos)
        lo = max(lo, i + len(word)) if i >= 0 else lo
        j = text.find(word, pos, hi)
        hi = j if j >= 0 else hi
    return lo, hi


def _words(s: str) -> list[str]:
    return re.findall(r"[a-z']+", s)


def _negated(text: str, m: re.Match) -> bool:
    lo, hi = _clause(text, m.start())
    before = _words(text[lo : m.start()])[-4:]
    phrase = " ".join(before)
    if any(w in NEGATORS or w.endswith("n't") for w in before):
        return True
    if re.search(r"\b(?:instead\s+of|rather\s+than|no\s+need|unnecessary\s+to|needless\s+to)\b", phrase):
        return True
    return bool(NEGATED_AFTER.search(text[m.end() : hi]))


def _describes_other(text: str, m: re.Match) -> bool:
    """An adjective or another agent's action ('the slowing car', 'the truck is braking')."""
    lo, _ = _clause(text, m.start())
    before = _words(text[lo : m.start()])
    if not before:
        return False
    if before[-1] in ADJECTIVE_BEFORE:
        return True
    return before[-1] in BE_FORMS and not EGO_SUBJECT.search(text[lo : m.start()])


def _nearest_cue(text: str, m: re.Match) -> str | None:
    """Category of the cue nearest after the phrase in its clause, else before it; then the sentence."""
    for lo, hi in (_clause(text, m.start()), _span(text, m.start(), ".;!?")):
        hits = [(c.start(), cat) for cat, rx in CUES for c in rx.finditer(text, lo, hi)]
        hits = [(p, cat) for p, cat in hits if not m.start() <= p < m.end()]
        after = sorted((p, cat) for p, cat in hits if p >= m.end())
        if after:
            return after[0][1]
        before = sorted((p, cat) for p, cat in hits if p < m.start())
        if before:
            return before[-1][1]
    return None


def _direction(text: str, m: re.Match, object_side: bool) -> str | None:
    """Direction named by the phrase, else the first left/right after it in the clause; with
    `object_side`, 'the car on the right' means moving left."""
    for group in ("dir", "dir2"):
        if group in m.re.groupindex and m.group(group):
            return m.group(group)
    _, hi = _clause(text, m.start())
    tail = text[m.end() : hi]
    if object_side:
        side = SIDE_OF_OBJECT.search(tail)
        if side and not re.match(r"\W*(?:to\s+)?the\s+(?:left|right)", tail):
            return "left" if side.group("dir") == "right" else "right"
    plain = re.search(r"\b(left|right)\b", tail)
    return plain.group(1) if plain else None


def _resolve_longitudinal(kind: str, text: str, m: re.Match) -> str | None:
    if kind in GENERIC_LONGITUDINAL:
        return GENERIC_LONGITUDINAL[kind][_nearest_cue(text, m)]
    return kind


def _resolve_lateral(kind: str, text: str, m: re.Match) -> str | None:
    if kind == "turn":
        lo, _ = _clause(text, m.start())
        if ROAD_SUBJECT.search(text[lo : m.start()]):
            return None
        side = _direction(text, m, object_side=False)
        return f"turn_{side}" if side else None
    if kind == "lane_change":
        side = _direction(text, m, object_side=False)
        return f"lane_change_{side}" if side else None
    if kind == "nudge":
        side = _direction(text, m, object_side=True)
        if side is None:
            return None
        lo, hi = _span(text, m.start(), ".;!?")
        sentence = text[lo:hi]
        where = "out_of_lane" if OUT_OF_LANE.search(sentence) and not IN_LANE.search(sentence) else "in_lane"
        return f"{where}_nudge_{side}"
    return kind


def _first_decision(
    text: str,
    rules: tuple[tuple[str, re.Pattern], ...],
    resolve: Callable[[str, str, re.Match], str | None],
    skip_adjectives: bool,
) -> tuple[str | None, bool]:
    """Earliest non-negated decision, and whether any action phrase (negated or not) was seen.

    With `skip_adjectives`, verb forms describing another agent ('the braking car') are skipped.
    """
    hits = sorted(
        ((m.start(), order, kind, m) for order, (kind, rx) in enumerate(rules) for m in rx.finditer(text)),
        key=lambda h: (h[0], h[1]),
    )
    for _, _, kind, m in hits:
        if _negated(text, m) or (skip_adjectives and _describes_other(text, m)):
            continue
        decision = resolve(kind, text, m)
        if decision is not None:
            return decision, True
    return None, bool(hits)


def parse_decisions(text: str) -> ParsedDecision:
    """Longitudinal and lateral decisions stated in `text` (closed-set ids or None)."""
    norm = _normalise(text)
    lon, lon_seen = _first_decision(norm, LONGITUDINAL_RULES, _resolve_longitudinal, skip_adjectives=True)
    lat, lat_seen = _first_decision(norm, LATERAL_RULES, _resolve_lateral, skip_adjectives=False)
    parseable = lon_seen or lat_seen or bool(NO_CHANGE.search(norm))
    return ParsedDecision(lon, lat, parseable)
