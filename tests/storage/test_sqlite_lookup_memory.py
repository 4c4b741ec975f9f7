"""SQLiteStore units answer from what the last lookup read, only while it is provably current.

A lookup outside a transaction remembers the rows it read with the connection's
``PRAGMA data_version``; a unit under the write lock compares the version once and, when no
other connection has committed since, answers ``get_receipt`` / ``get_buddy`` without SQL.
These tests pin the cases where the remembered rows must not be used: another connection
(another store object, another process) committed in between, this connection wrote in
between (its own commits leave the version unchanged), a unit rolled back, a lookup ran
inside a transaction that was then rolled back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest

from buddyrules import Engine, load_rulebook
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, Receipt
from buddyrules.storage.sqlite import SQLiteStore

T = "tenant-a"
AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
DATA_VERSION = "PRAGMA data_version"


class _Boom(Exception):
    pass


def _key(user_id: str) -> BuddyKey:
    return BuddyKey(user_id, AUDIENCE)


def _state(user_id: str, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=AUDIENCE, rulebook_version="v1", **changes)


def _receipt(event_id: str, user_id: str) -> Receipt:
    return Receipt(event_id, "fp-" + event_id, user_id, AUDIENCE, {"coins": 1})


def _put(store: SQLiteStore, user_id: str, coins: int, event_id: str | None = None) -> None:
    with store.unit_of_work(T, _key(user_id)) as uow:
        uow.put_buddy(_state(user_id, coins=coins))
        if event_id is not None:
            uow.put_receipt(_receipt(event_id, user_id))


@contextmanager
def _traced(store: SQLiteStore) -> Iterator[list[str]]:
    """The statements this thread's connection runs meanwhile (nested ones left out)."""
    statements: list[str] = []
    db = store._connection().db
    db.set_trace_callback(statements.append)
    try:
        yield statements
    finally:
        db.set_trace_callback(None)


def _reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith("SELECT")]


# A single send's lookup (one key, one id: one statement) and a batch's (several statements).
LOOKUPS = {
    "single": ([_key("alice")], ["e1"]),
    "batch": ([_key("alice"), _key("bob")], ["e1", "e2"]),
}


@pytest.fixture(params=sorted(LOOKUPS))
def lookup_of(request: pytest.FixtureRequest) -> tuple[list[BuddyKey], list[str]]:
    return LOOKUPS[request.param]


@pytest.fixture(params=["unit", "group"])
def in_group(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "group")


@contextmanager
def _unit(store: SQLiteStore, user_id: str, in_group: bool) -> Iterator[Any]:
    if in_group:
        with store.group(T), store.unit_of_work(T, _key(user_id)) as uow:
            yield uow
    else:
        with store.unit_of_work(T, _key(user_id)) as uow:
            yield uow


# -- the rows are used when nothing changed ---------------------------------------------------


