"""Every SPEC §8 error code, produced through the Engine: code, status and wire envelope."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from buddyrules import BuddyRulesError
from buddyrules.service import Engine

from .helpers import Clock, engine_with, lesson, small, two_audiences


def _engine() -> Engine:
    engine = engine_with(clock=Clock(), quota=3)
    engine.hatch("alice")
    engine.send(lesson("used"))
    return engine


def _exhaust(engine: Engine) -> None:
    engine.send(lesson("q1"))
    engine.send(lesson("q2"))
    engine.send(lesson("q3"))


CASES: list[tuple[str, int, Callable[[Engine], object]]] = [
    ("validation_failed", 422, lambda e: e.send({"user_id": "alice"})),
    ("missing_audience", 400, lambda e: engine_with(two_audiences()).send(lesson("x"))),
    (
        "unknown_audience",
        400,
        lambda e: e.send(lesson("x", audience="parent")),
    ),
    ("event_type_not_registered", 400, lambda e: e.send({"user_id": "a", "type": "nope"})),
    ("batch_too_large", 400, lambda e: e.send_batch([lesson(None)] * 101)),
    ("idempotency_key_conflict", 409, lambda e: e.send(lesson("used", properties={"a": 1}))),
    ("event_quota_exceeded", 402, _exhaust),
    ("insufficient_balance", 400, lambda e: e.admin.spend_coins("alice", 10**6, reason="x")),
    (
        "progression_not_spendable",
        400,
        lambda e: e.admin.spend_tokens("alice", "xp", 1, reason="x"),
    ),
    ("evolution_not_ready", 409, lambda e: e.evolve("alice")),
    ("resource_not_found", 404, lambda e: e.buddy("ghost")),
    ("no_published_config", 409, lambda e: Engine(clock=Clock()).hatch("alice")),
    (
        "rulebook_invalid",
        422,
        lambda e: e.publish(
            {
                "name": "x",
                "audiences": ["a", "b"],
                "event_types": {"a": ["t"], "b": ["u"]},
                "badges": [
                    {"key": "p", "audience": "a", "when": "coins > 1"},
                    {"key": "q", "audience": "b", "when": "coins > 1", "requires": ["p"]},
                ],
            }
        ),
    ),
    ("conflict", 409, lambda e: e.hatch("alice")),
]


@pytest.mark.parametrize(("code", "status", "call"), CASES, ids=[c[0] for c in CASES])
def test_every_error_code(code: str, status: int, call: Callable[[Engine], object]) -> None:
    engine = _engine()
    with pytest.raises(BuddyRulesError) as info:
        call(engine)
    error = info.value
    assert (error.code, error.status) == (code, status)
    wire = error.to_wire()
    assert set(wire) == {"error"}
    assert wire["error"]["code"] == code
    assert isinstance(wire["error"]["message"], str) and wire["error"]["message"]
    assert isinstance(wire["error"]["details"], dict)


def test_the_cases_cover_every_spec_code() -> None:
    assert {c[0] for c in CASES} == {
        "validation_failed",
        "missing_audience",
        "unknown_audience",
        "event_type_not_registered",
        "batch_too_large",
        "idempotency_key_conflict",
        "event_quota_exceeded",
        "insufficient_balance",
        "progression_not_spendable",
        "evolution_not_ready",
        "resource_not_found",
        "no_published_config",
        "rulebook_invalid",
        "conflict",
    }


def test_quota_error_details_are_machine_readable() -> None:
    engine = engine_with(small(auto_hatch=True), quota=0)
    with pytest.raises(BuddyRulesError) as info:
        engine.send(lesson("e1"))
    details = info.value.to_wire()["error"]["details"]
    assert details["reset_at"] == "2024-06-01T00:00:00+00:00" and details["limit"] == 0
