"""advance(): skill decay and streak burns over time; idempotent for one ``now`` (SPEC §6)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

import buddyrules as br
from buddyrules import ValidationFailed
from buddyrules.engine.admin import admin_set_skill

from .helpers import Buddy, at, make_rulebook


def decay_rulebook(**decay: Any) -> br.Rulebook:
    rule: dict[str, Any] = {"key": "d", "skill": "s", "cadence": "weekly", "amount": 5}
    rule.update(decay)
    return make_rulebook(
        skills=[{"key": "s", "max_value": 100, "points_per_level": 10, "max_level": 10}],
        decay=[rule],
    )


def with_skill(rb: br.Rulebook, value: int, **hatch: Any) -> Buddy:
    buddy = Buddy.hatch(rb, **hatch)
    buddy.apply(admin_set_skill(rb, buddy.state, "s", value))
    return buddy


def advance(buddy: Buddy, now: datetime) -> br.Outcome:
    return buddy.apply(br.advance(buddy.rulebook, buddy.state, now))


def test_decay_waits_for_grace_then_applies_once_per_period() -> None:
    rb = decay_rulebook(grace_days=14, floor=20)
    buddy = with_skill(rb, 60, hatched_at=at(0))  # hatched on Monday 2 March
    advance(buddy, at(7))
    assert buddy.state.skills["s"] == 60  # within grace
    assert buddy.state.decay_applied == {}
    advance(buddy, at(14))
    assert buddy.state.skills["s"] == 60  # grace ends this week: nothing owed yet
    decayed = advance(buddy, at(21))
    assert buddy.state.skills["s"] == 55
    assert [dict(s) for s in decayed.effects.skills] == [
        {"skill": "s", "before": 60, "level_before": 6, "value": 55, "delta": -5, "level": 5}
    ]
    assert [n.type for n in decayed.notifications] == ["skill.decayed"]
    assert decayed.effects.debug_reason is None


def test_advance_twice_for_the_same_now_changes_nothing() -> None:
    rb = decay_rulebook()
    buddy = with_skill(rb, 60, hatched_at=at(0))
    first = br.advance(rb, buddy.state, at(30))
    second = br.advance(rb, first.state, at(30))
    assert second.state == first.state
    assert second.state.model_dump_json() == first.state.model_dump_json()
    assert second.ledger == () and second.notifications == ()
    assert second.effects.skills == ()
    # An earlier ``now`` never undoes or repeats anything either.
    assert br.advance(rb, first.state, at(10)).state == first.state


def test_decay_for_several_periods_at_once_stops_at_the_floor() -> None:
    rb = decay_rulebook(floor=42)
    buddy = with_skill(rb, 60, hatched_at=at(0))
    advance(buddy, at(21))  # three ISO weeks after the hatch week: 60 -> 45
    assert buddy.state.skills["s"] == 45
    advance(buddy, at(70))
    assert buddy.state.skills["s"] == 42  # never below the floor


def test_decay_only_while_the_level_is_above_apply_only_above() -> None:
    rb = decay_rulebook(apply_only_above=2, floor=0)
    buddy = with_skill(rb, 40, hatched_at=at(0))
    advance(buddy, at(7 * 10))
    # 40 (level 4) -> 35 (3) -> 30 (3) -> 25 (level 2: stops)
    assert buddy.state.skills["s"] == 25


def test_a_skill_at_or_below_the_floor_never_decays() -> None:
    rb = decay_rulebook(floor=20)
    buddy = with_skill(rb, 15, hatched_at=at(0))
    outcome = advance(buddy, at(60))
    assert buddy.state.skills["s"] == 15 and outcome.effects.skills == ()


def test_daily_and_monthly_cadence() -> None:
    daily = with_skill(decay_rulebook(cadence="daily", amount=1), 50, hatched_at=at(0))
    advance(daily, at(10))
    assert daily.state.skills["s"] == 40
    monthly = with_skill(decay_rulebook(cadence="monthly", amount=10), 50, hatched_at=at(0))
    advance(monthly, at(31))  # 2 April: one month after March
    assert monthly.state.skills["s"] == 40


def test_without_hatched_at_decay_counts_from_the_first_advance() -> None:
    rb = decay_rulebook()
    buddy = with_skill(rb, 60)
    advance(buddy, at(0))
    assert buddy.state.skills["s"] == 60
    advance(buddy, at(14))
    assert buddy.state.skills["s"] == 50


def test_advance_rejects_a_naive_now() -> None:
    rb = decay_rulebook()
    with pytest.raises(ValidationFailed):
        br.advance(rb, br.new_buddy(rb, "u1"), datetime(2026, 1, 1))


def streak_rulebook() -> br.Rulebook:
    return make_rulebook(
        tokens=[{"key": "freeze", "kind": "primary"}],
        token_rules=[{"key": "f", "event": "module", "token": "freeze", "amount": 1}],
        streaks=[
            {
                "key": "s",
                "events": ["lesson"],
                "freeze_token": "freeze",
                "milestones": [{"count": 2, "reward": {"coins": 10}}],
            }
        ],
    )


def test_advance_burns_a_lapsed_streak_and_activity_restarts_it() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("lesson", at(1))
    advance(buddy, at(2, 11))  # day 2 still open: nothing missed yet
    assert buddy.state.streaks["s"].count == 2
    burned = advance(buddy, at(3))  # day 2 missed, no freeze held
    assert buddy.state.streaks["s"].count == 0
    assert buddy.state.streaks["s"].best == 2
    assert [dict(c) for c in burned.effects.streaks] == [
        {"streak": "s", "change": "burned", "count_before": 2}
    ]
    assert [n.type for n in burned.notifications] == ["streak.burned"]
    again = advance(buddy, at(3))
    assert again.effects.streaks == () and again.notifications == ()
    resumed = buddy.send("lesson", at(4))
    assert buddy.state.streaks["s"].count == 1
    assert resumed.streak_milestones == ()
    buddy.send("lesson", at(5))
    assert buddy.state.streaks["s"].count == 2
    assert buddy.last.effects.streak_milestones == ()  # milestone 2 was paid already


def test_advance_does_not_burn_while_freezes_cover_the_gap() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("module", at(0, 1))
    buddy.send("module", at(0, 2))
    advance(buddy, at(3))  # days 1 and 2 missed, two freezes held
    assert buddy.state.streaks["s"].count == 1
    assert buddy.state.tokens["freeze"] == 2  # consumed only when activity resumes
    buddy.send("lesson", at(3, 1))
    assert buddy.state.streaks["s"].count == 2
    assert buddy.state.tokens["freeze"] == 0


def test_advance_burns_once_missed_periods_outnumber_freezes() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("module", at(0, 1))
    advance(buddy, at(2))
    assert buddy.state.streaks["s"].count == 1
    advance(buddy, at(3))
    assert buddy.state.streaks["s"].count == 0
    assert buddy.state.tokens["freeze"] == 1  # a burn consumes nothing
    buddy.send("lesson", at(4))
    assert buddy.state.streaks["s"].count == 1
    assert buddy.state.tokens["freeze"] == 1


def test_a_late_event_after_a_sweep_burn_does_not_tick() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(5))
    advance(buddy, at(9))
    buddy.send("lesson", at(4))  # from before the last ticked period
    assert buddy.state.streaks["s"].count == 0
