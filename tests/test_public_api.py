"""The public surface is exactly what we intend (httpx-style)."""

from __future__ import annotations

import buddyrules

INTENDED = {
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
}


def test_all_is_exactly_the_intended_public_names() -> None:
    assert set(buddyrules.__all__) == INTENDED
    assert len(buddyrules.__all__) == len(set(buddyrules.__all__))


def test_every_public_name_exists_and_is_documented() -> None:
    for name in buddyrules.__all__:
        obj = getattr(buddyrules, name)
        if name != "__version__":
            assert obj.__doc__, f"{name} has no docstring"


def test_error_codes_are_stable() -> None:
    expected = {
        "ValidationFailed": ("validation_failed", 422),
        "MissingAudience": ("missing_audience", 400),
        "UnknownAudience": ("unknown_audience", 400),
        "EventTypeNotRegistered": ("event_type_not_registered", 400),
        "BatchTooLarge": ("batch_too_large", 400),
        "IdempotencyKeyConflict": ("idempotency_key_conflict", 409),
        "EventQuotaExceeded": ("event_quota_exceeded", 402),
        "InsufficientBalance": ("insufficient_balance", 400),
        "ProgressionNotSpendable": ("progression_not_spendable", 400),
        "EvolutionNotReady": ("evolution_not_ready", 409),
        "ResourceNotFound": ("resource_not_found", 404),
        "NoPublishedConfig": ("no_published_config", 409),
        "RulebookError": ("rulebook_invalid", 422),
        "ConflictError": ("conflict", 409),
    }
    for name, (code, status) in expected.items():
        cls = getattr(buddyrules, name)
        assert issubclass(cls, buddyrules.BuddyRulesError)
        assert (cls.code, cls.status) == (code, status)
    err = buddyrules.InsufficientBalance("no", {"balance": 1})
    assert err.to_wire() == {
        "error": {"code": "insufficient_balance", "message": "no", "details": {"balance": 1}}
    }
