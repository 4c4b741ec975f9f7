"""The pure API: new_buddy, evaluate, immutability, serialisation, Event and Effects shapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pydantic
import pytest

import buddyrules as br
from buddyrules import BuddyState, Effects, Event, ValidationFailed

from .helpers import Buddy, at, event, make_rulebook

SPEC_KEYS = {
    "coins",
    "badges_awarded",
    "badges_ready",
    "tokens",
    "evolution_ready",
    "streak_milestones",
    "debug_reason",
}


@pytest.fixture(scope="module")
def language(language_rulebook_path: Path) -> br.Rulebook:
    return br.load_rulebook(language_rulebook_path)


def test_new_buddy_starts_at_stage_one_pinned_to_the_rulebook(language: br.Rulebook) -> None:
    state = br.new_buddy(language, "u1")
    assert state.user_id == "u1"
    assert state.audience == "student"
    assert state.stage == 1
    assert state.coins == 0
    assert state.rulebook_version == language.version
    assert state.badges == ()
    assert state.events_applied == 0


def test_new_buddy_validates_audience_timezone_and_hatched_at() -> None:
    two = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson"], "teacher": ["lesson"]},
    )
    with pytest.raises(ValidationFailed):
        br.new_buddy(two, "u1")  # several audiences: one must be named
    assert br.new_buddy(two, "u1", "teacher").audience == "teacher"
    with pytest.raises(ValidationFailed):
        br.new_buddy(two, "u1", "parent")
    with pytest.raises(ValidationFailed):
        br.new_buddy(two, "u1", "student", timezone="Mars/Olympus")
    with pytest.raises(ValidationFailed):
        br.new_buddy(two, "u1", "student", hatched_at=datetime(2026, 1, 1))  # naive
    tz = br.new_buddy(two, "u1", "student", timezone="Europe/Berlin", hatched_at=at())
    assert tz.timezone == "Europe/Berlin"
    assert tz.hatched_at == at()


def test_evaluate_accepts_snake_camel_dicts_and_events(language: br.Rulebook) -> None:
    state = br.new_buddy(language, "u1")
    snake = {
        "user_id": "u1",
        "type": "lesson_completed",
        "occurred_at": "2026-03-02T10:00:00Z",
        "properties": {"score": 0.95},
    }
    camel = {
        "userId": "u1",
        "type": "lesson_completed",
        "occurredAt": "2026-03-02T10:00:00+00:00",
        "properties": {"score": 0.95},
    }
    obj = Event.from_dict(snake)
    results = [br.evaluate(language, state, e) for e in (snake, camel, obj)]
    wires = {json.dumps(r.effects.to_wire(), sort_keys=True) for r in results}
    assert len(wires) == 1
    assert {r.state.model_dump_json() for r in results} == {results[0].state.model_dump_json()}
    assert results[0].effects.coins > 0


def test_evaluate_rejects_bad_inputs(language: br.Rulebook) -> None:
    state = br.new_buddy(language, "u1")
    with pytest.raises(ValidationFailed):  # the pure core reads no clock
        br.evaluate(language, state, {"user_id": "u1", "type": "lesson_completed"})
    with pytest.raises(ValidationFailed):
        br.evaluate(language, state, event("lesson_completed", at(), user="someone_else"))
    with pytest.raises(ValidationFailed):
        br.evaluate(language, state, event("lesson_completed", at(), audience="teacher"))
    with pytest.raises(ValidationFailed):
        br.evaluate(language, state, {"user_id": "u1", "type": "Bad Type", "occurred_at": "x"})


def test_an_omitted_audience_is_the_buddys() -> None:
    two = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson"], "teacher": ["lesson"]},
        coin_rules=[{"key": "c", "event": "lesson", "amount": 1}],
    )
    state = br.new_buddy(two, "u1", "teacher")
    assert br.evaluate(two, state, event("lesson", at())).effects.coins == 1
    assert br.evaluate(two, state, event("lesson", at(), audience="teacher")).effects.coins == 1


def test_the_input_state_is_never_mutated(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    for day in range(8):
        buddy.send("lesson_completed", at(day), score=0.95, difficulty="speaking")
        buddy.send("module_finished", at(day, 1))
    before = buddy.state.model_dump_json()
    counters = dict(buddy.state.counters)
    for type_ in ("lesson_completed", "quiz_passed", "daily_login", "module_finished", "odd"):
        br.evaluate(language, buddy.state, event(type_, at(9), score=1.0), explain=True)
    br.advance(language, buddy.state, at(60))
    assert buddy.state.model_dump_json() == before
    assert buddy.state.counters == counters


def test_state_is_frozen(language: br.Rulebook) -> None:
    state = br.new_buddy(language, "u1")
    with pytest.raises(pydantic.ValidationError):
        state.coins = 5  # type: ignore[misc]
    outcome = br.evaluate(language, state, event("lesson_completed", at()))
    with pytest.raises(pydantic.ValidationError):
        outcome.state.stage = 3  # type: ignore[misc]


def test_state_json_round_trips_exactly(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language, timezone="Europe/Berlin", hatched_at=at(-1))
    for day in range(10):
        buddy.send("lesson_completed", at(day), score=0.95, difficulty="speaking")
        buddy.send("quiz_passed", at(day, 2), score=0.8)
        if day % 3 == 0:
            buddy.send("module_finished", at(day, 3))
    buddy.apply(br.advance(language, buddy.state, at(40)))
    text = buddy.state.model_dump_json()
    again = BuddyState.model_validate_json(text)
    assert again == buddy.state
    assert again.model_dump_json() == text
    # And the restored state evaluates exactly like the original.
    e = event("lesson_completed", at(41), score=1.0)
    a, b = br.evaluate(language, buddy.state, e), br.evaluate(language, again, e)
    assert a.state.model_dump_json() == b.state.model_dump_json()
    assert a.effects.to_wire() == b.effects.to_wire()


def test_counters_count_every_type_even_unregistered_ones(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    effects = buddy.send("not_in_the_rulebook", at())
    buddy.send("not_in_the_rulebook", at(0, 1))
    assert buddy.state.counters["not_in_the_rulebook"] == 2
    assert effects.coins == 0
    assert buddy.state.events_applied == 2
    assert buddy.state.last_event_at == at(0, 1)


def test_last_event_at_is_the_latest_not_the_last(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    buddy.send("daily_login", at(2))
    buddy.send("daily_login", at(1))
    assert buddy.state.last_event_at == at(2)


def test_effects_wire_and_camel_shapes(language: br.Rulebook) -> None:
    effects = br.evaluate(
        language, br.new_buddy(language, "u1"), event("lesson_completed", at(), score=1.0)
    ).effects
    wire = effects.to_wire()
    assert set(wire) >= SPEC_KEYS
    assert wire["coins"] == effects.coins
    assert wire["tokens"] == ["xp:25"]
    assert "trace" not in wire
    json.dumps(wire)  # JSON-compatible
    camel = effects.to_camel()
    for key in (
        "coins",
        "badgesAwarded",
        "badgesReady",
        "tokens",
        "evolutionReady",
        "streakMilestones",
        "debugReason",
    ):
        assert key in camel
    assert camel["badgesAwarded"] == ["first_lesson"]
    assert Effects.from_wire(wire) == effects


def test_an_empty_effects_has_every_spec_key() -> None:
    wire = Effects().to_wire()
    assert set(wire) >= SPEC_KEYS
    assert wire["badges_awarded"] == [] and wire["debug_reason"] is None


def test_evaluate_is_deterministic(language: br.Rulebook) -> None:
    e = event("lesson_completed", datetime(2026, 3, 2, 9, tzinfo=UTC), score=0.95)
    state = br.new_buddy(language, "u1")
    a = br.evaluate(language, state, e, explain=True)
    b = br.evaluate(language, state, e, explain=True)
    assert json.dumps(a.effects.to_wire()) == json.dumps(b.effects.to_wire())
    assert a.state.model_dump_json() == b.state.model_dump_json()
    assert a.ledger == b.ledger
    assert a.notifications == b.notifications


def test_every_effects_field_lands_in_its_own_key(language: br.Rulebook) -> None:
    # One event that fills most fields: checks the engine builds Effects field by field.
    buddy = Buddy.hatch(language)
    for day in range(6):
        buddy.send("lesson_completed", at(day), score=0.95, difficulty="speaking")
    effects = buddy.send("lesson_completed", at(6), score=0.95, difficulty="speaking")
    wire = effects.to_wire()
    assert wire["coins"] == effects.coins > 0
    assert wire["badges_awarded"] == ["week_warrior"]
    assert wire["badges_ready"] == []
    assert wire["tokens"] == ["xp:25"]
    assert wire["evolution_ready"] is False
    assert wire["streak_milestones"] == [{"streak": "daily_lesson", "count": 7}]
    assert wire["debug_reason"] is None
    assert wire["skills"][0]["skill"] == "pronunciation"
    assert wire["streaks"] == [{"streak": "daily_lesson", "change": "ticked", "count": 7}]
    assert wire["evolved_to"] is None
    assert wire["paths"] == []
    assert wire["problems"] == []
    assert wire["replayed"] is False
    assert wire["rulebook_version"] == language.version
    assert Effects.from_wire(wire) == effects


def test_engine_states_support_model_copy(language: br.Rulebook) -> None:
    buddy = Buddy.hatch(language)
    buddy.send("lesson_completed", at(), score=1.0)
    state = buddy.state
    fields_before = set(state.model_fields_set)
    richer = state.model_copy(update={"coins": 1000})
    assert richer.coins == 1000 and state.coins != 1000
    assert set(state.model_fields_set) == fields_before
    assert BuddyState.model_validate(state.model_dump()) == state
    after = br.evaluate(language, richer, event("daily_login", at(1)))
    assert after.state.coins == 1002


def test_ledger_entries_and_notifications_are_immutable_records(language: br.Rulebook) -> None:
    outcome = br.evaluate(
        language, br.new_buddy(language, "u1"), event("lesson_completed", at(), score=1.0)
    )
    entry = outcome.ledger[0]  # the streak ticks first (step 2), then the coin rules
    assert (entry.currency, entry.amount, entry.reason) == ("coins", 5, "streak:daily_lesson")
    assert entry.balance_after == 5
    with pytest.raises(AttributeError):
        entry.amount = 5  # type: ignore[misc]
    note = outcome.notifications[0]
    assert note.type == "streak.ticked" and note.payload == {
        "streak": "daily_lesson",
        "count": 1,
        "best": 1,
    }
    assert isinstance(entry, br.LedgerEntry) and isinstance(note, br.Notification)


def test_ledger_and_notifications_behave_as_tuples_of_records(language: br.Rulebook) -> None:
    import pickle

    from buddyrules.engine.turn import Records

    outcome = br.evaluate(
        language, br.new_buddy(language, "u1"), event("lesson_completed", at(), score=1.0)
    )
    ledger, notes = outcome.ledger, outcome.notifications
    # Built from the turn's rows when first read, then kept.
    assert isinstance(ledger, Records) and isinstance(notes, Records)
    as_tuple = tuple(ledger)
    assert ledger.items() is ledger.items()
    assert len(ledger) == len(as_tuple) == 5 and bool(ledger)
    assert ledger == as_tuple and as_tuple == ledger and ledger[1:] == as_tuple[1:]
    assert ledger[-1] == ("token:xp", 25, 25, "rule:token_rules[0]")
    assert [n.type for n in notes][:2] == ["streak.ticked", "coins.earned"]
    assert notes[1].payload == {"amount": 5, "balance": 5, "reason": "streak:daily_lesson"}
    assert hash(ledger) == hash(as_tuple) and repr(ledger) == repr(as_tuple)
    assert pickle.loads(pickle.dumps(outcome)) == outcome
    assert pickle.loads(pickle.dumps(notes)) == tuple(notes)
    assert ledger.index(as_tuple[2]) == 2 and as_tuple[0] in ledger
    assert (ledger == ["not", "a", "tuple"]) is False
    login = br.evaluate(language, outcome.state, event("daily_login", at(hours=1)))
    capped = br.evaluate(language, login.state, event("daily_login", at(hours=2)))
    assert capped.effects.debug_reason == "rewards_capped"
    assert capped.ledger == () and capped.notifications == ()  # nothing to build


def test_state_parts_serialise_as_objects_and_refuse_unknown_keys() -> None:
    import dataclasses

    import pydantic

    from buddyrules.state import PathState, RuleUsage, StreakState

    state = BuddyState(
        user_id="u1",
        audience="student",
        rulebook_version="v1",
        streaks={"daily": StreakState(count=2, best=3, last_period=10, milestones_paid=(7,))},
        rule_usage={"c": RuleUsage(day=10, day_total=5, week=1, week_total=5, times=2)},
        paths={"p": PathState(unlocked=("a",), completed=(), sub_steps_done=("a/x",))},
    )
    dumped = state.model_dump()
    assert dumped["rule_usage"]["c"] == {
        "day": 10,
        "day_total": 5,
        "week": 1,
        "week_total": 5,
        "times": 2,
    }
    assert dumped["streaks"]["daily"]["milestones_paid"] == (7,)
    again = BuddyState.model_validate_json(state.model_dump_json())
    assert again == state and type(again.paths["p"]) is PathState
    for part in (*state.streaks.values(), *state.rule_usage.values(), *state.paths.values()):
        assert dataclasses.is_dataclass(part) and not hasattr(part, "__dict__")
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, dataclasses.fields(part)[0].name, 3)
    raw = state.model_dump()
    raw["rule_usage"]["c"]["bogus"] = 1
    with pytest.raises(pydantic.ValidationError):
        BuddyState.model_validate(raw)
