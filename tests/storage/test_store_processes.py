"""Real processes on one database: no lost update, no double apply, and crash safety.

Children are started with the ``spawn`` context (a fresh interpreter, as separate servers or
workers would be) and open their own store on the same SQLite file or PostgreSQL schema.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from buddyrules import load_rulebook
from buddyrules.service import Engine
from buddyrules.storage import BuddyKey
from buddyrules.storage.memory import MemoryStore

from .backends import FIXED_NOW, LANGUAGE, StoreSpec, fixed_clock, language_events

PROCESSES = 4
PER_PROCESS = 500
TOTAL = PROCESSES * PER_PROCESS

# Every total is independent of the order events arrive in, so the serial result is known.
COUNTING_RULEBOOK: dict[str, Any] = {
    "name": "counting",
    "audiences": ["player"],
    "event_types": {"player": ["scored"]},
    "auto_hatch": True,
    "tokens": [{"key": "xp", "kind": "progression"}, {"key": "gems", "kind": "primary"}],
    "coin_rules": [{"key": "point", "event": "scored", "amount": 1}],
    "token_rules": [{"event": "scored", "token": "xp", "amount": 2}],
    "badges": [
        {"key": "ten", "when": "event_count('scored') >= 10", "reward": {"coins": 100}},
        {
            "key": "thousand",
            "when": "event_count('scored') >= 1000",
            "reward": {"tokens": {"gems": 5}},
        },
        {"key": "all", "when": f"event_count('scored') >= {TOTAL}", "reward": {"coins": 7}},
    ],
}


def _scored(i: int) -> dict[str, Any]:
    return {"event_id": f"e{i}", "user_id": "hero", "type": "scored", "occurred_at": FIXED_NOW}


def _send_own_and_neighbours(spec: StoreSpec, index: int) -> tuple[int, int]:
    """Child: send this process's events, each followed by one of the next process's."""
    store = spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        own = range(index, TOTAL, PROCESSES)
        theirs = range((index + 1) % PROCESSES, TOTAL, PROCESSES)
        applied = replayed = 0
        for mine, other in zip(own, theirs, strict=True):
            for i in (mine, other):
                if engine.send(_scored(i)).replayed:
                    replayed += 1
                else:
                    applied += 1
        return applied, replayed
    finally:
        store.close()


def test_processes_racing_on_one_buddy_give_the_serial_totals(store_spec: StoreSpec) -> None:
    store = store_spec.open()
    try:
        Engine(store, clock=fixed_clock).publish(load_rulebook(COUNTING_RULEBOOK))
    finally:
        store.close()

    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        results = pool.starmap(
            _send_own_and_neighbours, [(store_spec, i) for i in range(PROCESSES)], chunksize=1
        )
    # Every event was applied exactly once and replayed exactly once.
    assert sum(a for a, _ in results) == TOTAL
    assert sum(r for _, r in results) == TOTAL

    store = store_spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        hero = engine.buddy("hero")
        assert hero.counters == {"scored": TOTAL}
        assert hero.events_applied == TOTAL
        assert hero.coins == TOTAL + 100 + 7
        assert hero.tokens == {"xp": 2 * TOTAL, "gems": 5}
        assert sorted(hero.badges) == ["all", "ten", "thousand"]
        assert engine.quota_used() == TOTAL  # replays use no quota
        ledger = store.ledger("default", BuddyKey("hero", "player"))
        assert sum(e.amount for e in ledger if e.currency == "coins") == hero.coins
        assert sum(e.amount for e in ledger if e.currency == "token:xp") == 2 * TOTAL
        # Balances were read under the lock: each coin entry continues the previous one.
        coins = [e for e in ledger if e.currency == "coins"]
        assert [e.balance_after for e in coins] == sorted(e.balance_after for e in coins)
        awarded = Counter(
            m.payload.get("badge")
            for m in store.outbox_pending("default", limit=100_000)
            if m.type == "badge.awarded"
        )
        assert awarded == {"ten": 1, "thousand": 1, "all": 1}
    finally:
        store.close()


# -- a crash in the middle of a stream of batches ---------------------------------------------

BATCH = 25


def _batches() -> list[list[dict[str, Any]]]:
    events = language_events()
    return [events[i : i + BATCH] for i in range(0, len(events), BATCH)]


def _stream_batches(spec: StoreSpec, progress: str) -> None:
    """Child: send every batch in order, recording how many are done (until killed)."""
    store = spec.open()
    engine = Engine(store, clock=fixed_clock)
    for n, batch in enumerate(_batches(), start=1):
        engine.send_batch(batch)
        Path(progress).write_text(str(n))
    store.close()


def _snapshot(engine: Engine) -> dict[str, Any]:
    """What must match between an interrupted and an uninterrupted run."""
    ledger = [
        (e.user_id, e.audience, e.currency, e.amount, e.balance_after, e.reason, e.reference)
        for e in engine.ledger()
    ]
    outbox = Counter(
        (m.type, m.user_id, repr(sorted(m.payload.items())))
        for m in engine.outbox.pending(limit=1_000_000)
    )
    by_buddy: dict[tuple[str, str], list[Any]] = {}
    for row in ledger:
        by_buddy.setdefault((row[0], row[1]), []).append(row)
    return {"states": engine.export_states(), "ledger": by_buddy, "outbox": outbox}


def test_a_killed_writer_loses_and_doubles_nothing(store_spec: StoreSpec, tmp_path: Path) -> None:
    rulebook = load_rulebook(LANGUAGE / "rulebook.yaml")
    batches = _batches()

    reference = Engine(MemoryStore(), clock=fixed_clock)
    reference.publish(rulebook)
    for batch in batches:
        reference.send_batch(batch)
    expected = _snapshot(reference)

    store = store_spec.open()
    try:
        Engine(store, clock=fixed_clock).publish(rulebook)
    finally:
        store.close()

    progress = tmp_path / "progress"
    context = multiprocessing.get_context("spawn")
    child = context.Process(target=_stream_batches, args=(store_spec, str(progress)))
    child.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and child.is_alive():
        done = int(progress.read_text() or 0) if progress.exists() else 0
        if done >= len(batches) // 4:
            break
        time.sleep(0.005)
    child.kill()  # SIGKILL: no cleanup, no rollback by the client
    child.join(30)
    done = int(progress.read_text() or 0) if progress.exists() else 0
    if child.exitcode != -9 or done >= len(batches):
        pytest.fail(f"the child was not killed mid-stream (exit {child.exitcode}, {done} done)")

    store = store_spec.open()
    try:
        engine = Engine(store, clock=fixed_clock)
        applied_before = engine.quota_used()
        assert applied_before >= done * BATCH
        for batch in batches:  # re-send everything, as a client that saw no answers would
            engine.send_batch(batch)
        assert _snapshot(engine) == expected
    finally:
        store.close()
