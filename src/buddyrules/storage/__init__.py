"""Storage: the ports (protocols) and the adapters (memory, SQLite, PostgreSQL)."""

from buddyrules.storage.memory import MemoryStore
from buddyrules.storage.postgres import PostgresStore
from buddyrules.storage.protocols import (
    BuddyKey,
    LedgerRecord,
    OutboxMessage,
    Receipt,
    RulebookRecord,
    RulebookStatus,
    Store,
    UnitOfWork,
)
from buddyrules.storage.sqlite import SQLiteStore

__all__ = [
    "BuddyKey",
    "LedgerRecord",
    "MemoryStore",
    "OutboxMessage",
    "PostgresStore",
    "Receipt",
    "RulebookRecord",
    "RulebookStatus",
    "SQLiteStore",
    "Store",
    "UnitOfWork",
]
