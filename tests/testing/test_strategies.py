"""The public strategies: valid events the service accepts, invalid ones it rejects with the
expected code, histories that cross the boundaries that matter, reachable states."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, find, given, settings
from hypothesis import strategies as st

import buddyrules as br
from buddyrules.engine.periods import local_date, week_index
from buddyrules.errors import BuddyRulesError
from buddyrules.events import parse_timestamp
from buddyrules.service import Engine
from buddyrules.storage.memory import MemoryStore
from buddyrules.testing._shapes import property_shapes
from buddyrules.testing.invariants import play
from buddyrules.testing.strategies import (
    buddy_states,
    dst_transitions,
    events,
    histories,
    invalid_events,
    properties,
)

from .rulebooks import EXAMPLE_PATHS, REFERENCE, TWO_AUDIENCES

RULEBOOKS = {p.parent.name: br.load_rulebook(p) for p in EXAMPLE_PATHS}
NAMES = sorted(RULEBOOKS)
FIND = settings(max_examples=2000, database=None, derandomize=True, deadline=None)
# When only existence matters: stop at the first example found (no shrinking).
EXISTS = settings(FIND, phases=(Phase.generate,))
CLOCK = datetime(2024, 6, 1, 12, tzinfo=UTC)


def _engine(rulebook: br.Rulebook) -> Engine:
    engine = Engine(store=MemoryStore(), clock=lambda: CLOCK)
    engine.publish(rulebook)
    return engine


def test_the_examples_are_found() -> None:
    assert len(NAMES) >= 1


@pytest.mark.parametrize("name", NAMES)
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_generated_event_is_accepted_by_engine_send(name: str, data: st.DataObject) -> None:
    rulebook = RULEBOOKS[name]
    event = data.draw(events(rulebook))
    parsed = br.Event.from_dict(event)
    audience = parsed.audience or rulebook.default_audience
    assert audience is not None and rulebook.is_registered(audience, parsed.type)
    if len(rulebook.audiences) > 1:
        assert "audience" in event
    assert parse_timestamp(event["occurred_at"]).utcoffset() is not None
    assert isinstance(event["occurred_at"], str)
    effects = _engine(rulebook).send(event)
    assert effects.rulebook_version == rulebook.version


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_every_invalid_event_is_rejected_with_its_code(name: str, data: st.DataObject) -> None:
    rulebook = RULEBOOKS[name]
    event, code = data.draw(invalid_events(rulebook))
    with pytest.raises(BuddyRulesError) as info:
        _engine(rulebook).send(event)
    assert info.value.code == code, (event, info.value)


def test_invalid_events_cover_every_code() -> None:
    classroom = br.load_rulebook(TWO_AUDIENCES)
    codes = {
        "validation_failed",
        "unknown_audience",
        "missing_audience",
        "event_type_not_registered",
    }
    for code in codes:

        def has_code(pair: tuple[dict[str, Any], str], code: str = code) -> bool:
            return pair[1] == code

        _, found = find(invalid_events(classroom), has_code, settings=EXISTS)
        assert found == code
    # A type registered only for the other audience is one of the unregistered types tried.
    event, _ = find(
        invalid_events(classroom),
        lambda p: (
            p[1] == "event_type_not_registered"
            and p[0]["type"] == "lesson_prepared"
            and p[0].get("audience") == "student"
        ),
        settings=EXISTS,
    )
    assert event["type"] == "lesson_prepared"


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_histories_are_time_ordered_streams_of_registered_events(
    name: str, data: st.DataObject
) -> None:
    rulebook = RULEBOOKS[name]
    history = data.draw(histories(rulebook, days=40, max_events=30))
    assert 1 <= len(history) <= 30
    times = [parse_timestamp(e["occurred_at"]) for e in history]
    assert times == sorted(times)
    assert times[-1] - times[0] <= timedelta(days=40)
    assert len({e["event_id"] for e in history}) == len(history)
    audiences: dict[str, str] = {}
    for event in history:
        parsed = br.Event.from_dict(event)
        audience = parsed.audience or rulebook.default_audience
        assert audience is not None and rulebook.is_registered(audience, parsed.type)
        assert audiences.setdefault(parsed.user_id, audience) == audience


def _crosses(history: list[dict[str, Any]], instants: tuple[datetime, ...]) -> bool:
    times = [parse_timestamp(e["occurred_at"]) for e in history]
    return any(a < t <= b for a, b in itertools.pairwise(times) for t in instants)


def test_histories_cross_dst_changes_of_the_rulebook_timezone() -> None:
    rulebook = br.load_rulebook(
        {
            "name": "berlin",
            "timezone": "Europe/Berlin",
            "audiences": ["a"],
            "event_types": {"a": ["ping"]},
        }
    )
    changes = dst_transitions(rulebook.tz)
    history = find(histories(rulebook), lambda h: _crosses(h, changes), settings=EXISTS)
    assert _crosses(history, changes)


def test_histories_cross_iso_weeks_and_burn_streaks() -> None:
    rulebook = br.load_rulebook(REFERENCE)
    utc = rulebook.tz

    def new_week(h: list[dict[str, Any]]) -> bool:
        weeks = {week_index(local_date(parse_timestamp(e["occurred_at"]), utc)) for e in h}
        return len(weeks) > 1

    assert new_week(find(histories(rulebook, users=1), new_week, settings=EXISTS))

    def burns(h: list[dict[str, Any]]) -> bool:
        steps = play(rulebook, h).steps
        return any(c.get("change") == "burned" for s in steps for c in s.effects.streaks)

    burned = find(histories(rulebook, users=1), burns, settings=EXISTS)
    assert burns(burned)


def test_property_shapes_follow_the_conditions() -> None:
    reference = br.load_rulebook(REFERENCE)
    shapes = {s.name: s for s in property_shapes(reference)["lesson_completed"]}
    score, difficulty = shapes["score"], shapes["difficulty"]
    assert {0.89, 0.9, 0.91, 0, 1} <= set(score.numbers)
    assert "number" in score.kinds and score.floats
    assert {"speaking", "grammar"} <= set(difficulty.strings)
    assert difficulty.kinds == frozenset({"string"})
    drawn = find(
        properties(reference, "lesson_completed"),
        lambda p: p["score"] == 0.91 and p["difficulty"] == "speaking",
        settings=FIND,
    )
    assert drawn == {"score": 0.91, "difficulty": "speaking"}


def test_property_shapes_see_truth_tests_guards_and_nested_paths() -> None:
    rulebook = br.load_rulebook(
        {
            "name": "shapes",
            "audiences": ["a"],
            "event_types": {"a": ["ping", "pong"]},
            "coin_rules": [
                {"key": "flag", "event": "ping", "when": "props.on_time", "amount": 1},
                {"key": "deep", "event": "ping", "when": "props.meta.level >= 3", "amount": 1},
                {"key": "long", "event": "ping", "amount": "event.properties.minutes - 30"},
            ],
            "badges": [
                {"key": "pong_master", "when": 'event.type == "pong" and props.score > 10'},
            ],
        }
    )
    shapes = property_shapes(rulebook)
    ping = {s.name: s for s in shapes["ping"]}
    assert ping["on_time"].kinds == frozenset({"bool"})
    assert "meta.level" in ping and 3 in ping["meta.level"].numbers
    assert {29, 30, 31} <= set(ping["minutes"].numbers)
    assert "score" not in ping  # the badge is guarded by event.type == "pong"
    assert {s.name for s in shapes["pong"]} == {"score"}
    nested = find(properties(rulebook, "ping"), lambda p: p["meta"]["level"] == 3, settings=FIND)
    assert nested["meta"] == {"level": 3}


def test_dst_transitions() -> None:
    london = dst_transitions("Europe/London")
    assert london == (
        datetime(2024, 3, 31, 1, tzinfo=UTC),
        datetime(2024, 10, 27, 1, tzinfo=UTC),
    )
    assert dst_transitions("UTC") == ()
    assert dst_transitions("Asia/Kolkata") == ()
    assert len(dst_transitions("Australia/Lord_Howe")) == 2  # a 30-minute shift


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_buddy_states_are_reachable_and_serialisable(name: str, data: st.DataObject) -> None:
    rulebook = RULEBOOKS[name]
    state = data.draw(buddy_states(rulebook, max_events=15))
    assert state.rulebook_version == rulebook.version
    assert 1 <= state.stage <= len(rulebook.stages)
    assert state.coins >= 0 and all(v >= 0 for v in state.tokens.values())
    assert br.BuddyState.model_validate_json(state.model_dump_json()) == state


def test_buddy_states_reach_badges() -> None:
    rulebook = br.load_rulebook(REFERENCE)
    state = find(buddy_states(rulebook), lambda s: "first_lesson" in s.badges, settings=EXISTS)
    assert state.counters.get("lesson_completed", 0) >= 1


def test_strategy_arguments_are_checked() -> None:
    rulebook = br.load_rulebook(REFERENCE)
    with pytest.raises(ValueError, match="not configured"):
        events(rulebook, audience="nobody")
    with pytest.raises(ValueError, match="timezone-aware"):
        histories(rulebook, start=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="no registered event type"):
        events(rulebook, types=["not_a_type"])
    with pytest.raises(ValueError):
        histories(rulebook, users=0)
