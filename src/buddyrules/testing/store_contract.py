"""The store contract suite: what every :class:`~buddyrules.storage.Store` adapter must do.

Use it by subclassing :class:`StoreContract` in a test module and implementing
:meth:`StoreContract.make_store`; pytest collects the subclass (its name must start with
``Test``) and runs every contract test against a fresh store::

    from buddyrules.testing.store_contract import StoreContract

    class TestMyStore(StoreContract):
        def make_store(self):
            return MyStore("postgresql://...")

Each test works in fresh, randomly named tenants, so a store backed by a shared database
does not need to be emptied between tests. Class attributes tune the suite:

* ``parallel_units`` (default True): units for different buddies can be open at the same
  time. A store that serialises all writers (one SQLite file) sets it to False, which skips
  the one test that needs it;
* ``threads`` (default 8): how many threads the concurrency tests start.

This module imports pytest; :mod:`buddyrules.testing` itself does not.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from buddyrules.errors import ConflictError
from buddyrules.state import BuddyState, PathState, RuleUsage, StreakState
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    Receipt,
    RulebookRecord,
    Store,
)

__all__ = ["StoreContract"]

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
AUDIENCE = "student"
_JOIN_TIMEOUT = 60.0


class _Boom(Exception):
    """Raised inside a unit to make it roll back."""


def _state(user_id: str, audience: str = AUDIENCE, **changes: Any) -> BuddyState:
    return BuddyState(user_id=user_id, audience=audience, rulebook_version="v1", **changes)


def _rich_state(user_id: str) -> BuddyState:
    return _state(
        user_id,
        timezone="Europe/Paris",
        hatched_at=AT,
        stage=2,
        coins=1234,
        tokens={"gems": 5, "xp": 700},
        skills={"grammar": 48},
        badges=("first_lesson", "week_warrior"),
        badges_ready=("scholar",),
        counters={"lesson_completed": 12, "quiz_passed": 3},
        streaks={
            "daily_lesson": StreakState(count=4, best=9, last_period=738900, milestones_paid=(7,))
        },
        rule_usage={
            "lesson_coins": RuleUsage(day=738900, day_total=30, week=105557, week_total=90, times=9)
        },
        paths={
            "basics": PathState(
                unlocked=("greetings",), completed=(), sub_steps_done=("greetings/hello",)
            )
        },
        gates=("bonus_lesson",),
        decay_applied={"decay[0]": 105557},
        evolution_notified=2,
        last_event_at=AT + timedelta(hours=3),
        events_applied=15,
    )


def _receipt(event_id: str, user_id: str, fingerprint: str = "fp-1") -> Receipt:
    return Receipt(
        event_id=event_id,
        fingerprint=fingerprint,
        user_id=user_id,
        audience=AUDIENCE,
        effects={
            "coins": 15,
            "badges_awarded": ["first_lesson"],
            "tokens": ["xp:25"],
            "streak_milestones": [{"streak": "daily_lesson", "count": 7}],
            "debug_reason": None,
            "replayed": False,
        },
    )


def _ledger(user_id: str, amount: int, balance: int, reason: str = "rule:x") -> LedgerRecord:
    return LedgerRecord(
        user_id=user_id,
        audience=AUDIENCE,
        currency="coins",
        amount=amount,
        balance_after=balance,
        reason=reason,
        reference="evt-1",
        at=AT,
    )


def _message(user_id: str, kind: str, n: int = 0) -> OutboxMessage:
    return OutboxMessage(
        type=kind,
        user_id=user_id,
        audience=AUDIENCE,
        payload={"n": n, "nested": {"a": [1, 2]}},
        at=AT,
    )


def _run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads; re-raise the first failure."""
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(_JOIN_TIMEOUT)
        assert not t.is_alive(), "a thread did not finish (deadlock?)"
    if errors:
        raise errors[0]


