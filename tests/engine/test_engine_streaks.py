"""Streaks: one tick per period, freezes, burns, milestones, best (SPEC §4)."""

from __future__ import annotations

from typing import Any

import buddyrules as br
from buddyrules.engine.streaks import TRANSITIONS, classify
from buddyrules.state import StreakState

from .helpers import Buddy, at, make_rulebook, trace_entry, utc


def streak_rulebook(period: str = "daily", **streak: Any) -> br.Rulebook:
    spec: dict[str, Any] = {
        "key": "s",
        "events": ["lesson", "quiz"],
        "period": period,
        "tick_reward": {"coins": 1},
        "freeze_token": "freeze",
        "milestones": [{"count": 3, "reward": {"coins": 100}}],
    }
    spec.update(streak)
    return make_rulebook(
        tokens=[{"key": "freeze", "kind": "primary"}],
        token_rules=[{"key": "f", "event": "module", "token": "freeze", "amount": 1}],
        streaks=[spec],
    )


def grant_freezes(buddy: Buddy, n: int, day: float) -> None:
    for i in range(n):
        buddy.send("module", at(day, i / 10))


def test_at_most_one_tick_per_period_from_any_of_its_event_types() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    first = buddy.send("lesson", at(0))
    assert [dict(c) for c in first.streaks] == [{"streak": "s", "change": "ticked", "count": 1}]
    assert first.coins == 1
    again = buddy.send("quiz", at(0, 3), explain=True)
    assert again.streaks == () and again.coins == 0
    assert trace_entry(again, "s")["reason"] == "already ticked this period"
    buddy.send("quiz", at(1))
    assert buddy.state.streaks["s"].count == 2
    assert buddy.state.streaks["s"].best == 2


def test_k_missed_periods_with_exactly_k_freezes_consume_them() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("lesson", at(1))
    grant_freezes(buddy, 2, 1.5)
    effects = buddy.send("lesson", at(4))  # days 2 and 3 missed
    assert buddy.state.streaks["s"].count == 3
    assert buddy.state.tokens["freeze"] == 0
    assert {"streak": "s", "change": "frozen", "freezes_used": 2} in [
        dict(c) for c in effects.streaks
    ]
    assert ("token:freeze", -2, 0, "streak_freeze:s") in [
        (e.currency, e.amount, e.balance_after, e.reason) for e in buddy.last.ledger
    ]
    assert effects.streak_milestones == ({"streak": "s", "count": 3},)


def test_fewer_freezes_than_missed_periods_burn_and_consume_none() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("lesson", at(1))
    grant_freezes(buddy, 1, 1.5)
    effects = buddy.send("lesson", at(4))
    state = buddy.state.streaks["s"]
    assert (state.count, state.best) == (1, 2)
    assert buddy.state.tokens["freeze"] == 1
    changes = [dict(c) for c in effects.streaks]
    assert changes[0] == {"streak": "s", "change": "burned", "count_before": 2}
    assert changes[-1] == {"streak": "s", "change": "ticked", "count": 1}
    assert "streak.burned" in [n.type for n in buddy.last.notifications]


def test_a_single_missed_day_without_freezes_burns() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(0))
    buddy.send("lesson", at(2))
    assert buddy.state.streaks["s"].count == 1


def test_milestone_pays_once_even_after_a_burn_and_re_reach() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    paid = [buddy.send("lesson", at(d)).coins for d in range(3)]
    assert paid == [1, 1, 101]
    assert buddy.last.effects.streak_milestones == ({"streak": "s", "count": 3},)
    assert buddy.state.streaks["s"].milestones_paid == (3,)
    again = [buddy.send("lesson", at(d)).coins for d in range(10, 14)]
    assert again == [1, 1, 1, 1]
    assert buddy.state.streaks["s"].count == 4
    assert all(o.effects.streak_milestones == () for o in buddy.outcomes[3:])


def test_milestone_reward_with_a_badge(language_rulebook_path: Any) -> None:
    rb = br.load_rulebook(language_rulebook_path)
    buddy = Buddy.hatch(rb)
    for day in range(6):
        buddy.send("lesson_completed", at(day))
    effects = buddy.send("lesson_completed", at(6))
    assert effects.streak_milestones == ({"streak": "daily_lesson", "count": 7},)
    assert effects.badges_awarded == ("week_warrior",)
    # lesson 10 + first-ten 20 + tick 5 + milestone 50 + week_warrior's reward 50
    assert effects.coins == 135


