"""Engine.send_batch: whole-batch validation, duplicates, all-or-nothing quota, failure at k."""

from __future__ import annotations

from typing import Any

import pytest

from buddyrules import (
    BatchTooLarge,
    EventQuotaExceeded,
    EventTypeNotRegistered,
    IdempotencyKeyConflict,
    StoreError,
    ValidationFailed,
)

from .helpers import FaultyStore, engine_with, lesson, small


def test_a_batch_returns_effects_in_order() -> None:
    engine = engine_with(small(auto_hatch=True))
    results = engine.send_batch(
        [lesson("b0"), {"user_id": "alice", "type": "quiz_passed", "event_id": "b1"}, lesson("b2")]
    )
    assert [r.coins for r in results] == [23, 0, 23]
    assert results[1].tokens == ("gems:2",)
    assert engine.quota_used() == 3
    assert engine.buddy("alice").events_applied == 3


def test_a_batch_above_100_is_batch_too_large() -> None:
    engine = engine_with(small(auto_hatch=True))
    with pytest.raises(BatchTooLarge) as info:
        engine.send_batch([lesson(f"b{i}") for i in range(101)])
    assert info.value.status == 400
    assert engine.quota_used() == 0
    assert len(engine.send_batch([lesson(f"b{i}") for i in range(100)])) == 100


@pytest.mark.parametrize("batch", [[], "not a list", {"user_id": "alice"}])
def test_an_empty_or_non_list_batch_is_a_validation_error(batch: Any) -> None:
    engine = engine_with(small())
    with pytest.raises(ValidationFailed):
        engine.send_batch(batch)


def test_a_rejected_batch_lists_every_failure_and_writes_nothing() -> None:
    engine = engine_with(small(auto_hatch=True), quota=100)
    batch = [
        lesson("b0"),
        lesson("b1", colour="red"),
        lesson("b2"),
        {"user_id": "alice", "type": "video_watched", "event_id": "b3"},
    ]
    with pytest.raises(ValidationFailed) as info:
        engine.send_batch(batch)
    errors = info.value.details["errors"]
    assert [(e["index"], e["code"]) for e in errors] == [
        (1, "validation_failed"),
        (3, "event_type_not_registered"),
    ]
    assert all(set(e) == {"index", "code", "message"} for e in errors)
    assert engine.quota_used() == 0
    assert engine.export_states() == []
    assert engine.outbox.pending() == [] and engine.ledger() == []
    assert engine.store.get_receipt("default", "b0") is None


def test_a_rejected_batch_takes_code_and_status_of_the_lowest_index() -> None:
    engine = engine_with(small(auto_hatch=True))
    with pytest.raises(EventTypeNotRegistered) as info:
        engine.send_batch([{"user_id": "a", "type": "video_watched"}, lesson("b1", colour="red")])
    assert info.value.code == "event_type_not_registered" and info.value.status == 400
    assert info.value.to_wire()["error"]["details"]["errors"][1]["code"] == "validation_failed"


def test_duplicates_inside_a_batch_are_applied_once() -> None:
    engine = engine_with(small(auto_hatch=True))
    results = engine.send_batch([lesson("b0"), lesson("b1"), lesson("b0")])
    assert [r.replayed for r in results] == [False, False, True]
    assert results[2].coins == results[0].coins
    assert engine.buddy("alice").events_applied == 2
    assert engine.quota_used() == 2


def test_a_changed_payload_inside_a_batch_rejects_the_batch() -> None:
    engine = engine_with(small(auto_hatch=True))
    with pytest.raises(IdempotencyKeyConflict) as info:
        engine.send_batch([lesson("b0"), lesson("b0", properties={"x": 1})])
    assert info.value.details["errors"][0]["index"] == 1
    assert engine.quota_used() == 0 and engine.export_states() == []


def test_stored_duplicates_in_a_batch_replay_and_use_no_quota() -> None:
    engine = engine_with(small(auto_hatch=True))
    engine.send(lesson("b0"))
    results = engine.send_batch([lesson("b0"), lesson("b1")])
    assert [r.replayed for r in results] == [True, False]
    assert engine.quota_used() == 2
    with pytest.raises(IdempotencyKeyConflict):
        engine.send_batch([lesson("b2"), lesson("b0", user="bob")])
    assert engine.quota_used() == 2


def test_batch_quota_is_all_or_nothing() -> None:
    engine = engine_with(small(auto_hatch=True), quota=5)
    engine.send_batch([lesson("a0"), lesson("a1"), lesson("a2")])
    with pytest.raises(EventQuotaExceeded) as info:
        engine.send_batch([lesson("b0"), lesson("b1"), lesson("b2")])
    assert info.value.details["requested"] == 3
    assert engine.quota_used() == 3
    assert engine.buddy("alice").events_applied == 3
    # With one stored duplicate only two new events need quota: it fits.
    results = engine.send_batch([lesson("a0"), lesson("b0"), lesson("b1")])
    assert [r.replayed for r in results] == [True, False, False]
    assert engine.quota_used() == 5


def test_a_failure_at_index_k_keeps_earlier_events_and_names_k() -> None:
    store = FaultyStore()
    engine = engine_with(small(auto_hatch=True), store=store, quota=100)
    store.fail_ids = {"b2"}
    batch = [lesson(f"b{i}") for i in range(5)]
    with pytest.raises(StoreError) as info:
        engine.send_batch(batch)
    assert info.value.details["index"] == 2
    assert info.value.details["committed"] == [0, 1]
    assert info.value.details["errors"] == [
        {"index": 2, "code": "internal_error", "message": "injected fault: the disk is on fire"}
    ]
    assert engine.buddy("alice").events_applied == 2
    assert engine.quota_used() == 2  # released for indexes 2, 3 and 4
    # Re-sending the same batch is safe: the first two replay.
    store.fail_ids = set()
    results = engine.send_batch(batch)
    assert [r.replayed for r in results] == [True, True, False, False, False]
    assert engine.buddy("alice").events_applied == 5
    assert engine.quota_used() == 5


def test_a_batch_is_applied_inside_one_store_group() -> None:
    store = FaultyStore()
    engine = engine_with(small(auto_hatch=True), store=store)
    engine.send_batch([lesson("b0"), lesson("b1", user="bob")])
    assert store.groups == 1


def test_a_batch_crossing_the_threshold_writes_one_usage_message() -> None:
    engine = engine_with(small(auto_hatch=True), quota=10)
    engine.send_batch([lesson(f"a{i}") for i in range(6)])
    assert not [m for m in engine.outbox.pending(1000) if m.type == "usage.threshold_reached"]
    engine.send_batch([lesson(f"b{i}") for i in range(4)])
    usage = [m for m in engine.outbox.pending(1000) if m.type == "usage.threshold_reached"]
    assert len(usage) == 1 and usage[0].payload["used"] == 8
