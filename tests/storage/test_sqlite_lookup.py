"""SQLiteStore.lookup: many buddies and receipts in a few statements, as get_* would read them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, Receipt
from buddyrules.storage.sqlite import SQLiteStore

T = "tenant-a"
OTHER = "tenant-b"
AUDIENCE = "student"
# Identifiers that would break naive quoting, plus ones that differ only in case or spacing.
ODD_IDS = ("NULL", "", " u ", "U", "a'b", 'a"b', "a\\b", "{x,y}", "(1, 2)", "é😀", "a\x01b")


def _key(user_id: str, audience: str = AUDIENCE) -> BuddyKey:
    return BuddyKey(user_id, audience)


def _state(user_id: str, audience: str = AUDIENCE, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=audience, rulebook_version="v1", **changes)


def _receipt(event_id: str, user_id: str) -> Receipt:
    return Receipt(event_id, "fp-" + event_id, user_id, AUDIENCE, {"coins": 1, "b": ["x", None]})


def _fill(store: SQLiteStore) -> None:
    """Buddies and receipts in two tenants (the same ids in both, with different contents)."""
    for tenant, coins in ((T, 1), (OTHER, 7)):
        for i, user_id in enumerate(("u0", "u1", "u2", *ODD_IDS)):
            with store.unit_of_work(tenant, _key(user_id)) as uow:
                uow.put_buddy(_state(user_id, coins=coins + i))
                uow.put_receipt(_receipt("e-" + user_id, user_id))
        with store.unit_of_work(tenant, _key("u0", "teacher")) as uow:
            uow.put_buddy(_state("u0", "teacher", coins=coins))


def _expected(
    store: SQLiteStore, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
) -> tuple[dict[BuddyKey, BuddyState], dict[str, Receipt]]:
    """What one get_buddy per key and one get_receipt per id return (absent ones left out)."""
    buddies = {k: s for k in keys if (s := store.get_buddy(tenant, k)) is not None}
    receipts = {i: r for i in event_ids if (r := store.get_receipt(tenant, i)) is not None}
    return buddies, receipts


def _assert_same(
    store: SQLiteStore, tenant: str, keys: Sequence[BuddyKey], event_ids: Sequence[str]
) -> None:
    buddies, receipts = store.lookup(tenant, keys, event_ids)
    assert (buddies, receipts) == _expected(store, tenant, keys, event_ids)
    # Through the same parse cache as get_buddy: the very same state objects.
    for key, state in buddies.items():
        assert state is store.get_buddy(tenant, key)


INPUTS: list[tuple[list[BuddyKey], list[str]]] = [
    ([], []),
    ([_key("u0")], ["e-u0"]),  # a single send: one statement for both
    ([_key("u0")], ["absent"]),
    ([_key("nobody")], ["e-u1"]),
    ([_key("nobody")], ["absent"]),
    ([_key("u1")], []),
    ([], ["e-u2"]),
    ([_key("u0"), _key("u0", "teacher"), _key("u0", "parent")], []),
    ([_key(u) for u in ("u2", "nobody", "u0", "u2", "u1", "u0")], ["e-u1", "x", "e-u1", "e-u0"]),
    ([_key(u) for u in ODD_IDS], ["e-" + u for u in ODD_IDS]),
    ([_key("u0"), _key("u0")], ["e-u0", "e-u0"]),  # duplicates of the single-send case
]


@pytest.mark.parametrize(("keys", "event_ids"), INPUTS)
def test_lookup_returns_what_get_buddy_and_get_receipt_return(
    make_sqlite_store: Callable[..., SQLiteStore], keys: list[BuddyKey], event_ids: list[str]
) -> None:
    store = make_sqlite_store()
    _fill(store)
    for tenant in (T, OTHER, "tenant-empty"):
        _assert_same(store, tenant, keys, event_ids)
    # Another store on the same file (a cold parse cache) reads the same.
    _assert_same(make_sqlite_store(), T, keys, event_ids)


def test_lookup_keeps_tenants_apart(make_sqlite_store: Callable[..., SQLiteStore]) -> None:
    store = make_sqlite_store()
    _fill(store)
    keys = [_key("u0"), _key("u1")]
    mine, other = store.lookup(T, keys, ["e-u0"]), store.lookup(OTHER, keys, ["e-u0"])
    assert [s.coins for s in mine[0].values()] == [1, 2]
    assert [s.coins for s in other[0].values()] == [7, 8]
    assert set(mine[1]) == set(other[1]) == {"e-u0"}


def test_lookup_reads_more_keys_than_one_statement_takes(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.group(T):
        for i in range(0, 300, 2):
            with store.unit_of_work(T, _key(f"u{i}")) as uow:
                uow.put_buddy(_state(f"u{i}", coins=i))
                uow.put_receipt(_receipt(f"e{i}", f"u{i}"))
    keys = [_key(f"u{i}") for i in range(300)]
    ids = [f"e{i}" for i in reversed(range(300))]
    for count in (2, 3, 127, 128, 129, 256, 257, 300):  # statement sizes and chunk edges
        _assert_same(store, T, keys[:count], ids[:count])
    buddies, receipts = store.lookup(T, keys, ids)
    assert len(buddies) == len(receipts) == 150


class _Reads:
    """The traced statements other than ``PRAGMA data_version``, as a list."""

    def __init__(self, traced: list[str]) -> None:
        self._traced = traced

    def _rows(self) -> list[str]:
        return [s for s in self._traced if s != "PRAGMA data_version"]

    def __len__(self) -> int:
        return len(self._rows())

    def __getitem__(self, index: int) -> str:
        return self._rows()[index]

    def clear(self) -> None:
        self._traced.clear()


def test_lookup_sends_no_statement_for_an_empty_input(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    _fill(store)
    traced: list[str] = []
    conn = store._connection()
    conn.db.set_trace_callback(traced.append)
    # A lookup of several items also reads the data version first (one PRAGMA per lookup, for
    # the units that follow: see test_sqlite_lookup_memory.py).
    statements = _Reads(traced)
    try:
        assert store.lookup(T, [], []) == ({}, {})
        assert traced == []
        store.lookup(T, [_key("u0"), _key("u1")], [])
        assert traced[0] == "PRAGMA data_version"
        assert len(statements) == 1 and "buddies" in statements[0]
        assert "receipts" not in statements[0]
        statements.clear()
        store.lookup(T, [], ["e-u0", "e-u1"])
        assert len(statements) == 1 and "receipts" in statements[0]
        assert "buddies" not in statements[0]
        statements.clear()
        store.lookup(T, [_key("u0")], ["e-u0"])  # a single send: one statement for both
        # (The data version is read inside it: SQLite traces that nested read as "-- ...".)
        assert [s for s in traced if not s.startswith("--")] == traced[:1]
    finally:
        conn.db.set_trace_callback(None)


def test_lookup_inside_a_group_sees_the_rows_the_group_holds_back(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    observer = make_sqlite_store()
    with store.unit_of_work(T, _key("u0")) as uow:
        uow.put_buddy(_state("u0", coins=1))
    with store.group(T):
        with store.unit_of_work(T, _key("u0")) as uow:
            uow.put_buddy(_state("u0", coins=2))
            uow.put_receipt(_receipt("e1", "u0"))
        with store.unit_of_work(T, _key("u1")) as uow:
            uow.put_buddy(_state("u1", coins=3))
            uow.put_receipt(_receipt("e2", "u1"))
        # This thread sees the completed units, single send and batch alike; others do not.
        buddies, receipts = store.lookup(T, [_key("u1")], ["e2"])
        assert buddies == {_key("u1"): _state("u1", coins=3)}
        assert receipts == {"e2": _receipt("e2", "u1")}
        buddies, receipts = store.lookup(T, [_key("u0"), _key("u1")], ["e1", "e2", "e3"])
        assert {k.user_id: s.coins for k, s in buddies.items()} == {"u0": 2, "u1": 3}
        assert receipts == {"e1": _receipt("e1", "u0"), "e2": _receipt("e2", "u1")}
        buddies, receipts = observer.lookup(T, [_key("u0"), _key("u1")], ["e1", "e2"])
        assert {k.user_id: s.coins for k, s in buddies.items()} == {"u0": 1}
        assert receipts == {}
        # Units after the lookup still write on top of it.
        with store.unit_of_work(T, _key("u1")) as uow:
            assert uow.get_receipt("e3") is None
            uow.put_buddy(_state("u1", coins=4))
            uow.put_receipt(_receipt("e3", "u1"))
        buddies, receipts = store.lookup(T, [_key("u1"), _key("u2")], ["e3", "e4"])
        assert {k.user_id: s.coins for k, s in buddies.items()} == {"u1": 4}
        assert set(receipts) == {"e3"}
    buddies, receipts = observer.lookup(T, [_key("u0"), _key("u1")], ["e1", "e2", "e3"])
    assert {k.user_id: s.coins for k, s in buddies.items()} == {"u0": 2, "u1": 4}
    assert set(receipts) == {"e1", "e2", "e3"}


def test_lookup_retries_while_the_database_is_busy(
    make_sqlite_store: Callable[..., SQLiteStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_sqlite_store()
    _fill(store)
    conn = store._connection()
    real = conn.cur
    failures = [2]

    class Busy:
        """The cursor, answering "database is locked" to the first two statements."""

        def execute(self, sql: str, params: Any = ()) -> Any:
            if failures[0]:
                failures[0] -= 1
                raise sqlite3.OperationalError("database is locked")
            return real.execute(sql, params)

        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

    monkeypatch.setattr(conn, "cur", Busy())
    buddies, receipts = store.lookup(T, [_key("u0"), _key("u1")], ["e-u0", "x"])
    assert failures == [0]
    monkeypatch.undo()
    assert (buddies, receipts) == _expected(store, T, [_key("u0"), _key("u1")], ["e-u0", "x"])
