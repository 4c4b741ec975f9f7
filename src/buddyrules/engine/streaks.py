"""Streaks: the state changes of one streak, as a table (SPEC §4).

``classify`` decides what an activity in period ``p`` does to a streak; ``TRANSITIONS``
says what each outcome means. Missed periods are only settled when activity resumes (or by
``sweep``, see :mod:`buddyrules.engine.advance`).

| outcome      | when                                                | count      | freezes |
|--------------|-----------------------------------------------------|------------|---------|
| start        | never ticked; or p > last after a sweep burn        | 1          | 0       |
| same_period  | p == last ticked period                             | unchanged  | 0       |
| earlier      | p <  last ticked period (late; also after a burn)   | unchanged  | 0       |
| continue     | p == last + 1                                       | count + 1  | 0       |
| frozen       | k = p - last - 1 missed, freeze tokens held >= k    | count + 1  | k       |
| burned       | k missed, fewer than k freeze tokens held           | 1 (restart)| 0       |
"""

from __future__ import annotations

from typing import Any

from buddyrules.engine.context import EventContext
from buddyrules.engine.turn import Turn
from buddyrules.rulebook.compiled import Streak
from buddyrules.state import StreakState, trusted_streak

__all__ = ["TRANSITIONS", "apply_streaks", "classify", "missed_periods"]

# outcome -> (ticks, restarts the count)
TRANSITIONS: dict[str, tuple[bool, bool]] = {
    "start": (True, True),
    "same_period": (False, False),
    "earlier": (False, False),
    "continue": (True, False),
    "frozen": (True, False),
    "burned": (True, True),
}


def missed_periods(last: int, current: int) -> int:
    """Whole periods with no activity strictly between ``last`` and ``current``."""
    return max(0, current - last - 1)


def classify(state: StreakState | None, period: int, freezes_held: int) -> tuple[str, int]:
    """Return ``(outcome, freezes_to_consume)`` for activity in ``period``."""
    if state is None or state.last_period is None:
        return "start", 0
    last = state.last_period
    # A late event never ticks, even after a sweep burned the streak (count 0): the burn
    # keeps ``last_period``, so the order of these checks matters.
    if period < last:
        return "earlier", 0
    if period == last:
        return "same_period", 0
    if state.count == 0:
        return "start", 0
    k = missed_periods(last, period)
    if k == 0:
        return "continue", 0
    if freezes_held >= k:
        return "frozen", k
    return "burned", 0


def apply_streaks(turn: Turn, streaks: tuple[Streak, ...], ctx: EventContext) -> None:
    """Burn, freeze and tick the streaks bound to this event type."""
    for streak in streaks:
        entry: dict[str, Any] | None = None
        if turn.explain:
            entry = {"kind": "streak", "rule": streak.key, "fired": False, "reason": None}
            turn.trace.append(entry)
        if streak.audience is not None and streak.audience != ctx.audience:
            if entry is not None:
                entry["reason"] = f"audience mismatch (streak is for {streak.audience!r})"
            continue
        period = ctx.period(streak.period)
        current = turn.streaks.get(streak.key)
        held = turn.tokens.get(streak.freeze_token, 0) if streak.freeze_token else 0
        outcome, freezes = classify(current, period, held)
        ticks, restarts = TRANSITIONS[outcome]
        if entry is not None:
            entry["outcome"] = outcome
        if not ticks:
            if entry is not None:
                entry["reason"] = (
                    "already ticked this period"
                    if outcome == "same_period"
                    else "event is from a period before the last tick"
                )
            continue
        turn.matched = True
        prev_count = current.count if current is not None else 0
        if outcome == "burned":
            turn.append(
                "streak_changes",
                {"streak": streak.key, "change": "burned", "count_before": prev_count},
            )
            turn.notify("streak.burned", {"streak": streak.key, "count_before": prev_count})
        if freezes and streak.freeze_token is not None:
            turn.debit_token(streak.freeze_token, freezes, f"streak_freeze:{streak.key}")
            turn.append(
                "streak_changes",
                {"streak": streak.key, "change": "frozen", "freezes_used": freezes},
            )
        count = 1 if restarts else prev_count + 1
        best = max(count, current.best if current is not None else 0)
        paid = current.milestones_paid if current is not None else ()
        due = [(c, r) for c, r in streak.milestones if c <= count and c not in paid]
        turn.set_streak(
            streak.key,
            trusted_streak(
                {
                    "count": count,
                    "best": best,
                    "last_period": period,
                    "milestones_paid": tuple(sorted((*paid, *(c for c, _ in due))))
                    if due
                    else paid,
                }
            ),
        )
        turn.ns["streaks"][streak.key] = {"count": count, "best": best}
        turn.visible = True
        turn.append("streak_changes", {"streak": streak.key, "change": "ticked", "count": count})
        turn.notify("streak.ticked", {"streak": streak.key, "count": count, "best": best})
        if entry is not None:
            entry["fired"] = True
            entry["count"] = count
        turn.pay(streak.tick_reward, f"streak:{streak.key}")
        for milestone_count, reward in due:
            turn.append("milestones", {"streak": streak.key, "count": milestone_count})
            turn.notify("streak.milestone", {"streak": streak.key, "count": milestone_count})
            turn.pay(reward, f"streak_milestone:{streak.key}:{milestone_count}")