def test_an_event_from_before_the_last_tick_does_not_tick() -> None:
    buddy = Buddy.hatch(streak_rulebook())
    buddy.send("lesson", at(5))
    late = buddy.send("lesson", at(3), explain=True)
    assert late.streaks == ()
    assert trace_entry(late, "s")["reason"] == "event is from a period before the last tick"
    assert buddy.state.streaks["s"].count == 1
    assert buddy.state.streaks["s"].last_period is not None
    buddy.send("lesson", at(6))
    assert buddy.state.streaks["s"].count == 2


def test_weekly_streak_uses_iso_weeks() -> None:
    buddy = Buddy.hatch(streak_rulebook("weekly"))
    buddy.send("lesson", utc("2026-03-29T12:00:00Z"))  # Sunday, week 13
    buddy.send("lesson", utc("2026-03-30T12:00:00Z"))  # Monday, week 14
    buddy.send("lesson", utc("2026-04-05T12:00:00Z"))  # Sunday, week 14: no tick
    assert buddy.state.streaks["s"].count == 2
    buddy.send("lesson", utc("2026-04-20T12:00:00Z"))  # week 17: weeks 15, 16 missed
    assert buddy.state.streaks["s"].count == 1


def test_monthly_streak_with_a_freeze() -> None:
    buddy = Buddy.hatch(streak_rulebook("monthly"))
    buddy.send("lesson", utc("2026-01-31T12:00:00Z"))
    buddy.send("lesson", utc("2026-02-01T12:00:00Z"))
    buddy.send("lesson", utc("2026-02-28T12:00:00Z"))  # same month
    assert buddy.state.streaks["s"].count == 2
    buddy.send("module", utc("2026-02-28T13:00:00Z"))
    buddy.send("lesson", utc("2026-04-01T12:00:00Z"))  # March missed, one freeze held
    assert buddy.state.streaks["s"].count == 3
    assert buddy.state.tokens["freeze"] == 0
    buddy.send("lesson", utc("2026-06-15T12:00:00Z"))  # May missed, no freeze
    assert (buddy.state.streaks["s"].count, buddy.state.streaks["s"].best) == (1, 3)


def test_best_is_kept_across_burns() -> None:
    buddy = Buddy.hatch(streak_rulebook(milestones=[]))
    for d in (0, 1, 2, 3, 10, 11):
        buddy.send("lesson", at(d))
    assert (buddy.state.streaks["s"].count, buddy.state.streaks["s"].best) == (2, 4)


def test_streak_without_freeze_token_and_with_audience() -> None:
    rb = make_rulebook(
        audiences=["student", "teacher"],
        event_types={"student": ["lesson"], "teacher": ["lesson"]},
        streaks=[{"key": "t", "events": ["lesson"], "audience": "teacher"}],
    )
    student = Buddy.hatch(rb, audience="student")
    effects = student.send("lesson", at(), explain=True)
    assert "t" not in student.state.streaks
    assert "audience mismatch" in trace_entry(effects, "t")["reason"]
    teacher = Buddy.hatch(rb, audience="teacher")
    teacher.send("lesson", at())
    assert teacher.state.streaks["t"].count == 1


def test_streak_count_is_visible_to_later_rules_in_the_same_event() -> None:
    rb = make_rulebook(
        streaks=[{"key": "s", "events": ["lesson"]}],
        coin_rules=[
            {
                "key": "bonus",
                "event": "lesson",
                "amount": 1,
                "multiplier": [{"when": "streaks.s.count >= 2", "factor": 10}],
            }
        ],
    )
    buddy = Buddy.hatch(rb)
    assert buddy.send("lesson", at(0)).coins == 1
    assert buddy.send("lesson", at(1)).coins == 10


def test_classification_table() -> None:
    alive = StreakState(count=4, best=4, last_period=10)
    assert classify(None, 10, 0) == ("start", 0)
    assert classify(alive, 10, 0) == ("same_period", 0)
    assert classify(alive, 9, 5) == ("earlier", 0)
    assert classify(alive, 11, 0) == ("continue", 0)
    assert classify(alive, 13, 2) == ("frozen", 2)
    assert classify(alive, 13, 3) == ("frozen", 2)
    assert classify(alive, 13, 1) == ("burned", 0)
    swept = StreakState(count=0, best=4, last_period=10)
    assert classify(swept, 14, 9) == ("start", 0)
    assert classify(swept, 9, 0) == ("earlier", 0)
    assert set(TRANSITIONS) == {"start", "same_period", "earlier", "continue", "frozen", "burned"}
