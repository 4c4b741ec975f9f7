"""Coin, skill and token rules: the grants an event earns (SPEC §4), in rulebook order.

These loops run for every event, so the common case (no trace, literal amount) is kept
inline; tracing only adds entries and never changes a result.
"""

from __future__ import annotations

import math
from typing import Any

from buddyrules.engine.caps import clip, record
from buddyrules.engine.context import EventContext
from buddyrules.engine.turn import Turn
from buddyrules.rulebook.compiled import Amount, CoinRule, SkillRule, TokenRule

__all__ = ["apply_coin_rules", "apply_skill_rules", "apply_token_rules"]


def _holds(
    turn: Turn, kind: str, rule: CoinRule | SkillRule | TokenRule, ctx: EventContext
) -> tuple[bool, dict[str, Any] | None]:
    """Audience filter and ``when``; returns (holds, trace entry to complete or None)."""
    entry: dict[str, Any] | None = None
    if turn.explain:
        entry = {"kind": kind, "rule": rule.key, "fired": False, "reason": None}
        turn.trace.append(entry)
    audience = rule.audience
    if audience is not None and audience != ctx.audience:
        if entry is not None:
            entry["reason"] = f"audience mismatch (rule is for {audience!r})"
        return False, None
    when = rule.when
    if when is not None:
        ok, problem = when.test(turn.ns)
        if entry is not None:
            entry["reads"] = when.read_values(turn.ns)
        if problem is not None:
            turn.problem(rule.key, f"condition: {problem}")
            if entry is not None:
                entry["reason"] = f"evaluation problem: {problem}"
            return False, None
        if not ok:
            if entry is not None:
                entry["reason"] = "condition false"
            return False, None
    return True, entry


def _amount(turn: Turn, key: str, amount: Amount, entry: dict[str, Any] | None) -> int:
    expr = amount.expr
    if expr is None:
        return amount.literal or 0
    value, problem = expr.amount(turn.ns)
    if problem is not None:
        turn.problem(key, f"amount: {problem}")
        if entry is not None:
            entry["problem"] = f"amount: {problem}"
    return value


def _finish_entry(entry: dict[str, Any] | None, grant: int, credited: int, why: str | None) -> None:
    if entry is None:
        return
    entry["fired"] = credited > 0
    entry["amount"] = grant
    entry["credited"] = credited
    if why is not None:
        entry["reason"] = why
    elif credited <= 0 and "problem" in entry:
        entry["reason"] = entry["problem"]
    elif credited <= 0:
        entry["reason"] = "amount is 0"


def apply_coin_rules(turn: Turn, rules: tuple[CoinRule, ...], ctx: EventContext) -> None:
    """Run the coin rules bound to this event type."""
    ns = turn.ns
    explain = turn.explain
    entry: dict[str, Any] | None = None
    for rule in rules:
        if explain:
            holds, entry = _holds(turn, "coin_rule", rule, ctx)
            if not holds:
                continue
        else:  # the same checks as _holds, inline
            if rule.audience is not None and rule.audience != ctx.audience:
                continue
            when = rule.when
            if when is not None:
                ok, problem = when.test(ns)
                if not ok:
                    if problem is not None:
                        turn.problem(rule.key, f"condition: {problem}")
                    continue
        turn.matched = True
        literal = rule.amount.literal
        grant = literal if literal is not None else _amount(turn, rule.key, rule.amount, entry)
        if rule.multipliers and grant > 0:
            factor: float = 1
            applied: list[float] = []
            for cond, f in rule.multipliers:
                ok, problem = cond.test(ns)
                if problem is not None:
                    turn.problem(rule.key, f"multiplier: {problem}")
                if ok:
                    factor *= f
                    applied.append(f)
            grant = math.floor(grant * factor)
            if entry is not None:
                entry["multipliers"] = applied
        why: str | None = None
        credited = grant
        if grant > 0:
            if rule.limited:
                usage = turn.rule_usage.get(rule.key)
                credited, why = clip(
                    usage, grant, ctx, rule.daily_cap, rule.weekly_cap, rule.total_limit
                )
                if credited < grant:
                    turn.clipped = True
                if credited > 0:
                    record(turn, rule.key, usage, credited, ctx)
            if credited > 0:
                turn.credit_coins(credited, rule.reason)
        if entry is not None:
            _finish_entry(entry, grant, credited, why)


def apply_skill_rules(turn: Turn, rules: tuple[SkillRule, ...], ctx: EventContext) -> None:
    """Run the skill rules bound to this event type (values clamp at ``max_value``)."""
    ns = turn.ns
    explain = turn.explain
    entry: dict[str, Any] | None = None
    for rule in rules:
        if explain:
            holds, entry = _holds(turn, "skill_rule", rule, ctx)
            if not holds:
                continue
        else:  # the same checks as _holds, inline
            if rule.audience is not None and rule.audience != ctx.audience:
                continue
            when = rule.when
            if when is not None:
                ok, problem = when.test(ns)
                if not ok:
                    if problem is not None:
                        turn.problem(rule.key, f"condition: {problem}")
                    continue
        turn.matched = True
        literal = rule.amount.literal
        grant = literal if literal is not None else _amount(turn, rule.key, rule.amount, entry)
        skill = turn.rulebook.skills[rule.skill]
        before = turn.skills.get(rule.skill, 0)
        credited = max(0, min(grant, skill.max_value - before))
        why = None
        if credited < grant:
            turn.clipped = True
            why = f"skill {rule.skill!r} at max_value {skill.max_value}"
        if credited > 0:
            turn.set_skill(rule.skill, before + credited, f"rule:{rule.key}", message="")
        if entry is not None:
            _finish_entry(entry, grant, credited, why)


def apply_token_rules(turn: Turn, rules: tuple[TokenRule, ...], ctx: EventContext) -> None:
    """Run the token rules bound to this event type (caps, then ``max_balance``)."""
    ns = turn.ns
    explain = turn.explain
    entry: dict[str, Any] | None = None
    for rule in rules:
        if explain:
            holds, entry = _holds(turn, "token_rule", rule, ctx)
            if not holds:
                continue
        else:  # the same checks as _holds, inline
            if rule.audience is not None and rule.audience != ctx.audience:
                continue
            when = rule.when
            if when is not None:
                ok, problem = when.test(ns)
                if not ok:
                    if problem is not None:
                        turn.problem(rule.key, f"condition: {problem}")
                    continue
        turn.matched = True
        literal = rule.amount.literal
        grant = literal if literal is not None else _amount(turn, rule.key, rule.amount, entry)
        credited, why = grant, None
        if grant > 0:
            usage = None
            if rule.limited:
                usage = turn.rule_usage.get(rule.key)
                credited, why = clip(usage, grant, ctx, rule.daily_cap, rule.weekly_cap, None)
            if credited > 0:
                before = credited
                credited = turn.credit_token(rule.token, credited, rule.reason)
                if credited < before:
                    why = f"max_balance of {rule.token!r} reached (clipped {before - credited})"
                if rule.limited and credited > 0:
                    record(turn, rule.key, usage, credited, ctx)
            if credited < grant:
                turn.clipped = True
        if entry is not None:
            _finish_entry(entry, grant, credited, why)
