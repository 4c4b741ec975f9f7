"""Ledger, outbox and export contents written by the Engine."""

from __future__ import annotations

from datetime import UTC, datetime

from .helpers import T0, Clock, engine_with, language, lesson, two_audiences


def test_an_event_writes_its_ledger_entries_with_the_event_time() -> None:
    engine = engine_with()
    engine.send(lesson("e1", occurred_at="2024-05-01T08:00:00Z", properties={"score": 1.0}))
    entries = engine.ledger("alice")
    assert [(e.currency, e.amount, e.reason) for e in entries] == [
        ("coins", 5, "streak:daily_lesson"),
        ("coins", 10, "rule:lesson_coins"),
        ("coins", 5, "rule:perfect_score"),
        ("coins", 20, "rule:first_ten_lessons"),
        ("token:xp", 25, "rule:token_rules[0]"),
    ]
    assert [e.balance_after for e in entries if e.currency == "coins"] == [5, 15, 20, 40]
    assert {e.reference for e in entries} == {"e1"}
    assert {e.at for e in entries} == {datetime(2024, 5, 1, 8, tzinfo=UTC)}
    assert len({e.id for e in entries}) == len(entries)


def test_outbox_holds_the_notifications_in_order_until_acked() -> None:
    engine = engine_with()
    engine.send(lesson("e1"))
    pending = engine.outbox.pending()
    types = [m.type for m in pending]
    assert types[0] == "buddy.hatched"  # auto_hatch in the example rulebook
    assert "streak.ticked" in types and "badge.awarded" in types
    assert types.count("coins.earned") == 3
    assert all(m.user_id == "alice" and m.audience == "student" for m in pending)
    assert [m.id for m in pending] == sorted(m.id for m in pending)
    assert [m.id for m in engine.outbox.pending(limit=2)] == [m.id for m in pending[:2]]
    assert engine.outbox.ack([m.id for m in pending[:3]]) == 3
    assert engine.outbox.ack([pending[0].id]) == 0
    assert [m.id for m in engine.outbox.pending()] == [m.id for m in pending[3:]]


def test_a_replay_writes_nothing_new() -> None:
    engine = engine_with()
    engine.send(lesson("e1"))
    ledger, outbox = engine.ledger(), engine.outbox.pending(1000)
    engine.send(lesson("e1"))
    assert engine.ledger() == ledger and engine.outbox.pending(1000) == outbox


def test_ledger_filters() -> None:
    engine = engine_with(two_audiences(), clock=Clock())
    engine.hatch("alice", "student")
    engine.hatch("alice", "teacher")
    engine.hatch("bob", "student")
    engine.send({"user_id": "alice", "type": "lesson_completed", "audience": "student"})
    engine.send({"user_id": "alice", "type": "class_taught", "audience": "teacher"})
    engine.send({"user_id": "bob", "type": "lesson_completed", "audience": "student"})
    assert [e.amount for e in engine.ledger()] == [5, 7, 5]
    assert [e.amount for e in engine.ledger("alice")] == [5, 7]
    assert [e.amount for e in engine.ledger("alice", "teacher")] == [7]
    assert [e.user_id for e in engine.ledger(audience="student")] == ["alice", "bob"]
    assert all(e.reference is None for e in engine.ledger())  # no event ids were given


def test_export_states_is_every_buddy_sorted() -> None:
    engine = engine_with()
    for user in ("carol", "alice", "bob"):
        engine.send(lesson(f"e-{user}", user=user))
    states = engine.export_states()
    assert [s.user_id for s in states] == ["alice", "bob", "carol"]
    assert all(s.rulebook_version == language().version for s in states)
    assert all(s.hatched_at == T0 for s in states)
