"""Quota reserved inside the event's unit of work (SQLiteStore, ``quota_in_unit``).

The SPEC pipeline is unchanged (receipt check, then quota, then apply), but on SQLite a
single send's quota is counted in the same transaction as the event: one write transaction
per event, and nothing to give back when applying fails.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from buddyrules import EventQuotaExceeded
from buddyrules.errors import StoreError
from buddyrules.storage.protocols import BuddyKey
from buddyrules.storage.sqlite import SQLiteStore

from .helpers import engine_with, lesson


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "quota.db")
    assert s.quota_in_unit
    return s


def test_the_quota_is_counted_once_per_applied_event(store: SQLiteStore) -> None:
    engine = engine_with(store=store, quota=3)  # type: ignore[arg-type]
    for i in range(3):
        assert not engine.send(lesson(f"e{i}")).replayed
    assert engine.send(lesson("e1")).replayed  # a replay uses no quota, even when it is full
    assert engine.quota_used() == 3
    with pytest.raises(EventQuotaExceeded) as raised:
        engine.send(lesson("e3"))
    assert raised.value.details["limit"] == 3
    assert engine.quota_used() == 3
    assert store.get_receipt("default", "e3") is None
    assert engine.buddy("alice").events_applied == 3


def test_a_failing_apply_leaves_no_quota_behind(store: SQLiteStore, put_buddy_fails: Any) -> None:
    engine = engine_with(store=store, quota=5)  # type: ignore[arg-type]
    engine.hatch("alice")
    with put_buddy_fails(store), pytest.raises(StoreError):
        engine.send(lesson("e1"))
    assert engine.quota_used() == 0  # rolled back with the unit
    assert store.get_receipt("default", "e1") is None
    assert not engine.send(lesson("e1")).replayed
    assert engine.quota_used() == 1


def test_the_usage_threshold_message_is_written_once(store: SQLiteStore) -> None:
    engine = engine_with(store=store, quota=10)  # type: ignore[arg-type]
    for i in range(10):
        engine.send(lesson(f"e{i}"))
        usage = [m for m in engine.outbox.pending(1000) if m.type == "usage.threshold_reached"]
        assert len(usage) == (1 if i >= 7 else 0), i
    assert usage[0].payload["used"] == 8


def test_a_unit_inside_a_group_gives_its_quota_back_when_it_fails(store: SQLiteStore) -> None:
    key = BuddyKey("alice", "student")
    with store.group("default"):
        with store.unit_of_work("default", key) as uow:
            assert uow.reserve_quota("2024-05", 2, None) == 2
        with pytest.raises(RuntimeError), store.unit_of_work("default", key) as uow:
            assert uow.reserve_quota("2024-05", 5, None) == 7
            raise RuntimeError("boom")
        with store.unit_of_work("default", key) as uow:
            assert uow.reserve_quota("2024-05", 1, 3) == 3
            assert uow.reserve_quota("2024-05", 1, 3) is None  # the limit holds in a unit
    assert store.quota_used("default", "2024-05") == 3
    with pytest.raises(RuntimeError), store.unit_of_work("default", key) as uow:
        uow.reserve_quota("2024-05", 4, None)
        raise RuntimeError("boom")
    assert store.quota_used("default", "2024-05") == 3  # rolled back with its own transaction


def test_sqlite_fast_path_rows_equal_the_memory_stores(store: SQLiteStore) -> None:
    """The SQLite unit's fast path stores what the port's record objects would."""
    from buddyrules.storage.memory import MemoryStore

    on_sqlite = engine_with(store=store, quota=100)  # type: ignore[arg-type]
    on_memory = engine_with(store=MemoryStore(), quota=100)
    events = [lesson(f"e{i}", user=("alice", "bob")[i % 2]) for i in range(8)]
    for engine in (on_sqlite, on_memory):
        engine.send_batch(events[:4])
        for event in events[4:]:
            engine.send(event)

    # Ids are each store's own (the MemoryStore numbers ledger and outbox together).
    def ledger(engine: Any) -> list[Any]:
        return [replace(r, id=0) for r in engine.ledger()]

    def outbox(engine: Any) -> list[Any]:
        return [replace(m, id=0) for m in engine.outbox.pending(1000)]

    assert ledger(on_sqlite) == ledger(on_memory)
    assert outbox(on_sqlite) == outbox(on_memory)
    assert len(ledger(on_sqlite)) > 8 and len(outbox(on_sqlite)) > 8  # not vacuous
