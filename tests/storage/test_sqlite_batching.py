"""SQLiteStore holds a unit's rows back until it commits (and a group's until the group ends).

These tests pin what that must not change: every unit stays atomic, reads see what was
written before them (on this thread, in this store, in another store on the same file and in
a forked child), and a batch whose rows cannot be written keeps nothing and says so.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from buddyrules.errors import ConflictError, StoreError
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, LedgerRecord, OutboxMessage, Receipt
from buddyrules.storage.sqlite import SQLiteStore

T = "tenant-a"
AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class _Boom(Exception):
    pass


def _key(user_id: str) -> BuddyKey:
    return BuddyKey(user_id, AUDIENCE)


def _state(user_id: str, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=AUDIENCE, rulebook_version="v1", **changes)


def _receipt(event_id: str, user_id: str, fingerprint: str = "fp-1") -> Receipt:
    return Receipt(event_id, fingerprint, user_id, AUDIENCE, {"coins": 1, "event": event_id})


def _ledger(user_id: str, amount: int, balance: int) -> LedgerRecord:
    return LedgerRecord(user_id, AUDIENCE, "coins", amount, balance, "rule:x", None, AT)


def _message(user_id: str, n: int) -> OutboxMessage:
    return OutboxMessage("coins.earned", user_id, AUDIENCE, {"n": n}, AT)


def _coins(store: SQLiteStore, user_id: str) -> int | None:
    state = store.get_buddy(T, _key(user_id))
    return None if state is None else state.coins


# -- coherence across store objects and processes ------------------------------------------


def test_two_stores_on_one_file_always_read_the_latest_state(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    one = make_sqlite_store()
    two = make_sqlite_store()
    with one.unit_of_work(T, _key("alice")) as uow:
        uow.put_buddy(_state("alice", coins=1))
    assert _coins(two, "alice") == 1  # two has now parsed (and cached) coins=1
    with one.unit_of_work(T, _key("alice")) as uow:
        uow.put_buddy(_state("alice", coins=2))
    assert _coins(two, "alice") == 2
    with two.unit_of_work(T, _key("alice")) as uow:
        # The unit reads its receipt and its buddy together: both as committed by `one`.
        assert uow.get_receipt("e1") is None
        state = uow.get_buddy()
        assert state is not None and state.coins == 2
        uow.put_buddy(state.model_copy(update={"coins": 3}))
        uow.put_receipt(_receipt("e1", "alice"))
    assert _coins(one, "alice") == 3
    with one.group(T), one.unit_of_work(T, _key("alice")) as uow:
        assert uow.get_receipt("e1") == _receipt("e1", "alice")
        state = uow.get_buddy()
        assert state is not None and state.coins == 3
        uow.put_buddy(state.model_copy(update={"coins": 4}))
    assert _coins(two, "alice") == 4
    with two.unit_of_work(T, _key("alice")) as uow:
        state = uow.get_buddy()
        assert state is not None and state.coins == 4


def test_a_forked_child_writes_through_its_own_connection(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.unit_of_work(T, _key("parent")) as uow:
        uow.put_buddy(_state("parent", coins=1))
    parent_db = store._connection().db
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            if store._connection().db is not parent_db:
                with store.group(T), store.unit_of_work(T, _key("child")) as uow:
                    assert uow.get_buddy() is None
                    uow.put_buddy(_state("child", coins=7))
                    uow.put_receipt(_receipt("from-child", "child"))
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store._connection().db is parent_db
    assert _coins(store, "child") == 7
    assert store.get_receipt(T, "from-child") == _receipt("from-child", "child")
    with store.unit_of_work(T, _key("parent")) as uow:
        assert uow.get_receipt("from-child") is not None
        uow.put_buddy(_state("parent", coins=2))
    assert _coins(store, "parent") == 2


# -- inside a group ------------------------------------------------------------------------


def test_plain_calls_inside_a_group_see_and_follow_the_units_before_them(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    observer = make_sqlite_store()
    with store.group(T):
        with store.unit_of_work(T, _key("u1")) as uow:
            assert uow.get_receipt("e1") is None
            uow.put_buddy(_state("u1", coins=1))
            uow.put_receipt(_receipt("e1", "u1"))
            uow.append_ledger([_ledger("u1", 1, 1), _ledger("u1", 2, 3)])
            uow.append_outbox([_message("u1", 1)])
        # Same thread: sees the completed unit; other connections do not yet.
        assert store.get_receipt(T, "e1") == _receipt("e1", "u1")
        assert [e.balance_after for e in store.ledger(T)] == [1, 3]
        assert [m.payload["n"] for m in store.outbox_pending(T)] == [1]
        assert observer.get_receipt(T, "e1") is None
        # e1 was read as absent earlier in this transaction, and has been written since.
        with pytest.raises(ConflictError), store.unit_of_work(T, _key("u2")) as uow:
            uow.put_buddy(_state("u2"))
            uow.put_receipt(_receipt("e1", "u2", fingerprint="fp-2"))
        with store.unit_of_work(T, _key("u1")) as uow:
            assert uow.get_receipt("e1") == _receipt("e1", "u1")
            state = uow.get_buddy()
            assert state is not None and state.coins == 1
            uow.put_buddy(_state("u1", coins=5))
            uow.append_ledger([_ledger("u1", 2, 5)])
            uow.append_outbox([_message("u1", 2)])
        with pytest.raises(_Boom), store.unit_of_work(T, _key("u3")) as uow:
            uow.put_buddy(_state("u3"))
            uow.append_ledger([_ledger("u3", 9, 9)])
            raise _Boom
    ledger = observer.ledger(T)
    assert [(e.user_id, e.balance_after) for e in ledger] == [("u1", 1), ("u1", 3), ("u1", 5)]
    assert [e.id for e in ledger] == sorted(e.id for e in ledger)
    assert [m.payload["n"] for m in observer.outbox_pending(T)] == [1, 2]
    assert [s.user_id for s in observer.export_states(T)] == ["u1"]
    assert _coins(observer, "u1") == 5
    receipt = observer.get_receipt(T, "e1")
    assert receipt is not None and receipt.user_id == "u1"


def test_units_of_a_group_read_the_rows_of_the_units_before_them(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.group(T):
        for coins in range(1, 4):
            with store.unit_of_work(T, _key("u1")) as uow:
                before = uow.get_buddy()
                assert (before.coins if before else 0) == coins - 1
                uow.put_buddy(_state("u1", coins=coins))
                uow.put_receipt(_receipt(f"e{coins}", "u1"))
        with store.unit_of_work(T, _key("u2")) as uow:
            assert uow.get_receipt("e2") == _receipt("e2", "u1")
            assert uow.get_buddy() is None
    assert _coins(store, "u1") == 3
    assert [store.get_receipt(T, f"e{i}") is not None for i in range(1, 5)] == [
        True,
        True,
        True,
        False,
    ]


def test_a_batch_whose_rows_cannot_be_written_keeps_nothing_and_says_so(
    make_sqlite_store: Callable[..., SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_sqlite_store()
    observer = make_sqlite_store()

    def full_disk(*args: object) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "_flush", full_disk)
    with pytest.raises(StoreError, match="committing a batch"), store.group(T):
        for user in ("u1", "u2"):
            with store.unit_of_work(T, _key(user)) as uow:
                uow.put_buddy(_state(user))
                uow.put_receipt(_receipt(f"e-{user}", user))
    assert observer.export_states(T) == []
    assert observer.get_receipt(T, "e-u1") is None
    # The connection is clean again: the write lock is free and the next unit commits.
    assert not store._connection().db.in_transaction
    with pytest.raises(StoreError, match="committing a unit of work"):
        _put_alone(store, "u3")
    monkeypatch.undo()
    _put_alone(store, "u3")
    assert [s.user_id for s in observer.export_states(T)] == ["u3"]


def _put_alone(store: SQLiteStore, user: str) -> None:
    with store.unit_of_work(T, _key(user)) as uow:
        uow.put_buddy(_state(user))
        uow.append_ledger([_ledger(user, 1, 1)])


# -- nesting ---------------------------------------------------------------------------------


def test_units_nested_in_a_unit_are_atomic_and_commit_with_it(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with pytest.raises(_Boom), store.unit_of_work(T, _key("outer")) as outer:
        outer.put_buddy(_state("outer", coins=1))
        with store.unit_of_work(T, _key("inner")) as inner:
            inner.put_buddy(_state("inner", coins=2))
        raise _Boom
    assert store.export_states(T) == []
    with store.unit_of_work(T, _key("outer")) as outer:
        outer.put_buddy(_state("outer", coins=1))
        outer.put_receipt(_receipt("e-outer", "outer"))
        with pytest.raises(_Boom), store.unit_of_work(T, _key("failed")) as inner:
            inner.put_buddy(_state("failed"))
            raise _Boom
        with store.unit_of_work(T, _key("inner")) as inner:
            assert inner.get_receipt("e-outer") == _receipt("e-outer", "outer")
            inner.put_buddy(_state("inner", coins=2))
            with pytest.raises(ConflictError):
                inner.put_receipt(_receipt("e-outer", "inner"))
        state = outer.get_buddy()
        assert state is not None and state.coins == 1
    assert [(s.user_id, s.coins) for s in store.export_states(T)] == [
        ("inner", 2),
        ("outer", 1),
    ]


def test_a_unit_inside_a_transaction_the_caller_opened_writes_when_it_ends(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    db = store._connection().db
    db.execute("BEGIN IMMEDIATE")
    with store.unit_of_work(T, _key("u1")) as uow:
        uow.put_buddy(_state("u1", coins=1))
        uow.append_ledger([_ledger("u1", 1, 1)])
    assert db.execute("SELECT count(*) FROM ledger").fetchone()[0] == 1
    with pytest.raises(_Boom), store.unit_of_work(T, _key("u2")) as uow:
        uow.put_buddy(_state("u2"))
        raise _Boom
    db.execute("COMMIT")
    assert [s.user_id for s in store.export_states(T)] == ["u1"]
