"""Concurrency: per-buddy serialisation, duplicates under threads, racing event ids."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from buddyrules import Effects, IdempotencyKeyConflict
from buddyrules.service import Engine

from .helpers import Clock, engine_with, lesson, small

THREADS = 8
EVENTS = 2000


def _events(user: str = "alice", prefix: str = "e") -> list[dict[str, Any]]:
    return [lesson(f"{prefix}{i}", user=user) for i in range(EVENTS)]


def _run(count: int, target: Callable[[int], None]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            target(i)
        except BaseException as exc:  # re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    if errors:
        raise errors[0]


def _serial_totals() -> tuple[int, dict[str, int], tuple[str, ...], int]:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    for ev in _events():
        engine.send(ev)
    state = engine.buddy("alice")
    return state.coins, dict(state.tokens), tuple(sorted(state.badges)), len(engine.ledger())


def _check_like_serial(engine: Engine) -> None:
    coins, tokens, badges, ledger_size = _serial_totals()
    state = engine.buddy("alice")
    assert state.coins == coins == 3 * EVENTS + 200 + 50 + 500
    assert dict(state.tokens) == tokens
    assert tuple(sorted(state.badges)) == badges == ("first", "hundred", "thousand")
    assert len(state.badges) == len(set(state.badges))
    assert state.events_applied == EVENTS
    assert state.counters["lesson_completed"] == EVENTS
    assert len(engine.ledger()) == ledger_size
    awarded = [m for m in engine.outbox.pending(100_000) if m.type == "badge.awarded"]
    assert sorted(m.payload["badge"] for m in awarded) == list(badges)
    assert engine.quota_used() == EVENTS


def test_threads_on_one_buddy_give_the_serial_totals() -> None:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    events = _events()

    def send(t: int) -> None:
        for ev in events[t::THREADS]:
            assert not engine.send(ev).replayed

    _run(THREADS, send)
    _check_like_serial(engine)


def test_every_event_sent_twice_concurrently_gives_the_same_totals() -> None:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    events = _events()
    chunks = [events[c::4] for c in range(4)]
    replayed = [0] * THREADS

    def send(t: int) -> None:
        chunk = chunks[t % 4] if t < 4 else list(reversed(chunks[t % 4]))
        for ev in chunk:
            if engine.send(ev).replayed:
                replayed[t] += 1

    _run(THREADS, send)
    assert sum(replayed) == EVENTS
    _check_like_serial(engine)


def test_batches_and_single_sends_of_the_same_ids_race_safely() -> None:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    events = _events()

    def send(t: int) -> None:
        if t % 2 == 0:
            for start in range(0, EVENTS, 100):
                engine.send_batch(events[start : start + 100])
        else:
            for ev in events:
                engine.send(ev)

    _run(4, send)
    _check_like_serial(engine)


def test_different_buddies_in_parallel_each_get_their_own_totals() -> None:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    per_user = 250

    def send(t: int) -> None:
        for i in range(per_user):
            engine.send(lesson(f"u{t}-{i}", user=f"user{t}"))

    _run(THREADS, send)
    for t in range(THREADS):
        state = engine.buddy(f"user{t}")
        assert state.coins == 3 * per_user + 200 + 50 and state.events_applied == per_user
    assert engine.quota_used() == THREADS * per_user


def _race_one_id(engine: Engine, event_id: str) -> list[Effects | IdempotencyKeyConflict]:
    outcomes: dict[int, Effects | IdempotencyKeyConflict] = {}

    def send(t: int) -> None:
        try:
            outcomes[t] = engine.send(lesson(event_id, user=f"user{t}"))
        except IdempotencyKeyConflict as exc:
            outcomes[t] = exc

    _run(THREADS, send)
    return [outcomes[t] for t in range(THREADS)]


def test_one_event_id_racing_across_buddies_is_applied_once() -> None:
    engine = engine_with(small(auto_hatch=True), clock=Clock())
    for round_ in range(20):
        outcomes = _race_one_id(engine, f"race-{round_}")
        applied = [o for o in outcomes if isinstance(o, Effects)]
        assert len(applied) == 1 and not applied[0].replayed
        assert sum(isinstance(o, IdempotencyKeyConflict) for o in outcomes) == THREADS - 1
    assert engine.quota_used() == 20
    assert sum(s.events_applied for s in engine.export_states()) == 20
