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
