"""MemoryStore passes the store contract suite, plus what is specific to it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from buddyrules.errors import StoreError
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, Store, UnitOfWork
from buddyrules.storage.memory import MemoryStore
from buddyrules.testing.store_contract import StoreContract


class TestMemoryStore(StoreContract):
    """The whole contract, against a fresh MemoryStore per test."""

    def make_store(self) -> Store:
        return MemoryStore()


def test_memory_store_satisfies_the_protocols() -> None:
    store = MemoryStore()
    assert isinstance(store, Store)
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        assert isinstance(uow, UnitOfWork)


def test_a_unit_cannot_be_used_after_its_block() -> None:
    store = MemoryStore()
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        pass
    with pytest.raises(StoreError):
        uow.put_buddy(BuddyState(user_id="u", audience="a", rulebook_version="v"))
    assert store.get_buddy("t", BuddyKey("u", "a")) is None


def test_store_contract_is_reachable_lazily_from_buddyrules_testing() -> None:
    import buddyrules.testing as testing

    assert testing.StoreContract is StoreContract


def test_importing_buddyrules_testing_does_not_import_pytest_or_hypothesis() -> None:
    code = (
        "import sys, buddyrules.testing; "
        "assert 'pytest' not in sys.modules, 'pytest'; "
        "assert 'hypothesis' not in sys.modules, 'hypothesis'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_records_are_snapshots_not_references() -> None:
    from datetime import UTC, datetime

    from buddyrules.storage import OutboxMessage, Receipt

    at = datetime(2024, 5, 1, tzinfo=UTC)
    store = MemoryStore()
    effects: dict[str, object] = {"coins": 1, "badges_awarded": ["a"]}
    payload: dict[str, object] = {"when": at, "n": [1]}  # a datetime: not marshal-able
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        uow.put_receipt(Receipt("e1", "fp", "u", "a", effects))
        uow.append_outbox([OutboxMessage("x.y", "u", "a", payload, at)])
    effects["coins"] = 99
    payload["n"] = [2]
    receipt = store.get_receipt("t", "e1")
    assert receipt is not None and receipt.effects == {"coins": 1, "badges_awarded": ["a"]}
    (message,) = store.outbox_pending("t")
    assert message.payload == {"when": at, "n": [1]}
    message.payload["n"] = [3]
    assert store.outbox_pending("t")[0].payload == {"when": at, "n": [1]}


def _written(store: MemoryStore, at: object) -> None:
    """One unit through the Engine's fast path and one through the port's methods."""
    from buddyrules.effects import Effects
    from buddyrules.storage import LedgerRecord, OutboxMessage

    assert isinstance(at, __import__("datetime").datetime)
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        uow.put_effects_receipt("e1", "fp1", Effects(coins=5, badges_awarded=("b",)))
        uow.append_ledger_entries(
            [("coins", 5, 5, "rule:x"), ("token:gems", 1, 1, "rule:y")], "e1", at
        )
        uow.append_notifications([("coins.earned", {"amount": 5})], at)
    with store.unit_of_work("t", BuddyKey("v", "a")) as uow:
        uow.append_ledger([LedgerRecord("v", "a", "coins", 2, 2, "admin", "k", at)])
        uow.append_outbox([OutboxMessage("x.y", "v", "a", {"n": 1}, at)])


@pytest.mark.parametrize("zone", ["utc", "offset"])
def test_records_read_back_exactly_whatever_the_time_zone(zone: str) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    tz = UTC if zone == "utc" else timezone(timedelta(hours=2), "CEST")
    at = datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=tz)
    store = MemoryStore()
    _written(store, at)
    receipt = store.get_receipt("t", "e1")
    assert receipt is not None
    assert (receipt.fingerprint, receipt.user_id, receipt.audience) == ("fp1", "u", "a")
    assert receipt.effects["coins"] == 5 and receipt.effects["badges_awarded"] == ["b"]
    ledger = store.ledger("t")
    assert [(r.user_id, r.currency, r.amount, r.reason, r.reference) for r in ledger] == [
        ("u", "coins", 5, "rule:x", "e1"),
        ("u", "token:gems", 1, "rule:y", "e1"),
        ("v", "coins", 2, "admin", "k"),
    ]
    for record in ledger:
        assert record.at == at and record.at.tzinfo is at.tzinfo
    # Ids are consecutive inside a unit and across units, ledger and outbox sharing them.
    ids = [r.id for r in ledger]
    assert ids == sorted(ids) and ids[1] == ids[0] + 1
    assert [r.id for r in store.ledger("t", BuddyKey("v", "a"))] == [ids[2]]
    messages = store.outbox_pending("t")
    assert [(m.type, m.user_id, m.payload) for m in messages] == [
        ("coins.earned", "u", {"amount": 5}),
        ("x.y", "v", {"n": 1}),
    ]
    assert all(m.at == at and m.at.tzinfo is at.tzinfo for m in messages)
    assert len({m.id for m in messages} | set(ids)) == 5


def test_committed_records_are_not_containers_the_collector_tracks() -> None:
    """A store of many records must not make the cyclic collector run more often (see the
    module docstring): records in UTC with plain values are kept as bytes."""
    import gc
    from datetime import UTC, datetime

    store = MemoryStore()
    _written(store, datetime(2024, 5, 1, tzinfo=UTC))
    data = store._tenants["t"]
    records = [*data.receipts.values(), *data.ledger, *data.outbox.values()]
    assert len(records) == 5
    assert all(type(r) is bytes and not gc.is_tracked(r) for r in records)


def test_outbox_acks_by_id_across_packed_chunks() -> None:
    from datetime import UTC, datetime

    store = MemoryStore()
    at = datetime(2024, 5, 1, tzinfo=UTC)
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        uow.append_notifications([("a.one", {"i": 1}), ("a.two", {"i": 2})], at)
    with store.unit_of_work("t", BuddyKey("u", "a")) as uow:
        uow.append_notifications([("b.one", {"i": 3})], at)
    first, second, third = store.outbox_pending("t")
    assert store.outbox_ack("t", [second.id, second.id, 10**9]) == 1
    assert [m.id for m in store.outbox_pending("t")] == [first.id, third.id]
    assert store.outbox_pending("t", limit=1) == [store.outbox_pending("t")[0]]
    assert store.outbox_ack("t", [first.id, third.id]) == 2
    assert store.outbox_pending("t") == []
    assert store.outbox_ack("t", [first.id]) == 0
