"""Event plans: steps 2-6 of ``evaluate`` compiled into one Python function per event type.

The interpreter in :mod:`~buddyrules.engine.rules`, :mod:`~buddyrules.engine.badges` and
friends walks the compiled rules of every event: for each rule it reads its audience, its
condition, its amount, its caps, its multipliers, and branches on each. Those never change
for a rulebook version, so this module writes, once per (rulebook, event type), the code a
person would write by hand for exactly those rules: a rule without a condition has no test, a
literal amount is a constant, a badge without prerequisites checks none, and so on.

The generated code calls the same :class:`~buddyrules.engine.turn.Turn` methods (every coin,
token, skill, badge and notification still goes through them). What the interpreter decides
is written out with the rulebook's constants: the rule dispatch, the cap arithmetic of
:func:`~buddyrules.engine.caps.clip` and :func:`~buddyrules.engine.caps.record`, a streak's
tick (``streaks.apply_streaks``), a path's steps (``paths._advance_path``), the badge
fixpoint and evolution readiness. A change to any of those mechanics must be made here too
(the ``_Writer`` method of the same name). A plan gives exactly what the interpreter gives:
``tests/engine/test_engine_plans.py`` checks that on every example rulebook and on generated
histories. The interpreter is still what runs with ``explain=True`` (the trace needs every
reason); a rulebook whose badge and path passes are incremental (many skippable conditions,
see ``rulebook/_deps.py``) runs a rules-only plan, then the incremental passes.

Only constants chosen here go into the source: keys and reasons as ``repr`` literals, numbers
as ints, and everything else (rewards, rule objects) as names bound in the function's
globals; no text from a rulebook is ever pasted into code. Conditions and amounts are
written in as their checked syntax trees, rewritten to read the turn rather than a
namespace (:mod:`buddyrules.engine.inline`); an expression that needs the namespace is
called through its compiled function, and the plan then builds the namespace first.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any

from buddyrules.conditions import Expression
from buddyrules.conditions._compiler import HELPERS, amount_value
from buddyrules.engine.context import EventContext
from buddyrules.engine.evolution import evolve_now
from buddyrules.engine.inline import inline_source, streak_of
from buddyrules.engine.paths import _NO_PROGRESS
from buddyrules.engine.periods import week_of
from buddyrules.engine.turn import Turn
from buddyrules.events import Event
from buddyrules.rulebook.compiled import (
    Amount,
    Badge,
    CoinRule,
    Path,
    Rulebook,
    SkillRule,
    Streak,
    TokenRule,
)
from buddyrules.state import build_path, build_streak, build_usage

__all__ = ["Plan", "plan_for", "plans_of"]

#: ``plan(turn, event, audience, day, ctx)`` runs steps 2-6 of SPEC §3 for one event type.
#: ``day`` is the event's local day (``periods.local_day``); ``ctx`` its
#: :class:`EventContext` or None (the few plans that need one then build it). ``turn.ns`` is
#: the condition namespace if one is live, else empty; a plan that needs one builds it
#: (``Turn.open_namespace``), and the mechanics keep a live one current.
Plan = Callable[[Turn, Event, str, int, EventContext | None], None]

# Plans per live rulebook, keyed by id (a Rulebook is pickled by ``testing.check``, so the
# plans, which cannot be pickled, are kept beside it rather than in its ``__dict__``).
_PLANS: dict[int, dict[str, Plan]] = {}


def plans_of(rulebook: Rulebook) -> dict[str, Plan]:
    """The table of ``rulebook``'s plans compiled so far, by event type (see :func:`plan_for`)."""
    plans = _PLANS.get(id(rulebook))
    if plans is None:
        plans = _PLANS[id(rulebook)] = {}
        weakref.finalize(rulebook, _PLANS.pop, id(rulebook), None)
    return plans


def plan_for(rulebook: Rulebook, event_type: str, *, rules_only: bool = False) -> Plan:
    """The plan of ``event_type`` under ``rulebook``, compiled on first use.

    ``rules_only`` gives steps 2-3 alone (streaks and the coin, skill and token rules), for
    a rulebook whose badge and path passes are incremental: ``evaluate`` then notes what the
    rules changed and runs steps 4-6 through the interpreter.
    """
    plans = plans_of(rulebook)
    # Rules-only plans are kept under a key no event type has (types are identifiers).
    key = f"{event_type} rules" if rules_only else event_type
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = _Writer(rulebook, event_type).build(rules_only=rules_only)
    return plan


