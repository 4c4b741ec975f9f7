"""Engine.send: one test per rule of SPEC §1 (validation order, idempotency, quota, apply)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from buddyrules import (
    Effects,
    Event,
    EventQuotaExceeded,
    EventTypeNotRegistered,
    IdempotencyKeyConflict,
    MissingAudience,
    NoPublishedConfig,
    StoreError,
    UnknownAudience,
    ValidationFailed,
)
from buddyrules.service import Engine

from .helpers import T0, Clock, FaultyStore, engine_with, language, lesson, small, two_audiences


def _nothing_written(engine: Engine) -> None:
    assert engine.quota_used() == 0
    assert engine.outbox.pending() == []
    assert engine.ledger() == []


# -- 1. shape -------------------------------------------------------------------------------


def test_camel_case_keys_are_accepted() -> None:
    engine = engine_with()
    effects = engine.send(
        {
            "eventId": "e1",
            "userId": "alice",
            "type": "lesson_completed",
            "occurredAt": "2024-05-01T09:00:00Z",
            "properties": {"score": 0.95},
        }
    )
    assert effects.coins == 40  # tick 5 + lesson 10 + perfect 5 + first_ten 20
    buddy = engine.buddy("alice")
    assert buddy.coins == 40
    assert buddy.last_event_at == datetime(2024, 5, 1, 9, tzinfo=UTC)
    assert engine.ledger("alice")[0].reference == "e1"


def test_an_unknown_field_is_a_validation_error_naming_it() -> None:
    engine = engine_with()
    with pytest.raises(ValidationFailed) as info:
        engine.send({"user_id": "alice", "type": "lesson_completed", "colour": "red"})
    assert info.value.status == 422
    assert info.value.details["fields"] == {"colour": "unknown field"}
    _nothing_written(engine)


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "lesson_completed"}, "user_id"),
        ({"user_id": 42, "type": "lesson_completed"}, "user_id"),
        ({"user_id": "", "type": "lesson_completed"}, "user_id"),
        ({"user_id": "alice", "type": "LessonCompleted"}, "type"),
        ({"user_id": "alice", "type": "lesson_completed", "event_id": "x" * 129}, "event_id"),
        ({"user_id": "alice", "type": "lesson_completed", "properties": [1]}, "properties"),
        ({"user_id": "alice", "type": "lesson_completed", "audience": "Student"}, "audience"),
        (
            {"user_id": "alice", "type": "lesson_completed", "occurred_at": "yesterday"},
            "occurred_at",
        ),
    ],
)
def test_wrong_types_and_formats_are_validation_errors(
    event: dict[str, object], field: str
) -> None:
    engine = engine_with()
    with pytest.raises(ValidationFailed) as info:
        engine.send(event)
    assert field in info.value.details["fields"]
    _nothing_written(engine)


def test_a_naive_occurred_at_is_a_validation_error() -> None:
    engine = engine_with()
    with pytest.raises(ValidationFailed) as info:
        engine.send(lesson("e1", occurred_at="2024-05-01T09:00:00"))
    assert "occurred_at" in info.value.details["fields"]
    with pytest.raises(ValidationFailed):
        engine.send(Event("alice", "lesson_completed", occurred_at=datetime(2024, 5, 1, 9)))
    _nothing_written(engine)


def test_an_event_object_is_validated_like_a_dict() -> None:
    engine = engine_with()
    effects = engine.send(Event("alice", "lesson_completed", event_id="e1"))
    assert effects.coins > 0
    with pytest.raises(ValidationFailed):
        engine.send(Event("alice", "Not A Type"))


def test_shape_is_checked_before_audience() -> None:
    engine = engine_with(two_audiences())
    with pytest.raises(ValidationFailed):
        engine.send({"user_id": "alice", "type": "lesson_completed", "bogus": 1})


# -- 2. audience ----------------------------------------------------------------------------


def test_audience_omitted_with_two_audiences_is_missing_audience() -> None:
    engine = engine_with(two_audiences())
    with pytest.raises(MissingAudience) as info:
        engine.send({"user_id": "alice", "type": "lesson_completed"})
    assert info.value.status == 400
    _nothing_written(engine)


def test_an_audience_not_configured_is_unknown_audience() -> None:
    engine = engine_with(two_audiences())
    with pytest.raises(UnknownAudience) as info:
        engine.send({"user_id": "alice", "type": "lesson_completed", "audience": "parent"})
    assert info.value.status == 400
    _nothing_written(engine)


def test_audience_omitted_with_one_audience_is_that_audience() -> None:
    engine = engine_with(small(auto_hatch=True))
    engine.send(lesson("e1"))
    assert engine.buddy("alice", "student").audience == "student"


def test_each_audience_has_its_own_buddy() -> None:
    engine = engine_with(two_audiences(), clock=Clock())
    engine.hatch("alice", "student")
    engine.hatch("alice", "teacher")
    engine.send({"user_id": "alice", "type": "lesson_completed", "audience": "student"})
    engine.send({"user_id": "alice", "type": "class_taught", "audience": "teacher"})
    assert engine.buddy("alice", "student").coins == 5
    assert engine.buddy("alice", "teacher").coins == 7


# -- 3. registration ------------------------------------------------------------------------


def test_an_unregistered_type_is_rejected() -> None:
    engine = engine_with()
    with pytest.raises(EventTypeNotRegistered) as info:
        engine.send({"user_id": "alice", "type": "video_watched"})
    assert info.value.status == 400
    assert info.value.details["type"] == "video_watched"
    _nothing_written(engine)


def test_a_type_of_another_audience_is_not_registered() -> None:
    engine = engine_with(two_audiences())
    with pytest.raises(EventTypeNotRegistered):
        engine.send({"user_id": "alice", "type": "class_taught", "audience": "student"})


def test_registration_is_checked_before_quota() -> None:
    engine = engine_with(quota=0)
    with pytest.raises(EventTypeNotRegistered):
        engine.send({"user_id": "alice", "type": "video_watched"})
    with pytest.raises(EventQuotaExceeded):
        engine.send(lesson("e1"))


def test_registration_follows_the_buddys_pinned_rulebook() -> None:
    engine = engine_with(small())
    engine.hatch("old_timer")
    # v2 drops daily_login; the pinned buddy still accepts it, a new user does not.
    engine.publish(
        small(event_types={"student": ["lesson_completed", "quiz_passed"]}, auto_hatch=True)
    )
    assert engine.send({"user_id": "old_timer", "type": "daily_login"}).debug_reason is not None
    with pytest.raises(EventTypeNotRegistered):
        engine.send({"user_id": "newcomer", "type": "daily_login"})


# -- 4. idempotency -------------------------------------------------------------------------


def test_a_duplicate_returns_the_stored_effects_marked_replayed() -> None:
    engine = engine_with()
    first = engine.send(lesson("e1", properties={"score": 0.95}))
    again = engine.send(lesson("e1", properties={"score": 0.95}))
    assert again.replayed and not first.replayed
    assert again.to_wire() == {**first.to_wire(), "replayed": True}
    buddy = engine.buddy("alice")
    assert buddy.events_applied == 1 and buddy.coins == first.coins


def test_a_duplicate_uses_no_quota_even_when_quota_is_exhausted() -> None:
    engine = engine_with(quota=1)
    engine.send(lesson("e1"))
    assert engine.quota_used() == 1
    assert engine.send(lesson("e1")).replayed
    assert engine.quota_used() == 1
    with pytest.raises(EventQuotaExceeded):
        engine.send(lesson("e2"))


def test_the_same_id_with_a_different_payload_is_a_conflict() -> None:
    engine = engine_with()
    engine.send(lesson("e1", properties={"score": 0.5}))
    with pytest.raises(IdempotencyKeyConflict) as info:
        engine.send(lesson("e1", properties={"score": 0.9}))
    assert info.value.status == 409
    with pytest.raises(IdempotencyKeyConflict):
        engine.send(lesson("e1", user="bob", properties={"score": 0.5}))
    assert engine.quota_used() == 1


def test_the_fingerprint_ignores_a_filled_in_occurred_at() -> None:
    clock = Clock()
    engine = engine_with(clock=clock)
    engine.send(lesson("e1"))
    clock.advance(hours=5)
    assert engine.send(lesson("e1")).replayed


def test_the_fingerprint_includes_a_given_occurred_at() -> None:
    engine = engine_with()
    engine.send(lesson("e1", occurred_at="2024-05-01T09:00:00Z"))
    assert engine.send(lesson("e1", occurred_at="2024-05-01T11:00:00+02:00")).replayed
    with pytest.raises(IdempotencyKeyConflict):
        engine.send(lesson("e1", occurred_at="2024-05-01T09:00:01Z"))
    with pytest.raises(IdempotencyKeyConflict):
        engine.send(lesson("e1"))


def test_the_fingerprint_uses_the_resolved_audience() -> None:
    engine = engine_with()
    engine.send(lesson("e1"))
    assert engine.send(lesson("e1", audience="student")).replayed


def test_events_without_an_id_are_never_deduplicated() -> None:
    engine = engine_with()
    engine.send(lesson(None))
    engine.send(lesson(None))
    assert engine.buddy("alice").events_applied == 2
    assert engine.quota_used() == 2


# -- 5. quota -------------------------------------------------------------------------------


def test_quota_exhausted_is_event_quota_exceeded_with_reset_at() -> None:
    clock = Clock(datetime(2024, 12, 31, 23, 0, tzinfo=UTC))
    engine = engine_with(clock=clock, quota=2)
    engine.send(lesson("e1"))
    engine.send(lesson("e2"))
    with pytest.raises(EventQuotaExceeded) as info:
        engine.send(lesson("e3"))
    assert info.value.status == 402
    assert info.value.details["reset_at"] == "2025-01-01T00:00:00+00:00"
    assert engine.buddy("alice").events_applied == 2
    assert engine.quota_used() == 2
    clock.advance(hours=2)  # a new UTC month
    engine.send(lesson("e3"))
    assert engine.quota_used() == 1
    assert engine.quota_used("2024-12") == 2


def test_quota_is_counted_without_a_limit() -> None:
    engine = engine_with()
    for i in range(3):
        engine.send(lesson(f"e{i}"))
    assert engine.quota_used() == 3
    assert engine.quota_used("2024-05") == 3
    assert engine.quota_used("2024-04") == 0


def test_quota_is_released_when_apply_fails() -> None:
    store = FaultyStore()
    engine = engine_with(store=store, quota=5)
    engine.hatch("alice")
    store.fail_all = True
    with pytest.raises(StoreError):
        engine.send(lesson("e1"))
    assert engine.quota_used() == 0
    assert store.get_receipt("default", "e1") is None
    assert engine.buddy("alice").events_applied == 0
    store.fail_all = False
    assert not engine.send(lesson("e1")).replayed
    assert engine.quota_used() == 1


def test_usage_threshold_message_is_written_once_at_80_percent() -> None:
    engine = engine_with(quota=10)
    for i in range(10):
        engine.send(lesson(f"e{i}"))
        usage = [m for m in engine.outbox.pending(1000) if m.type == "usage.threshold_reached"]
        assert len(usage) == (1 if i >= 7 else 0), i
    (message,) = usage
    assert message.payload == {
        "tenant": "default",
        "month": "2024-05",
        "used": 8,
        "limit": 10,
        "threshold": 0.8,
    }
    assert message.user_id == "alice"


# -- 6. apply -------------------------------------------------------------------------------


def test_a_user_without_a_buddy_gets_no_active_buddies_for_user() -> None:
    engine = engine_with(small())
    effects = engine.send(lesson("e1", user="ghost"))
    assert effects.debug_reason == "no_active_buddies_for_user"
    assert effects.coins == 0 and effects.badges_awarded == ()
    assert engine.quota_used() == 1
    assert engine.send(lesson("e1", user="ghost")).replayed
    assert engine.export_states() == []


def test_auto_hatch_hatches_the_buddy_first() -> None:
    engine = engine_with(small(auto_hatch=True))
    effects = engine.send(lesson("e1", user="newbie"))
    assert effects.coins == 23 and effects.badges_awarded == ("first",)
    buddy = engine.buddy("newbie")
    assert buddy.hatched_at == T0 and buddy.events_applied == 1
    types = [m.type for m in engine.outbox.pending()]
    assert types[0] == "buddy.hatched"


def test_an_event_that_changes_nothing_reports_no_matching_rules() -> None:
    engine = engine_with(small())
    engine.hatch("alice")
    assert engine.send({"user_id": "alice", "type": "daily_login"}).debug_reason == (
        "no_matching_rules"
    )


def test_an_event_clipped_by_caps_reports_rewards_capped() -> None:
    engine = engine_with()
    engine.hatch("alice")
    assert engine.send({"user_id": "alice", "type": "daily_login"}).coins == 2
    effects = engine.send({"user_id": "alice", "type": "daily_login"})
    assert effects.coins == 0 and effects.debug_reason == "rewards_capped"


def test_occurred_at_defaults_to_the_clock() -> None:
    clock = Clock()
    engine = engine_with(clock=clock)
    clock.advance(minutes=30)
    engine.send(lesson("e1"))
    assert engine.buddy("alice").last_event_at == T0 + timedelta(minutes=30)
    assert {e.at for e in engine.ledger("alice")} == {T0 + timedelta(minutes=30)}


def test_explain_returns_a_trace_that_is_not_stored() -> None:
    engine = engine_with()
    effects = engine.send(lesson("e1"), explain=True)
    assert effects.trace
    assert any(entry.get("rule") == "lesson_coins" for entry in effects.trace)
    assert engine.send(lesson("e1")).trace is None


def test_effects_name_the_rulebook_version() -> None:
    engine = engine_with()
    effects = engine.send(lesson("e1"))
    assert isinstance(effects, Effects)
    assert effects.rulebook_version == language().version


def test_nothing_published_is_no_published_config() -> None:
    engine = Engine(clock=Clock())
    with pytest.raises(NoPublishedConfig) as info:
        engine.send(lesson("e1"))
    assert info.value.status == 409
