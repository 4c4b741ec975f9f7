"""A unit reserves quota without reading the row when its connection committed it last.

The remembered usage is only trusted as the lookup's rows are: inside a write transaction
whose ``PRAGMA data_version`` shows that no other connection has committed since. Every
other writer of the row on the same connection (store-level reserve or release, a unit
inside a group, a unit that rolls back) leaves the next unit reading the row again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from buddyrules import load_rulebook
from buddyrules.errors import EventQuotaExceeded
from buddyrules.service import Engine
from buddyrules.storage import BuddyKey
from buddyrules.storage.sqlite import SQLiteStore

T = "tenant-a"
MONTH = "2024-05"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
KEY = BuddyKey("alice", "student")


class _Boom(Exception):
    pass


def _reserve(store: SQLiteStore, event_id: str, limit: int | None = None) -> int | None:
    """What a single send does: look up, then check the receipt and reserve in its unit."""
    store.lookup(T, [KEY], [event_id])
    with store.unit_of_work(T, KEY) as uow:
        assert uow.get_receipt(event_id) is None
        return uow.reserve_quota(MONTH, 1, limit)


def _quota_reads(statements: list[str]) -> int:
    return sum(1 for s in statements if s.startswith("SELECT used FROM quota"))


def test_consecutive_units_reserve_without_reading_the_row(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    statements: list[str] = []
    store._connection().db.set_trace_callback(statements.append)
    assert [_reserve(store, f"e{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    # The first unit reads the (missing) row; the others know what the last one committed.
    assert _quota_reads(statements) == 1
    assert store.quota_used(T, MONTH) == 5


def test_a_commit_by_another_connection_is_seen(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    other = make_sqlite_store()
    assert _reserve(store, "e1") == 1
    assert _reserve(store, "e2") == 2
    other.reserve_quota(T, MONTH, 10, None)
    assert _reserve(store, "e3") == 13
    # Another thread of the same store has a connection of its own: the same.
    import threading

    thread = threading.Thread(target=store.reserve_quota, args=(T, MONTH, 100, None))
    thread.start()
    thread.join()
    assert _reserve(store, "e4") == 114
    assert store.quota_used(T, MONTH) == 114


def test_store_calls_on_the_same_connection_are_seen(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    assert _reserve(store, "e1") == 1
    assert _reserve(store, "e2") == 2
    assert store.reserve_quota(T, MONTH, 5, None) == 7
    assert _reserve(store, "e3") == 8
    store.release_quota(T, MONTH, 4)
    assert _reserve(store, "e4") == 5
    assert store.quota_used(T, MONTH) == 5


def test_a_unit_that_rolls_back_leaves_the_usage_as_it_was(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    assert _reserve(store, "e1") == 1
    assert _reserve(store, "e2") == 2
    store.lookup(T, [KEY], ["e3"])
    with pytest.raises(_Boom), store.unit_of_work(T, KEY) as uow:
        assert uow.get_receipt("e3") is None
        assert uow.reserve_quota(MONTH, 1, None) == 3
        raise _Boom
    assert _reserve(store, "e4") == 3
    # Over the limit nothing is written, and the next unit still counts from the truth.
    assert _reserve(store, "e5", limit=3) is None
    assert _reserve(store, "e6", limit=4) == 4
    assert store.quota_used(T, MONTH) == 4


def test_units_inside_a_group_and_after_it(make_sqlite_store: Callable[..., SQLiteStore]) -> None:
    store = make_sqlite_store()
    assert _reserve(store, "e1") == 1
    with store.group(T):
        for i in range(2, 4):
            with store.unit_of_work(T, KEY) as uow:
                assert uow.reserve_quota(MONTH, 1, None) == i  # type: ignore[attr-defined]
        with pytest.raises(_Boom), store.unit_of_work(T, KEY) as uow:
            assert uow.reserve_quota(MONTH, 1, None) == 4  # type: ignore[attr-defined]
            raise _Boom
    assert _reserve(store, "e5") == 4
    assert _reserve(store, "e6") == 5
    assert store.quota_used(T, MONTH) == 5


def test_the_engine_counts_every_single_send(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    other = make_sqlite_store()
    rulebook = load_rulebook(
        {
            "name": "q",
            "audiences": ["player"],
            "event_types": {"player": ["scored"]},
            "auto_hatch": True,
            "coin_rules": [{"key": "c", "event": "scored", "amount": 1}],
        }
    )
    engine = Engine(store, clock=lambda: AT, monthly_event_quota=6)
    engine.publish(rulebook)
    neighbour = Engine(other, clock=lambda: AT, monthly_event_quota=6)
    for i in range(3):
        engine.send({"event_id": f"a{i}", "user_id": "u1", "type": "scored"})
    neighbour.send({"event_id": "b0", "user_id": "u2", "type": "scored"})
    engine.send({"event_id": "a3", "user_id": "u1", "type": "scored"})
    engine.send_batch([{"event_id": "a4", "user_id": "u1", "type": "scored"}])
    with pytest.raises(EventQuotaExceeded):
        engine.send({"event_id": "a5", "user_id": "u1", "type": "scored"})
    assert engine.quota_used() == 6
    assert neighbour.quota_used() == 6
