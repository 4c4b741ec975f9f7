"""engine.admin and engine.evolve: the admin paths, their errors, ledger/outbox, idempotent keys."""

from __future__ import annotations

import pytest

from buddyrules import (
    EvolutionNotReady,
    IdempotencyKeyConflict,
    InsufficientBalance,
    MissingAudience,
    ProgressionNotSpendable,
    ResourceNotFound,
    ValidationFailed,
)
from buddyrules.service import Engine, GateResult

from .helpers import T0, Clock, engine_with, lesson, two_audiences


@pytest.fixture
def engine() -> Engine:
    engine = engine_with(clock=Clock())
    engine.hatch("alice")
    return engine


def test_earn_coins_writes_ledger_and_outbox(engine: Engine) -> None:
    effects = engine.admin.earn_coins("alice", 100, reason="support")
    assert effects.coins == 100
    assert engine.buddy("alice").coins == 100
    (entry,) = engine.ledger("alice")
    assert (entry.currency, entry.amount, entry.balance_after) == ("coins", 100, 100)
    assert (entry.reason, entry.reference, entry.at) == ("admin:support", "admin:earn_coins", T0)
    assert [m.type for m in engine.outbox.pending()][-1] == "coins.earned"


def test_spend_coins_never_goes_negative(engine: Engine) -> None:
    engine.admin.earn_coins("alice", 30, reason="gift")
    with pytest.raises(InsufficientBalance) as info:
        engine.admin.spend_coins("alice", 31, reason="shop")
    assert info.value.status == 400
    assert engine.buddy("alice").coins == 30
    assert len(engine.ledger("alice")) == 1
    engine.admin.spend_coins("alice", 30, reason="shop")
    assert engine.buddy("alice").coins == 0
    assert engine.ledger("alice")[-1].amount == -30
    assert engine.outbox.pending()[-1].type == "coins.spent"


def test_grant_tokens_is_clipped_to_max_balance(engine: Engine) -> None:
    effects = engine.admin.grant_tokens("alice", "freeze", 9, reason="promo")
    assert effects.tokens == ("freeze:5",)
    assert engine.buddy("alice").token("freeze") == 5
    assert engine.ledger("alice")[-1].currency == "token:freeze"


def test_spend_tokens_refuses_progression_tokens(engine: Engine) -> None:
    engine.admin.grant_tokens("alice", "xp", 10, reason="promo")
    with pytest.raises(ProgressionNotSpendable) as info:
        engine.admin.spend_tokens("alice", "xp", 1, reason="shop")
    assert info.value.status == 400
    engine.admin.grant_tokens("alice", "gems", 10, reason="promo")
    with pytest.raises(InsufficientBalance):
        engine.admin.spend_tokens("alice", "gems", 11, reason="shop")
    engine.admin.spend_tokens("alice", "gems", 4, reason="shop")
    assert engine.buddy("alice").token("gems") == 6
    assert engine.outbox.pending(1000)[-1].type == "token.spent"


def test_set_and_add_skill(engine: Engine) -> None:
    effects = engine.admin.set_skill("alice", "pronunciation", 45)
    assert effects.skills[0]["level"] == 2
    assert engine.admin.add_skill("alice", "pronunciation", -10).skills[0]["value"] == 35
    assert engine.admin.add_skill("alice", "pronunciation", 500).skills[0]["value"] == 100
    assert engine.buddy("alice").skills["pronunciation"] == 100
    assert "skill.leveled" in [m.type for m in engine.outbox.pending(1000)]
    with pytest.raises(ResourceNotFound):
        engine.admin.set_skill("alice", "juggling", 1)


def test_award_badge_pays_its_reward_once(engine: Engine) -> None:
    effects = engine.admin.award_badge("alice", "week_warrior")
    assert effects.badges_awarded == ("week_warrior",) and effects.coins == 50
    again = engine.admin.award_badge("alice", "week_warrior")
    assert again.badges_awarded == () and again.coins == 0
    assert engine.buddy("alice").coins == 50
    assert engine.ledger("alice")[-1].reference == "admin:award_badge"
    with pytest.raises(ResourceNotFound):
        engine.admin.award_badge("alice", "nope")


def test_unlock_gate_spends_once(engine: Engine) -> None:
    with pytest.raises(InsufficientBalance):
        engine.admin.unlock_gate("alice", "bonus_lesson")
    engine.admin.grant_tokens("alice", "gems", 60, reason="promo")
    result = engine.admin.unlock_gate("alice", "bonus_lesson")
    assert isinstance(result, GateResult) and result.already_unlocked is False
    assert engine.buddy("alice").token("gems") == 10
    assert engine.buddy("alice").gates == ("bonus_lesson",)
    repeat = engine.admin.unlock_gate("alice", "bonus_lesson")
    assert repeat.already_unlocked is True
    assert engine.buddy("alice").token("gems") == 10
    with pytest.raises(ResourceNotFound):
        engine.admin.unlock_gate("alice", "no_gate")


