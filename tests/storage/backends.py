"""Picklable descriptions of a store, so child processes can open the same database."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from buddyrules.storage import Store
from buddyrules.storage.sqlite import SQLiteStore

ROOT = Path(__file__).resolve().parents[2]
LANGUAGE = ROOT / "rules_examples" / "language_learning"
FIXED_NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    """The clock every engine in these tests uses (hatch times are then reproducible)."""
    return FIXED_NOW


@dataclass(frozen=True)
class StoreSpec:
    """Where a store lives: an SQLite file, or a PostgreSQL DSN and schema."""

    kind: str
    target: str
    schema: str | None = None

    def open(self, **options: Any) -> Store:
        """A new store object on that database (the caller closes it)."""
        if self.kind == "sqlite":
            return SQLiteStore(self.target, **options)
        from buddyrules.storage.postgres import PostgresStore

        assert self.schema is not None
        return PostgresStore(self.target, schema=self.schema, **options)


def language_events() -> list[dict[str, Any]]:
    """The language-learning example's event log, in order."""
    lines = (LANGUAGE / "events.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
