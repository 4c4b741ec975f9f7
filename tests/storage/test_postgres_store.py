"""PostgresStore passes the store contract suite, plus what is specific to PostgreSQL.

Needs ``BUDDYRULES_TEST_POSTGRES_DSN`` (see conftest.py: skipped without it, failed under CI).
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from buddyrules.errors import StoreError
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, RulebookRecord, Store, UnitOfWork
from buddyrules.testing.store_contract import StoreContract

T = "tenant-a"
AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _state(user_id: str, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=AUDIENCE, rulebook_version="v1", **changes)


def _store(dsn: str, schema: str, **options: Any) -> Any:
    from buddyrules.storage.postgres import PostgresStore

    return PostgresStore(dsn, schema=schema, **options)


class TestPostgresStore(StoreContract):
    """The whole contract against one migrated schema (each test uses fresh tenants)."""

    @pytest.fixture
    def store(self, postgres_dsn: str, postgres_schema: str) -> Iterator[Store]:
        store = _store(postgres_dsn, postgres_schema, max_size=self.threads + 4)
        try:
            yield store
        finally:
            store.close()


@pytest.fixture
def pg_store(postgres_dsn: str, postgres_schema: str) -> Iterator[Any]:
    store = _store(postgres_dsn, postgres_schema)
    try:
        yield store
    finally:
        store.close()


def _latest() -> int:
    from buddyrules.storage.postgres import MIGRATIONS

    return MIGRATIONS[-1].version


def _next_store_class() -> Any:
    """A store of a release one schema version ahead of this one."""
    from buddyrules.storage.postgres import MIGRATIONS, PostgresStore
    from buddyrules.storage.sqlite import Migration

    class NextStore(PostgresStore):
        migrations = (
            *MIGRATIONS,
            Migration(
                _latest() + 1,
                "test: buddies get a note",
                ("ALTER TABLE {s}.buddies ADD note text",),
            ),
        )

    return NextStore


# -- without a server --------------------------------------------------------------------------


def test_a_missing_driver_is_a_clear_store_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from buddyrules.storage.postgres import PostgresStore

    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"buddyrules\[postgres\]"):
        PostgresStore("postgresql://nowhere/x")


def test_importing_the_module_does_not_import_the_driver() -> None:
    code = (
        "import sys, buddyrules.storage.postgres; "
        "assert 'psycopg' not in sys.modules and 'psycopg_pool' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_schema_name_must_be_an_identifier() -> None:
    pytest.importorskip("psycopg")
    from buddyrules.storage.postgres import PostgresStore

    with pytest.raises(ValueError):
        PostgresStore("postgresql://nowhere/x", schema='x"; DROP TABLE y; --')


def test_an_unreachable_server_is_a_store_error() -> None:
    pytest.importorskip("psycopg")
    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore("postgresql://postgres@127.0.0.1:1/x?connect_timeout=1", timeout=1.0)
    try:
        with pytest.raises(StoreError):
            store.get_buddy(T, BuddyKey("u", AUDIENCE))
    finally:
        store.close()


# -- protocol ---------------------------------------------------------------------------------


def test_postgres_store_satisfies_the_protocols(pg_store: Any) -> None:
    assert isinstance(pg_store, Store)
    with pg_store.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
        assert isinstance(uow, UnitOfWork)


def test_a_unit_cannot_be_used_after_its_block(pg_store: Any) -> None:
    with pg_store.unit_of_work("t-closed", BuddyKey("u", AUDIENCE)) as uow:
        pass
    with pytest.raises(StoreError):
        uow.put_buddy(_state("u"))


# -- schema and migrations -------------------------------------------------------------------


def test_a_store_without_its_schema_asks_for_migrate(
    postgres_dsn: str, fresh_postgres_schema: str
) -> None:
    store = _store(postgres_dsn, fresh_postgres_schema)
    try:
        assert store.schema_version() == 0
        with pytest.raises(StoreError, match=r"migrate\(\)"):
            store.get_buddy(T, BuddyKey("u", AUDIENCE))
        with pytest.raises(StoreError, match=r"migrate\(\)"):
            store.unit_of_work(T, BuddyKey("u", AUDIENCE)).__enter__()
        with pytest.raises(StoreError, match=r"migrate\(\)"):
            store.reserve_quota(T, "2024-05", 1, None)
        assert store.migrate() == list(range(1, _latest() + 1))
        assert store.migrate() == []
        assert store.schema_version() == _latest()
        with store.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
            uow.put_buddy(_state("u", coins=2))
    finally:
        store.close()
    again = _store(postgres_dsn, fresh_postgres_schema)
    try:
        assert again.migrate() == []
        buddy = again.get_buddy(T, BuddyKey("u", AUDIENCE))
        assert buddy is not None and buddy.coins == 2
    finally:
        again.close()


def test_an_out_of_date_schema_is_refused_until_migrated(
    postgres_dsn: str, fresh_postgres_schema: str
) -> None:
    old = _store(postgres_dsn, fresh_postgres_schema)
    try:
        old.migrate()
        with old.unit_of_work(T, BuddyKey("u", AUDIENCE)) as uow:
            uow.put_buddy(_state("u", coins=5))
    finally:
        old.close()
    new = _next_store_class()(postgres_dsn, schema=fresh_postgres_schema)
    latest = _latest()
    try:
        with pytest.raises(
            StoreError, match=rf"version {latest}, latest is {latest + 1}.*migrate\(\)"
        ):
            new.get_buddy(T, BuddyKey("u", AUDIENCE))
        assert new.migrate() == [latest + 1]
        buddy = new.get_buddy(T, BuddyKey("u", AUDIENCE))
        assert buddy is not None and buddy.coins == 5
    finally:
        new.close()
    # The older release now refuses the newer schema.
    older = _store(postgres_dsn, fresh_postgres_schema)
    try:
        with pytest.raises(StoreError, match="newer"):
            older.get_buddy(T, BuddyKey("u", AUDIENCE))
        with pytest.raises(StoreError, match="newer"):
            older.migrate()
    finally:
        older.close()


def test_concurrent_migrations_apply_once(postgres_dsn: str, fresh_postgres_schema: str) -> None:
    applied: list[list[int]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(4)

    def migrate() -> None:
        store = _store(postgres_dsn, fresh_postgres_schema)
        try:
            barrier.wait(30)
            applied.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=migrate) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sorted(applied) == [[], [], [], list(range(1, _latest() + 1))]


# -- PostgreSQL specifics ------------------------------------------------------------------


def test_units_in_a_group_commit_on_their_own_and_are_flushed_once(
    postgres_dsn: str, postgres_schema: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import psycopg

    store = _store(postgres_dsn, postgres_schema)
    observer = _store(postgres_dsn, postgres_schema)
    flushes: list[int] = []
    real_flush = store._flush_wal

    def counting_flush() -> None:
        flushes.append(1)
        real_flush()

    monkeypatch.setattr(store, "_flush_wal", counting_flush)
    try:
        with store.group("t-group"):
            with (
                store.group("t-group"),
                store.unit_of_work("t-group", BuddyKey("u1", AUDIENCE)) as uow,
            ):
                uow.put_buddy(_state("u1"))
            # Each unit is its own transaction: committed (and unlocked) at once.
            assert [s.user_id for s in observer.export_states("t-group")] == ["u1"]
            with pytest.raises(RuntimeError), store.group("t-group"):
                with store.unit_of_work("t-group", BuddyKey("u2", AUDIENCE)) as uow:
                    uow.put_buddy(_state("u2"))
                raise RuntimeError("unit k failed")
            assert flushes == []
        assert flushes == [1]  # one flush for the whole (outermost) group
        # The flush is a logged write (a commit that wrote no WAL would not wait for the disk).
        with psycopg.connect(postgres_dsn) as conn:
            marks = conn.execute(f'SELECT count(*) FROM "{postgres_schema}".flush_marks').fetchone()
        assert marks is not None and marks[0] >= 1
        with store.group("t-group"):
            store.get_buddy("t-group", BuddyKey("u1", AUDIENCE))
        assert flushes == [1]  # nothing written, nothing to flush
        assert [s.user_id for s in observer.export_states("t-group")] == ["u1", "u2"]
    finally:
        store.close()
        observer.close()


def test_group_commit_can_be_turned_off(postgres_dsn: str, postgres_schema: str) -> None:
    store = _store(postgres_dsn, postgres_schema, group_commit=False, durable_quota=True)
    try:
        with (
            store.group("t-nogroup"),
            store.unit_of_work("t-nogroup", BuddyKey("u1", AUDIENCE)) as uow,
        ):
            uow.put_buddy(_state("u1"))
        assert store.reserve_quota("t-nogroup", "2024-05", 2, 3) == 2
        assert store.reserve_quota("t-nogroup", "2024-05", 2, 3) is None
        store.release_quota("t-nogroup", "2024-05", 1)
        assert store.quota_used("t-nogroup", "2024-05") == 1
        assert len(store.export_states("t-nogroup")) == 1
    finally:
        store.close()


def test_buddies_are_listed_in_code_point_order_across_pages(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    import psycopg

    tenant = "t-order"
    users = ["B", "a", "é", "Z", "_", "aa", "A"] + [f"user-{i:04d}" for i in range(1100)]
    rows = [(tenant, u, AUDIENCE, _state(u).model_dump_json()) for u in users]
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.cursor().executemany(
            f'INSERT INTO "{postgres_schema}".buddies (tenant, user_id, audience, state) '
            "VALUES (%s, %s, %s, %s::jsonb)",
            rows,
        )
    listed = [s.user_id for s in pg_store.list_buddies(tenant)]
    assert listed == sorted(users)
    assert [s.user_id for s in pg_store.export_states(tenant)] == sorted(users)


def test_rulebook_documents_keep_their_key_order_and_are_queryable(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    import psycopg

    document = {
        "name": "demo",
        "tokens": [{"key": "z"}],
        "reward": {"tokens": {"xp": 1, "gems": 2}},
    }
    pg_store.put_rulebook("t-rb", RulebookRecord("v1", "demo", "published", document, 1, AT))
    record = pg_store.get_rulebook("t-rb", "v1")
    assert record is not None and record.document == document
    assert list(record.document) == ["name", "tokens", "reward"]
    assert list(record.document["reward"]["tokens"]) == ["xp", "gems"]
    with psycopg.connect(postgres_dsn) as conn:
        row = conn.execute(
            f"SELECT document->>'name' FROM \"{postgres_schema}\".rulebooks "
            "WHERE tenant = %s AND version = %s",
            ("t-rb", "v1"),
        ).fetchone()
    assert row == ("demo",)


def test_a_unit_holds_the_buddy_key_before_the_row_exists(pg_store: Any) -> None:
    tenant = "t-lock"
    key = BuddyKey("newcomer", AUDIENCE)
    entered = threading.Event()
    second_inside = threading.Event()

    def second() -> None:
        with pg_store.unit_of_work(tenant, key) as uow:
            second_inside.set()
            existing = uow.get_buddy()
            assert existing is not None and existing.coins == 1

    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow.get_buddy() is None
        thread = threading.Thread(target=second)
        thread.start()
        entered.set()
        assert not second_inside.wait(0.5), "a second unit got the key while it was held"
        uow.put_buddy(_state("newcomer", coins=1))
    thread.join(30)
    assert second_inside.is_set()


def test_stores_in_two_schemas_are_independent(
    pg_store: Any, postgres_dsn: str, fresh_postgres_schema: str
) -> None:
    other = _store(postgres_dsn, fresh_postgres_schema)
    try:
        other.migrate()
        with pg_store.unit_of_work("t-schemas", BuddyKey("u", AUDIENCE)) as uow:
            uow.put_buddy(_state("u"))
        assert other.export_states("t-schemas") == []
    finally:
        other.close()


def test_a_pooled_connection_killed_by_the_server_is_replaced(
    postgres_dsn: str, postgres_schema: str
) -> None:
    import psycopg

    store = _store(postgres_dsn, postgres_schema, min_size=1, max_size=1)
    try:
        key = BuddyKey("u", AUDIENCE)
        assert store.get_buddy("t-restart", key) is None

        def kill_pooled_connection() -> None:
            pool = store._get_pool()
            conn = pool.getconn()
            pid = conn.info.backend_pid
            pool.putconn(conn)
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

        kill_pooled_connection()
        assert store.get_buddy("t-restart", key) is None  # a read is retried once
        kill_pooled_connection()
        with store.unit_of_work("t-restart", key) as uow:  # so is the start of a unit
            uow.put_buddy(_state("u", coins=4))
        buddy = store.get_buddy("t-restart", key)
        assert buddy is not None and buddy.coins == 4
    finally:
        store.close()


# -- what a unit sends -------------------------------------------------------------------------


def test_many_ledger_and_outbox_rows_keep_their_order_and_values(pg_store: Any) -> None:
    from datetime import timedelta, timezone

    from buddyrules.storage import LedgerRecord, OutboxMessage

    key = BuddyKey("u-rows", AUDIENCE)
    east = datetime(2024, 5, 1, 14, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    odd = "quote ' double \" backslash \\ percent %s unicode é ✓"
    ledger = [
        LedgerRecord(key.user_id, AUDIENCE, f"token:t{i}", -(2**53) - i, 2**62, odd, None, east)
        for i in range(12)
    ] + [LedgerRecord(key.user_id, AUDIENCE, "coins", 7, 7, "rule", "evt-9", AT)]
    outbox = [
        OutboxMessage(
            f"type.{i}", key.user_id, AUDIENCE, {"i": i, "text": odd, "n": [1, None]}, east
        )
        for i in range(12)
    ]
    with pg_store.unit_of_work("t-rows", key) as uow:
        uow.append_ledger(ledger)
        uow.append_outbox(outbox)
    stored = pg_store.ledger("t-rows", key)
    assert [e.id for e in stored] == sorted(e.id for e in stored)
    assert [(e.currency, e.amount, e.balance_after, e.reason, e.reference) for e in stored] == [
        (e.currency, e.amount, e.balance_after, e.reason, e.reference) for e in ledger
    ]
    assert all(e.at == east for e in stored[:12]) and stored[12].at == AT
    messages = pg_store.outbox_pending("t-rows", 100)
    assert [(m.type, m.user_id, m.audience, m.payload, m.at) for m in messages] == [
        (m.type, m.user_id, m.audience, m.payload, m.at) for m in outbox
    ]


def test_a_written_state_is_read_back_without_parsing_it_again(pg_store: Any) -> None:
    key = BuddyKey("u-cache", AUDIENCE)
    state = _state("u-cache", coins=3)
    with pg_store.unit_of_work("t-cache", key) as uow:
        uow.put_buddy(state)
    assert pg_store.get_buddy("t-cache", key) is state
    with pg_store.unit_of_work("t-cache", key) as uow:
        assert uow.get_buddy() is state


def test_unit_statements_are_prepared_once_per_connection(
    postgres_dsn: str, postgres_schema: str
) -> None:
    store = _store(postgres_dsn, postgres_schema, min_size=1, max_size=1)
    try:
        key = BuddyKey("u-prep", AUDIENCE)
        for coins in range(3):
            with store.unit_of_work("t-prep", key) as uow:
                uow.put_buddy(_state("u-prep", coins=coins))
        assert len(store._prepared) == 1
        pool = store._get_pool()
        conn = pool.getconn()
        try:
            names = {row[0] for row in conn.execute("SELECT name FROM pg_prepared_statements")}
        finally:
            pool.putconn(conn)
        assert {"buddyrules_lock", "buddyrules_put_buddy", "buddyrules_put_ledger"} <= names
    finally:
        store.close()


def test_rollbacks_keep_the_prepared_statements(postgres_dsn: str, postgres_schema: str) -> None:
    from buddyrules.errors import ConflictError

    # One connection: a unit that fails, and one whose commit fails, both roll back on it.
    store = _store(postgres_dsn, postgres_schema, min_size=1, max_size=1)
    try:
        key = BuddyKey("u-rollback", AUDIENCE)
        with store.unit_of_work("t-rollback", key) as uow:
            uow.put_receipt(_receipt("r-1", "u-rollback"))
        with pytest.raises(RuntimeError), store.unit_of_work("t-rollback", key) as uow:
            uow.put_buddy(_state("u-rollback", coins=1))
            raise RuntimeError("boom")
        with pytest.raises(ConflictError), store.unit_of_work("t-rollback", key) as uow:
            uow.put_receipt(_receipt("r-1", "u-rollback"))
        assert store.reserve_quota("t-rollback", "2024-05", 2, None) == 2
        store.release_quota("t-rollback", "2024-05", 1)
        assert store.quota_used("t-rollback", "2024-05") == 1
        with store.unit_of_work("t-rollback", key) as uow:
            assert uow.get_receipt("r-1") == _receipt("r-1", "u-rollback")
            uow.put_buddy(_state("u-rollback", coins=2))
        buddy = store.get_buddy("t-rollback", key)
        assert buddy is not None and buddy.coins == 2
        assert len(store._prepared) == 1
    finally:
        store.close()


def _receipt(event_id: str, user_id: str) -> Any:
    from buddyrules.storage import Receipt

    return Receipt(event_id, "fp-" + event_id, user_id, AUDIENCE, {"coins": 1, "b": ["x"]})


def test_a_guessed_receipt_is_read_under_the_buddys_lock(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    # The engine looks the id up first (absent), then opens the unit: the unit reads that
    # receipt in its opening round trip, after taking the lock, so a receipt committed in
    # between (here by another store, for another buddy) is seen, as a separate read would.
    other = _store(postgres_dsn, postgres_schema)
    try:
        assert pg_store.get_receipt("t-guess", "e-1") is None
        with other.unit_of_work("t-guess", BuddyKey("someone-else", AUDIENCE)) as uow:
            uow.put_receipt(_receipt("e-1", "someone-else"))
        with pg_store.unit_of_work("t-guess", BuddyKey("u", AUDIENCE)) as uow:
            assert uow._prefetched is not None  # the guess was read with the lock
            assert uow.get_receipt("e-1") == _receipt("e-1", "someone-else")
            assert uow.get_receipt("e-1") == _receipt("e-1", "someone-else")  # read again
        # Absent, guessed and then recorded by the unit itself.
        assert pg_store.get_receipt("t-guess", "e-2") is None
        with pg_store.unit_of_work("t-guess", BuddyKey("u", AUDIENCE)) as uow:
            assert uow.get_receipt("e-2") is None
            uow.put_receipt(_receipt("e-2", "u"))
            assert uow.get_receipt("e-2") == _receipt("e-2", "u")
        assert pg_store.get_receipt("t-guess", "e-2") == _receipt("e-2", "u")
    finally:
        other.close()


def test_a_wrong_or_stale_guess_only_costs_a_read(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    other = _store(postgres_dsn, postgres_schema)
    try:
        # Ids looked up and never applied (say, a quota error) leave stale guesses behind.
        for event_id in ("stale-1", "stale-2", "e-3"):
            assert pg_store.get_receipt("t-stale", event_id) is None
        with other.unit_of_work("t-stale", BuddyKey("someone-else", AUDIENCE)) as uow:
            uow.put_receipt(_receipt("e-3", "someone-else"))
            uow.put_receipt(_receipt("stale-1", "someone-else"))
        with pg_store.unit_of_work("t-stale", BuddyKey("u", AUDIENCE)) as uow:
            assert uow.get_receipt("e-3") == _receipt("e-3", "someone-else")  # guessed wrong
            assert uow.get_receipt("stale-1") == _receipt("stale-1", "someone-else")
        # The guesses up to e-3 were dropped: the next unit guesses nothing.
        with pg_store.unit_of_work("t-stale", BuddyKey("u", AUDIENCE)) as uow:
            assert uow._prefetched is None
            assert uow.get_receipt("e-4") is None
        # A guess for another tenant is never used for this one.
        assert pg_store.get_receipt("t-other", "e-5") is None
        with pg_store.unit_of_work("t-stale", BuddyKey("u", AUDIENCE)) as uow:
            assert uow._prefetched is None
            assert uow.get_receipt("e-5") is None
    finally:
        other.close()


def test_guesses_belong_to_the_thread_that_looked_up(pg_store: Any) -> None:
    assert pg_store.get_receipt("t-threads", "mine") is None
    seen: list[Any] = []

    def elsewhere() -> None:
        with pg_store.unit_of_work("t-threads", BuddyKey("v", AUDIENCE)) as uow:
            seen.append(uow._prefetched)

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [None]
    with pg_store.unit_of_work("t-threads", BuddyKey("u", AUDIENCE)) as uow:
        assert uow._prefetched == ("mine", None)
        assert uow.get_receipt("mine") is None


# -- lookup: many buddies and receipts in one round trip ---------------------------------------

# Identifiers that would break naive array or string quoting.
ODD_IDS = ("NULL", "", " u ", "U", "a'b", 'a"b', "a\\b", "{x,y}", "(1, 2)", "é😀", "a,b")


def _lookup_expected(
    store: Any, tenant: str, keys: list[BuddyKey], event_ids: list[str]
) -> tuple[dict[BuddyKey, BuddyState], dict[str, Any]]:
    """What one get_buddy per key and one get_receipt per id return (absent ones left out)."""
    buddies = {k: s for k in keys if (s := store.get_buddy(tenant, k)) is not None}
    receipts = {i: r for i in event_ids if (r := store.get_receipt(tenant, i)) is not None}
    return buddies, receipts


def count_round_trips(store: Any) -> list[str]:
    """Record every round trip the store makes through its libpq path: its statements.

    Each entry names the statements of one round trip (``"BEGIN buddyrules_lock ..."``);
    ``del store._exchange_on`` stops recording.
    """
    sent: list[str] = []
    exchange = store._exchange_on

    def counted(conn: Any, steps: Any) -> Any:
        sent.append(" ".join(name.decode() for name, _ in steps))
        return exchange(conn, steps)

    store._exchange_on = counted
    return sent


@pytest.fixture
def filled_pg_store(pg_store: Any) -> tuple[Any, str, str]:
    """pg_store with buddies and receipts in two tenants of its own (the schema is shared)."""
    suffix = secrets.token_hex(4)
    tenant_a, tenant_b = f"t-look-a-{suffix}", f"t-look-b-{suffix}"
    for tenant, coins in ((tenant_a, 1), (tenant_b, 7)):
        for i, user_id in enumerate(("u0", "u1", "u2", *ODD_IDS)):
            with pg_store.unit_of_work(tenant, BuddyKey(user_id, AUDIENCE)) as uow:
                uow.put_buddy(_state(user_id, coins=coins + i))
                uow.put_receipt(_receipt("e-" + user_id, user_id))
        with pg_store.unit_of_work(tenant, BuddyKey("u0", "teacher")) as uow:
            uow.put_buddy(BuddyState(user_id="u0", audience="teacher", rulebook_version="v1"))
    return pg_store, tenant_a, tenant_b


def _k(user_id: str, audience: str = AUDIENCE) -> BuddyKey:
    return BuddyKey(user_id, audience)


LOOKUP_INPUTS: list[tuple[list[BuddyKey], list[str]]] = [
    ([], []),
    ([_k("u0")], ["e-u0"]),
    ([_k("u0")], ["absent"]),
    ([_k("nobody")], ["e-u1"]),
    ([_k("u1")], []),
    ([], ["e-u2"]),
    ([_k("u0"), _k("u0", "teacher"), _k("u0", "parent")], []),
    ([], ["e-u0", "absent", "e-u1"]),
    ([_k(u) for u in ("u2", "nobody", "u0", "u2", "u1", "u0")], ["e-u1", "x", "e-u1", "e-u0"]),
    ([_k(u) for u in ODD_IDS], ["e-" + u for u in ODD_IDS]),
    ([_k("u0"), _k("u0")], ["e-u0", "e-u0"]),
]


@pytest.mark.parametrize(("keys", "event_ids"), LOOKUP_INPUTS)
def test_lookup_returns_what_get_buddy_and_get_receipt_return_in_one_round_trip(
    filled_pg_store: tuple[Any, str, str],
    postgres_dsn: str,
    postgres_schema: str,
    keys: list[BuddyKey],
    event_ids: list[str],
) -> None:
    store, tenant_a, tenant_b = filled_pg_store
    for tenant in (tenant_a, tenant_b, tenant_a + "-empty"):
        sent = count_round_trips(store)
        try:
            buddies, receipts = store.lookup(tenant, keys, event_ids)
        finally:
            del store._exchange_on
        assert len(sent) == (1 if keys or event_ids else 0)
        assert (buddies, receipts) == _lookup_expected(store, tenant, keys, event_ids)
        for key, state in buddies.items():
            assert state is store.get_buddy(tenant, key)  # the same parse cache
    # A store with a cold parse cache reads the same.
    cold = _store(postgres_dsn, postgres_schema)
    try:
        found = cold.lookup(tenant_a, keys, event_ids)
        assert found == _lookup_expected(store, tenant_a, keys, event_ids)
    finally:
        cold.close()


def test_lookup_keeps_tenants_apart(filled_pg_store: tuple[Any, str, str]) -> None:
    store, tenant_a, tenant_b = filled_pg_store
    keys = [_k("u0"), _k("u1")]
    mine = store.lookup(tenant_a, keys, ["e-u0"])
    other = store.lookup(tenant_b, keys, ["e-u0"])
    assert [s.coins for s in mine[0].values()] == [1, 2]
    assert [s.coins for s in other[0].values()] == [7, 8]
    assert set(mine[1]) == set(other[1]) == {"e-u0"}


def test_lookup_of_nothing_sends_nothing() -> None:
    from buddyrules.storage.postgres import PostgresStore

    # No server is ever contacted (the pool is created on first use).
    store = PostgresStore("postgresql://nobody@127.0.0.1:1/none", timeout=0.5)
    try:
        assert store.lookup(T, [], []) == ({}, {})
        assert store._pool is None
    finally:
        store.close()


def test_absent_ids_from_lookup_are_guessed_by_the_next_units(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    with pg_store.unit_of_work("t-look-guess", _k("u")) as uow:
        uow.put_receipt(_receipt("old", "u"))
    # Found ids are not guesses; absent ones are, each once, in input order.
    keys = [_k("u"), _k("v")]
    found = pg_store.lookup("t-look-guess", keys, ["n-1", "old", "n-2", "n-1", "n-3"])
    assert set(found[1]) == {"old"}
    assert list(pg_store._local.probed) == [
        ("t-look-guess", "n-1"),
        ("t-look-guess", "n-2"),
        ("t-look-guess", "n-3"),
    ]
    other = _store(postgres_dsn, postgres_schema)
    try:
        # n-2 is recorded meanwhile by another store: its guessed read sees it under the lock.
        with other.unit_of_work("t-look-guess", _k("w")) as uow:
            uow.put_receipt(_receipt("n-2", "w"))
    finally:
        other.close()
    with pg_store.unit_of_work("t-look-guess", _k("u")) as uow:
        assert uow._prefetched == ("n-1", None)
        assert uow.get_receipt("n-1") is None
        uow.put_receipt(_receipt("n-1", "u"))
    with pg_store.unit_of_work("t-look-guess", _k("v")) as uow:
        assert uow._prefetched == ("n-2", _receipt("n-2", "w"))
        assert uow.get_receipt("n-2") == _receipt("n-2", "w")
    # A single send (one key, one id) queues its id the same way.
    assert pg_store.lookup("t-look-guess", [_k("u")], ["n-4"])[1] == {}
    assert list(pg_store._local.probed) == [("t-look-guess", "n-3"), ("t-look-guess", "n-4")]
    with pg_store.unit_of_work("t-look-guess", _k("u")) as uow:
        assert uow.get_receipt("n-4") is None  # n-3 was never applied: a stale guess, dropped
    assert not pg_store._local.probed
