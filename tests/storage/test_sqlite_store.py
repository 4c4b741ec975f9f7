"""SQLiteStore passes the store contract suite, plus what is specific to SQLite."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from buddyrules import load_rulebook
from buddyrules.errors import StoreError
from buddyrules.service import Engine
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, Receipt, Store, UnitOfWork
from buddyrules.storage.sqlite import MIGRATIONS, Migration, SQLiteStore
from buddyrules.testing.store_contract import StoreContract

T = "tenant-a"
AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _state(user_id: str, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=AUDIENCE, rulebook_version="v1", **changes)


def _put(store: SQLiteStore, user_id: str, coins: int = 0) -> None:
    with store.unit_of_work(T, BuddyKey(user_id, AUDIENCE)) as uow:
        uow.put_buddy(_state(user_id, coins=coins))


def _versions(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute(
            "SELECT version, applied_at FROM schema_version ORDER BY version"
        ).fetchall()


class TestSQLiteStore(StoreContract):
    """The whole contract against a fresh database file per test."""

    parallel_units = False  # SQLite's write lock covers the whole database

    @pytest.fixture
    def store(self, tmp_path: Path) -> Iterator[Store]:
        store = SQLiteStore(tmp_path / "contract.db")
        try:
            yield store
        finally:
            store.close()


class TestSQLiteMemoryStore(StoreContract):
    """The whole contract against ``SQLiteStore(":memory:")``."""

    parallel_units = False

    def make_store(self) -> Store:
        return SQLiteStore(":memory:")


# -- protocol and basics -------------------------------------------------------------------


def test_sqlite_store_satisfies_the_protocols(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    assert isinstance(store, Store)
    with store.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
        assert isinstance(uow, UnitOfWork)


def test_a_unit_cannot_be_used_after_its_block(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
        pass
    with pytest.raises(StoreError):
        uow.put_buddy(_state("u"))
    assert store.get_buddy(T, BuddyKey("u", AUDIENCE)) is None


def test_a_closed_store_refuses_work(make_sqlite_store: Callable[..., SQLiteStore]) -> None:
    store = make_sqlite_store()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.get_buddy(T, BuddyKey("u", AUDIENCE))


def test_memory_database_is_a_private_file_removed_on_close() -> None:
    one, two = SQLiteStore(":memory:"), SQLiteStore(":memory:")
    try:
        _put(one, "alice", 5)
        assert two.get_buddy(T, BuddyKey("alice", AUDIENCE)) is None
        path = Path(one.path)
        assert path.exists()
    finally:
        one.close()
        two.close()
    assert not path.exists()


def test_file_uses_wal_and_the_chosen_synchronous_mode(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    normal = make_sqlite_store()
    full = make_sqlite_store(synchronous="FULL")
    with sqlite3.connect(sqlite_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # 1 = NORMAL, 2 = FULL (read on each store's own connection for this thread).
    assert normal._connection().db.execute("PRAGMA synchronous").fetchone()[0] == 1
    assert full._connection().db.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(ValueError):
        make_sqlite_store(synchronous="OFF")


def test_receipt_effects_round_trip_with_key_order(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    effects = {"z": 1, "a": [1, {"y": None, "b": 2.5}], "m": "é"}
    with store.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
        uow.put_receipt(Receipt("e1", "fp", "u", AUDIENCE, effects))
    receipt = store.get_receipt(T, "e1")
    assert receipt is not None and list(receipt.effects) == ["z", "a", "m"]
    assert receipt.effects == effects


# -- schema and migrations -----------------------------------------------------------------


def test_schema_is_created_once_and_reopening_keeps_data(sqlite_path: Path) -> None:
    with SQLiteStore(sqlite_path) as store:
        assert store.schema_version() == MIGRATIONS[-1].version
        _put(store, "alice", 7)
    first = _versions(sqlite_path)
    assert [v for v, _ in first] == [m.version for m in MIGRATIONS]
    with SQLiteStore(sqlite_path) as again:
        buddy = again.get_buddy(T, BuddyKey("alice", AUDIENCE))
        assert buddy is not None and buddy.coins == 7
    assert _versions(sqlite_path) == first  # nothing re-applied, same timestamps


_LATEST = MIGRATIONS[-1].version


class _NextStore(SQLiteStore):
    """A later release: one more migration on top of this one's."""

    migrations = (
        *MIGRATIONS,
        Migration(
            _LATEST + 1, "test: buddies get a note", ("ALTER TABLE buddies ADD COLUMN note TEXT",)
        ),
    )


