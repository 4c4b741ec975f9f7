"""PostgresStore units take a single send's quota (``quota_in_unit``).

A unit opened right after a single send's lookup reserves the event's quota in its opening
round trip, in a transaction of its own just before the unit's, and gives it back when the
unit rolls back or commits without it being asked for. The first send (no month known yet)
reserves the same way in a round trip of its own, then opens its transaction again.

Needs ``BUDDYRULES_TEST_POSTGRES_DSN`` (see conftest.py: skipped without it, failed under CI).
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from buddyrules import EventQuotaExceeded, load_rulebook
from buddyrules.errors import StoreError
from buddyrules.service import Engine
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, Receipt

from .test_postgres_store import count_round_trips

MONTH = "2024-05"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
RULEBOOK: dict[str, Any] = {
    "name": "quota",
    "auto_hatch": True,
    "audiences": ["student"],
    "event_types": {"student": ["lesson"]},
    "coin_rules": [{"key": "lesson", "event": "lesson", "amount": 3}],
}


class _Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def pg_store(postgres_dsn: str, postgres_schema: str) -> Iterator[Any]:
    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, schema=postgres_schema)
    try:
        yield store
    finally:
        store.close()


def _engine(store: Any, quota: int | None, clock: _Clock | None = None) -> Engine:
    engine = Engine(
        store,
        tenant="t-quota-" + secrets.token_hex(4),
        clock=clock or _Clock(),
        monthly_event_quota=quota,
    )
    engine.publish(load_rulebook(RULEBOOK))
    return engine


def _lesson(event_id: str | None, user: str = "alice") -> dict[str, Any]:
    event: dict[str, Any] = {"user_id": user, "type": "lesson"}
    if event_id is not None:
        event["event_id"] = event_id
    return event


def test_postgres_units_take_the_quota(pg_store: Any) -> None:
    assert pg_store.quota_in_unit


def test_the_quota_is_counted_once_per_applied_event(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=3)
    for i in range(3):
        assert not engine.send(_lesson(f"e{i}")).replayed
    assert engine.send(_lesson("e1")).replayed  # a replay uses no quota, even when it is full
    assert engine.quota_used(MONTH) == 3
    with pytest.raises(EventQuotaExceeded) as raised:
        engine.send(_lesson("e3"))
    assert raised.value.details["limit"] == 3
    assert engine.quota_used(MONTH) == 3
    assert pg_store.get_receipt(engine.tenant, "e3") is None
    assert engine.buddy("alice").events_applied == 3


def test_events_without_ids_are_counted_too(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=None)
    for _ in range(3):
        engine.send(_lesson(None))
    assert engine.quota_used(MONTH) == 3
    assert engine.buddy("alice").events_applied == 3


def test_a_single_send_takes_three_round_trips(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=100)
    sent = count_round_trips(pg_store)
    engine.send(_lesson("first"))  # the first send reserves in a round trip of its own
    assert sent[2] == "ROLLBACK BEGIN buddyrules_reserve COMMIT BEGIN buddyrules_lock"
    assert len(sent) == 4
    sent.clear()
    engine.send(_lesson("second"))
    assert len(sent) == 3  # the lookup, the opening (with the quota), the commit
    assert sent[1] == "BEGIN buddyrules_reserve COMMIT BEGIN buddyrules_lock buddyrules_receipt"
    assert engine.quota_used(MONTH) == 2


def test_the_usage_threshold_message_is_written_once(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=10)
    for i in range(10):
        engine.send(_lesson(f"e{i}"))
        usage = [m for m in engine.outbox.pending(1000) if m.type == "usage.threshold_reached"]
        assert len(usage) == (1 if i >= 7 else 0), i
    assert usage[0].payload["used"] == 8


@pytest.mark.parametrize("warm", [False, True], ids=["reserved-on-reopening", "reserved-early"])
def test_a_failing_apply_leaves_no_quota_behind(
    pg_store: Any, warm: bool, put_buddy_fails: Any
) -> None:
    engine = _engine(pg_store, quota=5)
    engine.hatch("alice")
    if warm:
        engine.send(_lesson("warm-up"))  # the next unit reserves early
    used = engine.quota_used(MONTH)
    with put_buddy_fails(pg_store), pytest.raises(StoreError, match="disk on fire"):
        engine.send(_lesson("e1"))
    assert engine.quota_used(MONTH) == used
    assert pg_store.get_receipt(engine.tenant, "e1") is None
    assert not engine.send(_lesson("e1")).replayed
    assert engine.quota_used(MONTH) == used + 1


def test_a_replay_found_under_the_lock_gives_the_early_quota_back(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    from buddyrules.storage.postgres import PostgresStore

    engine = _engine(pg_store, quota=5)
    engine.send(_lesson("warm-up"))
    assert not engine.send(_lesson("e1")).replayed
    # The engine's lookup finds no receipt for "e2"; another process records it before the
    # unit opens: the unit reserves early, finds the receipt under the lock, gives it back.
    lookup = pg_store.lookup

    def racing_lookup(*args: Any) -> Any:
        found = lookup(*args)
        other = PostgresStore(postgres_dsn, schema=postgres_schema)
        try:
            with other.unit_of_work(engine.tenant, BuddyKey("bob", "student")) as uow:
                e1 = pg_store.get_receipt(engine.tenant, "e1")
                uow.put_receipt(Receipt("e2", e1.fingerprint, "alice", "student", e1.effects))
        finally:
            other.close()
        return found

    pg_store.lookup = racing_lookup
    try:
        replay = engine.send(_lesson("e2"))
    finally:
        del pg_store.lookup
    assert replay.replayed
    assert engine.quota_used(MONTH) == 2  # warm-up and e1


def test_other_units_give_an_early_reservation_back(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=5)
    engine.send(_lesson("warm-up"))
    tenant, key = engine.tenant, BuddyKey("alice", "student")
    # A lookup of one buddy marks its next unit as a send's: one that is not asked for
    # quota (here a plain unit, as an admin call would open) reserves and gives it back.
    pg_store.lookup(tenant, [key], ["unused"])
    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow._early == (MONTH, 5, 1, 2)
        assert pg_store.quota_used(tenant, MONTH) == 2  # reserved, not yet given back
    assert pg_store.quota_used(tenant, MONTH) == 1
    # The same when that unit fails.
    pg_store.lookup(tenant, [key], ["unused"])
    with pytest.raises(RuntimeError), pg_store.unit_of_work(tenant, key):
        raise RuntimeError("boom")
    assert pg_store.quota_used(tenant, MONTH) == 1
    # Only the next unit of that buddy, on that thread, outside a group, reserves early.
    pg_store.lookup(tenant, [key], ["unused"])
    with pg_store.unit_of_work(tenant, BuddyKey("bob", "student")) as uow:
        assert uow._early is None
    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow._early is None
    pg_store.lookup(tenant, [key], ["unused"])
    with pg_store.group(tenant), pg_store.unit_of_work(tenant, key) as uow:
        assert uow._early is None
    # Nor after a lookup that found a receipt (a replay), or a plain reservation.
    pg_store.lookup(tenant, [key], ["warm-up"])
    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow._early is None
    pg_store.lookup(tenant, [key], ["unused"])
    assert pg_store.reserve_quota(tenant, MONTH, 1, None) == 2
    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow._early is None
    assert pg_store.quota_used(tenant, MONTH) == 2


def test_a_full_quota_found_early_is_reported_and_nothing_is_kept(pg_store: Any) -> None:
    engine = _engine(pg_store, quota=2)
    engine.send(_lesson("e0"))
    engine.send(_lesson("e1"))  # reserved early: the quota is now full
    with pytest.raises(EventQuotaExceeded):
        engine.send(_lesson("e2"))  # reserved early too: refused, nothing reserved
    assert engine.quota_used(MONTH) == 2
    assert pg_store.get_receipt(engine.tenant, "e2") is None


def test_a_new_month_is_reserved_and_the_old_guess_given_back(pg_store: Any) -> None:
    clock = _Clock()
    engine = _engine(pg_store, quota=None, clock=clock)
    engine.send(_lesson("may-1"))
    engine.send(_lesson("may-2"))
    clock.now = datetime(2024, 6, 1, 0, 0, tzinfo=UTC)
    engine.send(_lesson("june-1"))  # guessed May: given back, June reserved on reopening
    engine.send(_lesson("june-2"))  # guessed June
    assert engine.quota_used(MONTH) == 2
    assert engine.quota_used("2024-06") == 2


def test_a_unit_can_reserve_more_in_its_own_transaction(pg_store: Any) -> None:
    tenant, key = "t-unit-reserve-" + secrets.token_hex(4), BuddyKey("alice", "student")
    with pg_store.unit_of_work(tenant, key) as uow:
        assert uow.reserve_quota(MONTH, 2, None) == 2  # on reopening
        assert uow.reserve_quota(MONTH, 1, 3) == 3  # inside the transaction
        assert uow.reserve_quota(MONTH, 1, 3) is None  # the limit holds in a unit
    assert pg_store.quota_used(tenant, MONTH) == 3
    with pytest.raises(RuntimeError), pg_store.unit_of_work(tenant, key) as uow:
        assert uow.reserve_quota(MONTH, 4, None) == 7
        assert uow.reserve_quota(MONTH, 1, None) == 8
        raise RuntimeError("boom")
    assert pg_store.quota_used(tenant, MONTH) == 3  # both given back / rolled back
    with pytest.raises(ValueError), pg_store.unit_of_work(tenant, key) as uow:
        uow.reserve_quota(MONTH, -1, None)


def test_a_unit_that_used_its_transaction_reserves_inside_it(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    import psycopg

    tenant, key = "t-unit-inside-" + secrets.token_hex(4), BuddyKey("alice", "student")
    with pg_store.unit_of_work(tenant, key) as uow:
        uow.get_buddy()  # the state read under this transaction's lock is in use
        sent = count_round_trips(pg_store)
        assert uow.reserve_quota(MONTH, 1, None) == 1
        assert sent == ["buddyrules_reserve"]
        with psycopg.connect(postgres_dsn, autocommit=True) as other:
            row = other.execute(
                f'SELECT used FROM "{postgres_schema}".quota WHERE tenant = %s', (tenant,)
            ).fetchone()
        assert row is None  # not committed yet: it commits with the unit
    del pg_store._exchange_on
    assert pg_store.quota_used(tenant, MONTH) == 1


def test_reopening_reads_the_buddy_again(
    pg_store: Any, postgres_dsn: str, postgres_schema: str
) -> None:
    from buddyrules.storage.postgres import PostgresStore

    tenant, key = "t-reopen-" + secrets.token_hex(4), BuddyKey("alice", "student")
    with pg_store.unit_of_work(tenant, key) as uow:
        uow.put_buddy(BuddyState(user_id="alice", audience="student", rulebook_version="v1"))
    other = PostgresStore(postgres_dsn, schema=postgres_schema)
    sent: list[str] = []
    exchange = pg_store._exchange_on

    def racing(conn: Any, steps: Any) -> Any:
        # Another process writes the buddy between the rollback and the new lock (the
        # round trip is split in two here to make room for it).
        sent.append(" ".join(name.decode() for name, _ in steps))
        if steps[0][0] != b"ROLLBACK":
            return exchange(conn, steps)
        first = exchange(conn, steps[:1])
        with other.unit_of_work(tenant, key) as theirs:
            state = theirs.get_buddy()
            assert state is not None
            theirs.put_buddy(state.model_copy(update={"coins": 9}))
        return first + exchange(conn, steps[1:])

    try:
        with pg_store.unit_of_work(tenant, key) as uow:
            assert uow._stored is not None and uow._stored.coins == 0
            pg_store._exchange_on = racing
            assert uow.reserve_quota(MONTH, 1, None) == 1
            assert sent == ["ROLLBACK BEGIN buddyrules_reserve COMMIT BEGIN buddyrules_lock"]
            state = uow.get_buddy()
            assert state is not None and state.coins == 9  # read again under the new lock
            uow.put_buddy(state.model_copy(update={"coins": 10}))
    finally:
        del pg_store._exchange_on
        other.close()
    buddy = pg_store.get_buddy(tenant, key)
    assert buddy is not None and buddy.coins == 10
    assert pg_store.quota_used(tenant, MONTH) == 1


def test_concurrent_sends_never_exceed_the_quota(postgres_dsn: str, postgres_schema: str) -> None:
    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, schema=postgres_schema, max_size=8)
    try:
        engine = _engine(store, quota=30)
        results: list[str] = []
        lock = threading.Lock()

        def writer(w: int) -> None:
            mine = Engine(store, tenant=engine.tenant, clock=_Clock(), monthly_event_quota=30)
            for i in range(8):
                try:
                    mine.send(_lesson(f"w{w}-{i}", user=f"u{w}"))
                    outcome = "applied"
                except EventQuotaExceeded:
                    outcome = "refused"
                with lock:
                    results.append(outcome)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results.count("applied") == 30
        assert results.count("refused") == 18
        assert engine.quota_used(MONTH) == 30
        assert sum(engine.buddy(f"u{w}").events_applied for w in range(6)) == 30
    finally:
        store.close()


def test_an_opening_that_fails_after_the_early_reservation_gives_it_back(
    postgres_dsn: str, postgres_schema: str
) -> None:
    from buddyrules.storage.postgres import PostgresStore

    store = PostgresStore(postgres_dsn, schema=postgres_schema, min_size=1, max_size=1)
    other = PostgresStore(postgres_dsn, schema=postgres_schema)
    try:
        engine = _engine(store, quota=None)
        engine.send(_lesson("warm-up"))
        pool = store._get_pool()
        conn = pool.getconn()
        conn.execute("SET lock_timeout = '50ms'")  # the store's only connection
        pool.putconn(conn)
        # Another process holds alice's unit: the next send's unit reserves early, then
        # times out waiting for her lock. The reservation was committed: it is given back.
        with (
            other.unit_of_work(engine.tenant, BuddyKey("alice", "student")),
            pytest.raises(StoreError, match="lock timeout"),
        ):
            engine.send(_lesson("e1"))
        assert engine.quota_used(MONTH) == 1
        assert not engine.send(_lesson("e1")).replayed
        assert engine.quota_used(MONTH) == 2
    finally:
        other.close()
        store.close()


def test_a_unit_told_its_event_reads_and_reserves_in_its_opening(pg_store: Any) -> None:
    # PostgresStore.unit_for_event: for an Engine that reads a send's buddy and receipt in
    # the unit rather than looking them up first (two round trips per send).
    tenant, key = "t-told-" + secrets.token_hex(4), BuddyKey("alice", "student")
    receipt = Receipt("e1", "fp", "alice", "student", {"coins": 3})
    sent = count_round_trips(pg_store)
    try:
        with pg_store.unit_for_event(tenant, key, "e1", (MONTH, 5)) as uow:
            assert uow.get_buddy() is None
            assert uow.get_receipt("e1") is None
            assert uow.reserve_quota(MONTH, 1, 5) == 1
            uow.put_buddy(BuddyState(user_id="alice", audience="student", rulebook_version="v"))
            uow.put_receipt(receipt)
        assert len(sent) == 2
        # A replay: the reservation the unit was not asked for is given back.
        with pg_store.unit_for_event(tenant, key, "e1", (MONTH, 5)) as uow:
            assert uow.get_receipt("e1") == receipt
        assert pg_store.quota_used(tenant, MONTH) == 1
        # Without quota or id it is a plain unit.
        sent.clear()
        with pg_store.unit_for_event(tenant, key, None, None) as uow:
            assert uow._early is None and uow._prefetched is None
        assert sent == ["BEGIN buddyrules_lock", "COMMIT"]
    finally:
        del pg_store._exchange_on
