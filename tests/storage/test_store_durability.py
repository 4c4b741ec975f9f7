"""Durable stores keep everything across a restart: a new store and a new Engine on the same
file or database see the same buddies, and a duplicate event returns the original effects."""

from __future__ import annotations

from typing import Any

import pytest

from buddyrules import load_rulebook
from buddyrules.errors import StoreError
from buddyrules.service import Engine
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey

from .backends import FIXED_NOW, LANGUAGE, StoreSpec, fixed_clock, language_events


def test_a_restarted_engine_sees_everything_and_replays_duplicates(store_spec: StoreSpec) -> None:
    events = language_events()[:240]
    rulebook = load_rulebook(LANGUAGE / "rulebook.yaml")

    store = store_spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        engine.publish(rulebook)
        first = [engine.send(e) for e in events[:40]]
        for start in range(40, 200, 40):
            first.extend(engine.send_batch(events[start : start + 40]))
        before = engine.export_states()
        ledger = engine.ledger()
        pending = engine.outbox.pending(limit=10_000)
        used = engine.quota_used()
    finally:
        store.close()
    assert before and ledger and pending and used == 200

    store = store_spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        assert engine.current_rulebook().version == rulebook.version
        assert engine.export_states() == before
        assert engine.ledger() == ledger
        assert engine.outbox.pending(limit=10_000) == pending
        assert engine.quota_used() == used

        # Duplicates after the restart: the stored effects, replayed, no rule runs again.
        again = [engine.send(events[i]) for i in (0, 17, 39)]
        again += engine.send_batch(events[150:200])
        originals = [first[i] for i in (0, 17, 39)] + first[150:200]
        assert all(e.replayed for e in again)
        for replay, original in zip(again, originals, strict=True):
            assert not original.replayed
            assert replay.to_wire() == {**original.to_wire(), "replayed": True}
        assert engine.export_states() == before
        assert engine.quota_used() == used

        # And the engine carries on where it stopped.
        engine.send_batch(events[200:240])
        assert engine.quota_used() == 240
    finally:
        store.close()


def test_a_batch_failing_at_event_k_keeps_the_events_before_it(
    store_spec: StoreSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    rulebook = load_rulebook(
        {
            "name": "tiny",
            "audiences": ["player"],
            "event_types": {"player": ["scored"]},
            "auto_hatch": True,
            "coin_rules": [{"key": "c", "event": "scored", "amount": 1}],
        }
    )
    batch = [
        {"event_id": f"b{i}", "user_id": user, "type": "scored", "occurred_at": FIXED_NOW}
        for i, user in enumerate(["u0", "u1", "boom", "u3"])
    ]
    store = store_spec.open()
    observer = store_spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        engine.publish(rulebook)
        unit_class: Any = type(store.unit_of_work("default", BuddyKey("x", "player")))
        real_put = unit_class.put_buddy

        def failing_put(self: Any, state: BuddyState) -> None:
            if state.user_id == "boom":
                raise StoreError("disk on fire")
            real_put(self, state)

        monkeypatch.setattr(unit_class, "put_buddy", failing_put)
        with pytest.raises(StoreError) as raised:
            engine.send_batch(batch)
        assert raised.value.details["index"] == 2
        assert raised.value.details["committed"] == [0, 1]
        # Committed for everyone (another store object on the same database sees them).
        assert [s.user_id for s in observer.export_states("default")] == ["u0", "u1"]
        assert observer.get_receipt("default", "b2") is None
        assert engine.quota_used() == 2  # the failed and the unapplied events were released

        monkeypatch.setattr(unit_class, "put_buddy", real_put)
        effects = engine.send_batch(batch)  # re-sending is safe: ids deduplicate
        assert [e.replayed for e in effects] == [True, True, False, False]
        assert [s.coins for s in observer.export_states("default")] == [1, 1, 1, 1]
        assert engine.quota_used() == 4
    finally:
        observer.close()
        store.close()