def test_an_old_file_is_upgraded_in_place_once(sqlite_path: Path) -> None:
    latest = [m.version for m in MIGRATIONS]
    with SQLiteStore(sqlite_path) as current:
        _put(current, "alice", 3)
    assert [v for v, _ in _versions(sqlite_path)] == latest
    with _NextStore(sqlite_path) as upgraded_store:
        assert upgraded_store.schema_version() == _LATEST + 1
        buddy = upgraded_store.get_buddy(T, BuddyKey("alice", AUDIENCE))
        assert buddy is not None and buddy.coins == 3
        _put(upgraded_store, "bob", 4)
    with sqlite3.connect(sqlite_path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(buddies)")]
    assert "note" in columns
    upgraded = _versions(sqlite_path)
    assert [v for v, _ in upgraded] == [*latest, _LATEST + 1]
    with _NextStore(sqlite_path) as again:
        assert len(again.export_states(T)) == 2
    assert _versions(sqlite_path) == upgraded


def test_a_file_from_a_newer_release_is_refused(sqlite_path: Path) -> None:
    with _NextStore(sqlite_path):
        pass
    with pytest.raises(StoreError, match="newer"):
        SQLiteStore(sqlite_path)


def test_concurrent_first_opens_migrate_once(sqlite_path: Path) -> None:
    stores: list[SQLiteStore] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_store() -> None:
        try:
            barrier.wait(10)
            stores.append(SQLiteStore(sqlite_path))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for store in stores:
        store.close()
    assert not errors
    assert [v for v, _ in _versions(sqlite_path)] == [m.version for m in MIGRATIONS]


# -- a busy database -----------------------------------------------------------------------


def _hold_write_lock(path: Path) -> sqlite3.Connection:
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_database_locked_past_the_retries_is_a_store_error(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store(busy_timeout=0.02, max_retries=2)
    holder = _hold_write_lock(sqlite_path)
    try:
        started = time.monotonic()
        with (
            pytest.raises(StoreError, match="locked") as raised,
            store.unit_of_work(T, BuddyKey("u", AUDIENCE)),
        ):
            pass
        assert raised.value.details["attempts"] == 3
        with pytest.raises(StoreError, match="locked"):
            store.reserve_quota(T, "2024-05", 1, None)
        assert time.monotonic() - started < 10
        # Reads are not blocked by a writer (WAL).
        assert store.get_buddy(T, BuddyKey("u", AUDIENCE)) is None
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _put(store, "u", 1)
    assert store.get_buddy(T, BuddyKey("u", AUDIENCE)) is not None


def test_a_briefly_locked_database_is_retried(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store(busy_timeout=0.02, max_retries=30)
    holder = _hold_write_lock(sqlite_path)
    releaser = threading.Timer(0.2, lambda: holder.execute("ROLLBACK"))
    releaser.start()
    try:
        _put(store, "u", 9)
    finally:
        releaser.join()
        holder.close()
    buddy = store.get_buddy(T, BuddyKey("u", AUDIENCE))
    assert buddy is not None and buddy.coins == 9


# -- groups (batches) ----------------------------------------------------------------------


def test_a_group_is_one_transaction_committed_on_exit(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    observer = make_sqlite_store()
    with store.group(T):
        _put(store, "u1", 1)
        _put(store, "u2", 2)
        # Inside the group: visible to this thread, not yet committed for anyone else.
        assert store.get_buddy(T, BuddyKey("u1", AUDIENCE)) is not None
        assert observer.export_states(T) == []
    assert [s.user_id for s in observer.export_states(T)] == ["u1", "u2"]


def test_a_group_left_by_an_exception_keeps_the_units_before_it(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with pytest.raises(RuntimeError), store.group(T):
        _put(store, "u1", 1)
        with (
            pytest.raises(ZeroDivisionError),
            store.unit_of_work(T, BuddyKey("u2", AUDIENCE)) as uow,
        ):
            uow.put_buddy(_state("u2"))
            _ = 1 / 0
        _put(store, "u3", 3)
        raise RuntimeError("unit k failed")
    assert [s.user_id for s in store.export_states(T)] == ["u1", "u3"]


def test_groups_nest_and_the_outermost_commits(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    observer = make_sqlite_store()
    with store.group(T):
        with store.group(T):
            _put(store, "u1")
        assert observer.export_states(T) == []
        _put(store, "u2")
    assert len(observer.export_states(T)) == 2


def test_a_batch_of_100_events_is_one_commit(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store(synchronous="FULL")
    rulebook = load_rulebook(
        {
            "name": "tiny",
            "audiences": ["player"],
            "event_types": {"player": ["scored"]},
            "auto_hatch": True,
            "coin_rules": [{"key": "c", "event": "scored", "amount": 1}],
        }
    )
    engine = Engine(store, clock=lambda: AT)
    engine.publish(rulebook)
    statements: list[str] = []
    store._connection().db.set_trace_callback(statements.append)
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 7}", "type": "scored", "occurred_at": AT}
        for i in range(100)
    ]
    effects = engine.send_batch(events)
    assert [e.coins for e in effects] == [1] * 100
    commits = [s for s in statements if s.strip().upper().startswith(("COMMIT", "BEGIN"))]
    assert commits == ["BEGIN IMMEDIATE", "COMMIT"]
    # Inside the batch transaction the units only read; their rows are written together just
    # before the COMMIT (the trace shows each row of an executemany), and a buddy's state
    # once, as it stands after its last event. No savepoint is needed for that.
    batch = statements[statements.index("BEGIN IMMEDIATE") + 1 : statements.index("COMMIT")]
    assert not any(s.upper().startswith("SAVEPOINT") for s in batch)
    writes = [i for i, s in enumerate(batch) if s.startswith("INSERT")]
    assert writes == list(range(writes[0], len(batch)))
    inserted = Counter(s.split()[2] for s in batch[writes[0] :])
    # One ledger and one outbox row per event: an event's messages (the 7 hatch messages
    # too) share a row.
    assert inserted == {"buddies": 7, "ledger": 100, "outbox": 100, "receipts": 100}
    pending = store.outbox_pending("default", limit=1000)
    assert len(pending) == 107
    assert [m.id for m in pending] == list(range(1, 108))
    # No read per event: the batch's lookup (before the transaction) read every buddy and
    # receipt, and one look at the data version under the lock shows that nobody else has
    # committed since, so the units answer from what it read.
    assert batch[: writes[0]] == ["PRAGMA data_version"]
    assert [s.coins for s in store.export_states("default")] == [15, 15, 14, 14, 14, 14, 14]
    # A single send is one transaction of its own.
    statements.clear()
    engine.send({"event_id": "single", "user_id": "u1", "type": "scored", "occurred_at": AT})
    assert [s for s in statements if s.startswith("BEGIN IMMEDIATE")] == ["BEGIN IMMEDIATE"]


# -- threads ---------------------------------------------------------------------------------


def test_each_thread_has_its_own_connection(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    seen: list[int] = []
    together = threading.Barrier(4)

    def grab(i: int) -> None:
        seen.append(id(store._connection().db))
        _put(store, f"u{i}")
        together.wait(30)  # all four threads (and connections) alive at once

    threads = [threading.Thread(target=grab, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(set(seen)) == 4
    assert len(store.export_states(T)) == 4


def test_a_thread_s_connection_is_closed_when_the_thread_ends(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    opened = len(store._connections)

    def work(i: int) -> None:
        _put(store, f"u{i}")

    for i in range(5):
        thread = threading.Thread(target=work, args=(i,))
        thread.start()
        thread.join(30)
    assert len(store._connections) == opened
    assert len(store.export_states(T)) == 5


def _checkpoint_threads() -> int:
    return sum(t.name == "buddyrules-sqlite-checkpoint" for t in threading.enumerate())


def test_checkpoints_run_in_the_background_until_close(sqlite_path: Path) -> None:
    before = _checkpoint_threads()
    store = SQLiteStore(sqlite_path, checkpoint_interval=0.02)
    try:
        assert _checkpoint_threads() == before + 1
        size = sqlite_path.stat().st_size
        for i in range(200):
            _put(store, f"user-{i:03d}", coins=i)
        # The WAL is copied into the database file without any writer doing it.
        deadline = time.monotonic() + 10
        while sqlite_path.stat().st_size <= size and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sqlite_path.stat().st_size > size
    finally:
        store.close()
    assert _checkpoint_threads() == before
    with SQLiteStore(sqlite_path, checkpoint_interval=None) as again:
        assert _checkpoint_threads() == before
        assert len(again.export_states(T)) == 200
    with pytest.raises(ValueError):
        SQLiteStore(sqlite_path, checkpoint_interval=0)
