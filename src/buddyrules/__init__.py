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
from buddyrules.state import BuddyState

__version__ = "0.1.0"

__all__ = [
    "BatchTooLarge",
    "BuddyRulesError",
    "BuddyState",
    "ConflictError",
    "Effects",
    "Event",
    "EventQuotaExceeded",
    "EventTypeNotRegistered",
    "EvolutionNotReady",
    "IdempotencyKeyConflict",
    "InsufficientBalance",
    "LedgerEntry",
    "LintFinding",
    "MissingAudience",
    "NoPublishedConfig",
    "Notification",
    "Outcome",
    "ProgressionNotSpendable",
    "ResourceNotFound",
    "Rulebook",
    "RulebookError",
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
]
