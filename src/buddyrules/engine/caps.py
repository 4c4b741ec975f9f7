"""Period caps and total limits: the one place that clips a grant.

Order of limits for one grant (SPEC §4): multiplier (done by the caller) → total limit →
daily cap → weekly cap → (``max_balance``, done when crediting tokens). Caps and total limits
count what was actually credited, so a grant clipped to 0 uses no ``total_limit``.
"""

from __future__ import annotations

from buddyrules.engine.context import EventContext
from buddyrules.engine.turn import Turn
from buddyrules.state import RuleUsage, trusted_usage

__all__ = ["clip", "record", "record_usage"]


def clip(
    usage: RuleUsage | None,
    grant: int,
    ctx: EventContext,
    daily_cap: int | None,
    weekly_cap: int | None,
    total_limit: int | None,
) -> tuple[int, str | None]:
    """Return ``(allowed, why_clipped)`` for a grant under a rule's caps and total limit,
    given the rule's usage before it (None: nothing credited yet)."""
    why: str | None = None
    if usage is None:
        # Nothing credited yet: only a cap below the grant clips it.
        if daily_cap is not None and grant > daily_cap:
            why = f"daily cap {daily_cap} reached (used 0, clipped {grant - daily_cap})"
            grant = daily_cap
        if weekly_cap is not None and grant > weekly_cap:
            why = f"weekly cap {weekly_cap} reached (used 0, clipped {grant - weekly_cap})"
            grant = weekly_cap
        return grant, why
    if total_limit is not None and usage.times >= total_limit:
        return 0, f"total limit used up ({usage.times}/{total_limit})"
    if daily_cap is not None:
        used = _used(usage.day, usage.day_total, ctx.day, daily_cap)
        room = max(0, daily_cap - used)
        if grant > room:
            why = f"daily cap {daily_cap} reached (used {used}, clipped {grant - room})"
            grant = room
    if weekly_cap is not None:
        used = _used(usage.week, usage.week_total, ctx.week, weekly_cap)
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
    """Count a credited grant against the rule's caps and total limit.

    Only rules with a cap or a total limit are counted (the engine checks ``rule.limited``):
    nothing reads the usage of the others, and every entry is state to store.
    """
    if credited > 0:
        record(turn, key, turn.rule_usage.get(key), credited, ctx)


def record(turn: Turn, key: str, usage: RuleUsage | None, credited: int, ctx: EventContext) -> None:
    """:func:`record_usage` given the rule's usage before this grant (the hot path).

    Only the latest day's and ISO week's totals are kept: a grant in a later period starts
    its total, one in the same period adds to it, and a late event (an earlier period)
    never rewinds the count. :meth:`Turn.set_usage` is inlined: this runs for most events.
    """
    day = ctx.day
    week = ctx.week
    if usage is None:
        values = {
            "day": day,
            "day_total": credited,
            "week": week,
            "week_total": credited,
            "times": 1,
        }
    else:
        last = usage.day
        if last is None or day > last:
            day_total = credited
        elif day == last:
            day_total = usage.day_total + credited
        else:  # a late event never rewinds the latest period's count
            day, day_total = last, usage.day_total
        last = usage.week
        if last is None or week > last:
            week_total = credited
        elif week == last:
            week_total = usage.week_total + credited
        else:
            week, week_total = last, usage.week_total
        values = {
            "day": day,
            "day_total": day_total,
            "week": week,
            "week_total": week_total,
            "times": usage.times + 1,
        }
    if not turn._usage_owned:
        turn.rule_usage = dict(turn.rule_usage)
        turn._usage_owned = True
    turn.rule_usage[key] = trusted_usage(values)
