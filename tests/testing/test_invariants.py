"""The driver and the built-in invariants, on real histories and on tampered steps."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import buddyrules as br
from buddyrules.engine import LedgerEntry
from buddyrules.testing.invariants import (
    STEP_INVARIANTS,
    AdminStep,
    InvariantViolation,
    Step,
    badges_awarded_at_most_once,
    balances_never_negative,
    caps_respected,
    deterministic,
    manual_badges_need_an_admin,
    play,
    replay_is_idempotent,
    run_step_invariants,
    split_resume_equivalent,
    stage_in_range_and_monotonic,
    streaks_bounded_by_active_periods,
)

from .rulebooks import REFERENCE

LANGUAGE = br.load_rulebook(REFERENCE)
T0 = datetime(2024, 1, 1, 9, tzinfo=UTC)


def lesson(i: int, *, at: datetime, user: str = "u1", **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"e{i}",
        "user_id": user,
        "type": "lesson_completed",
        "occurred_at": at.isoformat(),
        "properties": {"score": 0.95, "difficulty": "speaking", **props},
    }


def daily_lessons(n: int) -> list[dict[str, Any]]:
    return [lesson(i, at=T0 + timedelta(days=i)) for i in range(n)]


def test_play_applies_a_history_and_keeps_every_invariant() -> None:
    history = daily_lessons(8)
    result = play(LANGUAGE, history)
    assert len(result.steps) == 8
    state = result.states[("u1", "student")]
    assert "week_warrior" in state.badges  # the 7-day milestone
    assert state.streaks["daily_lesson"].count == 8
    step = result.steps[-1]
    assert step.history == tuple(history)
    assert [s.index for s in step.buddy_steps] == list(range(8))
    assert step.local_date() == (T0 + timedelta(days=7)).date()
    run_step_invariants(result)  # nothing raised
    split_resume_equivalent(LANGUAGE, history, at=3)
    replay_is_idempotent(LANGUAGE, history)


def test_the_attentive_admin_awards_manual_badges_and_evolves() -> None:
    rulebook = br.load_rulebook(
        {
            "name": "admin",
            "audiences": ["a"],
            "event_types": {"a": ["ping"]},
            "coin_rules": [{"key": "c", "event": "ping", "amount": 10}],
            "badges": [{"key": "vip", "mode": "manual", "when": "coins >= 20"}],
            "evolution": {"stages": [{"name": "One"}, {"name": "Two", "when": "coins >= 10"}]},
        }
    )
    pings = [
        {"user_id": "u", "type": "ping", "occurred_at": (T0 + timedelta(hours=i)).isoformat()}
        for i in range(2)
    ]
    result = play(rulebook, pings)
    actions = [(a.action, a.detail) for a in result.admin_steps]
    assert actions == [("evolve", "stage 2"), ("award_badge", "vip")]
    assert result.states[("u", "a")].badges == ("vip",)
    quiet = play(rulebook, pings, admin=False)
    assert quiet.admin_steps == ()
    assert quiet.states[("u", "a")].badges_ready == ("vip",)
    assert quiet.states[("u", "a")].stage == 1


def test_an_exception_out_of_the_engine_is_a_violation() -> None:
    broken = [{"user_id": "u1", "type": "lesson_completed", "properties": {}}]  # no time
    with pytest.raises(InvariantViolation) as info:
        play(LANGUAGE, broken)
    assert info.value.invariant == "engine_never_raises"
    assert "occurred_at" in info.value.message


def _last_step(n: int = 3) -> Step:
    return play(LANGUAGE, daily_lessons(n)).steps[-1]


def _violates(invariant: Any, step: Step, fragment: str) -> None:
    with pytest.raises(AssertionError, match=fragment):
        invariant(step)


def test_every_builtin_invariant_holds_on_a_real_step() -> None:
    step = _last_step()
    for invariant in STEP_INVARIANTS:
        invariant(step)


def test_balances_never_negative_notices_negative_and_unexplained_balances() -> None:
    step = _last_step()
    negative = dataclasses.replace(step, after=step.after.model_copy(update={"coins": -5}))
    _violates(balances_never_negative, negative, "negative")
    extra = dataclasses.replace(
        step, after=step.after.model_copy(update={"coins": step.after.coins + 1})
    )
    _violates(balances_never_negative, extra, "effects credit")
    drained = dict(step.after.tokens, xp=0)
    _violates(
        balances_never_negative,
        dataclasses.replace(step, after=step.after.model_copy(update={"tokens": drained})),
        "token 'xp'",
    )


def test_caps_respected_counts_credits_per_local_day() -> None:
    step = _last_step()
    over = LedgerEntry("coins", 60, step.after.coins, "rule:lesson_coins")
    outcome = dataclasses.replace(step.outcome, ledger=(*step.outcome.ledger, over))
    _violates(
        caps_respected, dataclasses.replace(step, outcome=outcome), "above its daily_cap of 50"
    )


def test_caps_respected_counts_total_limits() -> None:
    steps = play(LANGUAGE, daily_lessons(11)).steps
    last = steps[-1]
    extra = LedgerEntry("coins", 20, last.after.coins, "rule:first_ten_lessons")
    outcome = dataclasses.replace(last.outcome, ledger=(*last.outcome.ledger, extra))
    _violates(caps_respected, dataclasses.replace(last, outcome=outcome), "total_limit 10")


def test_badges_awarded_at_most_once_notices_repeats_and_revocations() -> None:
    step = _last_step()
    twice = step.after.model_copy(update={"badges": (*step.after.badges, "first_lesson")})
    _violates(badges_awarded_at_most_once, dataclasses.replace(step, after=twice), "duplicate")
    revoked = step.after.model_copy(update={"badges": ()})
    _violates(badges_awarded_at_most_once, dataclasses.replace(step, after=revoked), "revoked")


def test_manual_badges_need_an_admin() -> None:
    step = _last_step()
    awarded = step.after.model_copy(update={"badges": (*step.after.badges, "scholar")})
    _violates(manual_badges_need_an_admin, dataclasses.replace(step, after=awarded), "scholar")


def test_stage_in_range_and_monotonic() -> None:
    step = _last_step()
    _violates(
        stage_in_range_and_monotonic,
        dataclasses.replace(step, after=step.after.model_copy(update={"stage": 9})),
        "outside",
    )
    _violates(
        stage_in_range_and_monotonic,
        dataclasses.replace(step, before=step.before.model_copy(update={"stage": 2})),
        "backwards",
    )
    _violates(
        stage_in_range_and_monotonic,
        dataclasses.replace(step, after=step.after.model_copy(update={"stage": 2})),
        "without auto_evolve",
    )


def test_streaks_bounded_by_active_periods() -> None:
    step = _last_step(3)
    streak = dataclasses.replace(step.after.streaks["daily_lesson"], count=4, best=4)
    inflated = step.after.model_copy(update={"streaks": {"daily_lesson": streak}})
    _violates(
        streaks_bounded_by_active_periods,
        dataclasses.replace(step, after=inflated),
        "active in only 3 daily",
    )


def test_deterministic_compares_a_second_evaluation() -> None:
    step = _last_step()
    other = dataclasses.replace(step.outcome, effects=dataclasses.replace(step.effects, coins=1))
    _violates(deterministic, dataclasses.replace(step, outcome=other), "twice gave different")


def test_user_invariants_fail_by_raising_or_returning_false() -> None:
    result = play(LANGUAGE, daily_lessons(3))

    def never_false(step: Step) -> bool:
        return step.index < 1

    with pytest.raises(InvariantViolation) as info:
        run_step_invariants(result, [never_false])
    assert info.value.invariant == "never_false"
    assert info.value.step_index == 1
    assert "returned False" in str(info.value)

    def buggy(step: Step) -> None:
        raise KeyError("oops")

    with pytest.raises(InvariantViolation, match="raised KeyError"):
        run_step_invariants(result, [buggy])


def test_split_resume_notices_a_different_result() -> None:
    history = daily_lessons(4)
    baseline = play(LANGUAGE, history)
    first = baseline.entries[0]
    assert isinstance(first, Step)
    tampered = dataclasses.replace(first, effects=dataclasses.replace(first.effects, coins=999))
    wrong = dataclasses.replace(baseline, entries=(tampered, *baseline.entries[1:]))
    with pytest.raises(InvariantViolation, match="changed the result of event #0"):
        split_resume_equivalent(LANGUAGE, history, at=2, baseline=wrong)


def test_replay_notices_the_service_disagreeing_with_the_core() -> None:
    history = daily_lessons(2)
    core = play(LANGUAGE, history)
    first = core.entries[0]
    assert isinstance(first, Step) and not isinstance(first, AdminStep)
    tampered = dataclasses.replace(first, effects=dataclasses.replace(first.effects, coins=1))
    wrong = dataclasses.replace(core, entries=(tampered, *core.entries[1:]))
    with pytest.raises(InvariantViolation, match="disagree"):
        replay_is_idempotent(LANGUAGE, history, core=wrong)
