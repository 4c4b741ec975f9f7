"""Hypothesis strategies for the engine: rulebook-consistent, time-ordered buddy histories.

A :class:`History` is a rulebook, how the buddy is hatched (timezone, hatch time) and a
time-ordered list of steps: events (types the rulebook knows, plus one it does not,
properties around the rules' thresholds) and, now and then, an ``advance`` (a sweep).
Gaps between steps are 0-10 days plus some minutes; starts sit next to DST changes and the
ISO-year boundary, and buddies may carry their own timezone.

Two sources of rulebooks: the language-learning example, and small generated rulebooks that
exercise every mechanic (caps, limits, multipliers, expression amounts, streaks with freezes
and milestones, badge rewards and requirements, evolution, paths, decay, audiences).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

import buddyrules as br
from buddyrules import Rulebook

LANGUAGE_PATH = (
    Path(__file__).resolve().parents[2] / "rules_examples" / "language_learning" / "rulebook.yaml"
)

#: Starts near the spring and autumn DST changes (Europe and the US) and the ISO-year turn.
STARTS = (
    datetime(2026, 3, 26, 21, 0, tzinfo=UTC),
    datetime(2026, 10, 23, 20, 30, tzinfo=UTC),
    datetime(2026, 3, 6, 23, 0, tzinfo=UTC),
    datetime(2025, 12, 26, 12, 0, tzinfo=UTC),
)
BUDDY_TIMEZONES = (None, "Europe/Berlin", "America/New_York", "Asia/Kolkata")


@dataclass(frozen=True)
class Step:
    """One history item: an event (a wire dict) or an ``advance`` to ``at``."""

    at: datetime
    event: dict[str, Any] | None = None

    @property
    def is_event(self) -> bool:
        return self.event is not None


class History:
    """A rulebook, a buddy to hatch, and the steps it goes through.

    A plain class (not a dataclass) so that Hypothesis prints a failing example with the
    compact ``__repr__`` below rather than every field of the compiled rulebook.
    """

    __slots__ = ("audience", "hatched_at", "rulebook", "steps", "timezone")

    def __init__(
        self,
        rulebook: Rulebook,
        audience: str,
        timezone: str | None,
        hatched_at: datetime,
        steps: tuple[Step, ...],
    ) -> None:
        self.rulebook = rulebook
        self.audience = audience
        self.timezone = timezone
        self.hatched_at = hatched_at
        self.steps = steps

    def hatch(self) -> br.BuddyState:
        return br.new_buddy(
            self.rulebook, "u1", self.audience, timezone=self.timezone, hatched_at=self.hatched_at
        )

    def __repr__(self) -> str:
        rulebook = (
            "<the language-learning example>"
            if self.rulebook is language_rulebook()
            else repr(self.rulebook.to_dict())
        )
        lines = [
            f"History(rulebook={rulebook},",
            f"  audience={self.audience!r}, timezone={self.timezone!r},"
            f" hatched_at={self.hatched_at.isoformat()!r},",
        ]
        for s in self.steps:
            lines.append(f"  {s.at.isoformat()} {s.event if s.event else 'ADVANCE'}")
        return "\n".join(lines) + ")"


@cache
def language_rulebook() -> Rulebook:
    """The language-learning example (loaded once)."""
    return br.load_rulebook(LANGUAGE_PATH)


# Mostly the same or the next day (so streaks grow and caps fill), sometimes up to 10 days.
gaps = st.tuples(
    st.one_of(st.just(0), st.just(1), st.integers(0, 2), st.integers(0, 10)),
    st.one_of(st.integers(0, 180), st.integers(0, 24 * 60 - 1)),
).map(lambda dm: timedelta(days=dm[0], minutes=dm[1]))


@st.composite
def _timeline(draw: st.DrawFn, n_min: int, n_max: int) -> list[datetime]:
    start = draw(st.sampled_from(STARTS))
    n = draw(st.integers(n_min, n_max))
    times = []
    t = start
    for _ in range(n):
        t = t + draw(gaps)
        times.append(t)
    return times


def _steps(
    draw: st.DrawFn, times: list[datetime], events: st.SearchStrategy[tuple[str, dict[str, Any]]]
) -> tuple[Step, ...]:
    steps = []
    for t in times:
        if draw(st.integers(0, 9)) == 0:
            steps.append(Step(t))  # a sweep
            continue
        type_, props = draw(events)
        steps.append(
            Step(
                t,
                {"user_id": "u1", "type": type_, "occurred_at": t.isoformat(), "properties": props},
            )
        )
    return tuple(steps)


language_events = st.tuples(
    st.sampled_from(
        ["lesson_completed"] * 4
        + ["quiz_passed"] * 2
        + ["daily_login", "module_finished", "unregistered_thing"]
    ),
    st.fixed_dictionaries(
        {},
        optional={
            "score": st.sampled_from([0.0, 0.5, 0.85, 0.89, 0.9, 0.91, 1.0, 1.5, "high"]),
            "difficulty": st.sampled_from(["speaking", "grammar", "reading"]),
        },
    ),
)


@st.composite
def language_histories(draw: st.DrawFn, max_steps: int = 40) -> History:
    """Histories on the language-learning example rulebook."""
    times = draw(_timeline(1, max_steps))
    return History(
        rulebook=language_rulebook(),
        audience="student",
        timezone=draw(st.sampled_from(BUDDY_TIMEZONES)),
        hatched_at=times[0] - timedelta(days=draw(st.integers(0, 20))),
        steps=_steps(draw, times, language_events),
    )


# -- small generated rulebooks ---------------------------------------------------------------

TYPES = ("a", "b", "c")
AMOUNTS = ("props.v", "props.v * 1.5", "props.v - 4", "props.v / 3", "coins // 10 + 1")


def _maybe(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    return draw(st.one_of(st.none(), strategy))


@st.composite
def small_rulebook_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A small rulebook mapping using every mechanic; always loads."""
    audiences = draw(st.sampled_from([["student"], ["student", "teacher"]]))
    audience = st.one_of(st.none(), st.none(), st.sampled_from(audiences))
    streak_count = draw(st.integers(0, 2))
    streak_keys = [f"k{i}" for i in range(streak_count)]
    badge_count = draw(st.integers(0, 4))
    badge_keys = [f"b{i}" for i in range(badge_count)]

    conditions = [
        "props.v >= 3",
        "props.v < 5",
        "coins >= 20",
        "counters.a >= 2",
        "tokens.t1 >= 5",
        "skills.s1.level >= 1",
        "props.v > 2 and stage >= 2",
    ]
    conditions += [f"streaks.{k}.count >= 2" for k in streak_keys]
    conditions += [f'streak("{k}") >= 1 or streaks.{k}.best >= 3' for k in streak_keys]
    conditions += [f'has_badge("{k}")' for k in badge_keys]
    # Reads an event plan writes out differently (engine/inline.py), or leaves to the
    # namespace (event fields, a whole mapping), and a condition that fails on some events.
    conditions += [
        'skill_level("s1") >= 1 and skills.s1.value % 2 == 0',
        'audience == "student" and len(badges) >= 1',
        'event.type == "b" or tokens.t2 >= 2',
        "len(skills) >= 1 and props.v >= 4",
        "props.w > 1",
    ]
    condition = st.sampled_from(conditions)
    maybe_condition = st.one_of(st.none(), condition)
    amount = st.one_of(st.integers(0, 12), st.sampled_from(AMOUNTS))
    cap = st.one_of(st.none(), st.integers(1, 30))
    event_type = st.sampled_from(TYPES)

    def reward(with_badge: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        coins = draw(st.integers(0, 30))
        if coins:
            out["coins"] = coins
        if draw(st.booleans()):
            out["tokens"] = {draw(st.sampled_from(["t1", "t2", "fz"])): draw(st.integers(1, 3))}
        if with_badge and badge_keys and draw(st.integers(0, 3)) == 0:
            out["badge"] = draw(st.sampled_from(badge_keys))
        return out

    doc: dict[str, Any] = {
        "name": "generated",
        "timezone": draw(st.sampled_from(["UTC", "Europe/Berlin", "America/New_York"])),
        "audiences": audiences,
        "event_types": {a: list(TYPES) for a in audiences},
        "skills": [
            {
                "key": "s1",
                "max_value": draw(st.integers(10, 60)),
                "points_per_level": draw(st.integers(1, 15)),
                "max_level": draw(st.integers(1, 5)),
            }
        ],
        "tokens": [
            {"key": "t1", "kind": "primary", **({"max_balance": m} if (m := draw(cap)) else {})},
            {"key": "t2", "kind": "progression"},
            {"key": "fz", "kind": "primary", "max_balance": 3},
        ],
    }
    coin_rules = []
    for i in range(draw(st.integers(1, 4))):
        rule: dict[str, Any] = {"key": f"c{i}", "event": draw(event_type), "amount": draw(amount)}
        for name, strategy in (
            ("when", maybe_condition),
            ("audience", audience),
            ("daily_cap", cap),
            ("weekly_cap", cap),
            ("total_limit", st.one_of(st.none(), st.integers(1, 4))),
        ):
            value = draw(strategy)
            if value is not None:
                rule[name] = value
        multipliers = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"when": condition, "factor": st.sampled_from([2, 1.5, 0.5, 3])}
                ),
                max_size=2,
            )
        )
        if multipliers:
            rule["multiplier"] = multipliers
        coin_rules.append(rule)
    doc["coin_rules"] = coin_rules
    doc["skill_rules"] = [
        {
            "key": f"sr{i}",
            "event": draw(event_type),
            "skill": "s1",
            "amount": draw(amount),
            **({"when": w} if (w := draw(maybe_condition)) else {}),
        }
        for i in range(draw(st.integers(1, 2)))
    ]
    token_rules = []
    for i in range(draw(st.integers(0, 3))):
        rule = {
            "key": f"tr{i}",
            "event": draw(event_type),
            "token": draw(st.sampled_from(["t1", "t2", "fz"])),
            "amount": draw(amount),
        }
        for name, strategy in (
            ("when", maybe_condition),
            ("audience", audience),
            ("daily_cap", cap),
            ("weekly_cap", cap),
        ):
            value = draw(strategy)
            if value is not None:
                rule[name] = value
        token_rules.append(rule)
    doc["token_rules"] = token_rules
    streaks = []
    for key in streak_keys:
        counts = draw(st.lists(st.integers(2, 4), max_size=2, unique=True))
        streak: dict[str, Any] = {
            "key": key,
            "events": draw(st.lists(event_type, min_size=1, max_size=2, unique=True)),
            "period": draw(st.sampled_from(["daily", "daily", "weekly", "monthly"])),
            "tick_reward": reward(with_badge=False),
            "milestones": [{"count": c, "reward": reward(with_badge=True)} for c in counts],
        }
        if draw(st.booleans()):
            streak["freeze_token"] = "fz"
        a = draw(audience)
        if a is not None:
            streak["audience"] = a
        streaks.append(streak)
    doc["streaks"] = streaks
    badges = []
    for i, key in enumerate(badge_keys):
        badge: dict[str, Any] = {"key": key, "reward": reward(with_badge=True)}
        own = f'has_badge("{key}")'  # a badge whose condition is itself is never reachable
        when = draw(st.one_of(st.none(), st.sampled_from([c for c in conditions if c != own])))
        if when is not None:
            badge["when"] = when
        if draw(st.integers(0, 3)) == 0:
            badge["mode"] = "manual"
        if i and draw(st.booleans()):
            badge["requires"] = [draw(st.sampled_from(badge_keys[:i]))]
        a = draw(audience)
        if a is not None:
            badge["audience"] = a
        badges.append(badge)
    doc["badges"] = badges
    stage_conditions = st.sampled_from(
        ["coins >= 15", "coins >= 40", "counters.b >= 2", "tokens.t2 >= 3", "skills.s1.value >= 5"]
        + [f'has_badge("{k}")' for k in badge_keys]
    )
    stage_count = draw(st.integers(1, 5))
    doc["evolution"] = {
        "auto_evolve": draw(st.booleans()),
        "stages": [{"name": "s1"}]
        + [{"name": f"s{n}", "when": draw(stage_conditions)} for n in range(2, stage_count + 1)],
    }
    if draw(st.booleans()):
        doc["paths"] = [
            {
                "key": "p",
                "steps": [
                    {
                        "key": "one",
                        "reward": reward(with_badge=True),
                        "sub_steps": [{"key": "x", "completion_condition": "counters.a >= 1"}],
                    },
                    {
                        "key": "two",
                        "completion_condition": draw(condition),
                        "reward": reward(with_badge=True),
                    },
                ],
            }
        ]
    if draw(st.booleans()):
        doc["decay"] = [
            {
                "skill": "s1",
                "cadence": draw(st.sampled_from(["daily", "weekly", "monthly"])),
                "amount": draw(st.integers(1, 5)),
                "floor": draw(st.integers(0, 5)),
                "grace_days": draw(st.integers(0, 5)),
                **(
                    {"apply_only_above": above}
                    if (above := draw(st.one_of(st.none(), st.integers(0, 2)))) is not None
                    else {}
                ),
            }
        ]
    return doc


small_events = st.tuples(
    st.sampled_from(TYPES),
    st.fixed_dictionaries(
        {}, optional={"v": st.integers(0, 10), "w": st.sampled_from([0, 2, "x"])}
    ),
)


@st.composite
def small_histories(draw: st.DrawFn, max_steps: int = 30) -> History:
    """Histories on a small generated rulebook."""
    doc = draw(small_rulebook_docs())
    rulebook = br.load_rulebook(doc)
    times = draw(_timeline(1, max_steps))
    return History(
        rulebook=rulebook,
        audience=draw(st.sampled_from(doc["audiences"])),
        timezone=draw(st.sampled_from(BUDDY_TIMEZONES)),
        hatched_at=times[0] - timedelta(days=draw(st.integers(0, 10))),
        steps=_steps(draw, times, small_events),
    )


histories = st.one_of(language_histories(), small_histories())