def test_units_after_a_lookup_read_nothing_when_nobody_else_committed(
    make_sqlite_store: Callable[..., SQLiteStore],
    lookup_of: tuple[list[BuddyKey], list[str]],
    in_group: bool,
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    keys, ids = lookup_of
    store.lookup(T, keys, ids)
    with _traced(store) as statements, _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") is None
        state = uow.get_buddy()
        assert state is not None and state.coins == 5
        uow.put_buddy(state.model_copy(update={"coins": 6}))
        uow.put_receipt(_receipt("e1", "alice"))
    assert statements[1] == DATA_VERSION  # right after BEGIN IMMEDIATE, instead of a SELECT
    assert _reads(statements) == []
    assert store.get_buddy(T, _key("alice")) == _state("alice", coins=6)


# -- another connection committed in between --------------------------------------------------


def test_a_unit_sees_what_another_store_committed_after_the_lookup(
    make_sqlite_store: Callable[..., SQLiteStore],
    lookup_of: tuple[list[BuddyKey], list[str]],
    in_group: bool,
) -> None:
    store = make_sqlite_store()
    other = make_sqlite_store()  # its own connection, as another process would have
    _put(store, "alice", 5)
    keys, ids = lookup_of
    buddies, receipts = store.lookup(T, keys, ids)
    assert buddies[_key("alice")].coins == 5 and receipts == {}
    # Between the lookup and the unit, someone else applies e1 to alice.
    _put(other, "alice", 9, "e1")
    with _traced(store) as statements, _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") == _receipt("e1", "alice")
        state = uow.get_buddy()
        assert state is not None and state.coins == 9
    assert _reads(statements)  # read again: the data version had changed
    # Everything remembered was dropped, not just alice's rows.
    with _traced(store) as statements, _unit(store, "bob", in_group) as uow:
        assert uow.get_receipt("e2") is None
        assert uow.get_buddy() is None
    assert _reads(statements)


def test_another_stores_new_buddy_is_seen_where_the_lookup_found_none(
    make_sqlite_store: Callable[..., SQLiteStore], in_group: bool
) -> None:
    store = make_sqlite_store()
    other = make_sqlite_store()
    assert store.lookup(T, [_key("carol"), _key("dave")], ["e7"]) == ({}, {})
    _put(other, "dave", 3)  # not even a key the unit asks about: still a commit
    _put(other, "carol", 4)
    with _unit(store, "carol", in_group) as uow:
        assert uow.get_receipt("e7") is None
        assert uow.get_buddy() == _state("carol", coins=4)


def test_a_unit_sees_what_another_process_committed_after_the_lookup(
    make_sqlite_store: Callable[..., SQLiteStore], in_group: bool
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    store.lookup(T, [_key("alice"), _key("bob")], ["e1", "e2"])
    pid = os.fork()
    if pid == 0:  # the child: its own connection (after a fork); never return into pytest
        code = 1
        try:
            _put(store, "alice", 9, "e1")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    with _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") == _receipt("e1", "alice")
        assert uow.get_buddy() == _state("alice", coins=9)


def test_a_second_engine_applying_the_same_event_in_between_wins_once(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    """End to end: another engine records an event between a batch's lookup and its group."""
    rulebook = load_rulebook(
        {
            "name": "tiny",
            "audiences": ["player"],
            "event_types": {"player": ["scored"]},
            "auto_hatch": True,
            "coin_rules": [{"key": "c", "event": "scored", "amount": 1}],
        }
    )
    store = make_sqlite_store()
    other = make_sqlite_store()
    engine = Engine(store, clock=lambda: AT)
    engine.publish(rulebook)
    rival = Engine(other, clock=lambda: AT)
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 3}", "type": "scored", "occurred_at": AT}
        for i in range(9)
    ]
    reserve = store.reserve_quota

    def reserve_after_a_rival(*args: Any) -> int | None:
        # Runs after the batch's lookup and before its group: the rival applies e4 (u1)
        # and e8 (u2) first, on its own connection.
        rival.send_batch([events[4], events[8]])
        return reserve(*args)

    store.reserve_quota = reserve_after_a_rival  # type: ignore[method-assign]
    effects = engine.send_batch(events)
    store.reserve_quota = reserve  # type: ignore[method-assign]
    assert [e.replayed for e in effects] == [i in (4, 8) for i in range(9)]
    coins = {s.user_id: s.coins for s in store.export_states("default")}
    assert coins == {"u0": 3, "u1": 3, "u2": 3}  # every event counted once
    # A single send, the same way: the rival commits after the send's lookup, just before
    # its unit opens (the unit reserves the quota itself, see SQLiteStore.quota_in_unit).
    open_unit = store.unit_of_work

    def unit_after_a_rival(tenant: str, key: BuddyKey) -> Any:
        rival.send({"event_id": "s1", "user_id": "u0", "type": "scored", "occurred_at": AT})
        return open_unit(tenant, key)

    store.unit_of_work = unit_after_a_rival  # type: ignore[method-assign]
    assert engine.send(
        {"event_id": "s1", "user_id": "u0", "type": "scored", "occurred_at": AT}
    ).replayed
    store.unit_of_work = open_unit  # type: ignore[method-assign]
    assert {s.user_id: s.coins for s in store.export_states("default")}["u0"] == 4
    assert store.quota_used("default", AT.strftime("%Y-%m")) == 10  # 9 + s1, counted once


# -- this connection wrote in between -----------------------------------------------------


def test_this_connections_own_commits_after_the_lookup_are_seen(
    make_sqlite_store: Callable[..., SQLiteStore],
    lookup_of: tuple[list[BuddyKey], list[str]],
    in_group: bool,
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    keys, ids = lookup_of
    store.lookup(T, keys, ids)
    # The same connection commits e1 and a new state: the data version does not change.
    _put(store, "alice", 8, "e1")
    with _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") == _receipt("e1", "alice")
        assert uow.get_buddy() == _state("alice", coins=8)


def test_units_of_one_group_see_the_rows_held_back_before_them(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    store.lookup(T, [_key("alice"), _key("bob")], ["e1", "e2"])
    with store.group(T):
        with store.unit_of_work(T, _key("alice")) as uow:
            assert uow.get_receipt("e1") is None
            uow.put_buddy(_state("alice", coins=6))
            uow.put_receipt(_receipt("e1", "alice"))
        with store.unit_of_work(T, _key("alice")) as uow:
            assert uow.get_receipt("e1") == _receipt("e1", "alice")
            assert uow.get_buddy() == _state("alice", coins=6)
    # After the group committed, its rows are what later units read (not the lookup's).
    with _traced(store) as statements, store.unit_of_work(T, _key("alice")) as uow:
        assert uow.get_receipt("e1") == _receipt("e1", "alice")
        assert uow.get_buddy() == _state("alice", coins=6)
    assert _reads(statements)
    # bob was not written: still answered from the lookup.
    with _traced(store) as statements, store.unit_of_work(T, _key("bob")) as uow:
        assert uow.get_receipt("e2") is None
        assert uow.get_buddy() is None
    assert _reads(statements) == []


# -- rollbacks ----------------------------------------------------------------------------


def test_a_rolled_back_unit_leaves_the_remembered_rows_true(
    make_sqlite_store: Callable[..., SQLiteStore],
    lookup_of: tuple[list[BuddyKey], list[str]],
    in_group: bool,
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    keys, ids = lookup_of
    store.lookup(T, keys, ids)
    with pytest.raises(_Boom), _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") is None
        uow.put_buddy(_state("alice", coins=6))
        uow.put_receipt(_receipt("e1", "alice"))
        raise _Boom
    with _unit(store, "alice", in_group) as uow:
        assert uow.get_receipt("e1") is None
        assert uow.get_buddy() == _state("alice", coins=5)
    assert store.get_buddy(T, _key("alice")) == _state("alice", coins=5)
    assert store.get_receipt(T, "e1") is None


def test_a_lookup_inside_a_transaction_that_rolls_back_is_not_remembered(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    with store.group(T):
        with store.unit_of_work(T, _key("alice")) as uow:
            uow.put_buddy(_state("alice", coins=6))
            uow.put_receipt(_receipt("e1", "alice"))
        # Inside the transaction: it sees the group's rows (written for it), uncommitted.
        buddies, receipts = store.lookup(T, [_key("alice"), _key("bob")], ["e1", "e2"])
        assert buddies[_key("alice")].coins == 6 and "e1" in receipts
        # The batch's transaction is lost (as when SQLite rolls it back on its own).
        store._connection().db.execute("ROLLBACK")
    with store.unit_of_work(T, _key("alice")) as uow:
        assert uow.get_receipt("e1") is None
        assert uow.get_buddy() == _state("alice", coins=5)


# -- bounded, per connection ----------------------------------------------------------------


def test_only_the_last_lookup_is_remembered_and_only_on_its_thread(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    _put(store, "alice", 5)
    _put(store, "bob", 7)
    store.lookup(T, [_key("alice"), _key("x")], ["e1", "e9"])
    store.lookup(T, [_key("bob"), _key("y")], ["e2", "e8"])
    conn = store._connection()
    assert set(conn.memo_buddies) == {(T, "bob", AUDIENCE), (T, "y", AUDIENCE)}
    assert set(conn.memo_receipts) == {(T, "e2"), (T, "e8")}
    with _traced(store) as statements, store.unit_of_work(T, _key("alice")) as uow:
        assert uow.get_receipt("e1") is None
        assert uow.get_buddy() == _state("alice", coins=5)
    assert _reads(statements)  # not remembered any more: read
    assert DATA_VERSION not in statements  # and no version check for nothing
