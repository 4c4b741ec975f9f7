"""buddyrules: an in-process gamification rule engine.

Events in, effects out: a deterministic core (:func:`evaluate`) plus a service
(:class:`Engine`) that validates, deduplicates, serialises and stores.
"""

from buddyrules.effects import Effects
from buddyrules.engine import LedgerEntry, Notification, Outcome, advance, evaluate, new_buddy
from buddyrules.errors import (
    BatchTooLarge,
    BuddyRulesError,
    ConflictError,
    EventQuotaExceeded,
    EventTypeNotRegistered,
    EvolutionNotReady,
    IdempotencyKeyConflict,
    InsufficientBalance,
    MissingAudience,
    NoPublishedConfig,
    ProgressionNotSpendable,
    ResourceNotFound,
    RulebookError,
    StoreError,
    UnknownAudience,
    ValidationFailed,
)
from buddyrules.events import Event
from buddyrules.rulebook import (
    LintFinding,
    Rulebook,
    lint_rulebook,
    load_rulebook,
    rulebook_json_schema,
)
from buddyrules.service import Engine, GateResult
from buddyrules.simulate import SimulationReport, simulate
from buddyrules.state import BuddyState
from buddyrules.storage.memory import MemoryStore
from buddyrules.storage.postgres import PostgresStore
from buddyrules.storage.sqlite import SQLiteStore

__version__ = "0.1.0"

__all__ = [
    "BatchTooLarge",
    "BuddyRulesError",
    "BuddyState",
    "ConflictError",
    "Effects",
    "Engine",
    "Event",
    "EventQuotaExceeded",
    "EventTypeNotRegistered",
    "EvolutionNotReady",
    "GateResult",
    "IdempotencyKeyConflict",
    "InsufficientBalance",
    "LedgerEntry",
    "LintFinding",
    "MemoryStore",
    "MissingAudience",
    "NoPublishedConfig",
    "Notification",
    "Outcome",
    "PostgresStore",
    "ProgressionNotSpendable",
    "ResourceNotFound",
    "Rulebook",
    "RulebookError",
    "SQLiteStore",
    "SimulationReport",
    "StoreError",
    "UnknownAudience",
    "ValidationFailed",
    "__version__",
    "advance",
    "evaluate",
    "lint_rulebook",
    "load_rulebook",
    "new_buddy",
    "rulebook_json_schema",
    "simulate",
]
