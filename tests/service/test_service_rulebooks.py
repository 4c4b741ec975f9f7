"""Rulebook lifecycle through the Engine: publish, drafts, versions, archive, migrate, hatch."""

from __future__ import annotations

import pytest

from buddyrules import (
    ConflictError,
    MissingAudience,
    NoPublishedConfig,
    ResourceNotFound,
    RulebookError,
    UnknownAudience,
    ValidationFailed,
    load_rulebook,
)
from buddyrules.service import Engine
from buddyrules.storage.memory import MemoryStore

from .helpers import T0, Clock, engine_with, language, lesson, small, two_audiences


def _lint_error_rulebook() -> dict[str, object]:
    return {
        "name": "broken",
        "audiences": ["student", "teacher"],
        "event_types": {"student": ["lesson_completed"], "teacher": ["class_taught"]},
        "badges": [
            {"key": "a", "audience": "student", "when": 'event_count("lesson_completed") >= 1'},
            {"key": "b", "audience": "teacher", "requires": ["a"], "when": "coins >= 0"},
        ],
    }


def test_publish_returns_the_version_and_is_idempotent() -> None:
    engine = Engine(clock=Clock())
    rb = language()
    assert engine.publish(rb) == rb.version
    assert engine.publish(rb) == rb.version
    (record,) = engine.rulebook_versions()
    assert (record.version, record.status, record.sequence, record.published_at) == (
        rb.version,
        "published",
        1,
        T0,
    )
    assert engine.current_rulebook() == rb


def test_publish_accepts_a_path_or_a_mapping() -> None:
    engine = Engine(clock=Clock())
    assert engine.publish("rules_examples/language_learning/rulebook.yaml") == language().version
    assert engine.publish(small().to_dict()) == small().version
    assert engine.current_rulebook().version == small().version


def test_publish_refuses_lint_errors() -> None:
    engine = Engine(clock=Clock())
    with pytest.raises(RulebookError) as info:
        engine.publish(_lint_error_rulebook())
    assert info.value.code == "rulebook_invalid" and info.value.status == 422
    assert info.value.problems[0]["path"] == "badges[1].requires"
    assert engine.rulebook_versions() == []
    # A draft may hold lint errors; it still cannot be published.
    version = engine.save_draft(_lint_error_rulebook())
    with pytest.raises(RulebookError):
        engine.publish(load_rulebook(_lint_error_rulebook()))
    assert engine.rulebook_versions()[0].version == version


def test_drafts_are_not_current_until_published() -> None:
    engine = engine_with(small())
    draft = engine.save_draft(language())
    assert engine.save_draft(language()) == draft
    assert [r.status for r in engine.rulebook_versions()] == ["published", "draft"]
    assert engine.current_rulebook().version == small().version
    engine.publish(language())
    assert engine.current_rulebook().version == draft
    assert [r.status for r in engine.rulebook_versions()] == ["published", "published"]
    with pytest.raises(ConflictError):
        engine.save_draft(language())


def test_archive_falls_back_to_the_previous_published_version() -> None:
    engine = engine_with(small())
    engine.publish(language())
    record = engine.archive(language().version)
    assert record.status == "archived"
    assert engine.current_rulebook().version == small().version
    assert engine.archive(language().version).status == "archived"  # idempotent
    engine.archive(small().version)
    with pytest.raises(NoPublishedConfig):
        engine.current_rulebook()
    with pytest.raises(NoPublishedConfig):
        engine.send(lesson("e1"))
    with pytest.raises(ResourceNotFound):
        engine.archive("0000000000000000")
    # Publishing an archived version makes it current again.
    engine.publish(language())
    assert engine.current_rulebook().version == language().version


def test_buddies_stay_pinned_to_their_version() -> None:
    engine = engine_with(small())
    engine.hatch("old")
    engine.publish(language())
    engine.hatch("new")
    assert engine.buddy("old").rulebook_version == small().version
    assert engine.buddy("new").rulebook_version == language().version
    assert engine.send(lesson("e1", user="old")).coins == 23  # small's rules
    assert engine.send(lesson("e2", user="new")).coins == 35  # language's rules


