"""Period caps and total limits: the one place that clips a grant.

Order of limits for one grant (SPEC §4): multiplier (done by the caller) → total limit →
daily cap → weekly cap → (``max_balance``, done when crediting tokens). Caps and total limits
count what was actually credited, so a grant clipped to 0 uses no ``total_limit``.
"""

from __future__ import annotations

from buddyrules.engine.context import EventContext
from buddyrules.engine.turn import Turn
from buddyrules.state import RuleUsage

__all__ = ["clip_to_caps", "record_usage"]


def clip_to_caps(
    turn: Turn,
    key: str,
    grant: int,
    ctx: EventContext,
    *,
    daily_cap: int | None,
    weekly_cap: int | None,
    total_limit: int | None = None,
) -> tuple[int, str | None]:
    """Return ``(allowed, why_clipped)`` for a grant under the rule's caps and limit."""
    if daily_cap is None and weekly_cap is None and total_limit is None:
        return grant, None
    usage = turn.rule_usage.get(key)
    why: str | None = None
    if total_limit is not None and usage is not None and usage.times >= total_limit:
        return 0, f"total limit used up ({usage.times}/{total_limit})"
    if daily_cap is not None:
        used = _used(
            usage.day if usage else None, usage.day_total if usage else 0, ctx.day, daily_cap
        )
        room = max(0, daily_cap - used)
        if grant > room:
            why = f"daily cap {daily_cap} reached (used {used}, clipped {grant - room})"
            grant = room
    if weekly_cap is not None:
        used = _used(
            usage.week if usage else None, usage.week_total if usage else 0, ctx.week, weekly_cap
        )
        room = max(0, weekly_cap - used)
        if grant > room:
            why = f"weekly cap {weekly_cap} reached (used {used}, clipped {grant - room})"
            grant = room
    return grant, why


def _used(last: int | None, total: int, current: int, cap: int) -> int:
    """What a cap has used in ``current``.

    Only the latest period's total is kept; an event from an earlier period than the last
    credit (a late arrival) finds its period's usage unknown and is treated as capped, so a
    cap can never be exceeded in any period, whatever the arrival order.
    """
    if last is None or current > last:
        return 0
    if current == last:
        return total
    return cap


def record_usage(turn: Turn, key: str, credited: int, ctx: EventContext) -> None:
    """Count a credited grant against the rule's caps and total limit."""
    if credited <= 0:
        return
    usage = turn.rule_usage.get(key)
    if usage is None:
        turn.rule_usage[key] = RuleUsage(
            day=ctx.day, day_total=credited, week=ctx.week, week_total=credited, times=1
        )
        return
    day, day_total = _advance(usage.day, usage.day_total, ctx.day, credited)
    week, week_total = _advance(usage.week, usage.week_total, ctx.week, credited)
    turn.rule_usage[key] = RuleUsage(
        day=day, day_total=day_total, week=week, week_total=week_total, times=usage.times + 1
    )


def _advance(last: int | None, total: int, current: int, credited: int) -> tuple[int, int]:
    if last is None or current > last:
        return current, credited
    if current == last:
        return current, total + credited
    return last, total  # a late event never rewinds the latest period's count
