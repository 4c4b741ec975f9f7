"""Hypothesis strategies derived from a rulebook.

Every strategy reads the compiled :class:`~buddyrules.Rulebook` it is given:

* :func:`events` draws single valid events (wire-shaped dicts) of registered types, for
  configured audiences, with ``occurred_at`` as ISO-8601 with an offset and ``properties``
  shaped by what the rulebook's expressions read (see :func:`properties`);
* :func:`histories` draws time-ordered event streams for a few users that cross day, ISO-week
  and month boundaries, the rulebook timezone's DST changes, and gaps long enough to burn
  streaks;
* :func:`buddy_states` draws reachable buddy states (a fresh buddy, or one built by playing a
  generated history from :func:`~buddyrules.new_buddy`);
* :func:`invalid_events` draws ``(event, expected_error_code)`` pairs that
  :meth:`Engine.send <buddyrules.service.Engine.send>` must reject with that code.

Example::

    from hypothesis import given
    import buddyrules as br
    from buddyrules.testing.strategies import histories

    rulebook = br.load_rulebook("rules/my_app.yaml")

    @given(histories(rulebook))
    def test_no_negative_coins(history):
        ...

Shrinking goes towards short histories of plain events: one user, the first event type, the
first literal each property is compared with, UTC times, no audience when it may be omitted.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta, timezone
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from buddyrules.engine import new_buddy
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState
from buddyrules.testing._shapes import PropertyShape, property_shapes
from buddyrules.testing.invariants import play

__all__ = [
    "DEFAULT_START",
    "OTHER_TIMEZONES",
    "Scenario",
    "buddy_states",
    "dst_transitions",
    "events",
    "histories",
    "invalid_events",
    "properties",
    "scenarios",
]

#: Where generated time starts by default: Monday 1 January 2024, 00:00 UTC.
DEFAULT_START = datetime(2024, 1, 1, tzinfo=UTC)

#: Buddy timezones worth trying besides the rulebook's: a DST zone on another continent, a
#: half-hour offset, a zone whose DST shift is 30 minutes, and UTC+14.
OTHER_TIMEZONES: tuple[str, ...] = (
    "America/New_York",
    "Asia/Kolkata",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
)

_H = timedelta(hours=1)
_D = timedelta(days=1)
# Gap before a run of events: zero first (what shrinking aims for), then gaps that cross a
# day, miss one or two days, miss a whole ISO week or two, or a month or two (streak burns).
_GAPS = (timedelta(0), _H, _D, 2 * _D, 3 * _D, 8 * _D, 15 * _D, 32 * _D, 63 * _D)
# Spacing inside a run: daily first (streak ticks), then hourly (crossing midnight and DST
# changes within a day), the edges of a day, weekly and monthly rhythms.
_SPACINGS = (_D, _H, 6 * _H, 23 * _H, 25 * _H, _D + 12 * _H, 7 * _D, 30 * _D)
# How often one drawn event repeats in a run: once first, then the lengths at which daily,
# weekly and monthly milestones usually sit.
_REPEATS = (1, 2, 3, 4, 7, 10, 14, 30)
_JITTERS = (timedelta(0), timedelta(seconds=59), timedelta(minutes=30), 3 * _H)
_COMPANION_OFFSETS = (timedelta(0), timedelta(seconds=1), timedelta(minutes=5), 2 * _H)
_OFFSET_ZONE = timezone(timedelta(hours=5, minutes=30))
_TIME_STYLES = ("utc", "local", "offset")
_NAME_CHARS = string.ascii_lowercase + "_"
_BOOLEANS = st.booleans()


# Strategies are built once and reused: building one per draw costs more than drawing.
@lru_cache(maxsize=4096)
def _pick(values: tuple[Any, ...]) -> SearchStrategy[Any]:
    return st.sampled_from(values)


@lru_cache(maxsize=1024)
def _between(low: int, high: int) -> SearchStrategy[int]:
    return st.integers(min_value=low, max_value=high)


# -- time -----------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _transitions(tz_key: str, start: datetime, end: datetime) -> tuple[datetime, ...]:
    tz = ZoneInfo(tz_key)
    out: list[datetime] = []
    t = start
    previous = t.astimezone(tz).utcoffset()
    while t < end:
        nxt = t + _H
        offset = nxt.astimezone(tz).utcoffset()
        if offset != previous:
            lo, hi = t, nxt  # the change happens in (lo, hi]: bisect to the second
            while hi - lo > timedelta(seconds=1):
                mid = lo + (hi - lo) / 2
                mid = mid.replace(microsecond=0)
                if mid.astimezone(tz).utcoffset() == previous:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
            previous = offset
        t = nxt
    return tuple(out)


def dst_transitions(
    tz: ZoneInfo | str, start: datetime = DEFAULT_START, days: int = 366
) -> tuple[datetime, ...]:
    """The instants (UTC) in ``[start, start + days)`` at which ``tz`` changes its UTC offset.

    Empty for a zone without DST (e.g. ``UTC``, ``Asia/Kolkata``).
    """
    key = tz if isinstance(tz, str) else tz.key
    begin = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return _transitions(key, begin, begin + timedelta(days=days))


def _local(tz: ZoneInfo, day: datetime, hour: int, minute: int) -> datetime:
    return datetime.combine(day.date(), time(hour, minute), tzinfo=tz).astimezone(UTC)


@lru_cache(maxsize=64)
def _anchors(rulebook: Rulebook, start: datetime, days: int) -> tuple[datetime, ...]:
    """Interesting instants to start a history at, the plainest first."""
    tz = rulebook.tz
    local_start = start.astimezone(tz)
    monday = local_start + timedelta(days=(7 - local_start.weekday()) % 7)
    month_end = (local_start.replace(day=28) + timedelta(days=4)).replace(day=1) - _D
    out = [
        _local(tz, monday, 9, 0),  # a plain Monday morning
        _local(tz, monday - _D, 23, 30),  # Sunday night: a day and an ISO week end soon
        _local(tz, month_end, 23, 0),  # a month ends in an hour
        _local(tz, local_start.replace(month=12, day=31), 23, 30),  # the year ends
    ]
    for change in dst_transitions(tz, start, days):
        out += [change - 3 * _H, change - 25 * _H, change - 3 * _D]
    return tuple(dict.fromkeys(out))


def _render(instant: datetime, style: str, tz: ZoneInfo) -> str:
    """ISO-8601 with an offset, in one of three equivalent spellings of the same instant."""
    if style == "local":
        return instant.astimezone(tz).isoformat()
    if style == "offset":
        return instant.astimezone(_OFFSET_ZONE).isoformat()
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


# -- properties -----------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _shapes(rulebook: Rulebook) -> dict[str, tuple[PropertyShape, ...]]:
    return property_shapes(rulebook)


@lru_cache(maxsize=1024)
def _value_strategy(shape: PropertyShape) -> SearchStrategy[Any]:
    kinds = shape.kinds or frozenset({"number", "string", "bool"})
    options: list[SearchStrategy[Any]] = []
    if "number" in kinds:
        biggest = max((abs(n) for n in shape.numbers), default=1)
        high = int(max(1000, 4 * biggest))
        generic: SearchStrategy[Any] = st.integers(min_value=-1, max_value=high)
        if shape.floats:
            generic = st.one_of(
                generic,
                st.floats(
                    min_value=-1.0,
                    max_value=float(max(2, 2 * biggest)),
                    allow_nan=False,
                    allow_infinity=False,
                ),
            )
        options.append(st.one_of(st.sampled_from(shape.numbers), generic))
    if "string" in kinds:
        literals = tuple(dict.fromkeys((*shape.strings, "other", "")))
        options.append(
            st.one_of(st.sampled_from(literals), st.text(alphabet=_NAME_CHARS, max_size=8))
        )
    if "bool" in kinds:
        options.append(st.booleans())
    if "null" in kinds:
        options.append(st.none())
    return st.one_of(*options)


@st.composite
def _properties(draw: st.DrawFn, shapes: tuple[PropertyShape, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for shape in shapes:
        value = draw(_value_strategy(shape))
        target = out
        for part in shape.path[:-1]:
            inner = target.get(part)
            if not isinstance(inner, dict):
                inner = target[part] = {}
            target = inner
        target[shape.path[-1]] = value
    return out


@lru_cache(maxsize=1024)
def properties(rulebook: Rulebook, event_type: str) -> SearchStrategy[dict[str, Any]]:
    """Properties for an event of ``event_type``, shaped by what the rulebook reads.

    Every property some expression can read on such an event is present (see
    :func:`buddyrules.testing._shapes.property_shapes`): a property compared with numbers gets
    those numbers, their neighbours (``props.score >= 0.9`` gives 0.89, 0.9 and 0.91), 0, 1,
    -1 and other integers (and floats when a float literal is involved); one compared with
    strings gets those strings and others; one tested for truth gets booleans.
    """
    shapes = _shapes(rulebook).get(event_type, ())
    return _properties(shapes)


# -- single events --------------------------------------------------------------------------


def _pool(users: int | Sequence[str]) -> tuple[str, ...]:
    if isinstance(users, int):
        if users < 1:
            raise ValueError("users must be at least 1")
        return tuple(f"user_{i}" for i in range(1, users + 1))
    pool = tuple(users)
    if not pool or not all(isinstance(u, str) and 1 <= len(u) <= 128 for u in pool):
        raise ValueError("users must be non-empty strings of at most 128 characters")
    return pool


def _audiences(rulebook: Rulebook, audience: str | None) -> tuple[str, ...]:
    if audience is None:
        return rulebook.audiences
    if audience not in rulebook.audiences:
        raise ValueError(f"audience {audience!r} is not configured in the rulebook")
    return (audience,)


def _types_for(rulebook: Rulebook, audience: str, only: frozenset[str] | None) -> list[str]:
    types = sorted(rulebook.event_types.get(audience, frozenset()))
    return [t for t in types if only is None or t in only]


@st.composite
def _event(
    draw: st.DrawFn,
    rulebook: Rulebook,
    pool: tuple[str, ...],
    audiences: tuple[str, ...],
    only: frozenset[str] | None,
    start: datetime,
    days: int,
) -> dict[str, Any]:
    audience = draw(st.sampled_from([a for a in audiences if _types_for(rulebook, a, only)]))
    event_type = draw(st.sampled_from(_types_for(rulebook, audience, only)))
    anchors = [a for a in _anchors(rulebook, start, days) if start <= a < start + timedelta(days)]
    seconds = st.integers(min_value=0, max_value=days * 86400 - 1)
    instant = draw(
        st.one_of(
            st.builds(lambda s: start + timedelta(seconds=s), seconds),
            *(
                [
                    st.builds(
                        lambda a, d: a + d,
                        st.sampled_from(anchors),
                        st.sampled_from((timedelta(0), _H, 2 * _H, 4 * _H, 26 * _H)),
                    )
                ]
                if anchors
                else []
            ),
        )
    )
    event: dict[str, Any] = {
        "event_id": "evt_" + draw(st.uuids()).hex,
        "user_id": draw(_pick(pool)),
        "type": event_type,
    }
    if len(rulebook.audiences) > 1 or draw(_BOOLEANS):
        event["audience"] = audience
    event["occurred_at"] = _render(instant, draw(_pick(_TIME_STYLES)), rulebook.tz)
    event["properties"] = draw(properties(rulebook, event_type))
    return event


def events(
    rulebook: Rulebook,
    *,
    users: int | Sequence[str] = 3,
    audience: str | None = None,
    types: Sequence[str] | None = None,
    start: datetime = DEFAULT_START,
    days: int = 366,
) -> SearchStrategy[dict[str, Any]]:
    """Valid single events (wire-shaped dicts) for ``rulebook``.

    Args:
        rulebook: the compiled rulebook.
        users: how many user ids to draw from (``user_1``...), or the ids themselves.
        audience: only this audience (default: any configured audience).
        types: only these event types (default: every type registered for the audience).
        start: the earliest ``occurred_at`` (aware).
        days: ``occurred_at`` falls in ``[start, start + days)``, often near a local
            midnight, the end of an ISO week or a month, or a DST change of the rulebook's
            timezone.

    Each event has a unique-looking ``event_id``, a ``user_id``, a ``type`` registered for
    its audience, ``audience`` (always when the rulebook has two or more, sometimes when it
    has one), ``occurred_at`` as ISO-8601 with an offset (``Z``, the rulebook's local offset
    or another fixed offset) and ``properties`` drawn by :func:`properties`.
    """
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if days < 1:
        raise ValueError("days must be at least 1")
    only = frozenset(types) if types is not None else None
    audiences = _audiences(rulebook, audience)
    if not any(_types_for(rulebook, a, only) for a in audiences):
        raise ValueError("no registered event type matches the audience and types asked for")
    return _event(rulebook, _pool(users), audiences, only, start.astimezone(UTC), days)


# -- histories ------------------------------------------------------------------------------


Props = dict[str, Any]


@dataclass(frozen=True)
class _Item:
    """One event of a run, repeated ``repeat`` times at the run's spacing (same properties),
    optionally followed each time by a companion event of another type."""

    repeat: int
    jitter: timedelta
    props: Props
    companion: tuple[timedelta, str, Props] | None


@dataclass(frozen=True)
class _Segment:
    """A run of events of one type at a fixed spacing, after a gap."""

    gap: timedelta
    spacing: timedelta
    event_type: str
    items: tuple[_Item, ...]


@lru_cache(maxsize=256)
def _companions(rulebook: Rulebook, types: tuple[str, ...]) -> SearchStrategy[Any]:
    @st.composite
    def companion(draw: st.DrawFn) -> tuple[timedelta, str, Props]:
        offset = draw(_pick(_COMPANION_OFFSETS))
        other = draw(_pick(types))
        return offset, other, draw(properties(rulebook, other))

    return st.none() | companion()


@lru_cache(maxsize=1024)
def _items(rulebook: Rulebook, types: tuple[str, ...], event_type: str) -> SearchStrategy[Any]:
    item = st.builds(
        _Item,
        _pick(_REPEATS),
        _pick(_JITTERS),
        properties(rulebook, event_type),
        _companions(rulebook, types),
    )
    return st.lists(item, min_size=1, max_size=6)


@lru_cache(maxsize=256)
def _segments(rulebook: Rulebook, types: tuple[str, ...]) -> SearchStrategy[list[_Segment]]:
    @st.composite
    def segment(draw: st.DrawFn) -> _Segment:
        # Draw order steers shrinking, which minimises earlier choices first: fewer and
        # simpler events before shorter spacings and gaps.
        event_type = draw(_pick(types))
        items = draw(_items(rulebook, types, event_type))
        spacing = draw(_pick(_SPACINGS))
        gap = draw(_pick(_GAPS))
        return _Segment(gap, spacing, event_type, tuple(items))

    return st.lists(segment(), min_size=1, max_size=5)


@st.composite
def _histories(
    draw: st.DrawFn,
    rulebook: Rulebook,
    pool: tuple[str, ...],
    audiences: tuple[str, ...],
    days: int,
    max_events: int,
    start: datetime | None,
) -> list[dict[str, Any]]:
    anchors = _anchors(rulebook, DEFAULT_START, 366)
    t0 = start if start is not None else draw(_pick(anchors))
    end = t0 + timedelta(days=days)
    n_users = draw(_between(1, len(pool)))
    style = draw(_pick(_TIME_STYLES))
    with_audience = len(rulebook.audiences) > 1 or draw(_BOOLEANS)
    timeline: list[tuple[datetime, int, int, str, str, str, Props]] = []
    for u, user in enumerate(pool[:n_users]):
        audience = draw(_pick(audiences))
        types = tuple(sorted(rulebook.event_types[audience]))
        t = t0
        first = True
        for number, seg in enumerate(draw(_segments(rulebook, types))):
            if number:
                t += seg.gap
            for item in seg.items:
                for _ in range(item.repeat):
                    if not first:
                        t += seg.spacing + item.jitter
                    first = False
                    if t > end:
                        break
                    timeline.append(
                        (t, u, len(timeline), user, audience, seg.event_type, item.props)
                    )
                    if item.companion is not None:
                        offset, other, other_props = item.companion
                        if t + offset <= end:
                            row = (t + offset, u, len(timeline), user, audience, other, other_props)
                            timeline.append(row)
    timeline.sort(key=lambda row: (row[0], row[1], row[2]))
    out: list[dict[str, Any]] = []
    for instant, _, _, user, audience, event_type, props in timeline[:max_events]:
        event: dict[str, Any] = {
            "event_id": f"evt_{len(out):04d}",
            "user_id": user,
            "type": event_type,
        }
        if with_audience:
            event["audience"] = audience
        event["occurred_at"] = _render(instant, style, rulebook.tz)
        event["properties"] = dict(props)
        out.append(event)
    return out


def histories(
    rulebook: Rulebook,
    *,
    users: int | Sequence[str] = 2,
    audience: str | None = None,
    days: int = 90,
    max_events: int = 40,
    start: datetime | None = None,
) -> SearchStrategy[list[dict[str, Any]]]:
    """Time-ordered event streams (lists of wire-shaped dicts, at least one event).

    Args:
        rulebook: the compiled rulebook.
        users: how many users may appear (``user_1``...), or their ids. Each user keeps one
            audience for the whole history; users' events interleave.
        audience: only this audience (default: each user draws one).
        days: the history spans at most this many days.
        max_events: at most this many events.
        start: when the history starts (aware); by default one of: a Monday morning, a
            Sunday night before an ISO week ends, an hour before a month ends, the year's
            last half hour, and a few hours / a day / three days before each DST change of
            the rulebook's timezone in 2024.

    A history is built from runs of events: each run starts after a gap (none, an hour, days,
    a week or two, a month or two: enough to burn daily, weekly and monthly streaks) and
    repeats one event type at a fixed spacing (daily, hourly, around 24 hours, weekly,
    monthly) with small jitter; each drawn event repeats 1 to 30 times with the same
    properties (so 7-day and 30-day milestones are reachable), sometimes followed by an event
    of another type. Event ids are ``evt_0000``, ``evt_0001``... in time order; all times in
    one history use one spelling (``Z``, the rulebook's local offset, or +05:30).
    """
    if start is not None and start.tzinfo is None:
        raise ValueError("start must be timezone-aware")
    if days < 1 or max_events < 1:
        raise ValueError("days and max_events must be at least 1")
    return _histories(
        rulebook,
        _pool(users),
        _audiences(rulebook, audience),
        days,
        max_events,
        start.astimezone(UTC) if start is not None else None,
    )


@dataclass(frozen=True)
class Scenario:
    """A history plus what the checker varies around it.

    Attributes:
        events: the history (see :func:`histories`).
        timezones: each user's own buddy timezone (None: the rulebook's).
        split_at: where split/resume equivalence stops and resumes (0..len(events)).
    """

    events: tuple[dict[str, Any], ...]
    timezones: dict[str, str | None]
    split_at: int


@st.composite
def _scenarios(
    draw: st.DrawFn, history: SearchStrategy[list[dict[str, Any]]], zones: bool
) -> Scenario:
    events_ = draw(history)
    users = list(dict.fromkeys(str(e["user_id"]) for e in events_))
    choices: tuple[str | None, ...] = (None, *OTHER_TIMEZONES) if zones else (None,)
    tzs = {u: draw(_pick(choices)) for u in users}
    split_at = draw(_between(0, len(events_)))
    return Scenario(tuple(events_), tzs, split_at)


def scenarios(
    rulebook: Rulebook,
    *,
    users: int | Sequence[str] = 2,
    days: int = 90,
    max_events: int = 40,
    timezones: bool = True,
) -> SearchStrategy[Scenario]:
    """What :func:`~buddyrules.testing.check.check_rulebook` draws: a history, each user's
    buddy timezone (the rulebook's, or with ``timezones`` one of :data:`OTHER_TIMEZONES`) and
    a split point."""
    return _scenarios(histories(rulebook, users=users, days=days, max_events=max_events), timezones)


# -- states ---------------------------------------------------------------------------------


def _final_state(
    rulebook: Rulebook, history: list[dict[str, Any]], tz: str | None, admin: bool
) -> BuddyState:
    user = str(history[0]["user_id"])
    result = play(rulebook, history, timezones={user: tz}, admin=admin)
    return next(iter(result.states.values()))


def buddy_states(
    rulebook: Rulebook,
    *,
    audience: str | None = None,
    timezone: str | None = None,
    days: int = 60,
    max_events: int = 30,
    admin: bool = True,
) -> SearchStrategy[BuddyState]:
    """Reachable buddy states: a fresh buddy, or one that lived through a generated history.

    The history (one user, ``user_1``) is played with :func:`~buddyrules.testing.invariants.play`
    from :func:`~buddyrules.new_buddy`; with ``admin`` an attentive admin awards ready manual
    badges and evolves ready buddies on the way, so later stages are reachable too.
    ``timezone`` is the buddy's own timezone (default: the rulebook's).
    """
    audiences = _audiences(rulebook, audience)
    fresh = st.sampled_from(audiences).map(
        lambda a: new_buddy(rulebook, "user_1", a, timezone=timezone, hatched_at=DEFAULT_START)
    )
    lived = histories(rulebook, users=1, audience=audience, days=days, max_events=max_events).map(
        lambda h: _final_state(rulebook, h, timezone, admin)
    )
    return st.one_of(fresh, lived)


# -- invalid events -------------------------------------------------------------------------


def _naive(event: dict[str, Any]) -> str:
    return (
        datetime.fromisoformat(str(event["occurred_at"]).replace("Z", "+00:00"))
        .replace(tzinfo=None)
        .isoformat()
    )


#: Shape breakers: (what is wrong, how to break an event). Each yields validation_failed.
_BREAKERS: tuple[tuple[str, Any], ...] = (
    ("user_id missing", lambda e: {k: v for k, v in e.items() if k != "user_id"}),
    ("type missing", lambda e: {k: v for k, v in e.items() if k != "type"}),
    ("user_id empty", lambda e: {**e, "user_id": ""}),
    ("user_id too long", lambda e: {**e, "user_id": "u" * 129}),
    ("user_id not a string", lambda e: {**e, "user_id": 42}),
    ("type not snake_case", lambda e: {**e, "type": "Lesson-Completed"}),
    ("type starts with a digit", lambda e: {**e, "type": "1st_event"}),
    ("type too long", lambda e: {**e, "type": "a" * 65}),
    ("unknown field", lambda e: {**e, "colour": "red"}),
    ("event_id empty", lambda e: {**e, "event_id": ""}),
    ("event_id too long", lambda e: {**e, "event_id": "e" * 129}),
    ("occurred_at naive", lambda e: {**e, "occurred_at": _naive(e)}),
    ("occurred_at not a time", lambda e: {**e, "occurred_at": "yesterday"}),
    ("occurred_at a number", lambda e: {**e, "occurred_at": 1_700_000_000}),
    ("properties a list", lambda e: {**e, "properties": [1, 2]}),
    ("properties a string", lambda e: {**e, "properties": "score=1"}),
    ("property not JSON", lambda e: {**e, "properties": {"score": float("nan")}}),
    ("audience not snake_case", lambda e: {**e, "audience": "Student"}),
    ("audience not a string", lambda e: {**e, "audience": 3}),
)

_NAME = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)


def _audience_of(rulebook: Rulebook, event: dict[str, Any]) -> str:
    audience = event.get("audience")
    return audience if isinstance(audience, str) else rulebook.audiences[0]


def invalid_events(rulebook: Rulebook) -> SearchStrategy[tuple[dict[str, Any], str]]:
    """``(event, expected_code)`` pairs that the service must reject with that error code.

    * ``validation_failed``: a valid event with one shape problem (a missing or malformed
      field, an unknown field, a naive or malformed ``occurred_at``, properties that are not
      a JSON object);
    * ``unknown_audience``: an audience the rulebook does not configure;
    * ``missing_audience``: no audience although the rulebook configures two or more;
    * ``event_type_not_registered``: a type not registered for the event's audience
      (including types registered only for another audience).

    Apart from the one problem, the event is valid (as drawn by :func:`events`).
    """
    valid = events(rulebook)
    audiences = set(rulebook.audiences)
    breakers = st.sampled_from(_BREAKERS)
    shape = st.tuples(valid, breakers).map(lambda p: (p[1][1](p[0]), "validation_failed"))
    unknown = st.tuples(valid, _NAME.filter(lambda a: a not in audiences)).map(
        lambda p: ({**p[0], "audience": p[1]}, "unknown_audience")
    )
    options: list[SearchStrategy[tuple[dict[str, Any], str]]] = [shape, unknown]
    if len(rulebook.audiences) > 1:
        options.append(
            valid.map(
                lambda e: ({k: v for k, v in e.items() if k != "audience"}, "missing_audience")
            )
        )

    @st.composite
    def unregistered(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
        event = draw(valid)
        audience = _audience_of(rulebook, event)
        registered = rulebook.event_types.get(audience, frozenset())
        elsewhere = sorted(set().union(*rulebook.event_types.values()) - registered)
        names = _NAME.filter(lambda t: t not in registered)
        new_type = draw(st.sampled_from(elsewhere) | names if elsewhere else names)
        return {**event, "type": new_type}, "event_type_not_registered"

    options.append(unregistered())
    return st.one_of(*options)
