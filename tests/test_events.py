"""Event validation, casing and fingerprints (SPEC §1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from buddyrules import Effects, Event, ValidationFailed


def test_snake_and_camel_case_are_the_same_event() -> None:
    snake = Event.from_dict(
        {
            "event_id": "e1",
            "user_id": "u1",
            "type": "lesson_completed",
            "occurred_at": "2026-03-01T10:00:00Z",
            "properties": {"score": 1},
        }
    )
    camel = Event.from_dict(
        {
            "eventId": "e1",
            "userId": "u1",
            "type": "lesson_completed",
            "occurredAt": "2026-03-01T10:00:00+00:00",
            "properties": {"score": 1},
        }
    )
    assert snake == camel
    assert snake.occurred_at == datetime(2026, 3, 1, 10, tzinfo=UTC)


def test_defaults() -> None:
    ev = Event.from_dict({"user_id": "u", "type": "x"})
    assert ev.properties == {}
    assert ev.event_id is None and ev.audience is None and ev.occurred_at is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"type": "x"}, "user_id"),
        ({"user_id": "u"}, "type"),
        ({"user_id": "", "type": "x"}, "user_id"),
        ({"user_id": "u" * 129, "type": "x"}, "user_id"),
        ({"user_id": "u", "type": "Lesson"}, "type"),
        ({"user_id": "u", "type": "a" * 65}, "type"),
        ({"user_id": "u", "type": "x", "event_id": ""}, "event_id"),
        ({"user_id": "u", "type": "x", "event_id": "e" * 129}, "event_id"),
        ({"user_id": "u", "type": "x", "audience": "Student"}, "audience"),
        ({"user_id": "u", "type": "x", "audience": "a" * 33}, "audience"),
        ({"user_id": "u", "type": "x", "properties": [1]}, "properties"),
        ({"user_id": "u", "type": "x", "properties": {"f": object()}}, "properties.f"),
        ({"user_id": "u", "type": "x", "occurred_at": "2026-03-01T10:00:00"}, "occurred_at"),
        ({"user_id": "u", "type": "x", "occurred_at": "yesterday"}, "occurred_at"),
        ({"user_id": "u", "type": "x", "occurred_at": 1234}, "occurred_at"),
        ({"user_id": 5, "type": "x"}, "user_id"),
        ({"user_id": "u", "type": "x", "colour": "red"}, "colour"),
    ],
)
def test_shape_errors_name_the_field(payload: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        Event.from_dict(payload)
    assert info.value.code == "validation_failed"
    assert info.value.status == 422
    assert field in info.value.details["fields"]


def test_all_failing_fields_are_listed() -> None:
    with pytest.raises(ValidationFailed) as info:
        Event.from_dict({"type": "Bad", "extra": 1})
    assert set(info.value.details["fields"]) == {"type", "extra", "user_id"}


def test_not_a_mapping() -> None:
    with pytest.raises(ValidationFailed):
        Event.from_dict([1, 2])  # type: ignore[arg-type]


def test_fingerprint_ignores_event_id_and_offset_spelling() -> None:
    a = Event.from_dict({"user_id": "u", "type": "x", "occurred_at": "2026-03-01T10:00:00Z"})
    b = Event.from_dict(
        {"user_id": "u", "type": "x", "occurred_at": "2026-03-01T11:00:00+01:00", "event_id": "z"}
    )
    assert a.fingerprint() == b.fingerprint()
    c = Event.from_dict({"user_id": "u", "type": "x", "properties": {"a": 1}})
    assert c.fingerprint() != a.fingerprint()
    assert c.fingerprint("student") != c.fingerprint("teacher")


def test_aware_datetime_accepted_naive_refused() -> None:
    tz = timezone(timedelta(hours=2))
    ev = Event.from_dict(
        {"user_id": "u", "type": "x", "occurred_at": datetime(2026, 1, 1, tzinfo=tz)}
    )
    assert ev.occurred_at is not None
    with pytest.raises(ValidationFailed):
        Event.from_dict({"user_id": "u", "type": "x", "occurred_at": datetime(2026, 1, 1)})


def test_to_wire_round_trip() -> None:
    ev = Event.from_dict(
        {"user_id": "u", "type": "x", "event_id": "e", "occurred_at": "2026-03-01T10:00:00Z"}
    )
    assert Event.from_dict(ev.to_wire()) == ev


def test_effects_wire_and_camel_shapes() -> None:
    eff = Effects(
        coins=5,
        badges_awarded=("a",),
        tokens=("gems:5",),
        streak_milestones=({"streak": "daily", "count": 7},),
    )
    wire = eff.to_wire()
    for key in (
        "coins",
        "badges_awarded",
        "badges_ready",
        "tokens",
        "evolution_ready",
        "streak_milestones",
        "debug_reason",
    ):
        assert key in wire
    camel = eff.to_camel()
    assert camel["badgesAwarded"] == ["a"]
    assert camel["evolutionReady"] is False
    assert camel["debugReason"] is None
    assert camel["streakMilestones"] == [{"streak": "daily", "count": 7}]
    assert Effects.from_wire(wire) == eff
    assert eff.token_amounts() == {"gems": 5}
    assert eff.as_replayed().replayed is True


def test_fingerprint_format_is_pinned() -> None:
    # Receipts persist fingerprints in SQLite/PostgreSQL: a changed format would turn every
    # retried event after an upgrade into an idempotency conflict. Change it only with a
    # migration.
    ev = Event.from_dict(
        {
            "user_id": "u1",
            "type": "lesson_completed",
            "properties": {"score": 0.5, "b": [1, "x"]},
            "occurred_at": "2026-03-01T10:00:00Z",
        }
    )
    assert ev.fingerprint("student") == PINNED_FINGERPRINT


PINNED_FINGERPRINT = "891f009cc868d120fd0af653a710cbd73518b55861e18161af1aeede8d3956d6"