def test_migrate_carries_state_over_and_never_revokes_badges() -> None:
    engine = engine_with(small())
    engine.hatch("alice")
    engine.hatch("bob")
    engine.send(lesson("e1"))
    before = engine.buddy("alice")
    assert "first" in before.badges
    engine.publish(language())
    summary = engine.migrate("alice", language().version)
    assert (summary.migrated, summary.unchanged, summary.skipped) == (1, 0, ())
    after = engine.buddy("alice")
    assert after.rulebook_version == language().version
    assert after.badges == before.badges  # "first" is not in the new rulebook: kept anyway
    assert after.coins == before.coins and after.counters == before.counters
    assert engine.buddy("bob").rulebook_version == small().version
    assert engine.send(lesson("e2")).rulebook_version == language().version
    everyone = engine.migrate(None, language().version)
    assert (everyone.migrated, everyone.unchanged) == (1, 1)


def test_migrate_errors() -> None:
    engine = engine_with(small())
    engine.hatch("alice")
    with pytest.raises(ResourceNotFound):
        engine.migrate("alice", "0000000000000000")
    draft = engine.save_draft(language())
    with pytest.raises(ConflictError):
        engine.migrate("alice", draft)
    engine.publish(language())
    with pytest.raises(ResourceNotFound):
        engine.migrate("ghost", language().version)


def test_migrate_skips_buddies_whose_audience_the_target_lacks() -> None:
    engine = engine_with(two_audiences())
    engine.hatch("alice", "teacher")
    engine.hatch("alice", "student")
    engine.publish(small())
    summary = engine.migrate("alice", small().version)
    assert summary.migrated == 1 and summary.skipped == (("alice", "teacher"),)
    summary = engine.migrate(None, small().version, audience="student")
    assert summary.unchanged == 1


def test_hatch() -> None:
    engine = Engine(clock=Clock())
    with pytest.raises(NoPublishedConfig):
        engine.hatch("alice")
    engine.publish(language())
    state = engine.hatch("alice", timezone="Europe/Paris")
    assert (state.stage, state.coins, state.timezone, state.hatched_at) == (
        1,
        0,
        "Europe/Paris",
        T0,
    )
    assert state.rulebook_version == language().version
    assert engine.buddy("alice") == state
    with pytest.raises(ConflictError) as info:
        engine.hatch("alice")
    assert info.value.status == 409
    with pytest.raises(ValidationFailed):
        engine.hatch("bob", timezone="Mars/Olympus")
    with pytest.raises(ValidationFailed):
        engine.hatch("")
    (message,) = engine.outbox.pending()
    assert (message.type, message.user_id, message.audience) == (
        "buddy.hatched",
        "alice",
        "student",
    )
    assert message.payload == {"stage": 1, "rulebook_version": language().version}


def test_hatch_audiences() -> None:
    engine = engine_with(two_audiences())
    with pytest.raises(MissingAudience):
        engine.hatch("alice")
    with pytest.raises(UnknownAudience):
        engine.hatch("alice", "parent")
    assert engine.hatch("alice", "teacher").audience == "teacher"


def test_buddy_not_found() -> None:
    engine = engine_with()
    with pytest.raises(ResourceNotFound) as info:
        engine.buddy("ghost")
    assert info.value.status == 404


def test_another_engine_on_the_same_store_sees_changes_after_refresh() -> None:
    store = MemoryStore()
    first = Engine(store, clock=Clock())
    second = Engine(store, clock=Clock())
    first.publish(small())
    assert second.current_rulebook().version == small().version
    first.publish(language())
    assert second.current_rulebook().version == small().version  # cached
    second.refresh()
    assert second.current_rulebook().version == language().version
