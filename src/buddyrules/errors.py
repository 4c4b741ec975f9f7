"""Typed errors with stable codes (SPEC §8).

Every error raised by buddyrules is a :class:`BuddyRulesError` subclass carrying a stable
``code``, an HTTP-style ``status``, a human ``message`` and machine-readable ``details``.
The wire envelope is ``{"error": {"code", "message", "details"}}``.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "BatchTooLarge",
    "BuddyRulesError",
    "ConflictError",
    "EventQuotaExceeded",
    "EventTypeNotRegistered",
    "EvolutionNotReady",
    "IdempotencyKeyConflict",
    "InsufficientBalance",
    "MissingAudience",
    "NoPublishedConfig",
    "ProgressionNotSpendable",
    "ResourceNotFound",
    "RulebookError",
    "StoreError",
    "UnknownAudience",
    "ValidationFailed",
    "error_for_code",
]


class BuddyRulesError(Exception):
    """Base class of every buddyrules error.

    Subclasses fix ``code`` and ``status``; instances carry a message and details.
    """

    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = dict(details or {})

    def to_wire(self) -> dict[str, Any]:
        """Return the wire envelope ``{"error": {"code", "message", "details"}}``."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class ValidationFailed(BuddyRulesError):
    """An event (or other input) has the wrong shape; ``details["fields"]`` names the paths."""

    code = "validation_failed"
    status = 422


class MissingAudience(BuddyRulesError):
    """The event omitted ``audience`` while the rulebook configures two or more."""

    code = "missing_audience"
    status = 400


class UnknownAudience(BuddyRulesError):
    """The event names an audience the rulebook does not configure."""

    code = "unknown_audience"
    status = 400


class EventTypeNotRegistered(BuddyRulesError):
    """The event type is not registered for the resolved audience."""

    code = "event_type_not_registered"
    status = 400


class BatchTooLarge(BuddyRulesError):
    """A batch holds more than 100 events."""

    code = "batch_too_large"
    status = 400


class IdempotencyKeyConflict(BuddyRulesError):
    """An ``event_id`` was reused with a different payload."""

    code = "idempotency_key_conflict"
    status = 409


class EventQuotaExceeded(BuddyRulesError):
    """The tenant's monthly event quota is used up; ``details["reset_at"]`` says when it resets."""

    code = "event_quota_exceeded"
    status = 402


class InsufficientBalance(BuddyRulesError):
    """A spend would take a balance below zero."""

    code = "insufficient_balance"
    status = 400


class ProgressionNotSpendable(BuddyRulesError):
    """A progression (earn-only) token cannot be spent."""

    code = "progression_not_spendable"
    status = 400


class EvolutionNotReady(BuddyRulesError):
    """The next evolution stage's condition does not hold."""

    code = "evolution_not_ready"
    status = 409


class ResourceNotFound(BuddyRulesError):
    """A buddy, rulebook version or other named resource does not exist."""

    code = "resource_not_found"
    status = 404


class NoPublishedConfig(BuddyRulesError):
    """No rulebook is published for the tenant."""

    code = "no_published_config"
    status = 409


class RulebookError(BuddyRulesError):
    """A rulebook is invalid. ``problems`` lists every problem found.

    Each problem is a dict ``{"path": "coin_rules[2].when", "message": ..., "column": int|None}``.
    """

    code = "rulebook_invalid"
    status = 422

    def __init__(self, problems: list[dict[str, Any]], message: str | None = None) -> None:
        self.problems = problems
        if message is None:
            lines = [_format_problem(p) for p in problems]
            message = f"rulebook is invalid ({len(problems)} problem(s)):\n" + "\n".join(
                f"  - {line}" for line in lines
            )
        super().__init__(message, {"problems": problems})


def _format_problem(problem: dict[str, Any]) -> str:
    where = str(problem.get("path") or "<root>")
    column = problem.get("column")
    if column is not None:
        where += f" (column {column})"
    return f"{where}: {problem.get('message', '')}"


class ConflictError(BuddyRulesError):
    """A state conflict, e.g. a duplicate resource or an invalid lifecycle transition."""

    code = "conflict"
    status = 409


class StoreError(BuddyRulesError):
    """A storage failure (database unavailable, busy past the retry bound, ...)."""

    code = "internal_error"
    status = 500


_BY_CODE: dict[str, type[BuddyRulesError]] = {
    cls.code: cls
    for cls in (
        ValidationFailed,
        MissingAudience,
        UnknownAudience,
        EventTypeNotRegistered,
        BatchTooLarge,
        IdempotencyKeyConflict,
        EventQuotaExceeded,
        InsufficientBalance,
        ProgressionNotSpendable,
        EvolutionNotReady,
        ResourceNotFound,
        NoPublishedConfig,
        ConflictError,
    )
}


def error_for_code(code: str) -> type[BuddyRulesError]:
    """Return the exception class for a stable error code (``BuddyRulesError`` if unknown)."""
    if code == RulebookError.code:
        return RulebookError
    return _BY_CODE.get(code, BuddyRulesError)
