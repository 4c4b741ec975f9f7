"""Tenant isolation: two tenants on one store never see each other's data."""

from __future__ import annotations

import pytest

from buddyrules import NoPublishedConfig, ResourceNotFound
from buddyrules.service import Engine
from buddyrules.storage.memory import MemoryStore

from .helpers import Clock, engine_with, language, lesson, small


def test_two_tenants_on_one_store_are_isolated() -> None:
    store = MemoryStore()
    a = engine_with(language(), store=store, tenant="acme", quota=10)
    b = Engine(store, tenant="globex", clock=Clock(), monthly_event_quota=10)

    with pytest.raises(NoPublishedConfig):
        b.send(lesson("e1"))
    a.send(lesson("e1"))
    b.publish(small(auto_hatch=True))

    # The same user and event id are independent in each tenant.
    effects_b = b.send(lesson("e1", properties={"other": True}))
    assert not effects_b.replayed and effects_b.coins == 23
    assert a.buddy("alice").coins == 35 and b.buddy("alice").coins == 23
    assert a.buddy("alice").rulebook_version == language().version
    assert b.buddy("alice").rulebook_version == small(auto_hatch=True).version

    a.hatch("only_in_a")
    with pytest.raises(ResourceNotFound):
        b.buddy("only_in_a")
    assert [s.user_id for s in a.export_states()] == ["alice", "only_in_a"]
    assert [s.user_id for s in b.export_states()] == ["alice"]

    assert a.quota_used() == 1 and b.quota_used() == 1
    assert [r.version for r in a.rulebook_versions()] == [language().version]
    assert [r.version for r in b.rulebook_versions()] == [small(auto_hatch=True).version]
    assert all(e.user_id == "alice" for e in b.ledger())
    assert {e.reference for e in a.ledger()} == {"e1"} and len(a.ledger()) != len(b.ledger())

    a_ids = [m.id for m in a.outbox.pending(1000)]
    b_ids = [m.id for m in b.outbox.pending(1000)]
    assert a_ids and b_ids and not set(a_ids) & set(b_ids)
    assert b.outbox.ack(a_ids) == 0
    assert [m.id for m in a.outbox.pending(1000)] == a_ids

    a.admin.earn_coins("alice", 5, reason="x", key="k")
    assert not b.admin.earn_coins("alice", 5, reason="x", key="k").replayed
