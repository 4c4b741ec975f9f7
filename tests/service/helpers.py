"""Shared helpers for the service tests: a controllable clock, small rulebooks, stores."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from buddyrules.errors import StoreError
from buddyrules.rulebook import Rulebook, load_rulebook
from buddyrules.service import Engine
from buddyrules.storage.memory import MemoryStore, MemoryUnitOfWork, _Tenant

ROOT = Path(__file__).resolve().parents[2]
LANGUAGE = ROOT / "rules_examples" / "language_learning" / "rulebook.yaml"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


class Clock:
    """A fixed clock the test moves by hand (thread-safe)."""

    def __init__(self, start: datetime = T0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        return self._now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self._now = self._now + timedelta(**delta)
            return self._now

    def set(self, when: datetime) -> None:
        self._now = when


def language() -> Rulebook:
    """The language-learning example rulebook."""
    return load_rulebook(LANGUAGE)


def small(**changes: Any) -> Rulebook:
    """A small one-audience rulebook; ``changes`` override top-level keys."""
    doc: dict[str, Any] = {
        "name": "small",
        "audiences": ["student"],
        "event_types": {"student": ["lesson_completed", "quiz_passed", "daily_login"]},
        "tokens": [
            {"key": "gems", "kind": "primary"},
            {"key": "xp", "kind": "progression"},
        ],
        "coin_rules": [
            {"key": "lesson", "event": "lesson_completed", "amount": 3},
            {"key": "first_ten", "event": "lesson_completed", "amount": 20, "total_limit": 10},
        ],
        "token_rules": [{"event": "quiz_passed", "token": "gems", "amount": 2}],
        "badges": [
            {"key": "first", "when": 'event_count("lesson_completed") >= 1'},
            {
                "key": "hundred",
                "when": 'event_count("lesson_completed") >= 100',
                "reward": {"coins": 50},
            },
            {
                "key": "thousand",
                "when": 'event_count("lesson_completed") >= 1000',
                "reward": {"coins": 500, "tokens": {"gems": 7}},
            },
        ],
    }
    doc.update(changes)
    return load_rulebook(doc)


def two_audiences() -> Rulebook:
    """Students and teachers, with different event types."""
    return load_rulebook(
        {
            "name": "school",
            "audiences": ["student", "teacher"],
            "event_types": {"student": ["lesson_completed"], "teacher": ["class_taught"]},
            "coin_rules": [
                {"key": "lesson", "event": "lesson_completed", "amount": 5},
                {"key": "class", "event": "class_taught", "amount": 7},
            ],
        }
    )


def engine_with(
    rulebook: Rulebook | None = None,
    *,
    clock: Clock | None = None,
    store: MemoryStore | None = None,
    tenant: str = "default",
    quota: int | None = None,
) -> Engine:
    """An Engine with ``rulebook`` published (the language example by default)."""
    engine = Engine(store, tenant=tenant, clock=clock or Clock(), monthly_event_quota=quota)
    engine.publish(rulebook if rulebook is not None else language())
    return engine


def lesson(event_id: str | None, user: str = "alice", **extra: Any) -> dict[str, Any]:
    """A lesson_completed event dict."""
    ev: dict[str, Any] = {"user_id": user, "type": "lesson_completed"}
    if event_id is not None:
        ev["event_id"] = event_id
    ev.update(extra)
    return ev


class FaultyStore(MemoryStore):
    """A MemoryStore whose unit fails on commit for chosen event ids (or always)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_all = False
        self.fail_ids: set[str] = set()
        self.groups = 0

    def _commit(self, data: _Tenant, unit: MemoryUnitOfWork) -> None:
        if self.fail_all or self.fail_ids.intersection(unit._receipts):
            raise StoreError("injected fault: the disk is on fire")
        super()._commit(data, unit)

    def group(self, tenant: str) -> Any:
        self.groups += 1
        return super().group(tenant)
