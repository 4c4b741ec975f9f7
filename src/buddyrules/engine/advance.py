"""``advance``: the pure time step behind ``sweep`` (decay and streak burns). Pure.

Applying it twice for the same ``now`` changes nothing the second time: decay remembers the
last period it was applied in, and a burned streak has count 0.

Decay reference point: a decay rule first counts periods from the period in which the
buddy's grace ends (``hatched_at + grace_days``); for a buddy with no ``hatched_at`` it
starts counting at the first sweep that sees it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from buddyrules.engine.evaluate import buddy_zone
from buddyrules.engine.periods import local_date, period_index
from buddyrules.engine.streaks import missed_periods
from buddyrules.engine.turn import Outcome, Turn
from buddyrules.errors import ValidationFailed
from buddyrules.rulebook.compiled import Rulebook
from buddyrules.state import BuddyState, StreakState

__all__ = ["advance"]


def advance(rulebook: Rulebook, state: BuddyState, now: datetime) -> Outcome:
    """Apply skill decay for every cadence period elapsed and burn lapsed streaks."""
    if now.tzinfo is None:
        raise ValidationFailed("now must be timezone-aware", {"fields": {"now": "naive"}})
    tz = buddy_zone(rulebook, state)
    today = local_date(now, tz)
    turn = Turn(rulebook, state)

    for rule in rulebook.decay:
        skill = rulebook.skills.get(rule.skill)
        if skill is None:
            continue
        current = period_index(rule.cadence, today)
        last = turn.decay_applied.get(rule.key)
        if last is None:
            if state.hatched_at is None:
                turn.set_decay_applied(rule.key, current)
                continue
            grace_end = state.hatched_at + timedelta(days=rule.grace_days)
            if now < grace_end:
                continue  # still within grace: exempt, and nothing is owed later
            last = period_index(rule.cadence, local_date(grace_end, tz))
        if current <= last:
            continue
        value = turn.skills.get(rule.skill, 0)
        for _ in range(current - last):
            if value <= rule.floor:
                break
            if rule.apply_only_above is not None and skill.level_of(value) <= rule.apply_only_above:
                break
            value = max(rule.floor, value - rule.amount)
        turn.set_decay_applied(rule.key, current)
        if value != turn.skills.get(rule.skill, 0):
            turn.set_skill(rule.skill, value, f"decay:{rule.key}", message="skill.decayed")

    for streak in rulebook.streaks:
        s = turn.streaks.get(streak.key)
        if s is None or s.count == 0 or s.last_period is None:
            continue
        current = period_index(streak.period, today)
        k = missed_periods(s.last_period, current)
        held = turn.tokens.get(streak.freeze_token, 0) if streak.freeze_token else 0
        if k > held:
            turn.set_streak(
                streak.key,
                StreakState(
                    count=0,
                    best=s.best,
                    last_period=s.last_period,
                    milestones_paid=s.milestones_paid,
                ),
            )
            turn.visible = True
            turn.append(
                "streak_changes",
                {"streak": streak.key, "change": "burned", "count_before": s.count},
            )
            turn.notify("streak.burned", {"streak": streak.key, "count_before": s.count})
    return turn.finish(debug=False)