def test_complete_sub_step(engine: Engine) -> None:
    engine.send(lesson("e1"))
    effects = engine.admin.complete_sub_step("alice", "basics", "greetings", "goodbye")
    assert {"path": "basics", "step": "greetings", "status": "completed"} in effects.paths
    assert effects.coins == 30  # the step's reward
    assert "greetings" in engine.buddy("alice").paths["basics"].completed
    with pytest.raises(ValidationFailed):
        engine.admin.complete_sub_step("alice", "basics", "greetings", "hello")


def test_evolve(engine: Engine) -> None:
    with pytest.raises(EvolutionNotReady) as info:
        engine.evolve("alice")
    assert info.value.status == 409
    engine.admin.grant_tokens("alice", "xp", 500, reason="promo")
    engine.admin.award_badge("alice", "week_warrior")
    effects = engine.evolve("alice")
    assert effects.evolved_to == 2 and engine.buddy("alice").stage == 2
    assert engine.outbox.pending(1000)[-1].type == "buddy.evolved"


def test_admin_on_a_user_without_a_buddy_is_resource_not_found(engine: Engine) -> None:
    with pytest.raises(ResourceNotFound) as info:
        engine.admin.earn_coins("ghost", 5, reason="x")
    assert info.value.status == 404


def test_admin_amounts_must_be_positive(engine: Engine) -> None:
    with pytest.raises(ValidationFailed):
        engine.admin.earn_coins("alice", 0, reason="x")
    with pytest.raises(ValidationFailed):
        engine.admin.earn_coins("alice", -5, reason="x")


def test_admin_key_makes_a_call_idempotent(engine: Engine) -> None:
    first = engine.admin.earn_coins("alice", 25, reason="refund", key="ticket-1")
    again = engine.admin.earn_coins("alice", 25, reason="refund", key="ticket-1")
    assert again.replayed and not first.replayed and again.coins == 25
    assert engine.buddy("alice").coins == 25
    (entry,) = engine.ledger("alice")
    assert entry.reference == "admin:earn_coins:ticket-1"
    receipt = engine.store.get_receipt("default", "admin:ticket-1")
    assert receipt is not None and receipt.user_id == "alice"


def test_a_reused_admin_key_with_another_call_is_a_conflict(engine: Engine) -> None:
    engine.hatch("bob")
    engine.admin.earn_coins("alice", 25, reason="refund", key="k")
    with pytest.raises(IdempotencyKeyConflict):
        engine.admin.earn_coins("alice", 26, reason="refund", key="k")
    with pytest.raises(IdempotencyKeyConflict):
        engine.admin.earn_coins("bob", 25, reason="refund", key="k")
    with pytest.raises(IdempotencyKeyConflict):
        engine.admin.spend_coins("alice", 25, reason="refund", key="k")
    assert engine.buddy("alice").coins == 25 and engine.buddy("bob").coins == 0


def test_a_failed_admin_call_does_not_use_its_key(engine: Engine) -> None:
    with pytest.raises(InsufficientBalance):
        engine.admin.spend_coins("alice", 5, reason="shop", key="k")
    engine.admin.earn_coins("alice", 5, reason="gift")
    assert engine.admin.spend_coins("alice", 5, reason="shop", key="k").replayed is False


def test_unlock_gate_replay_keeps_already_unlocked(engine: Engine) -> None:
    engine.admin.grant_tokens("alice", "gems", 50, reason="promo")
    first = engine.admin.unlock_gate("alice", "bonus_lesson", key="g1")
    again = engine.admin.unlock_gate("alice", "bonus_lesson", key="g1")
    assert first.already_unlocked is False and again.already_unlocked is False
    assert again.effects.replayed
    assert engine.buddy("alice").token("gems") == 0


def test_admin_audience_is_inferred_or_required() -> None:
    engine = engine_with(two_audiences(), clock=Clock())
    with pytest.raises(ResourceNotFound):
        engine.admin.earn_coins("alice", 1, reason="x")
    engine.hatch("alice", "teacher")
    engine.admin.earn_coins("alice", 1, reason="x")  # the only buddy: teacher
    assert engine.buddy("alice", "teacher").coins == 1
    engine.hatch("alice", "student")
    with pytest.raises(MissingAudience):
        engine.admin.earn_coins("alice", 1, reason="x")
    engine.admin.earn_coins("alice", 2, reason="x", audience="student")
    assert engine.buddy("alice", "student").coins == 2
