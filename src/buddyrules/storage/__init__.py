"""Storage: the ports (protocols) and the adapters (memory, SQLite, PostgreSQL)."""

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

__all__ = [
    "BuddyKey",
    "LedgerRecord",
    "OutboxMessage",
    "Receipt",
    "RulebookRecord",
    "RulebookStatus",
    "Store",
    "UnitOfWork",
]