class StoreContract:
    """Contract tests for a :class:`~buddyrules.storage.Store`; subclass as ``TestXxx``.

    Implement :meth:`make_store` (or override the ``store`` fixture). Every test gets a new
    store from it and closes it afterwards.
    """

    parallel_units: ClassVar[bool] = True
    threads: ClassVar[int] = 8

    def make_store(self) -> Store:
        """Return a new store to test (override this)."""
        raise NotImplementedError("subclass StoreContract and implement make_store()")

    @pytest.fixture
    def store(self) -> Iterator[Store]:
        """A fresh store from :meth:`make_store`, closed after the test."""
        store = self.make_store()
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def tenant(self) -> str:
        """A tenant name no other test uses."""
        return f"contract-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def other_tenant(self) -> str:
        """A second, distinct tenant."""
        return f"contract-{uuid.uuid4().hex[:12]}"

    # -- units: atomicity -----------------------------------------------------------------

    def test_unit_commits_everything_together(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            assert uow.key == key
            assert uow.get_buddy() is None
            uow.put_buddy(_state("alice", coins=10))
            uow.put_receipt(_receipt("e1", "alice"))
            uow.append_ledger([_ledger("alice", 10, 10), _ledger("alice", 5, 15)])
            uow.append_outbox(
                [_message("alice", "coins.earned", 1), _message("alice", "badge.awarded", 2)]
            )
        buddy = store.get_buddy(tenant, key)
        assert buddy is not None and buddy.coins == 10
        assert store.get_receipt(tenant, "e1") == _receipt("e1", "alice")
        ledger = store.ledger(tenant, key)
        assert [(e.amount, e.balance_after) for e in ledger] == [(10, 10), (5, 15)]
        assert all(e.id > 0 for e in ledger) and ledger[0].id < ledger[1].id
        pending = store.outbox_pending(tenant)
        assert [(m.type, m.payload["n"]) for m in pending] == [
            ("coins.earned", 1),
            ("badge.awarded", 2),
        ]
        assert len({m.id for m in pending}) == 2 and all(m.id > 0 for m in pending)

    def test_unit_rolls_back_everything_on_error(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=1))
        with pytest.raises(_Boom), store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=999))
            uow.put_receipt(_receipt("e1", "alice"))
            uow.append_ledger([_ledger("alice", 998, 999)])
            uow.append_outbox([_message("alice", "coins.earned")])
            raise _Boom
        buddy = store.get_buddy(tenant, key)
        assert buddy is not None and buddy.coins == 1
        assert store.get_receipt(tenant, "e1") is None
        assert store.ledger(tenant) == []
        assert store.outbox_pending(tenant) == []
        # The key is free again after a rollback, and the receipt id is unused.
        with store.unit_of_work(tenant, key) as uow:
            uow.put_receipt(_receipt("e1", "alice"))
        assert store.get_receipt(tenant, "e1") is not None

    def test_unit_reads_its_own_writes(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=7))
            buddy = uow.get_buddy()
            assert buddy is not None and buddy.coins == 7
            uow.put_receipt(_receipt("e1", "alice"))
            assert uow.get_receipt("e1") == _receipt("e1", "alice")
            uow.put_buddy(_state("alice", coins=8))
        buddy = store.get_buddy(tenant, key)
        assert buddy is not None and buddy.coins == 8

    def test_uncommitted_writes_are_invisible_to_other_threads(
        self, store: Store, tenant: str
    ) -> None:
        key = BuddyKey("alice", AUDIENCE)
        seen: dict[str, Any] = {}

        def look() -> None:
            seen["buddy"] = store.get_buddy(tenant, key)
            seen["receipt"] = store.get_receipt(tenant, "e1")
            seen["ledger"] = store.ledger(tenant)
            seen["outbox"] = store.outbox_pending(tenant)
            seen["list"] = list(store.list_buddies(tenant))

        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=3))
            uow.put_receipt(_receipt("e1", "alice"))
            uow.append_ledger([_ledger("alice", 3, 3)])
            uow.append_outbox([_message("alice", "coins.earned")])
            reader = threading.Thread(target=look)
            reader.start()
            reader.join(_JOIN_TIMEOUT)
            assert not reader.is_alive(), "a read blocked on an open unit"
        assert seen == {"buddy": None, "receipt": None, "ledger": [], "outbox": [], "list": []}
        assert store.get_buddy(tenant, key) is not None

    def test_state_round_trips_exactly(self, store: Store, tenant: str) -> None:
        state = _rich_state("alice")
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(state)
        assert store.get_buddy(tenant, key) == state
        assert list(store.list_buddies(tenant)) == [state]
        assert store.export_states(tenant) == [state]
        with store.unit_of_work(tenant, key) as uow:
            assert uow.get_buddy() == state

    def test_put_buddy_of_another_key_is_a_conflict(self, store: Store, tenant: str) -> None:
        with (
            pytest.raises(ConflictError),
            store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow,
        ):
            uow.put_buddy(_state("bob"))
        assert store.get_buddy(tenant, BuddyKey("bob", AUDIENCE)) is None
        assert store.get_buddy(tenant, BuddyKey("alice", AUDIENCE)) is None

    # -- receipts -------------------------------------------------------------------------

    def test_receipt_round_trips(self, store: Store, tenant: str) -> None:
        receipt = _receipt("evt-ü-1", "alice", fingerprint="f" * 64)
        with store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow:
            uow.put_receipt(receipt)
        assert store.get_receipt(tenant, "evt-ü-1") == receipt
        assert store.get_receipt(tenant, "evt-missing") is None

    def test_lookup_reads_what_single_reads_read(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        alice, bob, carol = (BuddyKey(u, AUDIENCE) for u in ("alice", "bob", "carol"))
        with store.unit_of_work(tenant, alice) as uow:
            uow.put_buddy(_rich_state("alice"))
            uow.put_receipt(_receipt("e1", "alice"))
        with store.unit_of_work(tenant, bob) as uow:
            uow.put_buddy(_state("bob", coins=7))
            uow.put_receipt(_receipt("e2", "bob", fingerprint="fp-2"))
        keys = [alice, carol, bob, alice]  # carol has no buddy; alice twice
        ids = ["e2", "missing", "e1", "e2"]
        buddies, receipts = store.lookup(tenant, keys, ids)
        assert buddies == {k: s for k in keys if (s := store.get_buddy(tenant, k)) is not None}
        assert set(buddies) == {alice, bob}
        assert receipts == {i: r for i in ids if (r := store.get_receipt(tenant, i)) is not None}
        assert set(receipts) == {"e1", "e2"}
        assert store.lookup(tenant, [], []) == ({}, {})
        assert store.lookup(tenant, [alice], []) == ({alice: _rich_state("alice")}, {})
        assert store.lookup(tenant, [], ["e1"]) == ({}, {"e1": _receipt("e1", "alice")})
        assert store.lookup(other_tenant, keys, ids) == ({}, {})

    def test_a_receipt_id_is_unique_per_tenant(self, store: Store, tenant: str) -> None:
        with store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow:
            uow.put_receipt(_receipt("e1", "alice"))
        with (
            pytest.raises(ConflictError),
            store.unit_of_work(tenant, BuddyKey("bob", AUDIENCE)) as uow,
        ):
            uow.put_buddy(_state("bob", coins=5))
            uow.append_ledger([_ledger("bob", 5, 5)])
            uow.put_receipt(_receipt("e1", "bob", fingerprint="fp-2"))
        # Nothing of the failed unit is kept.
        assert store.get_buddy(tenant, BuddyKey("bob", AUDIENCE)) is None
        assert store.ledger(tenant) == []
        receipt = store.get_receipt(tenant, "e1")
        assert receipt is not None and receipt.user_id == "alice" and receipt.fingerprint == "fp-1"

    def test_a_receipt_id_twice_in_one_unit_is_a_conflict(self, store: Store, tenant: str) -> None:
        with (
            pytest.raises(ConflictError),
            store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow,
        ):
            uow.put_buddy(_state("alice"))
            uow.put_receipt(_receipt("e1", "alice"))
            uow.put_receipt(_receipt("e1", "alice", fingerprint="fp-2"))
        assert store.get_receipt(tenant, "e1") is None
        assert store.get_buddy(tenant, BuddyKey("alice", AUDIENCE)) is None

    def test_one_receipt_wins_across_concurrent_units_of_different_buddies(
        self, store: Store, tenant: str
    ) -> None:
        n = self.threads
        barrier = threading.Barrier(n)
        won: list[str] = []
        lost: list[str] = []

        def attempt(i: int) -> None:
            user = f"user-{i}"
            barrier.wait(_JOIN_TIMEOUT)
            try:
                with store.unit_of_work(tenant, BuddyKey(user, AUDIENCE)) as uow:
                    uow.put_buddy(_state(user, coins=i))
                    uow.put_receipt(_receipt("shared", user))
            except ConflictError:
                lost.append(user)
            else:
                won.append(user)

        _run_threads(n, attempt)
        assert len(won) == 1 and len(lost) == n - 1
        receipt = store.get_receipt(tenant, "shared")
        assert receipt is not None and receipt.user_id == won[0]
        assert [s.user_id for s in store.list_buddies(tenant)] == won

    # -- buddies --------------------------------------------------------------------------

    def test_one_buddy_per_key_when_hatched_concurrently(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        barrier = threading.Barrier(self.threads)
        hatched: list[int] = []

        def hatch(i: int) -> None:
            barrier.wait(_JOIN_TIMEOUT)
            with store.unit_of_work(tenant, key) as uow:
                if uow.get_buddy() is None:
                    uow.put_buddy(_state("alice", coins=i))
                    hatched.append(i)

        _run_threads(self.threads, hatch)
        assert len(hatched) == 1
        buddies = list(store.list_buddies(tenant))
        assert len(buddies) == 1 and buddies[0].coins == hatched[0]

    def test_buddies_are_keyed_by_user_and_audience(self, store: Store, tenant: str) -> None:
        for user, audience in [
            ("bob", "teacher"),
            ("alice", "teacher"),
            ("bob", "student"),
            ("alice", "student"),
        ]:
            with store.unit_of_work(tenant, BuddyKey(user, audience)) as uow:
                uow.put_buddy(_state(user, audience))
        pairs = [(s.user_id, s.audience) for s in store.list_buddies(tenant)]
        assert pairs == [
            ("alice", "student"),
            ("alice", "teacher"),
            ("bob", "student"),
            ("bob", "teacher"),
        ]
        assert [s.audience for s in store.list_buddies(tenant, "bob")] == ["student", "teacher"]
        assert list(store.list_buddies(tenant, "carol")) == []
        assert store.get_buddy(tenant, BuddyKey("bob", "teacher")) is not None
        assert store.get_buddy(tenant, BuddyKey("carol", "teacher")) is None

    def test_put_buddy_replaces_the_state(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        for coins in (1, 2, 3):
            with store.unit_of_work(tenant, key) as uow:
                uow.put_buddy(_state("alice", coins=coins))
        states = store.export_states(tenant)
        assert len(states) == 1 and states[0].coins == 3

    # -- locking --------------------------------------------------------------------------

    def test_units_of_one_buddy_serialise(self, store: Store, tenant: str) -> None:
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=0))
        rounds = 25
        inside = [0]
        most = [0]
        guard = threading.Lock()

        def work(_: int) -> None:
            for _round in range(rounds):
                with store.unit_of_work(tenant, key) as uow:
                    with guard:
                        inside[0] += 1
                        most[0] = max(most[0], inside[0])
                    state = uow.get_buddy()
                    assert state is not None
                    uow.put_buddy(state.model_copy(update={"coins": state.coins + 1}))
                    with guard:
                        inside[0] -= 1

        _run_threads(self.threads, work)
        buddy = store.get_buddy(tenant, key)
        assert buddy is not None and buddy.coins == self.threads * rounds
        assert most[0] == 1

    def test_units_of_different_buddies_run_in_parallel(self, store: Store, tenant: str) -> None:
        if not self.parallel_units:
            pytest.skip("this store serialises all units (parallel_units = False)")
        alice_inside = threading.Event()
        bob_inside = threading.Event()
        alice_saw_bob = threading.Event()

        def alice(_: int) -> None:
            with store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow:
                uow.put_buddy(_state("alice"))
                alice_inside.set()
                if bob_inside.wait(10):
                    alice_saw_bob.set()

        def bob(_: int) -> None:
            assert alice_inside.wait(_JOIN_TIMEOUT)
            with store.unit_of_work(tenant, BuddyKey("bob", AUDIENCE)) as uow:
                uow.put_buddy(_state("bob"))
                bob_inside.set()

        _run_threads(2, lambda i: alice(i) if i == 0 else bob(i))
        assert alice_saw_bob.is_set(), "bob's unit could not open while alice's was open"
        assert len(store.export_states(tenant)) == 2

    # -- quota ----------------------------------------------------------------------------

    def test_quota_reserve_limit_and_release(self, store: Store, tenant: str) -> None:
        month = "2024-05"
        assert store.quota_used(tenant, month) == 0
        assert store.reserve_quota(tenant, month, 3, 10) == 3
        assert store.reserve_quota(tenant, month, 7, 10) == 10
        assert store.reserve_quota(tenant, month, 1, 10) is None
        assert store.quota_used(tenant, month) == 10
        store.release_quota(tenant, month, 4)
        assert store.quota_used(tenant, month) == 6
        store.release_quota(tenant, month, 100)
        assert store.quota_used(tenant, month) == 0
        assert store.reserve_quota(tenant, month, 5, None) == 5
        assert store.reserve_quota(tenant, month, 10**6, None) == 10**6 + 5

    def test_quota_reservation_is_all_or_nothing(self, store: Store, tenant: str) -> None:
        month = "2024-05"
        assert store.reserve_quota(tenant, month, 8, 10) == 8
        assert store.reserve_quota(tenant, month, 3, 10) is None
        assert store.quota_used(tenant, month) == 8
        assert store.reserve_quota(tenant, month, 2, 10) == 10

    def test_quota_is_per_month_and_tenant(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        assert store.reserve_quota(tenant, "2024-05", 4, 5) == 4
        assert store.reserve_quota(tenant, "2024-06", 5, 5) == 5
        assert store.reserve_quota(other_tenant, "2024-05", 5, 5) == 5
        assert store.quota_used(tenant, "2024-05") == 4
        store.release_quota(other_tenant, "2024-05", 5)
        assert store.quota_used(tenant, "2024-05") == 4

    def test_quota_is_atomic_under_threads(self, store: Store, tenant: str) -> None:
        month = "2024-05"
        limit = 300
        attempts = 60
        granted: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(self.threads)

        def reserve(_: int) -> None:
            barrier.wait(_JOIN_TIMEOUT)
            mine = 0
            for _attempt in range(attempts):
                if store.reserve_quota(tenant, month, 1, limit) is not None:
                    mine += 1
            with lock:
                granted.append(mine)

        _run_threads(self.threads, reserve)
        assert sum(granted) == min(limit, self.threads * attempts)
        assert store.quota_used(tenant, month) == sum(granted)

        def release(i: int) -> None:
            barrier.wait(_JOIN_TIMEOUT)
            for _n in range(granted[i]):
                store.release_quota(tenant, month, 1)

        _run_threads(self.threads, release)
        assert store.quota_used(tenant, month) == 0

    # -- rulebooks ------------------------------------------------------------------------

    def test_rulebook_records(self, store: Store, tenant: str) -> None:
        document = {"name": "demo", "audiences": ["student"], "event_types": {"student": ["a_b"]}}
        draft = RulebookRecord("v1", "demo", "draft", document)
        published = RulebookRecord(
            "v2", "demo", "published", document, sequence=1, published_at=AT, extra={"by": "me"}
        )
        assert store.get_rulebook(tenant, "v1") is None
        assert store.list_rulebooks(tenant) == []
        store.put_rulebook(tenant, draft)
        store.put_rulebook(tenant, published)
        assert store.get_rulebook(tenant, "v1") == draft
        assert store.get_rulebook(tenant, "v2") == published
        assert [r.version for r in store.list_rulebooks(tenant)] == ["v1", "v2"]
        # Replacing a record changes it in place (the list keeps its order).
        promoted = RulebookRecord("v1", "demo", "published", document, sequence=2, published_at=AT)
        store.put_rulebook(tenant, promoted)
        archived = RulebookRecord("v2", "demo", "archived", document, sequence=1, published_at=AT)
        store.put_rulebook(tenant, archived)
        assert store.list_rulebooks(tenant) == [promoted, archived]

    # -- ledger and outbox ----------------------------------------------------------------

    def test_ledger_keeps_write_order(self, store: Store, tenant: str) -> None:
        alice, bob = BuddyKey("alice", AUDIENCE), BuddyKey("bob", AUDIENCE)
        plan = [(alice, 1), (bob, 2), (alice, 3), (bob, 4), (alice, 5)]
        for key, amount in plan:
            with store.unit_of_work(tenant, key) as uow:
                uow.append_ledger([_ledger(key.user_id, amount, amount * 10, f"r{amount}")])
        everything = store.ledger(tenant)
        assert [e.amount for e in everything] == [1, 2, 3, 4, 5]
        assert [e.id for e in everything] == sorted(e.id for e in everything)
        assert len({e.id for e in everything}) == 5
        assert [e.amount for e in store.ledger(tenant, alice)] == [1, 3, 5]
        assert [e.amount for e in store.ledger(tenant, bob)] == [2, 4]
        assert store.ledger(tenant, BuddyKey("carol", AUDIENCE)) == []
        first = everything[0]
        assert (first.user_id, first.audience, first.currency, first.reason, first.reference) == (
            "alice",
            AUDIENCE,
            "coins",
            "r1",
            "evt-1",
        )
        assert first.balance_after == 10 and first.at == AT

    def test_outbox_order_limit_and_ack(self, store: Store, tenant: str) -> None:
        for i in range(5):
            user = "alice" if i % 2 == 0 else "bob"
            with store.unit_of_work(tenant, BuddyKey(user, AUDIENCE)) as uow:
                uow.append_outbox([_message(user, "coins.earned", i)])
        pending = store.outbox_pending(tenant)
        assert [m.payload["n"] for m in pending] == [0, 1, 2, 3, 4]
        assert pending[0].payload == {"n": 0, "nested": {"a": [1, 2]}}
        assert (pending[1].type, pending[1].user_id, pending[1].audience, pending[1].at) == (
            "coins.earned",
            "bob",
            AUDIENCE,
            AT,
        )
        assert [m.payload["n"] for m in store.outbox_pending(tenant, limit=3)] == [0, 1, 2]
        ids = [m.id for m in pending]
        assert store.outbox_ack(tenant, ids[:2]) == 2
        assert store.outbox_ack(tenant, ids[:2]) == 0
        assert store.outbox_ack(tenant, [max(ids) + 1000]) == 0
        assert [m.id for m in store.outbox_pending(tenant)] == ids[2:]
        assert store.outbox_ack(tenant, [ids[4], ids[2]]) == 2
        assert [m.id for m in store.outbox_pending(tenant)] == [ids[3]]

    # -- tenants --------------------------------------------------------------------------

    def test_tenants_never_see_each_other(
        self, store: Store, tenant: str, other_tenant: str
    ) -> None:
        key = BuddyKey("alice", AUDIENCE)
        with store.unit_of_work(tenant, key) as uow:
            uow.put_buddy(_state("alice", coins=5))
            uow.put_receipt(_receipt("e1", "alice"))
            uow.append_ledger([_ledger("alice", 5, 5)])
            uow.append_outbox([_message("alice", "coins.earned")])
        store.reserve_quota(tenant, "2024-05", 3, None)
        store.put_rulebook(tenant, RulebookRecord("v1", "demo", "published", {}, sequence=1))

        assert store.get_buddy(other_tenant, key) is None
        assert list(store.list_buddies(other_tenant)) == []
        assert list(store.list_buddies(other_tenant, "alice")) == []
        assert store.export_states(other_tenant) == []
        assert store.get_receipt(other_tenant, "e1") is None
        assert store.quota_used(other_tenant, "2024-05") == 0
        assert store.get_rulebook(other_tenant, "v1") is None
        assert store.list_rulebooks(other_tenant) == []
        assert store.ledger(other_tenant) == []
        assert store.ledger(other_tenant, key) == []
        assert store.outbox_pending(other_tenant) == []
        ids = [m.id for m in store.outbox_pending(tenant)]
        assert store.outbox_ack(other_tenant, ids) == 0
        assert [m.id for m in store.outbox_pending(tenant)] == ids

        # The same key and event id are free in the other tenant.
        with store.unit_of_work(other_tenant, key) as uow:
            assert uow.get_buddy() is None
            assert uow.get_receipt("e1") is None
            uow.put_buddy(_state("alice", coins=100))
            uow.put_receipt(_receipt("e1", "alice", fingerprint="other"))
        mine = store.get_buddy(tenant, key)
        assert mine is not None and mine.coins == 5
        receipt = store.get_receipt(tenant, "e1")
        assert receipt is not None and receipt.fingerprint == "fp-1"

    # -- groups and snapshots -------------------------------------------------------------

    def test_group_keeps_each_unit_atomic(self, store: Store, tenant: str) -> None:
        with store.group(tenant):
            with store.unit_of_work(tenant, BuddyKey("u1", AUDIENCE)) as uow:
                uow.put_buddy(_state("u1"))
                uow.put_receipt(_receipt("e1", "u1"))
            with pytest.raises(_Boom), store.unit_of_work(tenant, BuddyKey("u2", AUDIENCE)) as uow:
                uow.put_buddy(_state("u2"))
                uow.put_receipt(_receipt("e2", "u2"))
                raise _Boom
            with (
                pytest.raises(ConflictError),
                store.unit_of_work(tenant, BuddyKey("u3", AUDIENCE)) as uow,
            ):
                uow.put_buddy(_state("u3"))
                uow.put_receipt(_receipt("e1", "u3"))
            with store.unit_of_work(tenant, BuddyKey("u4", AUDIENCE)) as uow:
                uow.put_buddy(_state("u4"))
                uow.put_receipt(_receipt("e4", "u4"))
        assert [s.user_id for s in store.export_states(tenant)] == ["u1", "u4"]
        assert store.get_receipt(tenant, "e2") is None
        receipt = store.get_receipt(tenant, "e1")
        assert receipt is not None and receipt.user_id == "u1"

    def test_export_states_is_a_sorted_snapshot(self, store: Store, tenant: str) -> None:
        for user in ("carol", "alice", "bob"):
            with store.unit_of_work(tenant, BuddyKey(user, AUDIENCE)) as uow:
                uow.put_buddy(_state(user, coins=len(user)))
        snapshot = store.export_states(tenant)
        assert [s.user_id for s in snapshot] == ["alice", "bob", "carol"]
        with store.unit_of_work(tenant, BuddyKey("alice", AUDIENCE)) as uow:
            uow.put_buddy(_state("alice", coins=1000))
        assert snapshot[0].coins == 5
        assert store.export_states(tenant)[0].coins == 1000