class _Writer:
    """Writes one plan's source, binding every non-literal constant to a global name."""

    def __init__(self, rulebook: Rulebook, event_type: str) -> None:
        self.rulebook = rulebook
        self.event_type = event_type
        self.lines: list[str] = []
        self.globals: dict[str, Any] = {
            **HELPERS,  # what inlined expressions call (_min, _round, _reason, ...)
            "__builtins__": {},
            "_usage": build_usage,
            "_dict": dict,
            "_amount_value": amount_value,
            "_streak_of": streak_of,
            "_floor": math.floor,
            "_set": set,
            # Not "_streak": that is HELPERS' streak() of inlined expressions.
            "_new_streak": build_streak,
            "_tuple": tuple,
            "_sorted": sorted,
            "_path": build_path,
            "_evolve_now": evolve_now,
            "_week_of": week_of,
            "_context": EventContext,
        }
        # Set once an expression could not be inlined: the plan then builds the namespace.
        self.uses_ns = False
        self.uses_week = False  # the ISO week of the event is read (``week``)
        self.uses_ctx = False  # the EventContext is read (a monthly period)

    def bind(self, value: Any) -> str:
        """A global name for ``value`` (a condition, a rule, a tuple...)."""
        name = f"_k{len(self.globals)}"
        self.globals[name] = value
        return name

    def emit(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line)

    def append(self, depth: int, name: str, item: str) -> None:
        """Emit ``turn.append(name, item)`` inline: the per-event list holds the shared
        empty tuple until its first item (see ``Turn.append``)."""
        self.emit(depth, f"if not turn.{name}:")
        self.emit(depth + 1, f"turn.{name} = []")
        self.emit(depth, f"turn.{name}.append({item})")

    def notify(self, depth: int, kind: str, **payload: str) -> None:
        """Emit ``turn.notify(kind, {key: value, ...})`` as the row it writes (a turn's
        ``NoteRow``: the payload's keys, then its values as source expressions)."""
        keys = tuple(payload)
        values = ", ".join(payload.values())
        self.emit(depth, "if notes is not None:")
        self.emit(depth + 1, f"notes.append(({kind!r}, {keys!r}, {values}))")

    def cond(self, depth: int, expr: Expression, failed: list[str]) -> None:
        """Emit ``ok = <expr holds>``; on an evaluation failure ``ok`` is False and the
        lines ``failed`` run with ``problem`` set to the reason (as ``expr.test`` gives)."""
        source = inline_source(self.rulebook, expr)
        if source is None:
            self.uses_ns = True
            self.emit(depth, f"ok, problem = {self.bind(expr.test)}(ns)")
            self.emit(depth, "if problem is not None:")
        else:
            # ``not not`` takes the truth value inside the try, as the compiled test does.
            self.emit(depth, "try:")
            self.emit(depth + 1, f"ok = not not ({source})")
            self.emit(depth, "except _Exception as error:")
            self.emit(depth + 1, "ok = False")
            self.emit(depth + 1, "problem = _reason(error)")
        for line in failed:
            self.emit(depth + 1, line)

    def value(self, depth: int, expr: Expression) -> None:
        """Emit ``value = <expr>``, an :class:`EvalFailure` if it fails (``expr.evaluate``)."""
        source = inline_source(self.rulebook, expr)
        if source is None:
            self.uses_ns = True
            self.emit(depth, f"value = {self.bind(expr.evaluate)}(ns)")
            return
        self.emit(depth, "try:")
        self.emit(depth + 1, f"value = ({source})")
        self.emit(depth, "except _Exception as error:")
        self.emit(depth + 1, "value = _failure(error)")

    def build(self, *, rules_only: bool = False) -> Plan:
        """The plan, compiled from :meth:`source`."""
        source = self.source(rules_only=rules_only)
        name = f"<buddyrules plan {self.event_type!r} {self.rulebook.version}>"
        code = compile(source, name, "exec")
        exec(code, self.globals)  # source written by self.source from constants chosen there
        plan: Plan = self.globals["plan"]
        return plan

    def source(self, *, rules_only: bool = False) -> str:
        """The plan's source (its constants are bound in ``self.globals``)."""
        rb = self.rulebook
        event_type = self.event_type
        self.emit(0, "def plan(turn, event, audience, day, ctx):")
        for streak in rb.streaks_by_type.get(event_type, ()):
            self.streak(streak)
        for rule in rb.coin_rules_by_type.get(event_type, ()):
            self.coin_rule(rule)
        for skill_rule in rb.skill_rules_by_type.get(event_type, ()):
            self.skill_rule(skill_rule)
        for token_rule in rb.token_rules_by_type.get(event_type, ()):
            self.token_rule(token_rule)
        if not rules_only:
            self.paths()
            self.badges()
            if len(rb.stages) > 1:
                self.evolution()
        self.emit(1, "return None")
        # The prologue, known only now: whether some expression reads the namespace.
        prologue = ["    props = event.properties", "    notes = turn.notifications"]
        if self.uses_week:
            prologue.append("    week = _week_of(day)")
        if self.uses_ctx or self.uses_ns:
            prologue.append("    if ctx is None:")
            prologue.append("        ctx = _context(event.type, audience, event.occurred_at, day)")
        if self.uses_ns:
            prologue.append("    ns = turn.ns or turn.open_namespace(event, ctx)")
        else:
            prologue.append("    ns = turn.ns")
        self.lines[1:1] = prologue
        return "\n".join(self.lines) + "\n"

    # -- step 2: streaks ------------------------------------------------------------------

    def streak(self, streak: Streak) -> None:
        """``streaks.apply_streaks`` (untraced) written out for one streak.

        An event in the streak's last ticked period or an earlier one changes nothing
        (``streaks.classify``: "same_period", "earlier"); that is most events of a daily
        streak, and the first test skips them. Then, as ``classify`` and ``TRANSITIONS``
        say: start (count 1), continue, frozen (the missed periods paid in freeze tokens)
        or burned (restart at 1); a tick, its reward, and each milestone reached for the
        first time with its reward.
        """
        key = streak.key
        depth = 1
        if streak.audience is not None:
            self.emit(depth, f"if audience == {streak.audience!r}:")
            depth += 1
        period = {"daily": "day", "weekly": "week"}.get(
            streak.period, f"ctx.period({streak.period!r})"
        )
        if streak.period == "weekly":
            self.uses_week = True
        elif streak.period != "daily":
            self.uses_ctx = True
        self.emit(depth, f"current = turn.streaks.get({key!r})")
        self.emit(
            depth,
            f"if current is None or current.last_period is None or {period} > current.last_period:",
        )
        d = depth + 1
        self.emit(d, f"period = {period}")
        self.emit(d, "turn.matched = True")
        self.emit(d, "if current is None:")
        self.emit(d + 1, "count = best = 1")
        self.emit(d + 1, "paid = ()")
        self.emit(d, "else:")
        e = d + 1
        self.emit(e, "paid = current.milestones_paid")
        self.emit(e, "if current.last_period is None or current.count == 0:")
        self.emit(e + 1, "count = 1")  # start (after a sweep's burn: count 0)
        self.emit(e, "else:")
        self.emit(e + 1, "missed = period - current.last_period - 1")
        self.emit(e + 1, "if missed <= 0:")
        self.emit(e + 2, "count = current.count + 1")  # continue
        if streak.freeze_token is not None:
            token = streak.freeze_token
            self.emit(e + 1, f"elif turn.tokens.get({token!r}, 0) >= missed:")  # frozen
            self.emit(e + 2, f"turn.debit_token({token!r}, missed, {f'streak_freeze:{key}'!r})")
            self.append(
                e + 2,
                "streak_changes",
                f"{{'streak': {key!r}, 'change': 'frozen', 'freezes_used': missed}}",
            )
            self.emit(e + 2, "count = current.count + 1")
        self.emit(e + 1, "else:")  # burned: restart
        self.append(
            e + 2,
            "streak_changes",
            f"{{'streak': {key!r}, 'change': 'burned', 'count_before': current.count}}",
        )
        self.notify(e + 2, "streak.burned", streak=repr(key), count_before="current.count")
        self.emit(e + 2, "count = 1")
        # max(count, best), without a call
        self.emit(e, "best = current.best")
        self.emit(e, "if count > best:")
        self.emit(e + 1, "best = count")
        if streak.milestones:
            self.emit(
                d,
                f"due = [(c, r) for c, r in {self.bind(streak.milestones)} "
                "if c <= count and c not in paid]",
            )
            self.emit(d, "if due:")
            self.emit(d + 1, "paid = _tuple(_sorted((*paid, *[c for c, _ in due])))")
        self.emit(
            d,
            f"turn.set_streak({key!r}, _new_streak(count, best, period, paid))",
        )
        self.emit(d, "if ns:")  # a live namespace is kept current
        self.emit(d + 1, f"ns['streaks'][{key!r}] = {{'count': count, 'best': best}}")
        self.emit(d, "turn.visible = True")
        ticked = f"{{'streak': {key!r}, 'change': 'ticked', 'count': count}}"
        self.append(d, "streak_changes", ticked)
        self.notify(d, "streak.ticked", streak=repr(key), count="count", best="best")
        if not streak.tick_reward.is_empty:
            self.emit(d, f"turn.pay({self.bind(streak.tick_reward)}, {f'streak:{key}'!r})")
        if streak.milestones:
            self.emit(d, "if due:")
            self.emit(d + 1, "for reached, reward in due:")
            self.append(d + 2, "milestones", f"{{'streak': {key!r}, 'count': reached}}")
            self.notify(d + 2, "streak.milestone", streak=repr(key), count="reached")
            self.emit(d + 2, f"turn.pay(reward, f'streak_milestone:{key}:{{reached}}')")

    def evolution(self) -> None:
        """``evolution.evaluate_evolution`` (untraced) written out for the rulebook's stages."""
        self.emit(1, "stage = turn.stage")
        self.next_stage(["turn.problem(f'evolution.stages[{stage}]', 'condition: ' + problem)"])
        self.emit(1, "if ok and turn.evolution_notified < stage + 1:")
        self.emit(2, "turn.evolution_notified = stage + 1")
        self.emit(2, "turn.evolution_became_ready = True")
        self.emit(2, "turn.visible = True")
        self.notify(2, "evolution.ready", stage="stage + 1")
        if self.rulebook.auto_evolve:
            self.emit(1, "if ok:")
            self.emit(2, "_evolve_now(turn, 'auto_evolve')")
            # Readiness of the stage after (``next_stage_ready``; a failure is not reported).
            self.emit(2, "stage = turn.stage")
            self.next_stage([], depth=2)
        self.emit(1, "turn.evolution_ready = ok")

    def next_stage(self, failed: list[str], depth: int = 1) -> None:
        """Emit ``ok`` = the condition of the stage after ``stage`` holds (False at the last
        stage or for a stage without a condition): ``evolution.next_stage_ready``."""
        stages = self.rulebook.stages
        first = True
        for number in range(1, len(stages)):
            when = stages[number].when  # stages[n] is stage n + 1
            if when is None:
                continue
            self.emit(depth, f"{'if' if first else 'elif'} stage == {number}:")
            self.cond(depth + 1, when, failed or ["pass"])
            first = False
        if first:
            self.emit(depth, "ok = False")
        else:
            self.emit(depth, "else:")
            self.emit(depth + 1, "ok = False")

    # -- steps 3: coin, skill and token rules ---------------------------------------------

    def guard(self, depth: int, key: str, audience: str | None, when: Any) -> int:
        """Emit the audience filter and the condition of a rule; return the body's depth."""
        if audience is not None:
            self.emit(depth, f"if audience == {audience!r}:")
            depth += 1
        if when is not None:
            self.cond(depth, when, [f"turn.problem({key!r}, 'condition: ' + problem)"])
            self.emit(depth, "if ok:")
            depth += 1
        return depth

    def amount(self, depth: int, key: str, amount: Amount) -> bool:
        """Emit ``grant = ...``; return whether the grant is known to be positive."""
        if amount.expr is None:
            literal = amount.literal or 0
            self.emit(depth, f"grant = {int(literal)}")
            return literal > 0
        # rules._amount: the value as a grant; a failure or a bad value grants 0, reported.
        self.value(depth, amount.expr)
        self.emit(depth, "grant, problem = _amount_value(value)")
        self.emit(depth, "if problem is not None:")
        self.emit(depth + 1, f"turn.problem({key!r}, 'amount: ' + problem)")
        return False

    def coin_rule(self, rule: CoinRule) -> None:
        depth = self.guard(1, rule.key, rule.audience, rule.when)
        self.emit(depth, "turn.matched = True")
        positive = self.amount(depth, rule.key, rule.amount)
        if rule.multipliers:
            self.emit(depth, "if grant > 0:")
            self.emit(depth + 1, "factor = 1")
            for cond, factor in rule.multipliers:
                self.cond(
                    depth + 1, cond, [f"turn.problem({rule.key!r}, 'multiplier: ' + problem)"]
                )
                self.emit(depth + 1, "if ok:")
                self.emit(depth + 2, f"factor *= {self.bind(factor)}")
            self.emit(depth + 1, "grant = _floor(grant * factor)")
            positive = False
        if not positive:
            self.emit(depth, "if grant > 0:")
            depth += 1
        if rule.limited:
            self.emit(depth, f"usage = turn.rule_usage.get({rule.key!r})")
            self.clip(depth, rule.daily_cap, rule.weekly_cap, rule.total_limit)
            self.emit(depth, "if credited < grant:")
            self.emit(depth + 1, "turn.clipped = True")
            # A used-up total limit is not a clip: the rule no longer applies.
            spent = (
                ""
                if rule.total_limit is None
                else f" and (usage is None or usage.times < {int(rule.total_limit)})"
            )
            self.grant(depth + 1, f"coin_rule:{rule.key}", "True", spent)
            self.emit(depth, "if credited > 0:")
            self.record(depth + 1, rule.key)
            self.credit_coins(depth + 1, "credited", rule.reason)
        else:
            self.credit_coins(depth, "grant", rule.reason)

    def credit_coins(self, depth: int, amount: str, reason: str) -> None:
        """``Turn.credit_coins(amount, reason)`` written out for an amount known to be > 0."""
        self.emit(depth, f"coins = turn.coins + {amount}")
        self.emit(depth, "turn.coins = coins")
        self.emit(depth, f"turn.coins_credited += {amount}")
        self.emit(depth, "turn.visible = True")
        self.emit(depth, "if ns:")  # a live namespace is kept current
        self.emit(depth + 1, "ns['coins'] = coins")
        self.emit(depth, f"turn.ledger.append(('coins', {amount}, coins, {reason!r}))")
        self.notify(depth, "coins.earned", amount=amount, balance="coins", reason=repr(reason))

    def skill_rule(self, rule: SkillRule) -> None:
        depth = self.guard(1, rule.key, rule.audience, rule.when)
        self.emit(depth, "turn.matched = True")
        self.amount(depth, rule.key, rule.amount)
        skill = self.rulebook.skills[rule.skill]
        self.emit(depth, f"before = turn.skills.get({rule.skill!r}, 0)")
        # max(0, min(grant, max_value - before)), without calls
        self.emit(depth, f"credited = {int(skill.max_value)} - before")
        self.emit(depth, "if grant < credited:")
        self.emit(depth + 1, "credited = grant")
        self.emit(depth, "if credited < 0:")
        self.emit(depth + 1, "credited = 0")
        self.emit(depth, "if credited < grant:")
        self.emit(depth + 1, "turn.clipped = True")
        self.grant(
            depth,
            f"skill_rule:{rule.key}",
            "credited < grant",
            " and (credited > 0 or credited < grant)",
        )
        self.emit(depth, "if credited > 0:")
        self.set_skill(depth + 1, rule.skill)

    def set_skill(self, depth: int, key: str) -> None:
        """``Turn.set_skill(key, before + credited, ..., message='')`` written out for a
        credit already clamped to the skill's range (``credited > 0``)."""
        skill = self.rulebook.skills[key]
        per_level, max_level = int(skill.points_per_level), int(skill.max_level)
        self.emit(depth, "value = before + credited")
        self.emit(depth, "if not turn._skills_owned:")
        self.emit(depth + 1, "turn.skills = _dict(turn.skills)")
        self.emit(depth + 1, "turn._skills_owned = True")
        self.emit(depth, f"turn.skills[{key!r}] = value")
        # Skill.level_of: min(max_level, value // points_per_level)
        for name, of in (("level_before", "before"), ("level", "value")):
            self.emit(depth, f"{name} = {of} // {per_level}")
            self.emit(depth, f"if {name} > {max_level}:")
            self.emit(depth + 1, f"{name} = {max_level}")
        self.emit(depth, f"change = turn.skill_changes.get({key!r})")
        self.emit(depth, "if change is None:")
        self.emit(
            depth + 1,
            f"turn.skill_changes[{key!r}] = change = "
            f"{{'skill': {key!r}, 'before': before, 'level_before': level_before}}",
        )
        self.emit(depth, "change['value'] = value")
        self.emit(depth, "change['delta'] = value - change['before']")
        self.emit(depth, "change['level'] = level")
        self.emit(depth, "turn.visible = True")
        self.emit(depth, "if ns:")  # a live namespace is kept current
        self.emit(depth + 1, f"ns['skills'][{key!r}] = {{'value': value, 'level': level}}")
        self.emit(depth, "if level > level_before:")
        self.notify(
            depth + 1,
            "skill.leveled",
            skill=repr(key),
            level="level",
            level_before="level_before",
            value="value",
        )

    def token_rule(self, rule: TokenRule) -> None:
        depth = self.guard(1, rule.key, rule.audience, rule.when)
        self.emit(depth, "turn.matched = True")
        self.amount(depth, rule.key, rule.amount)
        self.emit(depth, "if grant > 0:")
        depth += 1
        if rule.limited:
            self.emit(depth, f"usage = turn.rule_usage.get({rule.key!r})")
            self.clip(depth, rule.daily_cap, rule.weekly_cap, None)
            self.emit(depth, "if credited > 0:")
            self.credit_token(depth + 1, rule.token, "credited", rule.reason)
            self.emit(depth + 1, "if credited > 0:")
            self.record(depth + 2, rule.key)
        else:
            self.credit_token(depth, rule.token, "grant", rule.reason)
        self.emit(depth, "if credited < grant:")
        self.emit(depth + 1, "turn.clipped = True")
        self.grant(depth + 1, f"token_rule:{rule.key}", "True", "")

    def credit_token(self, depth: int, token: str, amount: str, reason: str) -> None:
        """``credited = Turn.credit_token(token, amount, reason)`` written out for an amount
        known to be > 0: clipped to the token's ``max_balance``, then credited."""
        max_balance = self.rulebook.tokens[token].max_balance
        self.emit(depth, f"credited = {amount}")
        self.emit(depth, f"balance = turn.tokens.get({token!r}, 0)")
        if max_balance is not None:
            self.emit(depth, f"room = {int(max_balance)} - balance")
            self.emit(depth, "if credited > room:")
            self.emit(depth + 1, "turn.clipped = True")
            self.emit(depth + 1, "credited = room if room > 0 else 0")
            self.emit(depth, "if credited > 0:")
            depth += 1
        self.emit(depth, "balance += credited")
        self.emit(depth, f"turn.tokens[{token!r}] = balance")
        self.emit(depth, "turn._tokens_changed = True")
        self.emit(depth, "credits = turn.token_credits")
        self.emit(depth, f"credits[{token!r}] = credits.get({token!r}, 0) + credited")
        self.emit(depth, "turn.visible = True")
        currency = f"token:{token}"
        self.emit(depth, f"turn.ledger.append(({currency!r}, credited, balance, {reason!r}))")
        self.notify(
            depth,
            "token.earned",
            token=repr(token),
            amount="credited",
            balance="balance",
            reason=repr(reason),
        )

    def clip(
        self, depth: int, daily_cap: int | None, weekly_cap: int | None, total_limit: int | None
    ) -> None:
        """Emit ``credited = grant`` clipped by the rule's caps and total limit (``usage``
        holds the rule's usage before this grant): :func:`caps.clip` for these caps."""
        self.emit(depth, "credited = grant")
        self.emit(depth, "if usage is None:")  # nothing credited yet: only a cap clips
        for cap in (daily_cap, weekly_cap):
            if cap is not None:
                self.emit(depth + 1, f"if credited > {int(cap)}:")
                self.emit(depth + 2, f"credited = {int(cap)}")
        if daily_cap is None and weekly_cap is None:
            self.emit(depth + 1, "pass")
        if total_limit is not None:
            self.emit(depth, f"elif usage.times >= {int(total_limit)}:")
            self.emit(depth + 1, "credited = 0")
        if daily_cap is None and weekly_cap is None:
            return
        self.emit(depth, "else:")
        for cap, last, total, now in (
            (daily_cap, "usage.day", "usage.day_total", "day"),
            (weekly_cap, "usage.week", "usage.week_total", "week"),
        ):
            if cap is None:
                continue
            # caps._used: nothing used in a later period, the total in the same one, and a
            # late event (an earlier period) counts as capped.
            self.emit(depth + 1, f"last = {last}")
            self.emit(depth + 1, f"if last is None or {now} > last:")
            self.emit(depth + 2, f"room = {int(cap)}")
            self.emit(depth + 1, f"elif {now} == last:")
            self.emit(depth + 2, f"room = {int(cap)} - {total}")
            self.emit(depth + 2, "if room < 0:")
            self.emit(depth + 3, "room = 0")
            self.emit(depth + 1, "else:")
            self.emit(depth + 2, "room = 0")
            self.emit(depth + 1, "if credited > room:")
            self.emit(depth + 2, "credited = room")

    def record(self, depth: int, key: str) -> None:
        """Emit :func:`caps.record` of ``credited`` for the rule ``key`` (``usage`` before)."""
        self.uses_week = True
        self.emit(depth, "u_day = day")
        self.emit(depth, "u_week = week")
        self.emit(depth, "if usage is None:")
        self.emit(depth + 1, "u_day_total = u_week_total = credited")
        self.emit(depth + 1, "u_times = 1")
        self.emit(depth, "else:")
        for period, total in (("u_day", "usage.day_total"), ("u_week", "usage.week_total")):
            field = period[2:]
            self.emit(depth + 1, f"last = usage.{field}")
            self.emit(depth + 1, f"if last is None or {period} > last:")
            self.emit(depth + 2, f"{period}_total = credited")
            self.emit(depth + 1, f"elif {period} == last:")
            self.emit(depth + 2, f"{period}_total = {total} + credited")
            self.emit(depth + 1, "else:")  # a late event never rewinds the latest period
            self.emit(depth + 2, f"{period}, {period}_total = last, {total}")
        self.emit(depth + 1, "u_times = usage.times + 1")
        self.emit(depth, "if not turn._usage_owned:")
        self.emit(depth + 1, "turn.rule_usage = _dict(turn.rule_usage)")
        self.emit(depth + 1, "turn._usage_owned = True")
        self.emit(
            depth,
            f"turn.rule_usage[{key!r}] = _usage(u_day, u_day_total, u_week, u_week_total, u_times)",
        )

    def grant(self, depth: int, tag: str, clipped: str, when: str) -> None:
        """Emit the record of a rule's grant, for a replay that asks for it (``turn.grants``).

        The record is what an ``explain=True`` trace says of the rule (simulate's
        ``grants_from_trace``): ``(tag, credited, clipped)`` for each coin and token rule
        whose grant was clipped by a cap or ``max_balance``, and each skill rule that
        credited or was clipped by ``max_value``.
        """
        self.emit(depth, f"if turn.grants is not None{when}:")
        self.emit(depth + 1, f"turn.grants.append(({tag!r}, credited, {clipped}))")

    # -- steps 4-5: paths and badges ----------------------------------------------------

    def paths(self) -> None:
        for path in self.rulebook.paths:
            depth = 1
            if path.audience is not None:
                self.emit(depth, f"if audience == {path.audience!r}:")
                depth += 1
            self.path(depth, path)

    def test(self, depth: int, expr: Any, where: str) -> None:
        """Emit ``ok = <expr holds>``, recording a failure as a problem of ``where``."""
        self.cond(depth, expr, [f"turn.problem({where!r}, problem)"])

    def path(self, depth: int, path: Path) -> None:
        """``paths._advance_path`` (untraced) written out for one path's steps."""
        pk = path.key
        self.emit(depth, f"st = turn.paths.get({pk!r})")
        self.emit(depth, "if st is None:")
        self.emit(depth + 1, f"st = {self.bind(_NO_PROGRESS)}")
        self.emit(depth, "unlocked, completed, done = st.unlocked, st.completed, st.sub_steps_done")
        self.emit(depth, f"if _len(completed) != {len(path.steps)}:")  # else: finished
        d = depth + 1
        self.emit(d, "changed = False")
        self.emit(d, "prev = True")  # the previous step is complete
        progress = "unlocked, completed, done"  # PathState's fields, in order
        for step in path.steps:
            sk = step.key
            self.emit(d, f"if {sk!r} in completed:")
            self.emit(d + 1, "prev = True")
            self.emit(d, "else:")
            e = d + 1
            self.emit(e, "go = True")
            self.emit(e, f"if {sk!r} not in unlocked:")
            if step.unlock is not None:
                self.test(e + 1, step.unlock, f"{step.path}.unlock")
                self.emit(e + 1, "go = ok")
            else:
                self.emit(e + 1, "go = prev")
            self.emit(e + 1, "if go:")
            self.emit(e + 2, f"unlocked = (*unlocked, {sk!r})")
            self.emit(e + 2, "changed = True")
            self.append(
                e + 2,
                "path_changes",
                f"{{'path': {pk!r}, 'step': {sk!r}, 'status': 'unlocked'}}",
            )
            self.emit(e, "if not go:")
            self.emit(e + 1, "prev = False")
            self.emit(e, "else:")
            f = e + 1
            self.emit(f, "pending = False")
            for sub in step.sub_steps:
                self.emit(f, f"if {sub.ref!r} not in done:")
                if sub.completion is None:
                    self.emit(f + 1, "pending = True")
                    continue
                self.test(f + 1, sub.completion, f"{step.path}.{sub.key}")
                self.emit(f + 1, "if ok:")
                self.emit(f + 2, f"done = (*done, {sub.ref!r})")
                self.emit(f + 2, "changed = True")
                self.append(
                    f + 2,
                    "path_changes",
                    f"{{'path': {pk!r}, 'step': {sk!r}, "
                    f"'sub_step': {sub.key!r}, 'status': 'completed'}}",
                )
                self.emit(f + 1, "else:")
                self.emit(f + 2, "pending = True")
            self.emit(f, "if pending:")
            self.emit(f + 1, "prev = False")
            self.emit(f, "else:")
            g = f + 1
            if step.completion is not None:
                self.test(g, step.completion, f"{step.path}.complete")
                self.emit(g, "if not ok:")
                self.emit(g + 1, "prev = False")
                self.emit(g, "else:")
                g += 1
            self.emit(g, f"completed = (*completed, {sk!r})")
            self.emit(g, "changed = True")
            self.append(
                g,
                "path_changes",
                f"{{'path': {pk!r}, 'step': {sk!r}, 'status': 'completed'}}",
            )
            self.notify(g, "path.step_completed", path=repr(pk), step=repr(sk))
            self.emit(g, f"turn.set_path({pk!r}, _path({progress}))")
            self.emit(g, f"turn.pay({self.bind(step.reward)}, {f'path:{pk}:{sk}'!r})")
            self.emit(g, "prev = True")
        self.emit(d, "if changed:")
        self.emit(d + 1, "turn.visible = True")
        self.emit(d + 1, f"turn.set_path({pk!r}, _path({progress}))")

    def badges(self) -> None:
        # A badge without a condition is only ever awarded by a reward or an admin: the
        # interpreter's pass visits it and changes nothing, so it is left out here.
        tested = [badge for badge in self.rulebook.badges if badge.when is not None]
        if not tested:
            return
        self.emit(1, "awarded = turn.badges")  # the live set: awards are seen at once
        self.emit(1, "reported = None")
        # The interpreter's bound: each pass that continues awards or readies one badge.
        # (A counted while loop: most events make one pass, and need no range object.)
        self.emit(1, f"passes = {len(self.rulebook.badges) + 1}")
        self.emit(1, "while passes:")
        self.emit(2, "passes -= 1")
        self.emit(2, "changed = False")
        for badge in tested:
            self.badge(badge)
        self.emit(2, "if not changed:")
        self.emit(3, "break")

    def badge(self, badge: Badge) -> None:
        key = badge.key
        tests = [f"{key!r} not in awarded"]
        if badge.mode == "manual":
            tests.append(f"{key!r} not in turn.ready")
        if badge.audience is not None:
            tests.append(f"audience == {badge.audience!r}")
        tests.extend(f"{required!r} in awarded" for required in badge.requires)
        self.emit(2, f"if {' and '.join(tests)}:")
        assert badge.when is not None
        # A failing condition is reported once per event, not once per pass.
        self.cond(
            3,
            badge.when,
            [
                "if reported is None:",
                "    reported = _set()",
                f"if {key!r} not in reported:",
                f"    reported.add({key!r})",
                f"    turn.problem({key!r}, 'condition: ' + problem)",
            ],
        )
        self.emit(3, "if ok:")
        if badge.mode == "manual":
            self.emit(4, f"turn.mark_ready({key!r})")
        else:
            self.emit(4, f"turn.award_badge({key!r}, 'condition')")
        self.emit(4, "changed = True")
