"""SQLiteStore's schema version 2: packed ledger and outbox rows, compact receipts.

A unit's ledger entries (and its messages) for one buddy share one row, whose ids are
``id .. id + n - 1``; the store contract still sees one record per entry and message, with
ids that are unique, increasing and never reused. A file written with schema version 1 is
upgraded in place: its rows keep their ids, acknowledged messages stay acknowledged.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from buddyrules import load_rulebook
from buddyrules.effects import Effects
from buddyrules.errors import ConflictError
from buddyrules.service import Engine
from buddyrules.state import BuddyState
from buddyrules.storage import BuddyKey, LedgerRecord, OutboxMessage, Receipt
from buddyrules.storage.sqlite import MIGRATIONS, SQLiteStore

T = "tenant-a"
OTHER = "tenant-b"
AUDIENCE = "student"
AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _key(user_id: str) -> BuddyKey:
    return BuddyKey(user_id, AUDIENCE)


def _ledger(
    user_id: str, amount: int, reference: str | None = "evt-1", at: datetime = AT
) -> LedgerRecord:
    return LedgerRecord(
        user_id, AUDIENCE, "coins", amount, amount * 10, f"r{amount}", reference, at
    )


def _message(user_id: str, n: int, at: datetime = AT) -> OutboxMessage:
    return OutboxMessage("coins.earned", user_id, AUDIENCE, {"n": n, "nested": {"a": [n]}}, at)


def _rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()


# -- packed rows -----------------------------------------------------------------------------


def test_a_units_entries_share_a_row_and_keep_one_id_each(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store()
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.append_ledger([_ledger("alice", 1), _ledger("alice", 2)])
        # Another reference, another time (same instant, another offset) and another buddy
        # each start a row of their own.
        uow.append_ledger([_ledger("alice", 3, reference="evt-2")])
        paris = AT.astimezone(timezone(timedelta(hours=2)))
        uow.append_ledger([_ledger("alice", 4, reference="evt-2", at=paris)])
        uow.append_ledger([_ledger("bob", 5, reference="evt-2", at=paris)])
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.append_ledger([_ledger("alice", 6)])
    assert [row[6] for row in _rows(sqlite_path, "ledger")] == [2, 1, 1, 1, 1]
    everything = store.ledger(T)
    assert [e.amount for e in everything] == [1, 2, 3, 4, 5, 6]
    assert [e.id for e in everything] == [1, 2, 3, 4, 5, 6]
    assert everything[3].at == AT and everything[3].at.utcoffset() == timedelta(hours=2)
    assert everything[1] == LedgerRecord("alice", AUDIENCE, "coins", 2, 20, "r2", "evt-1", AT, id=2)
    assert [e.id for e in store.ledger(T, _key("alice"))] == [1, 2, 3, 4, 6]
    assert [e.id for e in store.ledger(T, _key("bob"))] == [5]
    assert store.ledger(OTHER) == []


def test_the_engines_rows_are_one_per_event(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store()
    engine = Engine(store, clock=lambda: AT)
    engine.publish(
        load_rulebook(
            {
                "name": "packed",
                "audiences": ["player"],
                "event_types": {"player": ["scored"]},
                "auto_hatch": True,
                "tokens": [{"key": "xp", "kind": "progression"}],
                "coin_rules": [{"key": "point", "event": "scored", "amount": 1}],
                "token_rules": [{"event": "scored", "token": "xp", "amount": 2}],
                "badges": [{"key": "first", "when": "event_count('scored') >= 1"}],
            }
        )
    )
    engine.send({"event_id": "e1", "user_id": "u1", "type": "scored", "occurred_at": AT})
    engine.send_batch(
        [{"event_id": f"e{i}", "user_id": "u1", "type": "scored"} for i in range(2, 5)]
    )
    assert len(_rows(sqlite_path, "ledger")) == 4
    assert len(_rows(sqlite_path, "outbox")) == 4
    ledger = engine.ledger()
    assert [(e.currency, e.balance_after, e.reference) for e in ledger[:2]] == [
        ("coins", 1, "e1"),
        ("token:xp", 2, "e1"),
    ]
    assert [e.id for e in ledger] == list(range(1, 9))
    pending = engine.outbox.pending(limit=100)
    # The hatch message, the first event's three notifications, two for each later event.
    assert [m.type for m in pending[:4]] == [
        "buddy.hatched",
        "coins.earned",
        "token.earned",
        "badge.awarded",
    ]
    assert [m.id for m in pending] == list(range(1, 11))
    # A replay reads the compact receipt back as the effects it stored.
    replay = engine.send({"event_id": "e1", "user_id": "u1", "type": "scored", "occurred_at": AT})
    assert replay.replayed and replay.coins == 1 and replay.badges_awarded == ("first",)


def test_acknowledging_messages_of_a_packed_row_one_by_one(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.append_outbox([_message("alice", n) for n in range(4)])
    with store.unit_of_work(T, _key("bob")) as uow:
        uow.append_outbox([_message("bob", 4)])
    pending = store.outbox_pending(T)
    assert [(m.id, m.payload["n"], m.user_id) for m in pending] == [
        (1, 0, "alice"),
        (2, 1, "alice"),
        (3, 2, "alice"),
        (4, 3, "alice"),
        (5, 4, "bob"),
    ]
    assert pending[0].payload == {"n": 0, "nested": {"a": [0]}}
    assert pending[4] == OutboxMessage("coins.earned", "bob", AUDIENCE, pending[4].payload, AT, 5)
    # The limit can end inside a row.
    assert [m.id for m in store.outbox_pending(T, limit=2)] == [1, 2]
    assert store.outbox_pending(T, limit=0) == []
    assert store.outbox_ack(T, [2]) == 1
    assert store.outbox_ack(T, [2]) == 0
    assert store.outbox_ack(OTHER, [1, 3]) == 0
    assert store.outbox_ack(T, [0, 6, 10**6, -3]) == 0
    assert [m.id for m in store.outbox_pending(T)] == [1, 3, 4, 5]
    assert [m.id for m in store.outbox_pending(T, limit=2)] == [1, 3]
    assert store.outbox_ack(T, [4, 1, 5, 4]) == 3
    assert [m.id for m in store.outbox_pending(T)] == [3]
    assert store.outbox_ack(T, [3]) == 1
    assert store.outbox_pending(T) == []
    # Ids go on after the last row, acknowledged or not.
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.append_outbox([_message("alice", 9)])
    assert [m.id for m in store.outbox_pending(T)] == [6]


def test_long_runs_of_messages_are_split_at_62(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store()
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.append_outbox([_message("alice", n) for n in range(100)])
        uow.append_notifications(  # type: ignore[attr-defined]
            [("badge.awarded", {"n": 100 + n}) for n in range(70)], AT
        )
    assert [row[5] for row in _rows(sqlite_path, "outbox")] == [62, 38, 62, 8]
    pending = store.outbox_pending(T, limit=1000)
    assert [m.payload["n"] for m in pending] == list(range(170))
    assert [m.id for m in pending] == list(range(1, 171))
    assert store.outbox_ack(T, range(1, 171, 2)) == 85
    assert [m.id for m in store.outbox_pending(T, limit=1000)] == list(range(2, 171, 2))


def test_acks_inside_a_group_see_the_groups_rows(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    store = make_sqlite_store()
    with store.group(T):
        with store.unit_of_work(T, _key("alice")) as uow:
            uow.append_outbox([_message("alice", 0), _message("alice", 1)])
        assert store.outbox_ack(T, [1]) == 1
    assert [m.id for m in store.outbox_pending(T)] == [2]


def test_receipts_with_the_engines_keys_are_stored_as_values_only(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore]
) -> None:
    store = make_sqlite_store()
    wire = Effects(coins=3, badges_awarded=("first",), rulebook_version="v1").to_wire(
        include_trace=False
    )
    other = {"coins": 1, "debug_reason": None}
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.put_receipt(Receipt("e1", "fp", "alice", AUDIENCE, wire))
        uow.put_receipt(Receipt("e2", "fp", "alice", AUDIENCE, other))
        # Inside the unit, before anything is written: as put.
        assert uow.get_receipt("e1") == Receipt("e1", "fp", "alice", AUDIENCE, wire)
    with sqlite3.connect(sqlite_path) as db:
        stored = dict(db.execute("SELECT event_id, effects FROM receipts").fetchall())
    assert stored["e1"].startswith("[3,")
    assert stored["e2"] == '{"coins":1,"debug_reason":null}'
    first = store.get_receipt(T, "e1")
    assert first is not None and first.effects == wire and list(first.effects) == list(wire)
    assert store.get_receipt(T, "e2") == Receipt("e2", "fp", "alice", AUDIENCE, other)
    _, found = store.lookup(T, [], ["e1", "e2", "e3"])
    assert found["e1"].effects == wire and found["e2"].effects == other and "e3" not in found


# -- upgrading a version 1 file ------------------------------------------------------------


class _Version1Store(SQLiteStore):
    migrations = MIGRATIONS[:1]


def _version_1_file(path: Path) -> None:
    """A file as schema version 1 left it: one row per entry and message."""
    with _Version1Store(path):
        pass
    state = BuddyState(user_id="alice", audience=AUDIENCE, rulebook_version="v1", coins=3)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute(
            "INSERT INTO buddies VALUES (?, 'alice', ?, ?)", (T, AUDIENCE, state.model_dump_json())
        )
        db.execute(
            "INSERT INTO receipts VALUES (?, 'e1', 'fp', 'alice', ?, ?)",
            (T, AUDIENCE, '{"coins":1,"badges_awarded":[],"replayed":false}'),
        )
        db.execute("INSERT INTO quota VALUES (?, '2024-05', 7)", (T,))
        ledger = [
            (T, "alice", "coins", 1, 1, "rule:a", "e1"),
            (T, "bob", "token:xp", 2, 2, "rule:b", None),
            (OTHER, "alice", "coins", 5, 5, 'say "hi"', "e9"),
            (T, "alice", "coins", -1, 0, "spend", "admin:1"),
        ]
        db.executemany(
            "INSERT INTO ledger (tenant, user_id, audience, currency, amount, balance_after, "
            "reason, reference, at) VALUES (?, ?, 'student', ?, ?, ?, ?, ?, ?)",
            [(*row, AT.isoformat()) for row in ledger],
        )
        outbox = [
            (T, "coins.earned", "alice", '{"n":0,"nested":{"a":[1,2.5,"é"]}}', None),
            (T, "badge.awarded", "bob", '{"n":1}', AT.isoformat()),
            (OTHER, "coins.earned", "alice", '{"n":2}', None),
            (T, "coins.earned", "alice", '{"n":3}', None),
        ]
        db.executemany(
            "INSERT INTO outbox (tenant, type, user_id, audience, payload, at, acked_at) "
            "VALUES (?, ?, ?, 'student', ?, ?, ?)",
            [
                (t, kind, user, payload, AT.isoformat(), acked)
                for t, kind, user, payload, acked in outbox
            ],
        )
    finally:
        db.close()


def test_a_version_1_file_is_upgraded_and_keeps_its_ids(sqlite_path: Path) -> None:
    _version_1_file(sqlite_path)
    with SQLiteStore(sqlite_path) as store:
        assert store.schema_version() == MIGRATIONS[-1].version == 2
        ledger = store.ledger(T)
        assert [(e.id, e.user_id, e.currency, e.amount, e.reference) for e in ledger] == [
            (1, "alice", "coins", 1, "e1"),
            (2, "bob", "token:xp", 2, None),
            (4, "alice", "coins", -1, "admin:1"),
        ]
        assert ledger[0] == LedgerRecord("alice", AUDIENCE, "coins", 1, 1, "rule:a", "e1", AT, 1)
        assert [e.reason for e in store.ledger(OTHER)] == ['say "hi"']
        assert [e.id for e in store.ledger(T, _key("alice"))] == [1, 4]
        pending = store.outbox_pending(T)
        assert [(m.id, m.type, m.payload) for m in pending] == [
            (1, "coins.earned", {"n": 0, "nested": {"a": [1, 2.5, "é"]}}),
            (4, "coins.earned", {"n": 3}),
        ]
        assert pending[0].at == AT and pending[0].user_id == "alice"
        assert [m.id for m in store.outbox_pending(OTHER)] == [3]
        receipt = store.get_receipt(T, "e1")
        assert receipt == Receipt(
            "e1", "fp", "alice", AUDIENCE, {"coins": 1, "badges_awarded": [], "replayed": False}
        )
        buddy = store.get_buddy(T, _key("alice"))
        assert buddy is not None and buddy.coins == 3
        assert store.quota_used(T, "2024-05") == 7
        # New rows follow the old ids, and old rows are acknowledged as before.
        with store.unit_of_work(T, _key("alice")) as uow:
            uow.append_ledger([_ledger("alice", 7), _ledger("alice", 8)])
            uow.append_outbox([_message("alice", 5), _message("alice", 6)])
        assert [e.id for e in store.ledger(T)] == [1, 2, 4, 5, 6]
        assert store.outbox_ack(T, [1, 2, 3]) == 1
        assert [m.id for m in store.outbox_pending(T)] == [4, 5, 6]
    with sqlite3.connect(sqlite_path) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        versions = [row[0] for row in db.execute("SELECT version FROM schema_version")]
    assert {"ledger_by_buddy", "outbox_pending"} <= indexes
    assert "ledger_by_tenant" not in indexes
    assert versions == [1, 2]


def test_an_engine_carries_on_with_an_upgraded_file(sqlite_path: Path) -> None:
    with _Version1Store(sqlite_path) as old:
        Engine(old, clock=lambda: AT).publish(
            load_rulebook(
                {
                    "name": "old",
                    "audiences": ["player"],
                    "event_types": {"player": ["scored"]},
                    "auto_hatch": True,
                    "coin_rules": [{"key": "point", "event": "scored", "amount": 1}],
                }
            )
        )
    with SQLiteStore(sqlite_path) as store:
        engine = Engine(store, clock=lambda: AT)
        engine.send({"event_id": "e1", "user_id": "u1", "type": "scored"})
        assert engine.buddy("u1").coins == 1
        assert [e.balance_after for e in engine.ledger()] == [1]
    with SQLiteStore(sqlite_path) as again:
        assert again.schema_version() == 2
        replay = Engine(again, clock=lambda: AT).send(
            {"event_id": "e1", "user_id": "u1", "type": "scored"}
        )
        assert replay.replayed and replay.coins == 1


@pytest.mark.parametrize("acked", [True, False])
def test_upgrading_keeps_an_acknowledged_outbox_acknowledged(
    sqlite_path: Path, acked: bool
) -> None:
    with _Version1Store(sqlite_path):
        pass
    with sqlite3.connect(sqlite_path) as db:
        db.execute(
            "INSERT INTO outbox (tenant, type, user_id, audience, payload, at, acked_at) "
            "VALUES (?, 't', 'u', 'a', '{}', ?, ?)",
            (T, AT.isoformat(), AT.isoformat() if acked else None),
        )
    with SQLiteStore(sqlite_path) as store:
        assert [m.id for m in store.outbox_pending(T)] == ([] if acked else [1])
        assert store.outbox_ack(T, [1]) == (0 if acked else 1)


@pytest.mark.parametrize(
    "effects",
    [
        Effects(coins=3, badges_awarded=("first",), tokens=("xp:2",), rulebook_version="v1"),
        Effects(
            coins=-1,
            badges_ready=("scholar",),
            evolution_ready=True,
            streak_milestones=({"streak": "daily", "count": 7},),
            debug_reason="no_active_buddies_for_user",
            skills=({"skill": "grammar", "level": 2},),
            streaks=({"streak": "daily", "count": 7},),
            evolved_to=2,
            paths=({"path": "p", "step": "s"},),
            problems=({"where": "coin_rules[0]", "error": "é"},),
            replayed=True,
            trace=({"rule": "not stored"},),
        ),
    ],
)
def test_effects_receipts_store_what_put_receipt_stores(
    sqlite_path: Path, make_sqlite_store: Callable[..., SQLiteStore], effects: Effects
) -> None:
    store = make_sqlite_store()
    wire = effects.to_wire(include_trace=False)
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.put_receipt(Receipt("by-wire", "fp", "alice", AUDIENCE, wire))
        uow.put_effects_receipt("by-effects", "fp", effects)  # type: ignore[attr-defined]
        assert uow.get_receipt("by-effects") == Receipt("by-effects", "fp", "alice", AUDIENCE, wire)
        with pytest.raises(ConflictError):
            uow.put_effects_receipt("by-wire", "fp", effects)  # type: ignore[attr-defined]
    with sqlite3.connect(sqlite_path) as db:
        stored = dict(db.execute("SELECT event_id, effects FROM receipts").fetchall())
    assert stored["by-effects"] == stored["by-wire"]
    assert store.get_receipt(T, "by-effects") == Receipt(
        "by-effects", "fp", "alice", AUDIENCE, wire
    )
    with store.unit_of_work(T, _key("bob")) as uow, pytest.raises(ConflictError):
        uow.put_effects_receipt("by-effects", "fp", effects)  # type: ignore[attr-defined]


def test_effects_receipts_with_mappings_pydantic_cannot_encode(
    make_sqlite_store: Callable[..., SQLiteStore],
) -> None:
    from collections import UserDict

    effects = Effects(coins=1, streak_milestones=(UserDict({"streak": "daily", "count": 7}),))
    store = make_sqlite_store()
    with store.unit_of_work(T, _key("alice")) as uow:
        uow.put_effects_receipt("e1", "fp", effects)  # type: ignore[attr-defined]
    receipt = store.get_receipt(T, "e1")
    assert receipt is not None
    assert receipt.effects == effects.to_wire(include_trace=False)
    assert receipt.effects["streak_milestones"] == [{"streak": "daily", "count": 7}]
